"""The clients that copy or store images rather than run them, driven as a user runs them: a
second Distribution registry to copy into, podman with a store of its own, and umoci to unpack
an OCI layout. Nothing of the host's configuration is read."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

from harness import stk


def destination_registry(run_dir: Path, port: int) -> stk.RegistryProcess:
    """A second, empty Distribution 2.8 on `port` (loopback, no auth), started; stop it when
    done. A copy into it fails if a layer is not pushed (MANIFEST_BLOB_UNKNOWN)."""
    with socket.socket() as probe:
        try:
            probe.bind((stk.LOOPBACK, port))
        except OSError as taken:
            raise stk.PortInUse(f"port {port} for the destination registry: {taken}") from None
    registry = stk.RegistryProcess(run_dir, port)
    registry.start()
    return registry


class Podman:
    """podman with its own store under `home` (vfs, no cgroups, no events) and a run root in a
    short temporary directory (podman refuses one longer than 50 characters); `close` removes
    that."""

    def __init__(self, home: Path):
        self.home = home
        policy = home / "policy.json"
        home.mkdir(parents=True, exist_ok=True)
        policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        self.run_root = Path(tempfile.mkdtemp(prefix="blobsteer-podman-"))
        self.argv = [
            "podman", "--root", str(home / "root"), "--runroot", str(self.run_root),
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none",
        ]  # fmt: skip
        self.policy = policy

    def close(self) -> None:
        shutil.rmtree(self.run_root, ignore_errors=True)

    def pull(self, ref: str) -> str:
        """Pulls `ref` over plain HTTP; returns the digest podman recorded for the image."""
        pull = ["pull", "--tls-verify=false", "--signature-policy", str(self.policy), ref]
        stk.run_command(self.argv + pull, timeout=120)
        inspect = ["image", "inspect", "--format", "{{.Digest}}", ref]
        return stk.run_command(self.argv + inspect).stdout.strip()


def umoci_unpack(layout: Path, tag: str, bundle: Path) -> None:
    """`umoci unpack --rootless` of `layout:tag` into `bundle`: every layer of the image must be
    in the layout, its digest verified, for this to succeed."""
    stk.run_command(["umoci", "unpack", "--rootless", "--image", f"{layout}:{tag}", str(bundle)], timeout=120)
