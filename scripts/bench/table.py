#!/usr/bin/env python3
"""What a full cloud-provider table costs inside Envoy: load time, memory per VM, throughput.

    python3 scripts/bench/table.py --small-config A --full-config B \
        [--rounds N] [--duration S] [--json OUT]
        [--startup-rounds N] [--slice S] [--configs-as-given] [--wasm W] [--envoy E]

Compares the blobsteer filter with a small config (A, e.g. testdata/config/three-backends.json)
and the full one (B: every AWS, GCP and Azure region, ~27,000 prefixes, from `blobsteer
ranges`), in the same run, on a minimal Envoy (envoy/bench.yaml.in) whose only listener runs the
filter in front of a cluster where nothing listens (blob redirects never reach it). Unless
--configs-as-given, A keeps only its table (backends without `cluster`, non_routable) and takes
every other setting from B: a decision header alone costs ~20% of throughput here, and an
existence check sends requests of its own, which would hide the table's own cost.

(a) load: --startup-rounds rounds of A c1, B c1, A c2, B c2 (--concurrency), a fresh Envoy
    each: the time from spawn to admin `/ready` LIVE, and every VM's own "configured in X ms"
    log line (parse, validation and table build, timed by the host clock). Target: under 20 ms,
    checked on the slowest VM of each Envoy (median over runs); also reported: main-thread and
    worker VMs apart, the CPU time of a worker thread until ready, Envoy's bootstrap parse.
(b) memory: in the same runs, after every probe request, VmRSS of the Envoy process (its own
    PID: the .venv wrapper execs Envoy, and measured runs spawn the real binary directly).
    One more VM holding the full table costs [RSS(B,c2) - RSS(B,c1)] - [RSS(A,c2) - RSS(A,c1)]
    (c2 has one more worker VM); a coarser estimate is [RSS(B,c1) - RSS(A,c1)] / VMs at c1.
    Each VM's wasm linear memory, read from /proc/PID/smaps, is the filter's exact share.
    Target: at most 8 MiB per VM.
(d) throughput: --rounds rounds; each starts an Envoy --concurrency 1 per config and loads them
    in turn, A B A B... (B A B A... in even rounds), --slice seconds at a time, --duration
    seconds each in all, with `wrk -t1 -c16 --latency` on loopback: blob GETs (valid sha256
    digests) whose x-forwarded-for cycles through IPv4 and IPv6 clients both configs map. Every
    request is first sent once and must get a 307 to the expected Location (computed here from
    the JSON: longest prefix, non_routable, blob_url template); after each slice wrk's and
    Envoy's counts of non-3xx answers must be 0. Target: median req/s of B at least 95% of A's;
    the 95% interval of the median of paired slices' ratios shows the run's noise floor.

The machine is small and shared, so no single absolute time is a verdict: only medians over
alternating runs and ratios between configs measured in the same run are. The report is
Markdown on stdout (progress on stderr); every raw sample goes to --json. Every Envoy is our
child with its PID in `<run dir>/<config>/envoy.pid`, stopped by that PID (SIGTERM, then SIGKILL
after a deadline) on the way out of each run, also on Ctrl-C, SIGTERM and errors; logs are kept
in the run dir (.run/bench/table). Defaults take about a minute and a half.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import http.client
import ipaddress
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[1]
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import stack as stk  # noqa: E402  (scripts/stack.py: process, port and HTTP helpers)

REPO_ROOT = stk.REPO_ROOT
TEMPLATE = stk.ENVOY_DIR / "bench.yaml.in"
DEFAULT_RUN_DIR = REPO_ROOT / ".run" / "bench" / "table"
RUN_DIR_MARKER = ".blobsteer-bench-table"  # a run wipes only a directory that has it

CONCURRENCIES = (1, 2)
CONFIGURE_TARGET_MS = 20.0
MEMORY_TARGET_MIB = 8.0
THROUGHPUT_TARGET_RATIO = 0.95
WRK_CONNECTIONS = 16
READY_POLL = 0.005  # admin /ready polling while Envoy starts; small against the times measured
STARTUP_TIMEOUT = 60.0
VM_LOG_TIMEOUT = 10.0
TABLE_KEYS = ("backends", "non_routable")  # what the two configs are meant to differ in
TRUSTED_PROXY = "192.0.2.1"  # appended to x-forwarded-for once per trusted hop (TEST-NET-1)
REPOSITORIES = ("library/sample", "kube-apiserver", "sig-storage/csi-provisioner")
ADDRESSES_PER_PREFIX = 4
MAX_CLIENTS_PER_FAMILY = 24  # at most this many IPv4 and as many IPv6 client addresses
# Client addresses every run tries first (the README's examples); more are drawn from the small
# config's prefixes. Only those both configs map to a backend are used.
SEED_ADDRESSES = ("15.236.10.20", "44.192.1.2", "2a05:d012::5", "15.193.1.5")
CONFIGURED = re.compile(
    r"^\[[^\]]*\]\[(?P<tid>\d+)\]\[\w+\]\[wasm\].*? wasm log \S+ \S+: configured in "
    r"(?P<ms>[0-9.]+) ms \((?P<bytes>\d+) bytes\): (?P<summary>.*)$",
    re.MULTILINE,
)


class BenchError(RuntimeError):
    """The benchmark cannot give a trustworthy number (wrong answers, errors under load...)."""


# ---------------------------------------------------------------------------------------------
# Filter configs: what the filter should answer, computed here from the JSON itself


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """A filter config file: its text and a longest-prefix-match model of it."""

    label: str  # "small" or "full"
    path: Path
    text: str
    blob_urls: dict[str, str]  # backend name -> blob_url template
    # (ip version, prefix length) -> {network as int: backend name, or None for non_routable}
    prefixes: dict[tuple[int, int], dict[int, str | None]]

    @classmethod
    def load(cls, label: str, path: Path, text: str | None = None) -> FilterConfig:
        """Index the config in `path` (or `text`, said to come from there): only the keys
        this benchmark needs are read; the filter itself checks them all."""
        text = path.read_text() if text is None else text
        try:
            return cls._index(label, path, text)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise BenchError(
                f"{path}: not a filter config this benchmark can read ({type(err).__name__}: "
                f"{err}); `target/release/blobsteer check {path}` says what is wrong"
            ) from err

    @classmethod
    def _index(cls, label: str, path: Path, text: str) -> FilterConfig:
        data = json.loads(text)
        prefixes: dict[tuple[int, int], dict[int, str | None]] = {}

        def add(cidr: str, backend: str | None) -> None:
            net = ipaddress.ip_network(cidr)
            prefixes.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = (
                backend
            )

        blob_urls = {}
        for backend in data["backends"]:
            blob_urls[backend["name"]] = backend["blob_url"]
            for cidr in backend["cidrs"]:
                add(cidr, backend["name"])
        for cidr in data.get("non_routable", []):
            add(cidr, None)
        return cls(label, path, text, blob_urls, prefixes)

    @property
    def options(self) -> dict:
        """Every top-level setting but the table (`backends`, `non_routable`)."""
        return {k: v for k, v in json.loads(self.text).items() if k not in TABLE_KEYS}

    @property
    def xff_num_trusted_hops(self) -> int:
        """`client_ip.xff_num_trusted_hops` (default 0)."""
        return int(self.options.get("client_ip", {}).get("xff_num_trusted_hops", 0))

    @property
    def prefix_count(self) -> int:
        """Backend and non-routable prefixes together."""
        return sum(map(len, self.prefixes.values()))

    def backend_for(self, address: str) -> str | None:
        """The backend the longest matching prefix names (None: no match, or non-routable)."""
        ip = ipaddress.ip_address(address)
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        bits = ip.max_prefixlen
        value = int(ip)
        for length in range(bits, -1, -1):
            table = self.prefixes.get((ip.version, length))
            if table:
                network = value >> (bits - length) << (bits - length)
                if network in table:
                    return table[network]
        return None

    def location(self, backend: str, repository: str, digest: str) -> str:
        """The Location the filter builds from `backend`'s blob_url template."""
        algorithm, _, encoded = digest.partition(":")
        values = {
            "digest": digest,
            "algorithm": algorithm,
            "encoded": encoded,
            "repository": repository,
        }
        return re.sub(r"\{(\w+)\}", lambda m: values[m[1]], self.blob_urls[backend])


