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

The parts live in `scripts/stacklib/` (paths, ports, probes, texts, processes, servers,
supervising a foreground run); this module puts them together, and is what the tests, benches
and the fleet import (`import stack as stk`): the names they use from the parts are here too.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path
from collections.abc import Mapping

SCRIPTS_DIR = Path(__file__).resolve().parent
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import build_demo_image  # noqa: E402  (sibling module, importable however this file is loaded)
import ecds  # noqa: E402
from stacklib.paths import (  # noqa: E402
    DEFAULT_RUN_DIR, DEFAULT_WASM, ENVOY_DIR, RUN_DIR_MARKER,
)
from stacklib.ports import (  # noqa: E402
    CLIENT_LOCATIONS, BadPort, PortInUse, Ports, mirror_port_variable,
)
from stacklib.probes import LOOPBACK, http_request, wait_for  # noqa: E402
from stacklib.process import CommandFailed, ManagedProcess, StartupError, run_command  # noqa: E402
from stacklib.servers import (  # noqa: E402
    Containerd, Credentials, EnvoyProcess, MirrorsProcess, RegistryProcess,
)
from stacklib.supervise import exit_on_sigterm, prepare_run_dir, serve_until_stopped  # noqa: E402
from stacklib.texts import (  # noqa: E402
    BLOB_PATH, AccessRecord, deep_merge, drop_marked_block, read_access_log, render_template,
)

# Used through this module by the tests, benches and the fleet.
from stacklib.paths import CLI, DEFAULT_ENVOY, REPO_ROOT  # noqa: E402, F401
from stacklib.ports import MIRROR_OFFSETS, ephemeral_port_low, port_is_free  # noqa: E402, F401
from stacklib.probes import http_status, tcp_accepts  # noqa: E402, F401
from stacklib.supervise import live_pid_files, run_interruptibly  # noqa: E402, F401

REPOSITORY = build_demo_image.REPOSITORY
TAG = build_demo_image.TAG
# A node runtime's User-Agent: the filter rewrites manifests for it (`manifests.user_agents`).
RUNTIME_USER_AGENT = "containerd/1.6.20"


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
    ]
    if stack.live:
        lines += [
            "",
            f"Live maps: the filter's configuration is the ECDS resource {stack.live_resource};",
            f"  swap it: scripts/ecds.py --filter-config FILTER.json --wasm {stack.wasm_path}"
            f" --out {stack.live_resource}",
        ]
    lines += ["", "Ctrl-C stops everything."]
    return "\n".join(lines)


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
