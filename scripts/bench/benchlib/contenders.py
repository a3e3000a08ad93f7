"""The contenders of scripts/bench/compare.py: Envoy alone, a no-op wasm filter, a Lua filter,
blobsteer (plain and tuned) and nginx, each pinned to the server CPU, with their configs made
from the same filter config; and the nginx upstream they all proxy to."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import random
import re
import string
import sys
from collections.abc import Sequence
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[2]
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import stack as stk  # noqa: E402
from benchlib.common import BenchError  # noqa: E402
from benchlib.compare_content import (  # noqa: E402
    Content, INDEX_PATH, MANIFEST_PATH, OCI_INDEX, OCI_MANIFEST, sha256,
)
from benchlib.configs import FilterConfig  # noqa: E402

ENVOY_TEMPLATE = stk.ENVOY_DIR / "compare.yaml.in"
LUA_TEMPLATE = stk.ENVOY_DIR / "bench-steer.lua.in"

TABLES = ("demo", "full")  # A and B
# Every server under test runs on one CPU, the load generator, the upstream and this script on
# another (taskset): the scheduler moving them about was most of the noise between rounds.
SERVER_CPU, LOAD_CPU = 0, 1
THROUGHPUT_CONNECTIONS = 16
LATENCY_CONNECTIONS = 1
STARTUP_TIMEOUT = 60.0
FLOOR_HOST = "mirror.example"  # the route redirect's fixed host (envoy/compare.yaml.in)

# Envoy settings that make every request cheaper; measured on blobsteer as `blobsteer-tuned`.
HCM_TUNING = {
    # A UUID per request (x-request-id) costs a random draw and formatting; nothing here uses it.
    "generate_request_id": False,
    # No `server` header written into every answer (nginx writes its own; a redirect needs none).
    "server_header_transformation": "PASS_THROUGH",
}


def free_ports(count: int) -> list[int]:
    """`count` consecutive ports free now, below the ephemeral range (see stack.Ports.free)."""
    ephemeral_low = stk.ephemeral_port_low()
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(12000, max(13000, ephemeral_low - count - 100), 100)
        ports = list(range(base, base + count))
        if all(map(stk.port_is_free, ports)):
            return ports
    raise BenchError(f"no {count} free consecutive ports found below the ephemeral range")


def pinned(cpu: int, argv: list[str]) -> list[str]:
    """`argv` run on CPU `cpu` only (taskset execs it: the PID stays the program's)."""
    return ["taskset", "-c", str(cpu), *argv]


class PinnedEnvoy(stk.EnvoyProcess):
    """An EnvoyProcess whose every thread runs on SERVER_CPU."""

    def command(self) -> list[str]:
        """Envoy's command line, pinned."""
        return pinned(SERVER_CPU, super().command())


class NginxServer(stk.ManagedProcess):
    """nginx with one worker running `config` (its `http` block's contents) on CPU `cpu`,
    logging errors to `<run_dir>/<name>.log`; ready when it answers on `port`."""

    def __init__(self, name: str, run_dir: Path, http_block: str, port: int, cpu: int):
        super().__init__(name, run_dir, run_dir / f"{name}.log")
        self.http_block = http_block
        self.port = port
        self.cpu = cpu

    def command(self) -> list[str]:
        """Write `<name>.conf`."""
        prefix = self.run_dir / self.name
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        # As root, workers would drop to `nobody`, who may not read a private run dir.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temp_paths = "".join(
            f"  {kind}_temp_path {prefix}/tmp/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        config = (
            f"{user}daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
            f"error_log {self.log_path} warn;\n"
            "events { worker_connections 4096; }\n"
            f"http {{\n  access_log off;\n{temp_paths}{self.http_block}}}\n"
        )
        path = self.run_dir / f"{self.name}.conf"
        path.write_text(config)
        return pinned(self.cpu, ["nginx", "-p", str(prefix), "-c", str(path), "-e", str(self.log_path)])

    def ready(self) -> bool:
        """Something answers HTTP on the port."""
        return stk.http_status(self.port, "/-/ready") is not None


