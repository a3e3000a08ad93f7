"""The stack's servers: Distribution, the nginx mirrors, Envoy and a private containerd, each a
`ManagedProcess` that writes its own config and says when it is ready."""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from stacklib.paths import DEFAULT_ENVOY
from stacklib.probes import LOOPBACK, http_request, http_status, tcp_accepts
from stacklib.process import ManagedProcess, run_command


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
