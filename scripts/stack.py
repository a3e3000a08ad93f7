#!/usr/bin/env python3
"""The blobsteer local stack: a registry, per-region blob mirrors and Envoy with the filter.

Parts, all real programs bound to 127.0.0.1 and started as children of this process:

- registry: Debian's Distribution 2.8 (`docker-registry serve`) with its own config, storage in
  the run directory, seeded with the demo image (scripts/build_demo_image.py) by skopeo;
- mirrors: one nginx serving one directory per backend as `<root>/containers/images/<digest>`,
  the layout of the per-region buckets, every mirror holding every blob of the demo image;
- Envoy: the main listener runs the blobsteer wasm filter in front of the registry; one client
  listener per simulated client location overwrites `x-forwarded-for` and forwards to the main
  listener;
- containerd (tests and `run` only): a private daemon with a fresh root, for `ctr` pulls.

Command line:  stack.py run [--concurrency N] [--run-dir DIR] [--no-filter] [--wasm PATH]
Ports come from BLOBSTEER_* environment variables (see `Ports`).

As a module, `Stack` is the context manager end-to-end tests use. Every server records its PID in
`<run_dir>/<name>.pid` and is stopped by exactly that PID (SIGTERM, then SIGKILL after a
deadline); children run in their own session and get SIGTERM if this process dies
(PR_SET_PDEATHSIG, which Linux sends when the *thread* that started them exits: start stacks
from the main thread). Readiness is always polled against a deadline.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import dataclasses
import functools
import http.client
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from collections.abc import Callable, Iterable, Mapping

SCRIPTS_DIR = Path(__file__).resolve().parent
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import build_demo_image  # noqa: E402  (sibling module, importable however this file is loaded)
import ecds  # noqa: E402

REPO_ROOT = SCRIPTS_DIR.parent
ENVOY_DIR = REPO_ROOT / "envoy"
DEFAULT_WASM = REPO_ROOT / "target" / "wasm32-wasip1" / "release" / "blobsteer.wasm"
CLI = REPO_ROOT / "target" / "release" / "blobsteer"  # `make cli`
DEFAULT_ENVOY = REPO_ROOT / ".venv" / "bin" / "envoy"
DEFAULT_RUN_DIR = REPO_ROOT / ".run" / "demo"
RUN_DIR_MARKER = ".blobsteer-stack"  # `run` wipes only a directory that has it

LOOPBACK = "127.0.0.1"
REPOSITORY = build_demo_image.REPOSITORY
TAG = build_demo_image.TAG
# A node runtime's User-Agent: the filter rewrites manifests for it (`manifests.user_agents`).
RUNTIME_USER_AGENT = "containerd/1.6.20"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05


# ---------------------------------------------------------------------------------------------
# The demo's backends, client locations and ports


@dataclasses.dataclass(frozen=True)
class ClientLocation:
    """A client listener: the x-forwarded-for it sets, the backend the demo filter config maps
    that address to (None: no backend), and its port's offset from the base port."""

    name: str
    xff: str
    backend: str | None
    offset: int


CLIENT_LOCATIONS = (
    ClientLocation("aws-eu-west-3", "15.236.10.20", "aws-eu-west-3", 10),
    ClientLocation("aws-us-east-1", "44.192.1.2", "aws-us-east-1", 11),
    ClientLocation("gcp-europe-north1", "34.88.1.2", "gcp-europe-north1", 12),
    ClientLocation("unmapped", "198.51.100.7", None, 13),  # TEST-NET-2: in no provider's ranges
    ClientLocation("garbage", "not-an-ip", None, 14),
)
# The demo's backends (envoy/demo-filter.json.in), one mirror each: name -> port offset.
MIRROR_OFFSETS = {"aws-eu-west-3": 61, "aws-us-east-1": 62, "gcp-europe-north1": 63}


def _env_word(name: str) -> str:
    return name.upper().replace("-", "_")


def listener_port_variable(location: str) -> str:
    """The environment variable naming a client listener's port."""
    return f"BLOBSTEER_PORT_{_env_word(location)}"


def mirror_port_variable(backend: str) -> str:
    """The environment variable naming a mirror's port."""
    return f"BLOBSTEER_MIRROR_{_env_word(backend)}_PORT"


# The ports that are neither a client listener nor a mirror: variable -> offset from the base.
FIXED_OFFSETS = {
    "BLOBSTEER_ENVOY_PORT": 0,
    "BLOBSTEER_ADMIN_PORT": 1,
    "BLOBSTEER_REGISTRY_PORT": 50,
}
HIGHEST_PORT = 65535
# Offsets from 20 to 49 and from 70 to 75 are the fleet's (scripts/fleet.py).
FLEET_OFFSETS = range(70, 76)
# The highest offset from the base: a base above HIGHEST_PORT minus this leaves no room.
HIGHEST_OFFSET = max(
    *FIXED_OFFSETS.values(),
    *(c.offset for c in CLIENT_LOCATIONS),
    *MIRROR_OFFSETS.values(),
    *FLEET_OFFSETS,
)


class PortInUse(RuntimeError):
    """A port the stack needs is taken (or configured twice)."""


class BadPort(ValueError):
    """A BLOBSTEER_*_PORT variable whose value is not a port the stack can use."""