def upstream_http_block(root: Path, port: int, content: Content) -> str:
    """The upstream: the small blob, the manifest, the index and its children, as a registry
    serves them (content type and Docker-Content-Digest by path), from files under `root`."""
    return (
        "  types { }\n  sendfile on;\n  keepalive_requests 1000000;\n"
        "  server {\n"
        f"    listen {stk.LOOPBACK}:{port};\n"
        f"    root {root};\n"
        "    location = /-/ready { return 200 \"ok\\n\"; }\n"
        '    location ~ "^/v2/bench/small/blobs/sha256:[0-9a-f]{64}$" {\n'
        "      default_type application/octet-stream; alias " + f"{root}/blob;\n    }}\n"
        f"    location = {MANIFEST_PATH} {{\n"
        f"      default_type {OCI_MANIFEST}; alias {root}/manifest.json;\n"
        f"      add_header Docker-Content-Digest {sha256(content.manifest)};\n    }}\n"
        f"    location = {INDEX_PATH} {{\n"
        f"      default_type {OCI_INDEX}; alias {root}/index.json;\n"
        f"      add_header Docker-Content-Digest {sha256(content.index)};\n    }}\n"
        '    location ~ "^/v2/bench/index/manifests/sha256:(?<child>[0-9a-f]{64})$" {\n'
        f"      default_type {OCI_MANIFEST}; alias {root}/children/$child;\n"
        "      add_header Docker-Content-Digest sha256:$child;\n    }\n"
        "    location / { return 404; }\n"
        "  }\n"
    )


def nginx_location(template: str) -> str:
    """A blob_url template as an nginx string over the blob location's captures."""
    values = {
        "digest": "$steer_digest",
        "algorithm": "sha256",
        "encoded": "$steer_encoded",
        "repository": "$steer_repo",
    }
    return re.sub(r"\{(\w+)\}", lambda m: values[m[1]], template)


EMPTY = '""'  # nginx's empty string: a non-routable prefix names no backend


def nginx_geo_http_block(config: FilterConfig, port: int, upstream_port: int) -> str:
    """nginx doing blobsteer's blob redirect from the same table: a `geo` map of the client
    (the last x-forwarded-for address, as blobsteer with 0 trusted hops: `proxy` trusts the
    benchmark's loopback connections) to its backend, `return 307` to the backend's blob URL;
    everything else proxied to the upstream over kept-alive connections, as Envoy does."""
    geo = []
    for (version, length), table in sorted(config.prefixes.items()):
        for network, backend in sorted(table.items()):
            address = ipaddress.IPv4Address(network) if version == 4 else ipaddress.IPv6Address(network)
            geo.append(f"    {address}/{length} {backend or EMPTY};\n")
    locations = "".join(
        f"    {name} \"{nginx_location(template)}\";\n"
        for name, template in sorted(config.blob_urls.items())
    )
    proxy = (
        "proxy_pass http://upstream; proxy_http_version 1.1; proxy_set_header Connection \"\";"
    )
    return (
        "  types { }\n  default_type application/octet-stream;\n"
        # Envoy has no limit of requests per downstream connection; nginx's default is 1000.
        "  keepalive_requests 1000000;\n"
        f"  upstream upstream {{ server {stk.LOOPBACK}:{upstream_port}; keepalive 64; }}\n"
        "  geo $steer_backend {\n    proxy 127.0.0.1;\n    default \"\";\n"
        + "".join(geo)
        + "  }\n"
        "  map $steer_backend $steer_location {\n    default \"\";\n"
        + locations
        + "  }\n"
        "  server {\n"
        f"    listen {stk.LOOPBACK}:{port};\n"
        "    location ~ \"^/v2/(?<steer_repo>.+)/blobs/(?<steer_digest>sha256:"
        "(?<steer_encoded>[0-9a-f]{64}))$\" {\n"
        "      if ($steer_location) { return 307 $steer_location; }\n"
        f"      {proxy}\n    }}\n"
        f"    location / {{ {proxy} }}\n"
        "  }\n"
    )


def lua_source(config: FilterConfig) -> str:
    """envoy/bench-steer.lua.in rendered with `config`'s table and templates."""
    names = sorted(config.blob_urls)
    index = {name: i + 1 for i, name in enumerate(names)}
    data = []
    for (version, length), table in sorted(config.prefixes.items()):
        for network, backend in sorted(table.items()):
            value = index[backend] if backend else 0
            if version == 4:
                data.append(f"4 {length} {network >> (32 - length)} {value}")
            else:
                if length == 0:
                    raise BenchError("::/0 cannot be written in the Lua filter's data")
                data.append(f"6 {length} {format(network, '0128b')[:length]} {value}")
    templates = "\n".join(f"  [{index[n]}] = {json.dumps(config.blob_urls[n])}," for n in names)
    return string.Template(LUA_TEMPLATE.read_text()).substitute(
        TRUSTED_HOPS=config.xff_num_trusted_hops,
        STATUS=307,
        TEMPLATES=templates,
        DATA="\n".join(data),
    )