def table_with_options(table_text: str, options: dict) -> str:
    """A config with the table (`backends`, `non_routable`) of `table_text` and every other
    setting from `options`; backends lose their `cluster` (existence checks, which send a
    request of their own to the backend's cluster, are a setting, not the table)."""
    table = json.loads(table_text)
    merged = {key: table[key] for key in TABLE_KEYS if key in table}
    merged["backends"] = [
        {key: value for key, value in backend.items() if key != "cluster"}
        for backend in merged["backends"]
    ]
    merged.update(options)
    return json.dumps(merged, indent=2) + "\n"


def backends_with_clusters(config: FilterConfig) -> list[str]:
    """The backends that name an Envoy cluster (existence checks)."""
    return [b["name"] for b in json.loads(config.text)["backends"] if b.get("cluster")]


def differing_options(a: FilterConfig, b: FilterConfig) -> list[str]:
    """The top-level settings (table aside) that differ between two configs."""
    keys = sorted(set(a.options) | set(b.options))
    return [key for key in keys if a.options.get(key) != b.options.get(key)]


@dataclasses.dataclass(frozen=True)
class BlobRequest:
    """One blob GET of the load: path, client address, and per config the Location expected."""

    repository: str
    digest: str
    client: str  # the client address
    xff: str  # the x-forwarded-for sent: the client, then one address per trusted hop
    expected: dict[str, str]  # config label -> Location

    @property
    def path(self) -> str:
        """`/v2/<repository>/blobs/<digest>`."""
        return f"/v2/{self.repository}/blobs/{self.digest}"


def candidate_addresses(config: FilterConfig, per_prefix: int, seed: int = 7) -> Iterator[str]:
    """The seed addresses, then `per_prefix` pseudo-random addresses inside each backend prefix
    of `config`, prefixes in a shuffled order (deterministic), without repeats."""
    rng = random.Random(seed)
    prefixes = [
        (version, length, network)
        for (version, length), table in sorted(config.prefixes.items())
        for network, backend in sorted(table.items())
        if backend is not None
    ]
    rng.shuffle(prefixes)
    seen = set()
    for address in SEED_ADDRESSES:
        seen.add(address)
        yield address
    for version, length, network in prefixes:
        bits = 32 if version == 4 else 128
        for _ in range(per_prefix):
            host = rng.randrange(1 << (bits - length)) if length < bits else 0
            address = str(ipaddress.ip_address(network + host))
            if address not in seen:
                seen.add(address)
                yield address


def blob_requests(small: FilterConfig, full: FilterConfig) -> list[BlobRequest]:
    """The request mix: addresses that both configs map to a backend (IPv4 and IPv6 alike),
    each with a repository and a distinct valid sha256 digest. BenchError if either address
    family is missing."""
    hops = {small.xff_num_trusted_hops, full.xff_num_trusted_hops}
    if len(hops) != 1:
        raise BenchError(f"the configs trust different numbers of x-forwarded-for hops: {hops}")
    proxies = [TRUSTED_PROXY] * hops.pop()
    requests = []
    per_family = {4: 0, 6: 0}
    for address in candidate_addresses(small, ADDRESSES_PER_PREFIX):
        family = ipaddress.ip_address(address).version
        if per_family[family] >= MAX_CLIENTS_PER_FAMILY:
            if min(per_family.values()) >= MAX_CLIENTS_PER_FAMILY:
                break
            continue
        backends = {c.label: c.backend_for(address) for c in (small, full)}
        if None in backends.values():
            continue
        per_family[family] += 1
        index = len(requests)
        repository = REPOSITORIES[index % len(REPOSITORIES)]
        digest = "sha256:" + hashlib.sha256(f"blobsteer-bench-{index}".encode()).hexdigest()
        expected = {
            c.label: c.location(backends[c.label], repository, digest) for c in (small, full)
        }
        xff = ", ".join([address, *proxies])
        requests.append(BlobRequest(repository, digest, address, xff, expected))
    versions = {ipaddress.ip_address(r.client).version for r in requests}
    if versions != {4, 6}:
        raise BenchError(
            f"need IPv4 and IPv6 client addresses mapped by both configs, found IPv{versions}"
        )
    return requests


# ---------------------------------------------------------------------------------------------
# Envoy


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