@dataclasses.dataclass(frozen=True)
class Ports:
    """Every port of the stack, all on 127.0.0.1.

    Defaults derive from BLOBSTEER_BASE_PORT (18000): Envoy main listener +0
    (BLOBSTEER_ENVOY_PORT), admin +1 (BLOBSTEER_ADMIN_PORT), client listeners +10..+14
    (BLOBSTEER_PORT_AWS_EU_WEST_3, ..._AWS_US_EAST_1, ..._GCP_EUROPE_NORTH1, ..._UNMAPPED,
    ..._GARBAGE), registry +50 (BLOBSTEER_REGISTRY_PORT), mirrors +61..+63
    (BLOBSTEER_MIRROR_AWS_EU_WEST_3_PORT, ...). Each variable overrides its own port.
    """

    envoy: int
    admin: int
    registry: int
    listeners: Mapping[str, int]  # client location name -> port
    mirrors: Mapping[str, int]  # backend name -> port

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ports:
        """Ports from `env` (default: os.environ)."""
        env = os.environ if env is None else env
        base = _port_value(env, "BLOBSTEER_BASE_PORT", 18000, highest=HIGHEST_PORT - HIGHEST_OFFSET)

        def port(variable: str, offset: int) -> int:
            return _port_value(env, variable, base + offset)

        return cls(
            envoy=port("BLOBSTEER_ENVOY_PORT", FIXED_OFFSETS["BLOBSTEER_ENVOY_PORT"]),
            admin=port("BLOBSTEER_ADMIN_PORT", FIXED_OFFSETS["BLOBSTEER_ADMIN_PORT"]),
            registry=port("BLOBSTEER_REGISTRY_PORT", FIXED_OFFSETS["BLOBSTEER_REGISTRY_PORT"]),
            listeners={
                c.name: port(listener_port_variable(c.name), c.offset) for c in CLIENT_LOCATIONS
            },
            mirrors={
                name: port(mirror_port_variable(name), offset)
                for name, offset in MIRROR_OFFSETS.items()
            },
        )

    def variables(self) -> dict[str, int]:
        """Every port by the environment variable that sets it."""
        return {
            "BLOBSTEER_ENVOY_PORT": self.envoy,
            "BLOBSTEER_ADMIN_PORT": self.admin,
            **{listener_port_variable(n): p for n, p in self.listeners.items()},
            "BLOBSTEER_REGISTRY_PORT": self.registry,
            **{mirror_port_variable(n): p for n, p in self.mirrors.items()},
        }

    def envoy_variables(self) -> list[str]:
        """The variables of the ports Envoy binds."""
        return ["BLOBSTEER_ENVOY_PORT", "BLOBSTEER_ADMIN_PORT"] + [
            listener_port_variable(n) for n in self.listeners
        ]

    @classmethod
    def free(cls, variables: Iterable[str] | None = None, avoid: Iterable[int] = ()) -> Ports:
        """Ports from a base chosen at random below the kernel's ephemeral range (clients' own
        outgoing connections take ports from there and would race with our listeners), whose
        ports (or those of `variables`) are free right now and not in `avoid`."""
        ephemeral_low = ephemeral_port_low()
        variables = None if variables is None else list(variables)
        avoid = set(avoid)
        rng = random.Random()
        for _ in range(50):
            base = rng.randrange(12000, max(13000, ephemeral_low - 100), 100)
            ports = cls.from_env({"BLOBSTEER_BASE_PORT": str(base)})
            by_variable = ports.variables()
            wanted = {by_variable[v] for v in (by_variable if variables is None else variables)}
            if wanted & avoid:
                continue
            try:
                ports.check_free(variables)
            except PortInUse:
                continue
            return ports
        raise PortInUse("no free range of ports found below the ephemeral range")

    def check_free(self, variables: Iterable[str] | None = None) -> None:
        """Raise PortInUse unless every port (or those of `variables`) can be bound now."""
        by_variable = self.variables()
        seen: dict[int, str] = {}
        for variable, port in by_variable.items():
            if port in seen:
                raise PortInUse(f"port {port} is set for both {seen[port]} and {variable}")
            seen[port] = variable
        for variable in by_variable if variables is None else variables:
            port = by_variable[variable]
            if not port_is_free(port):
                raise PortInUse(
                    f"port {port} ({variable}) is already in use; "
                    f"set BLOBSTEER_BASE_PORT or {variable}"
                )


def _port_value(
    env: Mapping[str, str], variable: str, default: int, highest: int = HIGHEST_PORT
) -> int:
    """`variable`'s port from `env` (unset or empty: `default`); BadPort unless it is a decimal
    number from 1 to `highest` (the base port's `highest` leaves room for every offset)."""
    raw = env.get(variable)
    if raw is None or raw == "":
        return default
    if raw.isascii() and raw.isdigit() and 0 < int(raw) <= highest:
        return int(raw)
    if highest == HIGHEST_PORT:
        raise BadPort(
            f"{variable}={raw!r} is not a TCP port: set it to a number from 1 to {highest}"
        )
    raise BadPort(
        f"{variable}={raw!r} is not a usable base port: set it to a number from 1 to {highest} "
        f"(the stack's ports go up to {HIGHEST_PORT - highest} above it)"
    )


def ephemeral_port_low() -> int:
    """The first port of the kernel's ephemeral range: clients' own outgoing connections take
    ports from there, so a listener chosen at or above it races with them."""
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:`port` can be bound (SO_REUSEADDR, as the servers themselves do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Small helpers: polling, HTTP, logs, templates


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 10.0):
    """Poll `predicate` until it returns something truthy (returned) or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def http_request(
    port: int,
    path: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 request to 127.0.0.1 (no proxy, no redirects): (status, headers, body).
    Header names are as the server sent them; a repeated header keeps its last value."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def http_status(port: int, path: str) -> int | None:
    """The status of `GET path` on 127.0.0.1:`port`, or None when nothing answers."""
    try:
        return http_request(port, path, timeout=1.0)[0]
    except (OSError, http.client.HTTPException):
        return None


def tcp_accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection((LOOPBACK, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def render_template(path: Path, values: Mapping[str, object]) -> str:
    """`path` rendered with string.Template; every placeholder must have a value."""
    return string.Template(path.read_text()).substitute({k: str(v) for k, v in values.items()})


def deep_merge(base: dict, overrides: Mapping) -> dict:
    """A copy of `base` with `overrides` merged in: objects recursively, None deletes a key,
    anything else (lists included) replaces."""
    merged = dict(base)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclasses.dataclass(frozen=True)
class AccessRecord:
    """One request from an access log in the combined format (registry and mirrors)."""

    method: str
    path: str
    status: int
    bytes: int
    user_agent: str


_COMBINED = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>\S+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) '
    r'(?P<bytes>\d+|-) "[^"]*" "(?P<agent>[^"]*)"'
)
# A blob path, with the query the filter marks a client's way back to the registry with.
BLOB_PATH = re.compile(r"^/v2/(?P<name>[^?]+)/blobs/(?P<digest>sha256:[0-9a-f]{64})(?:\?[^?]*)?$")


def read_access_log(path: Path) -> list[AccessRecord]:
    """The requests of a combined-format access log, in order (other lines are skipped)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        match = _COMBINED.match(line)
        if match:
            size = match["bytes"]
            records.append(
                AccessRecord(
                    match["method"],
                    match["path"],
                    int(match["status"]),
                    0 if size == "-" else int(size),
                    match["agent"],
                )
            )
    return records


