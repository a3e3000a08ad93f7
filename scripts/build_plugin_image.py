#!/usr/bin/env python3
"""`make image`: the filter as one OCI image, in the layout Istio's `WasmPlugin` and Envoy
Gateway's `EnvoyExtensionPolicy` accept as "compat": an image manifest whose single layer
(`application/vnd.oci.image.layer.v1.tar+gzip`) holds `plugin.wasm`. Written with this project's
own layout writer (scripts/build_demo_image.py), deterministically (the same module gives the
same digests), then pushed with skopeo.

    scripts/build_plugin_image.py [--wasm W] [--out DIR] [--tag T] [--push REF | --no-push]

By default it pushes to the demo registry (`make run`; its port from the BLOBSTEER_*_PORT
variables) as `blobsteer/plugin:<version>`. It prints the image manifest's digest (an oci://
URL's `sha256` in Istio) and the module's sha256 (`vm_config.code.remote.sha256` in Envoy, and
Envoy Gateway's `sha256` for an HTTP source).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re
import shutil
import sys
from pathlib import Path

import build_demo_image as layout
import stack as stk

REPOSITORY = "blobsteer/plugin"
WASM = stk.DEFAULT_WASM
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def version() -> str:
    """The workspace's version (Cargo.toml)."""
    text = (stk.REPO_ROOT / "Cargo.toml").read_text()
    found = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', text, re.MULTILINE | re.DOTALL)
    if not found:
        raise SystemExit("no [workspace.package] version in Cargo.toml")
    return found[1]


def build(wasm: bytes, out_dir: Path, tag: str) -> layout.Blob:
    """Writes the image's layout to `out_dir` (replaced if it is one); returns its manifest."""
    if out_dir.exists():
        if any(out_dir.iterdir()) and not (out_dir / "oci-layout").exists():
            raise SystemExit(f"{out_dir} exists and is not an OCI layout; refusing to replace it")
        shutil.rmtree(out_dir)
    writer = layout.LayoutWriter(out_dir)
    tar = layout.tar_bytes([("plugin.wasm", wasm, 0o644)])
    layer = writer.write(gzip.compress(tar, compresslevel=9, mtime=0), MEDIA_LAYER)
    config = writer.write_json(
        {
            "created": layout.CREATED,
            "architecture": "wasm",
            "os": "wasip1",
            "config": {"Labels": {"org.opencontainers.image.title": "blobsteer"}},
            "rootfs": {"type": "layers", "diff_ids": [layout.sha256_digest(tar)]},
        },
        layout.MEDIA_CONFIG,
    )
    manifest = writer.write_json(
        {
            "schemaVersion": 2,
            "mediaType": layout.MEDIA_MANIFEST,
            "config": layout.descriptor(config),
            "layers": [layout.descriptor(layer)],
            "annotations": {"org.opencontainers.image.version": tag},
        },
        layout.MEDIA_MANIFEST,
    )
    writer.finish(manifest, tag)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build (and push) the filter's OCI image.")
    parser.add_argument("--wasm", type=Path, default=WASM, help="the module (default: make wasm's)")
    parser.add_argument("--out", type=Path, default=stk.REPO_ROOT / ".run" / "plugin-image", help="the OCI layout written")
    parser.add_argument("--tag", default=version(), help="the image's tag (default: the workspace version)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--push", metavar="REF", help="push to this reference (host:port/name:tag)")
    target.add_argument("--no-push", action="store_true", help="only write the layout")
    args = parser.parse_args(argv)
    try:
        wasm = args.wasm.read_bytes()
    except OSError as err:
        print(f"build_plugin_image.py: {err} (build it first: make wasm)", file=sys.stderr)
        return 1
    manifest = build(wasm, args.out.resolve(), args.tag)
    print(f"image manifest {manifest.digest}  (Istio: sha256 of the oci:// url)")
    print(f"plugin.wasm    sha256:{hashlib.sha256(wasm).hexdigest()}  (Envoy vm_config.code.remote.sha256)")
    if args.no_push:
        print(f"layout         {args.out}:{args.tag}")
        return 0
    ref = args.push or f"{stk.LOOPBACK}:{stk.Ports.from_env().registry}/{REPOSITORY}:{args.tag}"
    host = ref.split("/", 1)[0]
    result = stk.run_command(
        ["skopeo", "copy", "--dest-tls-verify=false", "--preserve-digests",
         f"oci:{args.out.resolve()}:{args.tag}", f"docker://{ref}"],
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        print(f"build_plugin_image.py: cannot push to {host} (is the demo registry up? make run):\n{result.stdout}", file=sys.stderr)
        return 1
    print(f"pushed         {ref}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
