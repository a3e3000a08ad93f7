"""What is read of a running Envoy: memory and CPU from /proc, each wasm VM's linear memory,
its log's timings, its admin stats, and a probe that every request is answered as expected."""

from __future__ import annotations

import contextlib
import datetime
import re
import sys
from collections.abc import Sequence
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[2]
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import stack as stk  # noqa: E402
from benchlib.common import BenchError  # noqa: E402
from benchlib.configs import BlobRequest  # noqa: E402


CONFIGURED = re.compile(
    r"^\[[^\]]*\]\[(?P<tid>\d+)\]\[\w+\]\[wasm\].*? wasm log \S+ \S+: configured in "
    r"(?P<ms>[0-9.]+) ms \((?P<bytes>\d+) bytes\): (?P<summary>.*)$",
    re.MULTILINE,
)


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