# ---------------------------------------------------------------------------------------------
# Processes


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: get SIGTERM when the parent dies (or exit if it already has)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


class StartupError(RuntimeError):
    """A server exited or did not become ready in time.

    `returncode` is its exit status (None if it was still running and had to be stopped),
    `log` the tail of its log, `log_path` the whole log.
    """

    def __init__(self, name: str, reason: str, returncode: int | None, log_path: Path):
        self.returncode = returncode
        self.log_path = log_path
        self.log = log_tail(log_path)
        super().__init__(f"{name} {reason}; last lines of {log_path}:\n{self.log}")


class ManagedProcess:
    """A server run as our child in its own session, with a PID file, stopped by its PID.

    Subclasses say how to launch it (`command`, which also writes its config) and when it is
    ready (`ready`).
    """

    def __init__(self, name: str, run_dir: Path, log_path: Path, stdout_path: Path | None = None):
        self.name = name
        self.run_dir = run_dir
        self.log_path = log_path
        self.stdout_path = stdout_path or log_path
        self.pid_path = run_dir / f"{name}.pid"
        self.returncode: int | None = None
        self._proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """Write whatever config the server needs and return its argv."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the server answers."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The PID while started, else None."""
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def exited(self) -> bool:
        """Whether the process was started, was not stopped by us, and has exited."""
        return self._proc is not None and self._proc.poll() is not None

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Start the server and wait until `ready()`; raise StartupError with its log if it
        exits first or is not ready by the deadline (then it is stopped)."""
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        self.returncode = None
        with open(self.stdout_path, "ab") as out, open(self.log_path, "ab") as err:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")
        atexit.register(self.stop)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self._proc.poll() is not None:
                returncode = self.stop()
                raise StartupError(
                    self.name, f"exited with status {returncode}", returncode, self.log_path
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise StartupError(
                    self.name, f"was not ready after {timeout:g}s", None, self.log_path
                )
            time.sleep(POLL_INTERVAL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop the server (SIGTERM to its PID, SIGKILL after `timeout`), reap it and anything
        left in its process group, remove its PID file; return its exit status."""
        proc = self._proc
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Children it left behind: its process group id is its PID (start_new_session).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.pid_path.unlink(missing_ok=True)
        atexit.unregister(self.stop)
        self._proc = None
        self.returncode = proc.returncode
        return self.returncode

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


@dataclasses.dataclass(frozen=True)
class Credentials:
    """A registry user."""

    user: str
    password: str


class RegistryProcess(ManagedProcess):
    """Distribution 2.8 (`docker-registry serve`) with its own config and storage in the run dir.

    Its access log (combined format, written to stdout) goes to `access_log`, its application
    log (logrus text, stderr) to `log_path`. With `credentials`, htpasswd (bcrypt) auth is on.
    With `redirect_to`, the `redirect` storage middleware answers blob GET *and* HEAD with a 307
    to `<redirect_to>/docker/registry/v2/blobs/sha256/<xx>/<hex>/data` (so nothing can be pushed
    while it is on: a client's HEAD before uploading follows the redirect). Both attributes are
    read at each start.
    """

    def __init__(
        self,
        run_dir: Path,
        port: int,
        credentials: Credentials | None = None,
        redirect_to: str | None = None,
    ):
        super().__init__(
            "registry",
            run_dir,
            run_dir / "registry.log",
            stdout_path=run_dir / "registry-access.log",
        )
        self.port = port
        self.credentials = credentials
        self.redirect_to = redirect_to
        self.home = run_dir / "registry"

    @property
    def access_log(self) -> Path:
        """The access log (combined format)."""
        return self.stdout_path

    def command(self) -> list[str]:
        """Write the config (JSON, which Distribution reads as YAML) and the htpasswd file."""
        self.home.mkdir(parents=True, exist_ok=True)
        config: dict = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.home / "data")},
            },
            "http": {"addr": f"{LOOPBACK}:{self.port}", "secret": "blobsteer-demo-secret"},
        }
        if self.credentials:
            htpasswd = self.home / "htpasswd"
            htpasswd.write_text(bcrypt_htpasswd(self.credentials))
            config["auth"] = {"htpasswd": {"realm": "blobsteer-demo", "path": str(htpasswd)}}
        if self.redirect_to:
            config["middleware"] = {
                "storage": [{"name": "redirect", "options": {"baseurl": self.redirect_to}}]
            }
        config_path = self.home / "config.yml"
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        return ["docker-registry", "serve", str(config_path)]

    def ready(self) -> bool:
        """`GET /v2/` answers (401 counts: auth is on)."""
        return http_status(self.port, "/v2/") in (200, 401)


def bcrypt_htpasswd(credentials: Credentials) -> str:
    """An htpasswd line with a bcrypt hash (the only kind Distribution accepts)."""
    line = run_command(["htpasswd", "-nbB", credentials.user, credentials.password]).stdout
    return line.strip() + "\n"


