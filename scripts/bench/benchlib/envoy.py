"""The benchmark's Envoy: a minimal config (envoy/bench.yaml.in) per filter config, its ports,
and starting it as our child with its PID checked."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[2]
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import stack as stk  # noqa: E402
from benchlib.common import BenchError  # noqa: E402
from benchlib.configs import FilterConfig  # noqa: E402


TEMPLATE = stk.ENVOY_DIR / "bench.yaml.in"


READY_POLL = 0.005  # admin /ready polling while Envoy starts; small against the times measured
STARTUP_TIMEOUT = 60.0
VM_LOG_TIMEOUT = 10.0


class BenchEnvoy(stk.EnvoyProcess):
    """An EnvoyProcess that also records when it was spawned (`spawned_at`) and when admin
    `/ready` first said LIVE (`live_at`), both time.monotonic(), polling every READY_POLL."""

    argv: list[str] | None = None
    spawned_at: float | None = None
    live_at: float | None = None

    def command(self) -> list[str]:
        """Write envoy.yaml; the spawn clock starts here, just before the process is created."""
        argv = super().command()
        self.argv = argv
        self.spawned_at = time.monotonic()
        self.live_at = None
        return argv

    def ready(self) -> bool:
        """Poll admin `/ready` finely until LIVE (recording the time), then wait until the
        listener accepts; False if Envoy exits or STARTUP_TIMEOUT passes (the caller then
        reports the exit or the timeout with Envoy's log)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while self.alive() and time.monotonic() < deadline:
            if self.live_at is None and admin_live(self.admin_port):
                self.live_at = time.monotonic()
            if self.live_at is not None and all(map(stk.tcp_accepts, self.listener_ports)):
                return True
            time.sleep(READY_POLL)
        return False

    @property
    def time_to_ready_ms(self) -> float:
        """Milliseconds from spawn to LIVE."""
        return (self.live_at - self.spawned_at) * 1000.0


def admin_live(admin_port: int) -> bool:
    """Whether admin `/ready` answers 200 LIVE."""
    try:
        status, _, body = stk.http_request(admin_port, "/ready", timeout=1.0)
    except (OSError, http.client.HTTPException):
        return False
    return status == 200 and body.strip() == b"LIVE"


@dataclasses.dataclass(frozen=True)
class BenchPorts:
    """The ports of one benchmark Envoy, all on 127.0.0.1."""

    listener: int
    admin: int
    upstream: int  # nothing listens here


def free_ports(avoid: Sequence[BenchPorts] = ()) -> BenchPorts:
    """Three ports free right now (see `stack.Ports.free`), none of them one of `avoid`'s
    (ports handed out but not bound yet)."""
    variables = ["BLOBSTEER_ENVOY_PORT", "BLOBSTEER_ADMIN_PORT", "BLOBSTEER_REGISTRY_PORT"]
    taken = {port for ports in avoid for port in dataclasses.astuple(ports)}
    try:
        ports = stk.Ports.free(variables, avoid=taken)
    except stk.PortInUse as err:
        raise BenchError(str(err)) from err
    return BenchPorts(ports.envoy, ports.admin, ports.registry)


def render_envoy_config(config: FilterConfig, ports: BenchPorts, wasm: Path) -> str:
    """envoy/bench.yaml.in with the filter config as one JSON string (its bytes unchanged)."""
    return stk.render_template(
        TEMPLATE,
        {
            "ADMIN_PORT": ports.admin,
            "LISTENER_PORT": ports.listener,
            "UPSTREAM_PORT": ports.upstream,
            "WASM_PATH": wasm,
            "FILTER_CONFIG": json.dumps(config.text),
        },
    )


@dataclasses.dataclass
class Bench:
    """What every Envoy start shares: binary, wasm, run dir, the configs; and, per config, its
    ports and its own directory (its config, PID file and live log), so that an Envoy of each
    config can run at the same time."""

    envoy_binary: Path
    wasm: Path
    run_dir: Path
    configs: dict[str, FilterConfig]
    ports: dict[str, BenchPorts] = dataclasses.field(default_factory=dict)
    starts: int = 0
    argv: list[str] = dataclasses.field(default_factory=list)  # the last Envoy command line

    def __post_init__(self) -> None:
        for label in self.configs:
            self.ports[label] = free_ports(list(self.ports.values()))

    def envoy_config(self, label: str) -> str:
        """The rendered Envoy config for filter config `label`."""
        return render_envoy_config(self.configs[label], self.ports[label], self.wasm)

    @contextlib.contextmanager
    def envoy(self, label: str, concurrency: int, tag: str) -> Iterator[BenchEnvoy]:
        """A running Envoy with filter config `label`, ready (LIVE, listener accepting); stopped
        by its PID on the way out, whatever happens. Its log is kept as `<run dir>/<tag>.log`."""
        ports = self.ports[label]
        if not all(map(stk.port_is_free, dataclasses.astuple(ports))):
            others = [p for other, p in self.ports.items() if other != label]
            self.ports[label] = ports = free_ports(others)  # someone took one since: move
        envoy = BenchEnvoy(
            self.run_dir / label,
            self.envoy_config(label),
            ports.admin,
            [ports.listener],
            concurrency=concurrency,
            binary=self.envoy_binary,
        )
        envoy.log_path.unlink(missing_ok=True)
        self.starts += 1
        try:
            envoy.start(timeout=STARTUP_TIMEOUT)
            self.argv = envoy.argv
            yield envoy
        finally:
            envoy.stop()
            if envoy.log_path.exists():
                envoy.log_path.replace(self.run_dir / f"{tag}.log")


def process_exe(pid: int) -> Path:
    """The executable a PID runs (/proc/PID/exe)."""
    return Path(os.readlink(f"/proc/{pid}/exe"))


def check_envoy_pid(envoy: BenchEnvoy, expected_exe: Path | None) -> Path:
    """The PID we hold must be Envoy itself, not a wrapper (the .venv script execs Envoy);
    BenchError otherwise. Returns the executable."""
    exe = process_exe(envoy.pid)
    if exe.name.startswith("python") or (expected_exe and exe != expected_exe):
        raise BenchError(f"pid {envoy.pid} runs {exe}, not Envoy ({expected_exe or 'envoy'})")
    return exe