def wasm_filter(name: str, wasm: Path, configuration: str | None) -> dict:
    """An envoy.filters.http.wasm entry, as in envoy/demo.yaml.in."""
    config: dict = {
        "name": name,
        "root_id": name,
        "vm_config": {
            "vm_id": name,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(wasm)}},
        },
        "failure_policy": "FAIL_OPEN",
        "allow_on_headers_stop_iteration": True,
    }
    if configuration is not None:
        config["configuration"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": configuration,
        }
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": config,
        },
    }


def lua_filter(source: str) -> dict:
    """An envoy.filters.http.lua entry running `source`."""
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": source},
        },
    }


def envoy_config(
    ports: tuple[int, int], upstream_port: int, filters: Sequence[dict], tuning: dict
) -> str:
    """envoy/compare.yaml.in with `filters` before the router (YAML flow style is JSON)."""
    listener, admin = ports
    return stk.render_template(
        ENVOY_TEMPLATE,
        {
            "ADMIN_PORT": admin,
            "LISTENER_PORT": listener,
            "UPSTREAM_PORT": upstream_port,
            "HTTP_FILTERS": "".join(f"\n          - {json.dumps(f)}" for f in filters),
            "HCM_TUNING": "".join(f"\n          {k}: {json.dumps(v)}" for k, v in tuning.items()),
        },
    )


@dataclasses.dataclass
class Contender:
    """One server under test: what it is, the table it holds, the scenarios it takes."""

    name: str
    kind: str  # envoy, noop-wasm, lua, blobsteer, blobsteer-tuned, nginx
    table: str | None  # demo, full, or None when the contender has no table
    scenarios: tuple[str, ...]
    server: stk.ManagedProcess
    port: int
    admin_port: int | None = None  # Envoy only

    @property
    def is_envoy(self) -> bool:
        """Whether Envoy (admin stats to check) rather than nginx."""
        return self.admin_port is not None


def contenders(
    args: argparse.Namespace,
    run_dir: Path,
    configs: dict[str, FilterConfig],
    upstream_port: int,
) -> list[Contender]:
    """Every contender, unstarted, each with ports of its own."""
    plan: list[tuple[str, str, str | None, tuple[str, ...]]] = [
        ("envoy", "envoy", None, ("redirect", "passthrough", "manifest", "index")),
        ("noop-wasm", "noop-wasm", None, ("redirect", "passthrough", "manifest", "index")),
    ]
    for table in TABLES:
        plan += [
            (f"lua-{table}", "lua", table, ("redirect", "passthrough")),
            (f"blobsteer-{table}", "blobsteer", table,
             ("redirect", "passthrough", "manifest", "index")),
            (f"blobsteer-tuned-{table}", "blobsteer-tuned", table, ("redirect",)),
            (f"nginx-{table}", "nginx", table, ("redirect", "passthrough")),
        ]  # fmt: skip
    ports = iter(free_ports(2 * len(plan)))
    made = []
    for name, kind, table, taken in plan:
        listener, admin = next(ports), next(ports)
        directory = run_dir / name
        if kind == "nginx":
            block = nginx_geo_http_block(configs[table], listener, upstream_port)
            server: stk.ManagedProcess = NginxServer(name, directory, block, listener, SERVER_CPU)
            made.append(Contender(name, kind, table, taken, server, listener))
            continue
        filters = []
        if kind == "noop-wasm":
            filters = [wasm_filter("noop", args.noop_wasm, None)]
        elif kind == "lua":
            filters = [lua_filter(lua_source(configs[table]))]
        elif kind.startswith("blobsteer"):
            filters = [wasm_filter("blobsteer", args.wasm, configs[table].text)]
        tuning = HCM_TUNING if kind.endswith("-tuned") else {}
        text = envoy_config((listener, admin), upstream_port, filters, tuning)
        server = PinnedEnvoy(directory, text, admin, [listener], binary=args.envoy)
        made.append(Contender(name, kind, table, taken, server, listener, admin))
    return made