class MirrorsProcess(ManagedProcess):
    """One nginx (`daemon off`, own prefix, config, pid and error log) serving every mirror: a
    `server` per backend on its own port, document root and access log (`combined` format)."""

    def __init__(self, run_dir: Path, ports: Mapping[str, int]):
        super().__init__("mirrors", run_dir, run_dir / "mirrors-error.log")
        self.ports = dict(ports)
        self.prefix = run_dir / "nginx"

    def root(self, name: str) -> Path:
        """The document root of mirror `name` (blobs live under containers/images/)."""
        return self.run_dir / "mirrors" / name

    def blob_path(self, name: str, digest: str) -> Path:
        """Where mirror `name` keeps blob `digest`: `<root>/containers/images/<digest>`."""
        return self.root(name) / "containers" / "images" / digest

    def access_log(self, name: str) -> Path:
        """The access log of mirror `name`."""
        return self.run_dir / f"mirror-{name}-access.log"

    def fault_flag(self, name: str, status: int) -> Path:
        """While this file exists, mirror `name` answers every blob request with `status`."""
        return self.run_dir / "mirrors" / f"{name}.fault-{status}"

    def set_fault(self, name: str, status: int | None) -> None:
        """Make mirror `name` answer every blob request with `status` (403 or 500), or serve
        normally again (None). Takes effect at once: nginx checks the flag file per request."""
        for code in self.FAULTS:
            flag = self.fault_flag(name, code)
            if code == status:
                flag.touch()
            else:
                flag.unlink(missing_ok=True)

    FAULTS = (403, 500)

    def command(self) -> list[str]:
        """Write nginx.conf and create the document roots."""
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        for name in self.ports:
            self.blob_path(name, "x").parent.mkdir(parents=True, exist_ok=True)
        config_path = self.prefix / "nginx.conf"
        config_path.write_text(self._config())
        return ["nginx", "-p", str(self.prefix), "-c", str(config_path), "-e", str(self.log_path)]

    def _config(self) -> str:
        tmp = self.prefix / "tmp"
        # As root, workers would drop to `nobody`, who may not read a private run dir.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        servers = "".join(self._server(name, port) for name, port in self.ports.items())
        return (
            f"{user}daemon off;\nworker_processes 1;\n"
            f"pid {self.prefix / 'nginx.pid'};\nerror_log {self.log_path} notice;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            "  default_type application/octet-stream;\n"
            "  sendfile on;\n"
            "  access_log off;\n"
            f"  client_body_temp_path {tmp}/client;\n  proxy_temp_path {tmp}/proxy;\n"
            f"  fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n"
            f"  scgi_temp_path {tmp}/scgi;\n"
            f"{servers}}}\n"
        )

    def _server(self, name: str, port: int) -> str:
        return (
            "  server {\n"
            f"    listen {LOOPBACK}:{port};\n"
            f"    server_name {name};\n"
            f"    root {self.root(name)};\n"
            f"    access_log {self.access_log(name)} combined;\n"
            '    location = /-/ready { access_log off; return 200 "ok\\n"; }\n'
            "    location /containers/images/ {\n"
            + "".join(
                f"      if (-f {self.fault_flag(name, code)}) {{ return {code}; }}\n"
                for code in self.FAULTS
            )
            + "    }\n"
            "    location / { return 404; }\n"
            "  }\n"
        )

    def ready(self) -> bool:
        """Every mirror answers its readiness probe (which is not access-logged)."""
        return all(http_status(port, "/-/ready") == 200 for port in self.ports.values())


class EnvoyProcess(ManagedProcess):
    """Envoy running `config_text` (written to `<run_dir>/envoy.yaml` at start), logging to
    `<run_dir>/envoy.log`. Ready when admin `/ready` says LIVE and every listener accepts.

    Hot restart is disabled unless `hot_restart` is given (the stack's `envoy_hot_restart`),
    so usually no shared memory or base id is involved and any number of Envoys can run on one
    machine. A config Envoy refuses (such as the filter's `on_configure`
    failing) makes `start` raise StartupError carrying Envoy's exit status and log. The binary
    is `binary`, else $BLOBSTEER_ENVOY, else .venv/bin/envoy.
    """

    def __init__(
        self,
        run_dir: Path,
        config_text: str,
        admin_port: int,
        listener_ports: Iterable[int],
        concurrency: int = 1,
        binary: str | Path | None = None,
        hot_restart: tuple[int, int] | None = None,
    ):
        """`hot_restart` is (base id, restart epoch): Envoy then takes part in a hot restart,
        the epoch-N process handing its listeners to epoch N+1 and draining."""
        epoch = hot_restart[1] if hot_restart else 0
        name = "envoy" if epoch == 0 else f"envoy-epoch{epoch}"
        super().__init__(name, run_dir, run_dir / f"{name}.log")
        self.hot_restart = hot_restart
        self.config_text = config_text
        self.admin_port = admin_port
        self.listener_ports = list(listener_ports)
        self.concurrency = concurrency
        self.binary = Path(binary or os.environ.get("BLOBSTEER_ENVOY") or DEFAULT_ENVOY)
        self.config_path = run_dir / "envoy.yaml"

    def command(self) -> list[str]:
        """Write envoy.yaml."""
        self.config_path.write_text(self.config_text)
        if self.hot_restart:
            base_id, epoch = self.hot_restart
            restart = ["--base-id", str(base_id), "--restart-epoch", str(epoch),
                       "--drain-time-s", "2", "--parent-shutdown-time-s", "4"]  # fmt: skip
        else:
            restart = ["--disable-hot-restart"]
        return [
            str(self.binary),
            "-c", str(self.config_path),
            "--concurrency", str(self.concurrency),
            "--log-level", "info",
            *restart,
            "--file-flush-interval-msec", "100",
        ]  # fmt: skip

    def ready(self) -> bool:
        """Admin `/ready` is LIVE and every listener accepts connections."""
        try:
            status, _, body = http_request(self.admin_port, "/ready", timeout=1.0)
        except (OSError, http.client.HTTPException):
            return False
        return (
            status == 200 and body.strip() == b"LIVE" and all(map(tcp_accepts, self.listener_ports))
        )