def proc_status_kib(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and VmHWM of `pid` in KiB (/proc/PID/status)."""
    wanted = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in wanted:
            values[name] = int(rest.split()[0])
    return values


def thread_cpu_ms(pid: int) -> dict[str, float]:
    """CPU time so far of each thread of `pid` (ms, from /proc/PID/task/*/schedstat, which
    counts nanoseconds), keyed `<comm>/<tid>`, e.g. `wrk:worker_0/1234`; threads that exit
    meanwhile are skipped."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            comm = (task / "comm").read_text().strip()
            times[f"{comm}/{task.name}"] = int((task / "schedstat").read_text().split()[0]) / 1e6
    return times


def worker_cpu_ms(threads: dict[str, float]) -> list[float]:
    """The CPU times of Envoy's worker threads (`wrk:worker_N`) in `thread_cpu_ms` output."""
    return [ms for name, ms in sorted(threads.items()) if name.startswith("wrk:worker_")]


_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")


def wasm_memories_kib(pid: int) -> list[dict[str, int]]:
    """Each wasm VM's linear memory in `pid`: V8 reserves it as one large range (8 GiB and
    more, guard pages included) and commits the memory's pages read-write at the start of it;
    /proc/PID/smaps shows the committed part as an anonymous rw-p mapping that ends where the
    inaccessible rest begins. Returns [{"size": KiB committed, "rss": KiB resident}]."""
    mappings = []  # [start, end, perms, name, rss KiB]
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        match = _MAPPING.match(line)
        if match:
            mappings.append([int(match[1], 16), int(match[2], 16), match[3], match[4], 0])
        elif line.startswith("Rss:") and mappings:
            mappings[-1][4] = int(line.split()[1])
    by_end = {m[1]: m for m in mappings}
    memories = []
    for start, end, perms, _, _ in mappings:
        if perms == "---p" and end - start >= 4 << 30:
            committed = by_end.get(start)
            if committed and committed[2] == "rw-p" and not committed[3]:
                size = (committed[1] - committed[0]) // 1024
                memories.append({"size": size, "rss": committed[4]})
    return memories


_LOG_TIME = r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]"


def bootstrap_ms(log_path: Path) -> float | None:
    """Milliseconds from Envoy's first log line ("initializing epoch") to the admin listener
    being set up, which follows the bootstrap's parse (the filter config rides in it as a
    string): the log's own timestamps, 1 ms resolution. None if either line is missing."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    start = re.search(_LOG_TIME + r".*initializing epoch", text, re.MULTILINE)
    admin = re.search(_LOG_TIME + r".*admin address:", text, re.MULTILINE)
    if not start or not admin:
        return None
    parse = lambda t: datetime.datetime.strptime(t, "%Y-%m-%d %H:%M:%S.%f")  # noqa: E731
    return (parse(admin[1]) - parse(start[1])).total_seconds() * 1000.0


def configured_lines(log_path: Path) -> list[dict]:
    """Every VM's "configured in X ms" line in an Envoy log: thread id, ms, bytes, summary."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return [
        {
            "tid": int(m["tid"]),
            "ms": float(m["ms"]),
            "bytes": int(m["bytes"]),
            "summary": m["summary"],
        }
        for m in CONFIGURED.finditer(text)
    ]


def stats(admin_port: int, pattern: str) -> dict[str, int]:
    """Envoy counters whose name matches the regex `pattern`."""
    path = "/stats?filter=" + stk.urllib.parse.quote(pattern)
    status, _, body = stk.http_request(admin_port, path)
    if status != 200:
        raise BenchError(f"GET {path} on the admin answered {status}")
    values = {}
    for line in body.decode().splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.isdigit():
            values[name] = int(value)
    return values


def probe(port: int, requests: Sequence[BlobRequest], label: str) -> None:
    """Send every request once; each must get a 307 with the Location expected for `label`
    (else BenchError, naming the first that did not)."""
    for request in requests:
        status, headers, _ = stk.http_request(
            port, request.path, headers={"x-forwarded-for": request.xff, "user-agent": stk.RUNTIME_USER_AGENT}
        )
        location = {k.lower(): v for k, v in headers.items()}.get("location")
        expected = request.expected[label]
        if status != 307 or location != expected:
            raise BenchError(
                f"{label} config: GET {request.path} with x-forwarded-for {request.xff} "
                f"answered {status}, Location {location!r}; expected 307, {expected!r}"
            )


# ---------------------------------------------------------------------------------------------
# (a) + (b): load time and memory


def workers_configured(envoy: BenchEnvoy) -> int:
    """How many VMs of worker threads (any thread but the main one, whose tid is the PID)
    have logged their configuration so far."""
    return sum(vm["tid"] != envoy.pid for vm in configured_lines(envoy.log_path))


def startup_sample(
    bench: Bench, label: str, concurrency: int, round_no: int, requests: Sequence[BlobRequest]
) -> dict:
    """Start Envoy with config `label`, measure spawn-to-LIVE, collect the VMs' configure
    times, warm up with every probe request, read its memory, stop it."""
    tag = f"startup-r{round_no}-{label}-c{concurrency}"
    with bench.envoy(label, concurrency, tag) as envoy:
        ttr = envoy.time_to_ready_ms
        exe = check_envoy_pid(envoy, bench.envoy_binary)
        # The main thread logs its VMs' lines before LIVE; a worker may log just after.
        stk.wait_for(
            lambda: workers_configured(envoy) >= concurrency,
            f"a 'configured in' line from each of {concurrency} workers in {envoy.log_path}",
            timeout=VM_LOG_TIMEOUT,
        )
        threads = thread_cpu_ms(envoy.pid)
        probe(bench.ports[label].listener, requests, label)
        memory = proc_status_kib(envoy.pid)
        wasm_memories = wasm_memories_kib(envoy.pid)
        vms = configured_lines(envoy.log_path)
        pid = envoy.pid
    return {
        "round": round_no,
        "config": label,
        "concurrency": concurrency,
        "pid": pid,
        "exe": str(exe),
        "time_to_ready_ms": ttr,
        "vm_count": len(vms),
        "vm_configure_ms": [vm["ms"] for vm in vms],
        "vm_threads": [vm["tid"] for vm in vms],
        # The main thread's tid is the PID; every other VM is a worker's.
        "vm_on_main_thread": [vm["tid"] == pid for vm in vms],
        "bootstrap_ms": bootstrap_ms(bench.run_dir / f"{tag}.log"),
        "config_bytes": vms[0]["bytes"] if vms else None,
        "summary": vms[0]["summary"] if vms else None,
        "memory_kib": memory,
        "wasm_memories_kib": wasm_memories,
        "thread_cpu_ms_at_ready": threads,
        "process_cpu_ms_at_ready": sum(threads.values()),
        "worker_cpu_ms_at_ready": worker_cpu_ms(threads),
    }


def startup_phase(bench: Bench, rounds: int, requests: Sequence[BlobRequest]) -> list[dict]:
    """`rounds` rounds of small c1, full c1, small c2, full c2."""
    samples = []
    for round_no in range(1, rounds + 1):
        for concurrency in CONCURRENCIES:
            for label in ("small", "full"):
                sample = startup_sample(bench, label, concurrency, round_no, requests)
                samples.append(sample)
                log(
                    f"startup r{round_no} {label:5} c{concurrency}: ready "
                    f"{sample['time_to_ready_ms']:7.1f} ms, {sample['vm_count']} VMs "
                    f"configured in max {max(sample['vm_configure_ms']):6.3f} ms, VmRSS "
                    f"{sample['memory_kib']['VmRSS'] / 1024:6.1f} MiB"
                )
    return samples


# ---------------------------------------------------------------------------------------------
# (d): throughput


def wrk_script(requests: Sequence[tuple[str, str]]) -> str:
    """A wrk Lua script cycling through (path, x-forwarded-for) requests, each formatted once
    in init (wrk.headers, Host included, is set by then, not yet at load)."""
    lines = ["-- generated by scripts/bench", "local requests = {}", "function init(args)"]
    lines += [
        f'  table.insert(requests, wrk.format("GET", "{path}", '
        f'{{["x-forwarded-for"] = "{xff}", ["user-agent"] = "{stk.RUNTIME_USER_AGENT}"}}))'
        for path, xff in requests
    ]
    lines += [
        "end",
        "local i = 0",
        "function request()",
        "  i = i % #requests + 1",
        "  return requests[i]",
        "end",
        "",
    ]
    return "\n".join(lines)


def wrk_command(script: Path, port: int, duration: float) -> list[str]:
    """wrk: one thread, WRK_CONNECTIONS connections, latency distribution."""
    return [
        "wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{duration:g}s", "--latency",
        "-s", str(script), f"http://{stk.LOOPBACK}:{port}/",
    ]  # fmt: skip


_LATENCY_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> dict:
    """Requests/s, request count, latency percentiles (ms), socket errors and wrk's own count
    of non-2xx/3xx answers (wrk counts status >= 400 only) from wrk's output."""
    result: dict = {"latency_ms": {}, "socket_errors": {}, "non_2xx_3xx": 0}
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", output, re.MULTILINE)
    total = re.search(r"^\s+(\d+) requests in ([0-9.]+)(\w+),", output, re.MULTILINE)
    if not rps or not total:
        raise BenchError(f"cannot read wrk's output:\n{output}")
    result["requests_per_s"] = float(rps[1])
    result["requests"] = int(total[1])
    for pct, value, unit in re.findall(
        r"^\s+(\d+)%\s+([0-9.]+)(us|ms|s)\s*$", output, re.MULTILINE
    ):
        result["latency_ms"][f"p{pct}"] = float(value) * _LATENCY_UNITS[unit]
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errors:
        result["socket_errors"] = dict(
            zip(("connect", "read", "write", "timeout"), map(int, errors.groups()))
        )
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non:
        result["non_2xx_3xx"] = int(non[1])
    return result


RQ_STATS = r"^http\.main\.downstream_rq_(completed|1xx|2xx|3xx|4xx|5xx)$"


def load_slice(
    bench: Bench, envoy: BenchEnvoy, label: str, script: Path, seconds: float, where: dict
) -> dict:
    """One wrk run of `seconds` against the running Envoy of `label`, with what Envoy counted
    and the CPU time it spent meanwhile; BenchError if any answer was not a 3xx (by wrk's count
    or by Envoy's counters) or wrk saw socket errors."""
    ports = bench.ports[label]
    before = stats(ports.admin, RQ_STATS)
    cpu_before = thread_cpu_ms(envoy.pid)
    argv = wrk_command(script, ports.listener, seconds)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    cpu_after = thread_cpu_ms(envoy.pid)
    after = stats(ports.admin, RQ_STATS)
    if done.returncode != 0:
        raise BenchError(f"wrk exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    result = parse_wrk(done.stdout)
    delta = {name.rsplit("_", 1)[1]: after.get(name, 0) - before.get(name, 0) for name in after}
    non_3xx = delta.get("completed", 0) - delta.get("3xx", 0)
    cpu_ms = sum(cpu_after.values()) - sum(cpu_before.get(k, 0.0) for k in cpu_after)
    sample = {
        **where,
        "config": label,
        **result,
        "envoy_counts": delta,
        "envoy_non_3xx": non_3xx,
        "envoy_cpu_ms": cpu_ms,
        "envoy_cpu_us_per_request": cpu_ms * 1000 / max(delta.get("completed", 0), 1),
        "wrk_output": done.stdout,
    }
    if result["non_2xx_3xx"] or non_3xx or any(result["socket_errors"].values()):
        raise BenchError(
            f"{label} {where}: wrk saw {result['non_2xx_3xx']} answers >= 400 and socket "
            f"errors {result['socket_errors']}; Envoy counted {non_3xx} non-3xx answers "
            f"({delta}):\n{done.stdout}"
        )
    return sample


def throughput_round(
    bench: Bench,
    round_no: int,
    requests: Sequence[BlobRequest],
    script: Path,
    duration: float,
    slice_s: float,
) -> list[dict]:
    """Start an Envoy (--concurrency 1) per config, probe both, then load them in turn, small,
    full, small, full... (full first in even rounds, so that neither config always goes
    first), `slice_s` seconds at a time, until each had `duration` seconds; an idle Envoy costs
    the loaded one nothing, and short alternations put both configs under the same machine
    conditions. Both are stopped by their PIDs whatever happens."""
    slices = max(1, round(duration / slice_s))
    order = ("small", "full") if round_no % 2 else ("full", "small")
    samples = []
    with contextlib.ExitStack() as stack:
        envoys = {}
        for label in order:
            envoys[label] = stack.enter_context(
                bench.envoy(label, 1, f"throughput-r{round_no}-{label}")
            )
            check_envoy_pid(envoys[label], bench.envoy_binary)
            probe(bench.ports[label].listener, requests, label)
        for slice_no in range(1, slices + 1):
            for label in order:
                where = {"round": round_no, "slice": slice_no}
                samples.append(
                    load_slice(bench, envoys[label], label, script, duration / slices, where)
                )
    return samples


def throughput_phase(
    bench: Bench, rounds: int, duration: float, slice_s: float, requests: Sequence[BlobRequest]
) -> list[dict]:
    """`rounds` rounds of `throughput_round`."""
    script = bench.run_dir / "blobs.lua"
    script.write_text(wrk_script([(r.path, r.xff) for r in requests]))
    samples = []
    for round_no in range(1, rounds + 1):
        done = throughput_round(bench, round_no, requests, script, duration, slice_s)
        samples += done
        rps = {
            label: median([s["requests_per_s"] for s in done if s["config"] == label])
            for label in ("small", "full")
        }
        log(
            f"throughput r{round_no}: median req/s small {rps['small']:8.0f}, full "
            f"{rps['full']:8.0f} (×{rps['full'] / rps['small']:.3f}) over "
            f"{len(done) // 2} slices each"
        )
    return samples


# ---------------------------------------------------------------------------------------------
# Summary and report


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def summarize_startup(startup: list[dict]) -> dict:
    """Medians per config and concurrency of the load-time and memory samples."""
    summary: dict = {}
    for label in ("small", "full"):
        for concurrency in CONCURRENCIES:
            runs = [
                s for s in startup if s["config"] == label and s["concurrency"] == concurrency
            ]
            all_vms = [ms for s in runs for ms in s["vm_configure_ms"]]
            on_main = [
                (ms, main)
                for s in runs
                for ms, main in zip(s["vm_configure_ms"], s["vm_on_main_thread"])
            ]
            summary[f"{label}_c{concurrency}"] = {
                "runs": len(runs),
                "vm_counts": sorted({s["vm_count"] for s in runs}),
                "time_to_ready_ms": median([s["time_to_ready_ms"] for s in runs]),
                "vm_configure_ms_median": median(all_vms),
                "vm_configure_ms_max_per_run_median": median(
                    [max(s["vm_configure_ms"]) for s in runs]
                ),
                "vm_configure_ms_max": max(all_vms) if all_vms else None,
                "main_vm_configure_ms_median": median([ms for ms, main in on_main if main]),
                "worker_vm_configure_ms_median": median(
                    [ms for ms, main in on_main if not main]
                ),
                "bootstrap_ms": median(
                    [s["bootstrap_ms"] for s in runs if s["bootstrap_ms"] is not None]
                ),
                "worker_cpu_ms_median": median(
                    [ms for s in runs for ms in s["worker_cpu_ms_at_ready"]]
                ),
                "process_cpu_ms": median([s["process_cpu_ms_at_ready"] for s in runs]),
                "vmrss_kib": median([s["memory_kib"]["VmRSS"] for s in runs]),
                "wasm_memory_rss_kib_max_per_run_median": median(
                    [max((m["rss"] for m in s["wasm_memories_kib"]), default=0) for s in runs]
                ),
                "wasm_memory_size_kib_max_per_run_median": median(
                    [max((m["size"] for m in s["wasm_memories_kib"]), default=0) for s in runs]
                ),
                "wasm_memory_counts": sorted({len(s["wasm_memories_kib"]) for s in runs}),
                "vms_holding_table": sorted({vms_holding_table(s) for s in runs}),
            }
    for concurrency in CONCURRENCIES:
        small, full = summary[f"small_c{concurrency}"], summary[f"full_c{concurrency}"]
        summary[f"ready_delta_c{concurrency}_ms"] = (
            full["time_to_ready_ms"] - small["time_to_ready_ms"]
        )
    return summary


def vms_holding_table(sample: dict) -> int:
    """How many live wasm memories of a run hold about as much as the largest one: the VMs
    that keep a configuration (a base VM that only serves to clone others stays small)."""
    sizes = [m["rss"] for m in sample["wasm_memories_kib"]]
    return sum(size * 2 >= max(sizes) for size in sizes) if sizes else 0


def summarize_memory(startup: list[dict], st: dict) -> dict:
    """The two per-VM memory estimates, from the medians and round by round, and what the
    first leaves for once-per-Envoy costs. The second divides by the VMs alive at c1 (smaps);
    not all of them hold the table (a base VM that only serves to clone others stays small),
    so it is also given divided by those that do."""
    rss = {key: st[key]["vmrss_kib"] for key in ("small_c1", "small_c2", "full_c1", "full_c2")}
    full_c1 = [s for s in startup if s["config"] == "full" and s["concurrency"] == 1]
    vms_c1 = round(median([len(s["wasm_memories_kib"]) for s in full_c1]))
    holding_c1 = round(median([vms_holding_table(s) for s in full_c1]))
    extra_worker = ((rss["full_c2"] - rss["full_c1"]) - (rss["small_c2"] - rss["small_c1"])) / 1024
    c1_difference = (rss["full_c1"] - rss["small_c1"]) / 1024
    memory = {
        "per_vm_extra_worker_mib": extra_worker,
        "c1_difference_mib": c1_difference,
        "per_vm_c1_difference_mib": c1_difference / vms_c1,
        "per_vm_c1_difference_holding_mib": c1_difference / holding_c1,
        "vms_at_c1": vms_c1,
        "vms_holding_table_at_c1": holding_c1,
        # The full config's extra memory that does not scale with VMs: its bootstrap copies.
        "once_per_envoy_mib": c1_difference - holding_c1 * extra_worker,
        "per_vm_extra_worker_by_round_mib": [],
    }
    for round_no in sorted({s["round"] for s in startup}):
        by = {
            (s["config"], s["concurrency"]): s["memory_kib"]["VmRSS"]
            for s in startup
            if s["round"] == round_no
        }
        if len(by) == 4:  # each round's four runs were back to back
            value = (by["full", 2] - by["full", 1]) - (by["small", 2] - by["small", 1])
            memory["per_vm_extra_worker_by_round_mib"].append(value / 1024)
    return memory


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median of `values`: the order
    statistics k and n+1-k, with k the largest such that P(Binomial(n, 1/2) < k) <= (1 -
    confidence) / 2. With too few values it is (min, max)."""
    ordered = sorted(values)
    n = len(ordered)
    k, tail = 0, 0.0
    while True:
        tail += math.comb(n, k) / 2**n  # P(Binomial(n, 1/2) <= k)
        if tail > (1 - confidence) / 2:
            break
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def summarize_throughput(throughput: list[dict]) -> dict:
    """Medians per config over every slice, the ratio of medians, and the ratio of each
    (round, slice) pair with a confidence interval for its median: the noise floor."""
    summary: dict = {}
    rounds = sorted({s["round"] for s in throughput})
    for label in ("small", "full"):
        runs = [s for s in throughput if s["config"] == label]
        summary[label] = {
            "slices": len(runs),
            "requests_per_s": median([s["requests_per_s"] for s in runs]),
            "p50_ms": median([s["latency_ms"].get("p50") for s in runs]),
            "p99_ms": median([s["latency_ms"].get("p99") for s in runs]),
            "cpu_us_per_request": median([s["envoy_cpu_us_per_request"] for s in runs]),
            "requests_per_s_by_round": [
                median([s["requests_per_s"] for s in runs if s["round"] == r]) for r in rounds
            ],
        }
    summary["ratio"] = ratio(summary["full"]["requests_per_s"], summary["small"]["requests_per_s"])
    pairs: dict[tuple[int, int], dict[str, float]] = {}
    for s in throughput:
        pairs.setdefault((s["round"], s["slice"]), {})[s["config"]] = s["requests_per_s"]
    pair_ratios = [p["full"] / p["small"] for _, p in sorted(pairs.items()) if len(p) == 2]
    summary["pair_ratios"] = pair_ratios
    summary["pair_ratio_median"] = median(pair_ratios)
    summary["pair_ratio_ci95"] = median_interval(pair_ratios) if pair_ratios else None
    summary["ratio_by_round"] = [
        ratio(f, s)
        for f, s in zip(
            summary["full"]["requests_per_s_by_round"], summary["small"]["requests_per_s_by_round"]
        )
    ]
    return summary


def summarize(startup: list[dict], throughput: list[dict]) -> dict:
    """Medians, ratios, estimates and the figures the targets are checked against."""
    st = summarize_startup(startup)
    configure_ms = max(
        st[f"full_c{c}"]["vm_configure_ms_max_per_run_median"] for c in CONCURRENCIES
    )
    memory = summarize_memory(startup, st)
    tp = summarize_throughput(throughput)
    return {
        "startup": st,
        "memory": memory,
        "throughput": tp,
        "verdicts": {
            "configure_ms": configure_ms,
            "configure_pass": configure_ms < CONFIGURE_TARGET_MS,
            "memory_extra_worker_pass": memory["per_vm_extra_worker_mib"] <= MEMORY_TARGET_MIB,
            "memory_c1_difference_pass": memory["per_vm_c1_difference_mib"] <= MEMORY_TARGET_MIB,
            "throughput_pass": tp["ratio"] >= THROUGHPUT_TARGET_RATIO,
        },
    }


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


def machine_info(envoy_binary: Path, wasm: Path) -> dict:
    """Host, CPUs, kernel, load, Envoy version, wasm size and digest."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    version = subprocess.run(
        [str(envoy_binary), "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "loadavg_start": os.getloadavg(),
        "envoy_version": version.split("version:", 1)[-1].strip(),
        "wasm": str(wasm),
        "wasm_bytes": wasm.stat().st_size,
        "wasm_sha256": hashlib.sha256(wasm.read_bytes()).hexdigest(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for the table ("n/a" for None)."""
    return "n/a" if value is None else f"{value:,.{digits}f}"


def fmt_delta(value: float | None, unit: str, digits: int = 1) -> str:
    """A signed difference with its unit ("" for None)."""
    return "" if value is None else f"{value:+,.{digits}f} {unit}"


def fmt_ratio(value: float | None) -> str:
    """×ratio ("" for None)."""
    return "" if value is None else f"×{value:.3f}"


def table_row(*cells: str) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def load_rows(st: dict, verdicts: dict) -> list[str]:
    """Rows for (a): VM counts, configure times, worker CPU, time to ready."""
    rows = []
    for c in CONCURRENCIES:
        sm, fu = st[f"small_c{c}"], st[f"full_c{c}"]
        rows.append(table_row(
            f"VMs configured (log lines) / alive after start (smaps) / holding the table, c{c}",
            "/".join(",".join(map(str, x)) for x in (sm["vm_counts"], sm["wasm_memory_counts"])),
            "/".join(",".join(map(str, x)) for x in (
                fu["vm_counts"], fu["wasm_memory_counts"], fu["vms_holding_table"]
            )),
            "", "", "",
        ))  # fmt: skip
    for c in CONCURRENCIES:
        sm, fu = st[f"small_c{c}"], st[f"full_c{c}"]
        figure = fu["vm_configure_ms_max_per_run_median"]
        rows.append(table_row(
            f"**(a) slowest VM's configure time per Envoy, c{c}** (ms)",
            fmt(sm["vm_configure_ms_max_per_run_median"], 3), fmt(figure, 2),
            fmt_delta(figure - sm["vm_configure_ms_max_per_run_median"], "ms"),
            f"< {CONFIGURE_TARGET_MS:g} ms", verdict(figure < CONFIGURE_TARGET_MS),
        ))  # fmt: skip
    for c in CONCURRENCIES:
        sm, fu = st[f"small_c{c}"], st[f"full_c{c}"]
        rows.append(table_row(
            f"configure time of a main-thread VM / a worker's VM, c{c} (ms)",
            f"{fmt(sm['main_vm_configure_ms_median'], 3)} / "
            f"{fmt(sm['worker_vm_configure_ms_median'], 3)}",
            f"{fmt(fu['main_vm_configure_ms_median'], 2)} / "
            f"{fmt(fu['worker_vm_configure_ms_median'], 2)}",
            "", "", "",
        ))  # fmt: skip
    for c in CONCURRENCIES:
        sm, fu = st[f"small_c{c}"], st[f"full_c{c}"]
        rows.append(table_row(
            f"configure time of any VM, c{c} (ms): max of all runs",
            fmt(sm["vm_configure_ms_max"], 3), fmt(fu["vm_configure_ms_max"], 2), "", "", "",
        ))  # fmt: skip
    for c in CONCURRENCIES:
        sm, fu = st[f"small_c{c}"], st[f"full_c{c}"]
        rows.append(table_row(
            f"CPU time of one worker thread until ready, c{c} (ms)",
            fmt(sm["worker_cpu_ms_median"]), fmt(fu["worker_cpu_ms_median"]),
            fmt_delta(fu["worker_cpu_ms_median"] - sm["worker_cpu_ms_median"], "ms"), "", "",
        ))  # fmt: skip
    for c in CONCURRENCIES:
        sm, fu = st[f"small_c{c}"], st[f"full_c{c}"]
        rows.append(table_row(
            f"spawn to admin /ready LIVE, c{c} (ms)",
            fmt(sm["time_to_ready_ms"]), fmt(fu["time_to_ready_ms"]),
            fmt_delta(st[f"ready_delta_c{c}_ms"], "ms"), "", "",
        ))  # fmt: skip
    sm, fu = st["small_c1"], st["full_c1"]
    if sm["bootstrap_ms"] is not None and fu["bootstrap_ms"] is not None:
        rows.append(table_row(
            "of which Envoy's bootstrap parse, c1 (ms, log timestamps)",
            fmt(sm["bootstrap_ms"], 0), fmt(fu["bootstrap_ms"], 0),
            fmt_delta(fu["bootstrap_ms"] - sm["bootstrap_ms"], "ms", 0), "", "",
        ))  # fmt: skip
    for c in CONCURRENCIES:
        sm, fu = st[f"small_c{c}"], st[f"full_c{c}"]
        rows.append(table_row(
            f"CPU time of the whole Envoy until ready, c{c} (ms)",
            fmt(sm["process_cpu_ms"]), fmt(fu["process_cpu_ms"]),
            fmt_delta(fu["process_cpu_ms"] - sm["process_cpu_ms"], "ms"), "", "",
        ))  # fmt: skip
    return rows


def memory_rows(st: dict, mem: dict) -> list[str]:
    """Rows for (b): RSS, the two per-VM estimates, the wasm linear memories."""
    mib = lambda kib: kib / 1024  # noqa: E731
    rows = []
    for c in CONCURRENCIES:
        sm, fu = st[f"small_c{c}"], st[f"full_c{c}"]
        rows.append(table_row(
            f"Envoy VmRSS after warm-up, c{c} (MiB)",
            fmt(mib(sm["vmrss_kib"])), fmt(mib(fu["vmrss_kib"])),
            fmt_delta(mib(fu["vmrss_kib"] - sm["vmrss_kib"]), "MiB"), "", "",
        ))  # fmt: skip
    extra, c1 = mem["per_vm_extra_worker_mib"], mem["per_vm_c1_difference_mib"]
    rows += [
        table_row(
            "**(b) memory per VM: one more worker**, (full c2 − c1) − (small c2 − c1)",
            "", "", fmt_delta(extra, "MiB", 2), f"≤ {MEMORY_TARGET_MIB:g} MiB",
            verdict(extra <= MEMORY_TARGET_MIB),
        ),
        table_row(
            f"**(b) memory per VM: (full − small) at c1 / {mem['vms_at_c1']} VMs alive** "
            f"(/ {mem['vms_holding_table_at_c1']} holding the table)",
            "", "",
            f"{fmt_delta(c1, 'MiB', 2)} "
            f"({fmt_delta(mem['per_vm_c1_difference_holding_mib'], 'MiB', 2)})",
            f"≤ {MEMORY_TARGET_MIB:g} MiB", verdict(c1 <= MEMORY_TARGET_MIB),
        ),
        table_row(
            f"full's extra memory paid once per Envoy: (full − small) at c1 − "
            f"{mem['vms_holding_table_at_c1']} × one more worker",
            "", "", fmt_delta(mem["once_per_envoy_mib"], "MiB", 2), "", "",
        ),
    ]
    sm, fu = st["small_c2"], st["full_c2"]
    rows.append(table_row(
        "largest wasm linear memory in a VM, resident / committed (MiB, smaps)",
        f"{fmt(mib(sm['wasm_memory_rss_kib_max_per_run_median']), 2)} / "
        f"{fmt(mib(sm['wasm_memory_size_kib_max_per_run_median']), 2)}",
        f"{fmt(mib(fu['wasm_memory_rss_kib_max_per_run_median']), 2)} / "
        f"{fmt(mib(fu['wasm_memory_size_kib_max_per_run_median']), 2)}",
        fmt_delta(
            mib(fu["wasm_memory_rss_kib_max_per_run_median"]
                - sm["wasm_memory_rss_kib_max_per_run_median"]), "MiB", 2,
        ),
        "", "",
    ))  # fmt: skip
    return rows


def throughput_rows(tp: dict) -> list[str]:
    """Rows for (d): requests per second, CPU per request, latency."""
    sm, fu = tp["small"], tp["full"]
    low, high = tp["pair_ratio_ci95"]
    call = verdict(tp["ratio"] >= THROUGHPUT_TARGET_RATIO)
    if low < THROUGHPUT_TARGET_RATIO <= high:
        call += " (inside the noise)"
    return [
        table_row(
            "**(d) blob redirects per second, c1**",
            fmt(sm["requests_per_s"], 0), fmt(fu["requests_per_s"], 0), fmt_ratio(tp["ratio"]),
            f"≥ ×{THROUGHPUT_TARGET_RATIO:g}", call,
        ),
        table_row(
            f"same, median of the {len(tp['pair_ratios'])} (small, full) slice pairs' ratios, "
            "95% interval",
            "", "", f"{fmt_ratio(tp['pair_ratio_median'])} "
            f"({fmt_ratio(tp['pair_ratio_ci95'][0])}–{fmt_ratio(tp['pair_ratio_ci95'][1])})",
            "", "",
        ),
        table_row(
            "Envoy CPU time per request under load (µs)",
            fmt(sm["cpu_us_per_request"], 2), fmt(fu["cpu_us_per_request"], 2),
            fmt_ratio(ratio(fu["cpu_us_per_request"], sm["cpu_us_per_request"])), "", "",
        ),
        table_row(
            "latency p50 under load (ms)", fmt(sm["p50_ms"], 3), fmt(fu["p50_ms"], 3),
            fmt_ratio(ratio(fu["p50_ms"], sm["p50_ms"])), "", "",
        ),
        table_row(
            "latency p99 under load (ms)", fmt(sm["p99_ms"], 3), fmt(fu["p99_ms"], 3),
            fmt_ratio(ratio(fu["p99_ms"], sm["p99_ms"])), "", "",
        ),
    ]


def report(result: dict) -> str:
    """The Markdown section printed at the end."""
    m, s, cfg, cmd = result["machine"], result["summary"], result["configs"], result["commands"]
    st, mem, tp = s["startup"], s["memory"], s["throughput"]
    mix = result["request_mix"]
    small_origin = (
        f"the backends (without `cluster`) and non_routable of `{cfg['small']['path']}` with "
        f"the full config's other settings (they differed in: "
        f"{', '.join(result['settings_from_full'])})"
        if result["settings_from_full"]
        else f"`{cfg['small']['path']}`"
    )
    lines = [
        "### Full provider table in Envoy: load time, memory per VM, throughput",
        "",
        f"- machine: {m['host']}, {m['cpu']}, nproc {m['nproc']}, Linux {m['kernel']}; load "
        f"average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end; "
        f"{m['date']}",
        f"- Envoy {m['envoy_version']}, `{result['envoy_binary']}` (what `.venv/bin/envoy` "
        "execs; every measured PID checked to run it)",
        f"- wasm: `{m['wasm']}`, {m['wasm_bytes']:,} bytes, sha256 {m['wasm_sha256'][:16]}…",
        f"- small config: {small_origin}, {cfg['small']['bytes']:,} bytes: "
        f"{cfg['small']['summary']}",
        f"- full config: `{cfg['full']['path']}`, {cfg['full']['bytes']:,} bytes: "
        f"{cfg['full']['summary']}",
        f"- requests: {mix['count']} blob GETs cycled ({mix['ipv4']} IPv4 and {mix['ipv6']} "
        "IPv6 clients that both configs map, valid sha256 digests), each first sent once and "
        "checked for a 307 and the expected Location",
        f"- command: `{cmd['bench']}`",
        f"- Envoy: `{cmd['envoy']}`",
        f"- load: `{cmd['wrk']}`",
        f"- order: {result['startup_rounds']} rounds of small c1, full c1, small c2, full c2 "
        f"(a, b: a fresh Envoy each), then {result['rounds']} rounds (d) of: an Envoy per "
        f"config, loaded in turn small, full, small, full... (full first in even rounds) "
        f"{result['duration'] / result['slices']:g} s at a time, {result['duration']:g} s "
        f"each in all; {result['envoy_starts']} Envoy starts, {result['elapsed_s']:.0f} s",
        "",
        "| median | small | full | full vs small | target | verdict |",
        "|---|---:|---:|---:|---|---|",
        *load_rows(st, s["verdicts"]),
        *memory_rows(st, mem),
        *throughput_rows(tp),
        "",
        "Per round (median over its slices): redirects/s small "
        + ", ".join(f"{v:,.0f}" for v in tp["small"]["requests_per_s_by_round"])
        + "; full "
        + ", ".join(f"{v:,.0f}" for v in tp["full"]["requests_per_s_by_round"])
        + " (full/small "
        + ", ".join(f"×{r:.3f}" for r in tp["ratio_by_round"])
        + "); memory per extra worker VM "
        + ", ".join(f"{v:+.2f}" for v in mem["per_vm_extra_worker_by_round_mib"])
        + " MiB.",
        "",
        "How to read it: (a) is each VM's own `configured in` figure (JSON parse, validation, "
        "table build; the host's wall clock around them), for the slowest VM of each Envoy, "
        "median over runs. The main thread configures its VMs (one when the listener is "
        "loaded, one for its own thread) before the workers, one after another; the workers "
        "then configure theirs at the same time, so at c2 two VMs share this machine's two "
        "cores. A worker thread's CPU time until ready is a worker's cost without waiting for "
        "a core. Spawn-to-LIVE also holds what one Envoy pays once (its bootstrap, which "
        "carries the filter config as a string, the main thread's VMs, per-backend stats): "
        "context, not the verdict. (b) a VM's wasm linear memory is the filter's own share "
        "(it never shrinks: it is the peak of parse and build). (d) the verdict is the ratio "
        "of the medians over all slices; the 95% interval of the median of the paired "
        "slices' ratios is this run's noise floor: when it holds the target as well, the "
        "verdict says \"inside the noise\" (no difference this run can resolve). Every "
        "answer under load was a 3xx (wrk's and Envoy's counts: 0).",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def log(message: str) -> None:
    """Progress on stderr (stdout carries the report)."""
    print(message, file=sys.stderr, flush=True)


def prepare_run_dir(run_dir: Path) -> Path:
    """An empty run dir: refuses a non-empty directory that is not ours, or one where a PID file
    of a previous run names a live process; otherwise wipes it."""
    run_dir = run_dir.resolve()
    if run_dir.exists():
        if any(run_dir.iterdir()) and not (run_dir / RUN_DIR_MARKER).exists():
            raise BenchError(f"{run_dir} is not empty and not this benchmark's; not wiping it")
        live = [found for d in (run_dir, *run_dir.iterdir()) if d.is_dir()
                for found in stk.live_pid_files(d)]
        if live:
            path, pid = live[0]
            raise BenchError(f"process {pid} from {path} is still running; stop it first")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / RUN_DIR_MARKER).touch()
    return run_dir


def warm_up(bench: Bench, requests: Sequence[BlobRequest]) -> Path:
    """One unmeasured start per config (caches warm, both configs accepted and answering as
    expected) through the Envoy given; returns the executable its PID runs: the .venv wrapper
    execs the real binary, which measured runs then spawn directly, keeping the wrapper's Python
    start-up out of the times."""
    exes = set()
    for label in ("small", "full"):
        with bench.envoy(label, 1, f"warm-up-{label}") as envoy:
            exes.add(check_envoy_pid(envoy, None))
            probe(bench.ports[label].listener, requests, label)
    if len(exes) != 1:
        raise BenchError(f"the Envoy processes ran different executables: {sorted(exes)}")
    return exes.pop()


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """Both phases, then the report (stdout) and the raw samples (--json)."""
    started = time.monotonic()
    for path in (args.small_config, args.full_config, args.wasm, args.envoy, TEMPLATE):
        if not path.is_file():
            hint = " (build it: make wasm)" if path == args.wasm else ""
            raise FileNotFoundError(f"{path} not found{hint}")
    for tool in ("wrk",):
        if not shutil.which(tool):
            raise FileNotFoundError(f"{tool} not found (Debian package {tool})")
    full = FilterConfig.load("full", args.full_config.resolve())
    small = FilterConfig.load("small", args.small_config.resolve())
    if not args.configs_as_given and backends_with_clusters(full):
        raise BenchError(
            f"{full.path}: backends {', '.join(backends_with_clusters(full)[:5])}... name Envoy "
            "clusters (existence checks), which the benchmark Envoy does not have: measure "
            "redirects with a config without `cluster` keys"
        )
    differing = differing_options(small, full)
    if backends_with_clusters(small):
        differing.append("backends[].cluster")
    if differing and not args.configs_as_given:
        # Same filter, same settings, only the table differs: settings such as a decision
        # header cost throughput of their own and would hide (or fake) the table's cost.
        small = FilterConfig.load(
            "small", small.path, table_with_options(small.text, full.options)
        )
    configs = {"small": small, "full": full}
    requests = blob_requests(configs["small"], configs["full"])
    run_dir = prepare_run_dir(args.run_dir)
    bench = Bench(args.envoy, args.wasm.resolve(), run_dir, configs)
    machine = machine_info(args.envoy, args.wasm)
    log(f"run dir {run_dir}; {len(requests)} requests in the mix; warming up")
    bench.envoy_binary = warm_up(bench, requests)
    log(f"Envoy executable: {bench.envoy_binary}")

    startup = startup_phase(bench, args.startup_rounds, requests)
    throughput = throughput_phase(bench, args.rounds, args.duration, args.slice, requests)
    machine["loadavg_end"] = os.getloadavg()

    envoy_argv = [
        "<run dir>/envoy.yaml" if arg.endswith("/envoy.yaml") else arg for arg in bench.argv
    ]
    envoy_argv[envoy_argv.index("--concurrency") + 1] = "{1,2}"
    slices = max(1, round(args.duration / args.slice))
    wrk_argv = wrk_command(
        Path("<run dir>/blobs.lua"), bench.ports["full"].listener, args.duration / slices
    )
    wrk_argv[-1] = "http://127.0.0.1:<listener>/"
    bench_argv = [sys.executable, sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    summaries = {
        label: next(s["summary"] for s in startup if s["config"] == label)
        for label in ("small", "full")
    }
    result = {
        "machine": machine,
        "envoy_binary": str(bench.envoy_binary),
        "commands": {
            "bench": shlex.join(bench_argv),
            "envoy": shlex.join(envoy_argv),
            "wrk": shlex.join(wrk_argv),
        },
        "configs": {
            label: {
                "path": str(c.path),
                "bytes": len(c.text.encode()),
                "prefixes": c.prefix_count,
                "summary": summaries[label],
            }
            for label, c in configs.items()
        },
        "request_mix": {
            "count": len(requests),
            "ipv4": sum(ipaddress.ip_address(r.client).version == 4 for r in requests),
            "ipv6": sum(ipaddress.ip_address(r.client).version == 6 for r in requests),
            "requests": [dataclasses.asdict(r) for r in requests],
        },
        "rounds": args.rounds,
        "startup_rounds": args.startup_rounds,
        "duration": args.duration,
        "slices": slices,
        "envoy_starts": bench.starts,
        "settings_from_full": [] if args.configs_as_given else differing,
        "run_dir": str(run_dir),
        "startup_samples": startup,
        "throughput_samples": throughput,
        "summary": summarize(startup, throughput),
        "elapsed_s": time.monotonic() - started,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        log(f"raw samples written to {args.json}")
    print(report(result))
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Load time, memory per VM and throughput of a full provider table in Envoy, "
        "against a small config, alternating A B A B.",
    )
    parser.add_argument("--small-config", type=Path, required=True, help="the small config (A)")
    parser.add_argument("--full-config", type=Path, required=True, help="the full config (B)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="throughput rounds (default 5)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=5.0,
        help="seconds of load per config and throughput round (default 5)",
    )
    parser.add_argument(
        "--slice",
        type=float,
        default=1.0,
        help="seconds of load before switching to the other config's Envoy (default 1)",
    )
    parser.add_argument(
        "--startup-rounds",
        type=int,
        help="rounds of Envoy starts for load time and memory (default: twice --rounds)",
    )
    parser.add_argument("--json", type=Path, help="write every raw sample here")
    parser.add_argument("--wasm", type=Path, default=stk.DEFAULT_WASM, help="the filter module")
    parser.add_argument(
        "--envoy",
        type=Path,
        default=Path(os.environ.get("BLOBSTEER_ENVOY") or stk.DEFAULT_ENVOY),
        help="Envoy (default $BLOBSTEER_ENVOY or .venv/bin/envoy)",
    )
    parser.add_argument(
        "--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="Envoy configs and logs (wiped)"
    )
    parser.add_argument(
        "--configs-as-given",
        action="store_true",
        help="use the small config's own settings (decision_header, client_ip, blobs...); by "
        "default it gets the full config's, so that only the table differs",
    )
    args = parser.parse_args(argv)
    if args.startup_rounds is None:
        args.startup_rounds = 2 * args.rounds
    if min(args.rounds, args.startup_rounds) < 1 or min(args.duration, args.slice) <= 0:
        parser.error("rounds must be at least 1, --duration and --slice positive")
    return args



def main(argv: Sequence[str] | None = None) -> int:
    """Run both phases and print the report; 0 when measured (PASS or MISS alike)."""
    args = parse_args(argv)
    errors = (BenchError, stk.StartupError, TimeoutError, FileNotFoundError)
    return stk.run_interruptibly("table.py", lambda: run(args, argv), errors)

if __name__ == "__main__":
    sys.exit(main())