class Containerd(ManagedProcess):
    """A private containerd for `ctr` pulls: fresh root and state under `<run_dir>/containerd`
    (wiped at each start), its own socket and config, the CRI plugin and plugins that need the
    host disabled, and content isolated per namespace, so a pull into a new namespace downloads
    every blob again. `with Containerd(run_dir) as ctd: ctd.pull(ref)`.
    """

    DISABLED_PLUGINS = (
        "io.containerd.grpc.v1.cri",
        "io.containerd.internal.v1.opt",
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.tracing.processor.v1.otlp",
    )

    def __init__(self, run_dir: Path, binary: str = "containerd"):
        super().__init__("containerd", Path(run_dir), Path(run_dir) / "containerd.log")
        self.binary = binary
        self.home = self.run_dir / "containerd"
        self.socket = self.home / "containerd.sock"
        if len(str(self.socket).encode()) > 100:  # sun_path holds 108 bytes, ".ttrpc" included
            raise ValueError(f"containerd socket path too long for a unix socket: {self.socket}")
        self._namespaces = itertools.count(1)

    def command(self) -> list[str]:
        """Wipe the home, write config.toml."""
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        config_path = self.home / "config.toml"
        config_path.write_text(
            "version = 2\n"
            f"root = {json.dumps(str(self.home / 'root'))}\n"
            f"state = {json.dumps(str(self.home / 'state'))}\n"
            f"disabled_plugins = {json.dumps(list(self.DISABLED_PLUGINS))}\n"
            "[grpc]\n"
            f"  address = {json.dumps(str(self.socket))}\n"
            '[plugins."io.containerd.metadata.v1.bolt"]\n'
            '  content_sharing_policy = "isolated"\n'
        )
        return [self.binary, "--config", str(config_path)]

    def ready(self) -> bool:
        """The socket accepts connections."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(str(self.socket))
            except OSError:
                return False
        return True

    def ctr_command(self, namespace: str = "default") -> list[str]:
        """The `ctr` prefix that talks to this containerd."""
        return ["ctr", "--address", str(self.socket), "--namespace", namespace]

    def pull(
        self,
        ref: str,
        *,
        namespace: str | None = None,
        platform: str | None = "linux/amd64",
        credentials: Credentials | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess:
        """`ctr images pull --plain-http --snapshotter native` of `ref`: fetch (digests verified),
        unpack (diff_ids verified). A fresh namespace unless one is given, so everything is
        downloaded. `platform=None` pulls all platforms. Output (stdout and stderr) in .stdout;
        raises CommandFailed on failure when `check`."""
        namespace = namespace or f"pull-{next(self._namespaces)}"
        pull = ["images", "pull", "--plain-http", "--snapshotter", "native"]
        argv = self.ctr_command(namespace) + pull
        argv += ["--platform", platform] if platform else ["--all-platforms"]
        if credentials:
            argv += ["--user", f"{credentials.user}:{credentials.password}"]
        return run_command(argv + [ref], check=check, timeout=timeout)


class CommandFailed(RuntimeError):
    """A client command (skopeo, ctr, ...) exited non-zero; `result` holds its output."""

    def __init__(self, result: subprocess.CompletedProcess):
        self.result = result
        command = " ".join(map(str, result.args))
        super().__init__(f"{command} exited with status {result.returncode}:\n{result.stdout}")


def run_command(
    argv: list[str],
    *,
    check: bool = True,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run a client command to completion: stdout and stderr together, as text, in .stdout."""
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )
    if check and result.returncode != 0:
        raise CommandFailed(result)
    return result


def drop_marked_block(text: str, marker: str) -> str:
    """`text` without the lines from `# >>> marker` to `# <<< marker`, both included."""
    name = re.escape(marker)
    block = re.compile(rf"^[ \t]*# >>> {name}\n.*?^[ \t]*# <<< {name}\n", re.MULTILINE | re.DOTALL)
    result, count = block.subn("", text)
    if count != 1:
        raise ValueError(f"expected one block marked {marker!r}, found {count}")
    return result


# ---------------------------------------------------------------------------------------------
# The stack


class Stack:
    """The demo stack; a context manager: `with Stack(tmp_dir) as stack: ...`.

    `start()` checks every port, starts the registry, seeds it and every mirror with the demo
    image, starts the mirrors and Envoy; `stop()` stops whatever runs. The parts can also be
    driven one by one (`start_registry`, `seed`, `start_mirrors`, `start_envoy`, ...).

    Options:
    - `ports`: a `Ports` (default: from the environment);
    - `filter_overrides`: deep-merged into the demo filter config (None as a value deletes);
    - `filter_config_override`: raw filter config text used instead (may be invalid on purpose);
    - `registry_auth`: htpasswd auth on the registry; the user is `credentials`
      (also `registry_user`, `registry_password`);
    - `registry_redirect_to`: the registry's redirect storage middleware base URL (enabled after
      seeding: it would break pushes);
    - `envoy_concurrency`, `wasm_path`, `with_filter` (False: Envoy without the wasm filter),
      `envoy_binary` (default $BLOBSTEER_ENVOY or .venv/bin/envoy);
    - `extra_clusters`: Envoy clusters (YAML list items) added to the config (the fleet's etcd);
    - `live`: the filter's configuration comes from ECDS, a resource file in `live_dir` that
      `deliver_filter_config` replaces (Envoy swaps it without a restart);
    - `wasm_remote`: Envoy fetches the module itself, `vm_config.code.remote` (a mapping with
      `uri`, `cluster` and `sha256`), instead of reading `wasm_path`.
    `filter_overrides`, `filter_config_override`, `envoy_concurrency`, `wasm_path`,
    `with_filter` and `registry_redirect_to` are plain attributes read at each start of their
    part: change one, then `restart_envoy()` or `restart_registry()`.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        ports: Ports | None = None,
        filter_overrides: Mapping | None = None,
        filter_config_override: str | None = None,
        registry_auth: bool = False,
        registry_redirect_to: str | None = None,
        envoy_concurrency: int = 1,
        wasm_path: str | Path = DEFAULT_WASM,
        with_filter: bool = True,
        envoy_binary: str | Path | None = None,
        envoy_hot_restart: bool = False,
        extra_clusters: str = "",
        live: bool = False,
        wasm_remote: Mapping | None = None,
    ):
        self.run_dir = Path(run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / RUN_DIR_MARKER).touch()
        self.ports = ports or Ports.from_env()
        self.filter_overrides = filter_overrides
        self.filter_config_override = filter_config_override
        self.registry_redirect_to = registry_redirect_to
        self.envoy_concurrency = envoy_concurrency
        self.wasm_path = Path(wasm_path).resolve()
        self.with_filter = with_filter
        self.extra_clusters = extra_clusters
        self.live = live
        self.wasm_remote = wasm_remote
        self.live_dir = self.run_dir / "live"
        self.credentials = (
            Credentials("blobsteer", secrets.token_urlsafe(12)) if registry_auth else None
        )
        self.image: build_demo_image.DemoImage | None = None
        self.registry = RegistryProcess(self.run_dir, self.ports.registry, self.credentials)
        self.mirrors = MirrorsProcess(self.run_dir, self.ports.mirrors)
        self.envoy = EnvoyProcess(
            self.run_dir,
            "",
            self.ports.admin,
            [self.ports.envoy, *self.ports.listeners.values()],
            binary=envoy_binary,
            # The main listener's port is unique on the machine: a fine base id.
            hot_restart=(self.ports.envoy, 0) if envoy_hot_restart else None,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Stack:
        """Check the ports and the wasm module, then start and seed everything; on failure stop
        what started."""
        self.ports.check_free()
        self._check_wasm()
        try:
            self.start_registry(redirect=False)
            self.seed()
            if self.registry_redirect_to:
                self.restart_registry()
            self.start_mirrors()
            self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every part that runs (Envoy, mirrors, registry)."""
        for part in (self.envoy, self.mirrors, self.registry):
            part.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def parts(self) -> list[ManagedProcess]:
        """The servers of the stack."""
        return [self.registry, self.mirrors, self.envoy]

    def start_registry(self, redirect: bool = True) -> None:
        """Start the registry (with the redirect middleware if configured and `redirect`)."""
        self.ports.check_free(["BLOBSTEER_REGISTRY_PORT"])
        self.registry.redirect_to = self.registry_redirect_to if redirect else None
        self.registry.start()

    def stop_registry(self) -> None:
        """Stop the registry."""
        self.registry.stop()

    def restart_registry(self, redirect: bool = True) -> None:
        """Stop and start the registry (its storage is kept)."""
        self.stop_registry()
        self.start_registry(redirect)

    def start_mirrors(self) -> None:
        """Start nginx serving every mirror."""
        self.ports.check_free(mirror_port_variable(name) for name in self.ports.mirrors)
        self.mirrors.start()

    def stop_mirrors(self) -> None:
        """Stop nginx."""
        self.mirrors.stop()

    def start_envoy(self) -> None:
        """Render the config from the current options and start Envoy; StartupError (with its
        exit status and log) if Envoy refuses the config or is not ready in time. The access log
        starts empty, so it matches this Envoy's request counters (the last run's is kept as
        `envoy-access.log.prev`)."""
        self._check_wasm()
        self.ports.check_free(self.ports.envoy_variables())
        if self.live and not self.live_resource.exists():
            self.deliver_filter_config(self.filter_config_text())
        if self.envoy_access_log.exists():
            self.envoy_access_log.replace(self.envoy_access_log.with_suffix(".log.prev"))
        self.envoy.config_text = self.envoy_config()
        self.envoy.concurrency = self.envoy_concurrency
        self.envoy.start()

    def _check_wasm(self) -> None:
        if self.with_filter and not self.wasm_path.is_file():
            raise FileNotFoundError(
                f"{self.wasm_path} not found: build it first (make build), "
                "or run without the filter (--no-filter, with_filter=False)"
            )

    def wasm_code(self) -> dict:
        """The filter's `vm_config.code`."""
        if not self.wasm_remote:
            return {"local": {"filename": str(self.wasm_path)}}
        remote = self.wasm_remote
        http_uri = {"uri": remote["uri"], "cluster": remote["cluster"], "timeout": "5s"}
        return {"remote": {"http_uri": http_uri, "sha256": remote["sha256"], "retry_policy": {"num_retries": 1}}}

    @property
    def live_resource(self) -> Path:
        """The ECDS resource file Envoy watches in live mode."""
        return self.live_dir / "blobsteer.json"

    def deliver_filter_config(self, text: str) -> None:
        """Live mode: moves a resource with filter configuration `text` into the watched
        directory (atomically); Envoy swaps it on every worker, or counts it `update_rejected`
        and keeps the previous one."""
        ecds.install(ecds.resource(text, self.wasm_path), self.live_resource)

    def stop_envoy(self) -> int | None:
        """Stop Envoy; its exit status."""
        return self.envoy.stop()

    def restart_envoy(self) -> None:
        """Stop Envoy and start it with the current options."""
        self.stop_envoy()
        self.start_envoy()

    def hot_restart_envoy(self, timeout: float = 30.0) -> None:
        """Envoy's own hot restart (the stack must be made with `envoy_hot_restart=True`): a
        process of the next epoch, with the current options, takes the listeners over while the
        old one drains and exits. Returns once the old one has exited."""
        old = self.envoy
        if not old.hot_restart:
            raise ValueError("this stack's Envoy was not started for hot restart")
        base_id, epoch = old.hot_restart
        new = EnvoyProcess(
            self.run_dir,
            self.envoy_config(),
            old.admin_port,
            old.listener_ports,
            concurrency=self.envoy_concurrency,
            binary=old.binary,
            hot_restart=(base_id, epoch + 1),
        )
        new.start()
        self.envoy = new
        wait_for(old.exited, f"the epoch-{epoch} Envoy to drain and exit", timeout=timeout)
        old.stop()

    # -- content -------------------------------------------------------------------------------

    def seed(self) -> build_demo_image.DemoImage:
        """Build the demo image, push it to the registry with its digests preserved (checked),
        and put every blob in every mirror; returns (and keeps in `image`) what was built."""
        image = build_demo_image.build(self.run_dir / "image")
        build_demo_image.validate(image)
        ref = f"docker://{self.image_ref('registry')}"
        dest_creds = ["--dest-creds", self._creds()] if self.credentials else []
        self.skopeo(
            "copy", "--all", "--preserve-digests", "--dest-tls-verify=false", *dest_creds,
            f"oci:{image.layout}:{TAG}", ref,
        )  # fmt: skip
        pushed = self.registry_manifest_digest(TAG)
        if pushed != image.index.digest:
            raise RuntimeError(f"the registry has {pushed} at {TAG}, built {image.index.digest}")
        for name in self.ports.mirrors:
            for blob in image.blobs:
                target = self.mirror_blob_path(name, blob.digest)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(blob.path, target)
        self.image = image
        return image

    def registry_manifest_digest(self, reference: str) -> str:
        """The digest of the manifest bytes the registry itself serves for `reference`."""
        accept = f"{build_demo_image.MEDIA_INDEX}, {build_demo_image.MEDIA_MANIFEST}"
        headers = {"Accept": accept}
        if self.credentials:
            token = base64.b64encode(self._creds().encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        path = f"/v2/{REPOSITORY}/manifests/{reference}"
        status, _, body = http_request(self.ports.registry, path, headers=headers)
        if status != 200:
            raise RuntimeError(f"GET {path} on the registry answered {status}")
        return build_demo_image.sha256_digest(body)

    # -- clients -------------------------------------------------------------------------------

    def skopeo(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess:
        """Run skopeo with a permissive policy and an auth file of our own (nothing from the
        host's configuration); output in .stdout, CommandFailed on failure when `check`."""
        argv = ["skopeo", "--policy", str(self._skopeo_policy()), *args]
        auth = {"REGISTRY_AUTH_FILE": str(self.run_dir / "skopeo-auth.json")}
        return run_command(argv, check=check, timeout=timeout, env=auth)

    def skopeo_copy(
        self,
        via: str,
        dest_dir: str | Path,
        *,
        credentials: Credentials | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        """Pull the demo image through `via` (see `address`) into `dir:dest_dir`, as skopeo does
        for the host platform (blobs fetched, digests verified)."""
        creds = ["--src-creds", f"{credentials.user}:{credentials.password}"] if credentials else []
        return self.skopeo(
            "copy", "--src-tls-verify=false", *creds,
            f"docker://{self.image_ref(via)}", f"dir:{dest_dir}", check=check,
        )  # fmt: skip

    def _creds(self) -> str:
        return f"{self.credentials.user}:{self.credentials.password}"

    def _skopeo_policy(self) -> Path:
        path = self.run_dir / "skopeo-policy.json"
        if not path.exists():
            path.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        return path

    # -- addresses -----------------------------------------------------------------------------

    @property
    def registry_user(self) -> str | None:
        """The registry user when auth is on."""
        return self.credentials.user if self.credentials else None

    @property
    def registry_password(self) -> str | None:
        """The registry password when auth is on."""
        return self.credentials.password if self.credentials else None

    def port(self, via: str) -> int:
        """The port of `via`: "envoy" (main listener), "admin", "registry", a client location
        (e.g. "aws-eu-west-3", "unmapped", "garbage") or "mirror:<backend>"."""
        if via in ("envoy", "admin", "registry"):
            return getattr(self.ports, via)
        if via.startswith("mirror:"):
            return self.ports.mirrors[via.removeprefix("mirror:")]
        return self.ports.listeners[via]

    def address(self, via: str = "envoy") -> str:
        """`127.0.0.1:<port of via>`."""
        return f"{LOOPBACK}:{self.port(via)}"

    def url(self, via: str = "envoy") -> str:
        """`http://127.0.0.1:<port of via>`."""
        return f"http://{self.address(via)}"

    def image_ref(self, via: str = "envoy", reference: str = TAG) -> str:
        """The demo image reference through `via`; `reference` is a tag or a digest."""
        separator = "@" if reference.startswith("sha256:") else ":"
        return f"{self.address(via)}/{REPOSITORY}{separator}{reference}"

    @property
    def admin_url(self) -> str:
        """Envoy's admin base URL."""
        return self.url("admin")

    def mirror_blob_path(self, name: str, digest: str) -> Path:
        """The file behind `<mirror>/containers/images/<digest>`."""
        return self.mirrors.blob_path(name, digest)

    # -- logs and stats ------------------------------------------------------------------------

    @property
    def registry_log(self) -> Path:
        """The registry's application log (logrus text: one `response completed` per request)."""
        return self.registry.log_path

    @property
    def registry_access_log(self) -> Path:
        """The registry's access log (combined format)."""
        return self.registry.access_log

    def mirror_access_log(self, name: str) -> Path:
        """Mirror `name`'s access log (combined format)."""
        return self.mirrors.access_log(name)

    @property
    def mirrors_error_log(self) -> Path:
        """nginx's error log."""
        return self.mirrors.log_path

    @property
    def envoy_log(self) -> Path:
        """Envoy's own log (stdout and stderr)."""
        return self.envoy.log_path

    @property
    def envoy_access_log(self) -> Path:
        """The main listener's access log: one JSON object per line (see `envoy_requests`)."""
        return self.run_dir / "envoy-access.log"

    def registry_requests(self) -> list[AccessRecord]:
        """Every request the registry answered, in order."""
        return read_access_log(self.registry_access_log)

    def registry_blob_gets(self) -> list[str]:
        """The paths of the blob GETs the registry served itself (2xx: bytes sent, not a 307)."""
        return [
            r.path
            for r in self.registry_requests()
            if r.method == "GET" and BLOB_PATH.match(r.path) and 200 <= r.status < 300
        ]

    def mirror_requests(self, name: str) -> list[AccessRecord]:
        """Every request mirror `name` answered, in order."""
        return read_access_log(self.mirror_access_log(name))

    def envoy_requests(self) -> list[dict]:
        """The main listener's access log records (keys: time, method, path, protocol, status,
        flags, bytes_sent, duration_ms, xff, decision, location, upstream, user_agent; a missing
        value is null). Envoy flushes it every 100 ms: poll with `wait_for`."""
        try:
            lines = self.envoy_access_log.read_text().splitlines(keepends=True)
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.endswith("\n")]

    def stats(self, filter: str | None = None) -> dict[str, int | str]:
        """Envoy's `/stats` (optionally `?filter=<regex>`) as {name: int value, or the raw text
        for histograms}; custom filter metrics appear as `wasmcustom.<name>`."""
        path = "/stats" + (f"?filter={urllib.parse.quote(filter)}" if filter else "")
        status, _, body = http_request(self.ports.admin, path)
        if status != 200:
            raise RuntimeError(f"GET {path} on the admin answered {status}")
        stats: dict[str, int | str] = {}
        for line in body.decode().splitlines():
            name, sep, value = line.partition(": ")
            if sep:
                stats[name] = int(value) if value.isdigit() else value
        return stats

    # -- configs -------------------------------------------------------------------------------

    def filter_config_text(self) -> str:
        """The filter configuration Envoy gets: `filter_config_override`, or the demo's
        (envoy/demo-filter.json.in) with `filter_overrides` deep-merged."""
        if self.filter_config_override is not None:
            return self.filter_config_override
        config = json.loads(
            render_template(ENVOY_DIR / "demo-filter.json.in", self.ports.variables())
        )
        return json.dumps(deep_merge(config, self.filter_overrides or {}), indent=2)

    def envoy_config(self, ports: Ports | None = None, access_log: Path | None = None) -> str:
        """The rendered envoy/demo.yaml.in (without the filter when `with_filter` is False),
        with `extra_clusters`; `ports` and `access_log` give another replica's own."""
        values = {
            **(ports or self.ports).variables(),
            "ENVOY_ACCESS_LOG": access_log or self.envoy_access_log,
            "FILTER_CONFIG": json.dumps(self.filter_config_text()),
            "LIVE_DIR": self.live_dir,
            "WASM_CODE": json.dumps(self.wasm_code()),
        }
        text = render_template(ENVOY_DIR / "demo.yaml.in", values) + self.extra_clusters
        if not self.with_filter or self.live:
            text = drop_marked_block(text, "blobsteer filter")
        if not (self.with_filter and self.live):
            text = drop_marked_block(text, "blobsteer filter from ECDS")
        return text


# ---------------------------------------------------------------------------------------------
# Command line


def live_pid_files(run_dir: Path) -> list[tuple[Path, int]]:
    """The PID files under `run_dir` (a fleet's parts keep theirs in subdirectories) whose
    process still exists."""
    live = []
    for path in sorted(run_dir.rglob("*.pid")):
        try:
            pid = int(path.read_text().strip())
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            continue
        except PermissionError:
            pass
        live.append((path, pid))
    return live


def banner(stack: Stack, containerd: Containerd) -> str:
    """What `run` prints once everything is up."""
    eu = "aws-eu-west-3"
    layer = stack.image.layers["linux/amd64"][1]
    ctr = " ".join(containerd.ctr_command("demo"))
    lines = [
        f"blobsteer demo stack is up (run dir {stack.run_dir})",
        f"  Envoy main listener  {stack.url('envoy')}   (clients send their own x-forwarded-for)",
        f"  Envoy admin          {stack.admin_url}   (/stats, /ready, /logging)",
        f"  registry             {stack.url('registry')}",
        f"  image                {REPOSITORY}:{TAG}, index {stack.image.index.digest}",
    ]
    lines += [f"  mirror {name:<17} {stack.url('mirror:' + name)}" for name in stack.ports.mirrors]
    lines += ["", "Client listeners (x-forwarded-for overwritten, then through the main listener):"]
    lines += [
        f"  {c.name:<18} {stack.address(c.name):<16} x-forwarded-for: {c.xff}"
        for c in CLIENT_LOCATIONS
    ]
    lines += [
        "",
        f"Pull as a client in {eu} (use another listener's port for another location):",
        f"  skopeo copy --src-tls-verify=false docker://{stack.image_ref(eu)} dir:/tmp/hello-{eu}",
        f"  {ctr} images pull --plain-http --snapshotter native {stack.image_ref(eu)}",
        f"  curl -sI {stack.url(eu)}/v2/{REPOSITORY}/blobs/{layer.digest}",
        "  (this containerd keeps content per namespace: a new --namespace downloads again)",
        "",
        "Logs:",
        f"  Envoy {stack.envoy_log}, access {stack.envoy_access_log}",
        f"  registry {stack.registry_log}, access {stack.registry_access_log}",
        f"  mirrors {stack.run_dir}/mirror-<name>-access.log, errors {stack.mirrors_error_log}",
        f"  containerd {containerd.log_path}",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def wait_until_stopped(parts: list[ManagedProcess]) -> ManagedProcess | None:
    """Block until SIGINT/SIGTERM (returns None) or one of `parts` exits (returns it)."""
    signals = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        while True:
            for part in parts:
                if part.exited():
                    return part
            if signal.sigwaitinfo(signals).si_signo != signal.SIGCHLD:
                return None
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def serve_until_stopped(parts: list[ManagedProcess]) -> bool:
    """`run`'s wait: until Ctrl-C or SIGTERM, or until one of `parts` exits (its log's last
    lines printed); whether one did."""
    dead = wait_until_stopped(parts)
    if dead:
        print(f"\n{dead.name} exited unexpectedly; last lines of {dead.log_path}:")
        print(log_tail(dead.log_path))
    print("stopping...", flush=True)
    return dead is not None


def exit_on_sigterm(signum, frame) -> None:
    """A SIGTERM handler that unwinds like Ctrl-C, so every part started is stopped on the way
    out."""
    raise SystemExit(128 + signum)


def run_interruptibly(
    program: str, run: Callable[[], int], errors: tuple[type[BaseException], ...]
) -> int:
    """`run()` with SIGTERM and SIGINT unwinding it (also where a shell's background job ignores
    SIGINT), so every server it started is stopped on the way out; one of `errors` is printed as
    `<program>: <error>` and gives 1, Ctrl-C gives 130."""
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run()
    except errors as err:
        print(f"{program}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def prepare_run_dir(run_dir: Path) -> None:
    """Wipe a previous run's directory, refusing one that is not a stack's or whose processes
    still run."""
    if not run_dir.exists():
        return
    if any(run_dir.iterdir()) and not (run_dir / RUN_DIR_MARKER).exists():
        raise SystemExit(f"{run_dir} is not empty and not a stack's run dir; not wiping it")
    live = live_pid_files(run_dir)
    if live:
        path, pid = live[0]
        raise SystemExit(f"process {pid} from {path} is still running; stop it first")
    shutil.rmtree(run_dir)


def run(args: argparse.Namespace) -> int:
    """`run`: start the whole stack and a containerd, print how to use them, wait, stop."""
    run_dir = args.run_dir.resolve()
    ports = Ports.from_env()
    ports.check_free()
    prepare_run_dir(run_dir)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    stack = Stack(
        run_dir,
        ports=ports,
        envoy_concurrency=args.concurrency,
        wasm_path=args.wasm,
        with_filter=not args.no_filter,
        live=args.live,
    )
    with stack, Containerd(run_dir) as containerd:
        print(banner(stack, containerd), flush=True)
        if args.live:
            print(
                f"\nLive maps: the filter's configuration is the ECDS resource {stack.live_resource};"
                f"\n  swap it: scripts/ecds.py --filter-config FILTER.json --wasm {stack.wasm_path}"
                f" --out {stack.live_resource}",
                flush=True,
            )
        died = serve_until_stopped(stack.parts() + [containerd])
    print("stopped.")
    return 1 if died else 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description="The blobsteer local stack.")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="start everything in the foreground until Ctrl-C")
    run_parser.add_argument("--concurrency", type=int, default=1, help="Envoy worker threads")
    run_parser.add_argument(
        "--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="state and logs (wiped)"
    )
    run_parser.add_argument(
        "--wasm", type=Path, default=DEFAULT_WASM, help="the filter's wasm module"
    )
    run_parser.add_argument(
        "--no-filter", action="store_true", help="Envoy without the wasm filter"
    )
    run_parser.add_argument(
        "--live", action="store_true", help="the filter's configuration from ECDS (a watched file)"
    )
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (BadPort, PortInUse, FileNotFoundError, StartupError, CommandFailed) as err:
        print(f"stack.py: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
