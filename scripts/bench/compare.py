#!/usr/bin/env python3
"""blobsteer side by side with what a user would pick instead, on this machine, in one run.

    python3 scripts/bench/compare.py --small-config A --full-config B --json OUT
        [--rounds N] [--slice S] [--latency-slice S] [--wasm W] [--noop-wasm W] [--envoy E]

Scenarios (every request is sent once and checked before any load, see `probe`):
  redirect     (a) a blob GET from a client the table maps: a 307 to its backend's blob URL
  passthrough  (b) a blob GET from a client it does not map: a 1 KiB blob from the upstream
  manifest     (c) a tag request for an 8-layer OCI image manifest from a mapped client
  index        (d) a tag request for an OCI index of 2 such manifests: blobsteer fetches and
               rewrites both children for every request

Contenders, each its own server with one worker (Envoy --concurrency 1, nginx
worker_processes 1), all started at once and idle but for the one under load:
  envoy            Envoy, no filter: a route redirect (307 to a fixed host) for (a), the
                   router alone for (b)-(d)
  noop-wasm        the same plus a proxy-wasm filter that does nothing (filter/noop), built by
                   the same toolchain: the floor of any wasm filter
  lua-<table>      the same plus an Envoy Lua filter doing blobsteer's blob redirect from the
                   same table (envoy/bench-steer.lua.in)
  blobsteer-<table>  the same plus blobsteer (manifest rewriting on)
  blobsteer-tuned-<table>  blobsteer with every Envoy setting that raised its redirect rate
                   (HCM_TUNING), for (a)
  nginx-<table>    nginx: a `geo` map made from the same table, `return 307` for (a),
                   `proxy_pass` (upstream keepalive) for (b)
<table> is `demo` (A, the three-backend demo config) or `full` (B, every AWS, GCP and Azure
region from ../shared/data). The upstream is nginx serving static files. Every server under test
runs on CPU 0; wrk, the upstream and this script on CPU 1 (taskset).

Each round loads every contender of each scenario in turn (the order reversed every other
round, so drift hits all alike): --slice seconds of `wrk -t1 -c16` (throughput, and latency
under load), then, for (c) and (d), --latency-slice seconds of `wrk -t1 -c1` (the latency of
one request at a time: what a rewrite adds to a request). Many short rounds rather than a few
long ones: this machine's speed drifts by tens of percent within a minute. After each slice the answers are checked: wrk's count
of errors, Envoy's count of 2xx/3xx, blobsteer's own counters (every request redirected,
passed, or rewritten as the scenario says). The CPU time of each server (every thread of its
process group) is read around each slice: CPU per request is the figure least moved by a
shared machine. Every raw sample goes to --json; scripts/bench/report.py turns it into
BENCHMARKS.md. Servers are our children, PID files in the run dir, stopped by PID on the way
out (also on Ctrl-C, SIGTERM and errors).

What is served and asked and the contenders live in scripts/bench/benchlib/ (compare_content,
contenders), beside the parts shared with table.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[1]
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import stack as stk  # noqa: E402
from benchlib.common import (  # noqa: E402
    BenchError, log, machine_info, median, prepare_run_dir, ratio,
)
from benchlib.configs import FilterConfig, blob_requests, table_with_options  # noqa: E402
from benchlib.readings import stats, thread_cpu_ms  # noqa: E402
from benchlib.wrk import parse_wrk, wrk_script  # noqa: E402
from benchlib.compare_content import (  # noqa: E402
    Content, Scenario, UNMAPPED_CLIENTS, scenarios, sha256,
)
from benchlib.contenders import (  # noqa: E402
    Contender, FLOOR_HOST, HCM_TUNING, LATENCY_CONNECTIONS, LOAD_CPU, NginxServer, SERVER_CPU,
    STARTUP_TIMEOUT, TABLES, THROUGHPUT_CONNECTIONS, contenders, free_ports, pinned,
    upstream_http_block,
)

REPO_ROOT = stk.REPO_ROOT
DEFAULT_NOOP_WASM = REPO_ROOT / "target" / "wasm32-wasip1" / "release" / "noop.wasm"
DEFAULT_RUN_DIR = REPO_ROOT / ".run" / "bench" / "compare"
HTTP_CLASSES = ("2xx", "3xx", "4xx", "5xx")


# ---------------------------------------------------------------------------------------------
# Checking answers


def expected_location(contender: Contender, configs: dict, path: str, xff: str) -> str:
    """The Location contender should answer a blob GET of (a) with."""
    if contender.table is None:  # Envoy's route redirect: same path, fixed host
        return f"https://{FLOOR_HOST}{path}"
    config = configs[contender.table]
    match = stk.BLOB_PATH.match(path)
    client = xff.split(",")[-1 - config.xff_num_trusted_hops].strip()
    return config.location(config.backend_for(client), match["name"], match["digest"])


def check_rewrite(body: bytes, headers: dict, original: bytes, urls: str | None) -> str | None:
    """Why a rewritten manifest answer is wrong, or None: its digest header must hash the body,
    which must differ from `original`; every config and layer of an image (`urls` given) must
    carry exactly that URL list's backend prefix."""
    if headers.get("docker-content-digest") != sha256(body):
        return f"Docker-Content-Digest {headers.get('docker-content-digest')} != {sha256(body)}"
    if body == original:
        return "the manifest came back unchanged"
    if urls is not None:
        manifest = json.loads(body)
        for descriptor in [manifest["config"], *manifest["layers"]]:
            got = descriptor.get("urls", [])
            if len(got) != 1 or not got[0].startswith(urls):
                return f"descriptor {descriptor['digest']} has urls {got}, expected {urls}..."
    return None


def probe(contender: Contender, scenario: Scenario, configs: dict, content: Content) -> None:
    """Send each request of the scenario once; BenchError unless every answer is what this
    contender must answer (so that what is measured is the work the scenario names)."""
    rewrites = contender.kind.startswith("blobsteer")
    for path, xff in scenario.requests():
        status, raw_headers, body = stk.http_request(
            contender.port, path, headers={"x-forwarded-for": xff, "user-agent": stk.RUNTIME_USER_AGENT}
        )
        headers = {k.lower(): v for k, v in raw_headers.items()}
        problem = None
        if scenario.name == "redirect":
            expected = expected_location(contender, configs, path, xff)
            if status != 307 or headers.get("location") != expected:
                problem = f"{status}, Location {headers.get('location')!r}; expected 307 {expected!r}"
        elif status != 200:
            problem = f"status {status}"
        elif scenario.name == "passthrough":
            problem = None if body == content.blob else "a body that is not the blob"
        elif not rewrites:
            original = content.manifest if scenario.name == "manifest" else content.index
            problem = None if body == original else "a body that is not the upstream's manifest"
        elif scenario.name == "manifest":
            config = configs[contender.table]
            client = xff.split(",")[-1 - config.xff_num_trusted_hops].strip()
            location = config.location(config.backend_for(client), "bench/image", "sha256:")
            prefix = location.split("sha256:")[0]
            problem = check_rewrite(body, headers, content.manifest, prefix)
        else:
            problem = check_rewrite(body, headers, content.index, None)
            digests = {m["digest"] for m in json.loads(body)["manifests"]}
            if problem is None and digests & set(content.children):
                problem = "the index still names an original child"
        if problem:
            raise BenchError(
                f"{contender.name} ({scenario.letter}) GET {path} with x-forwarded-for {xff}: "
                f"{problem}"
            )


# ---------------------------------------------------------------------------------------------
# Load


def wrk_command(script: Path, port: int, connections: int, seconds: int) -> list[str]:
    """wrk on loopback, on LOAD_CPU: one thread, `connections` connections, latency
    distribution."""
    return pinned(LOAD_CPU, [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
        "-s", str(script), f"http://{stk.LOOPBACK}:{port}/",
    ])  # fmt: skip


def group_cpu_ms(pgid: int) -> float:
    """CPU time so far (ms) of every thread of every process in process group `pgid` (a server
    we started in its own session: Envoy, or nginx's master and worker)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += sum(thread_cpu_ms(int(proc.name)).values())
    return total


def envoy_counters(contender: Contender) -> dict[str, int]:
    """The downstream request counts (and the active-request gauge) and blobsteer's counters."""
    return stats(
        contender.admin_port,
        r"^(http\.main\.downstream_rq_(total|active|completed|2xx|3xx|4xx|5xx)"
        r"|wasmcustom\.blobsteer\.\w+)$",
    )


def settled_counters(contender: Contender) -> dict[str, int]:
    """The counters once no request is active (wrk has closed its connections, and Envoy is
    done with what was in flight), polled with a deadline."""
    return stk.wait_for(
        lambda: (c := envoy_counters(contender))["http.main.downstream_rq_active"] == 0 and c,
        f"{contender.name} to finish its active requests",
        timeout=10.0,
    )


def load_slice(
    contender: Contender, scenario: Scenario, script: Path, connections: int, seconds: int
) -> dict:
    """One wrk run against `contender`; BenchError unless every answer was right by every count
    there is (wrk's errors; Envoy's classes; blobsteer's counter of the scenario's action)."""
    before = settled_counters(contender) if contender.is_envoy else {}
    cpu_before = group_cpu_ms(contender.server.pid)
    argv = wrk_command(script, contender.port, connections, seconds)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    cpu_ms = group_cpu_ms(contender.server.pid) - cpu_before
    if done.returncode != 0:
        raise BenchError(f"wrk exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    result = parse_wrk(done.stdout)
    problems = []
    if result["non_2xx_3xx"] or any(result["socket_errors"].values()):
        problems.append(
            f"wrk saw {result['non_2xx_3xx']} answers >= 400, socket errors "
            f"{result['socket_errors']}"
        )
    counts = {}
    if contender.is_envoy:
        after = settled_counters(contender)
        counts = {k: after[k] - before.get(k, 0) for k in after}
        total = counts.get("http.main.downstream_rq_total", 0)
        answered = sum(counts.get(f"http.main.downstream_rq_{c}", 0) for c in HTTP_CLASSES)
        wanted = counts.get(f"http.main.downstream_rq_{scenario.status_class}", 0)
        # Requests in flight when wrk stops are reset unanswered: at most one per connection.
        if wanted == 0 or wanted != answered or total - answered > connections:
            problems.append(
                f"Envoy answered {wanted} with {scenario.status_class} of {answered} answered, "
                f"{total} received"
            )
        if contender.kind.startswith("blobsteer"):
            # Counted when decided: a rewrite once its answer is ready (a request reset before
            # is not counted), a redirect or a pass when the request arrives.
            acted = counts.get(f"wasmcustom.blobsteer.{scenario.blobsteer_counter}", 0)
            if not wanted <= acted <= total:
                problems.append(
                    f"blobsteer counted {acted} {scenario.blobsteer_counter}, not between the "
                    f"{wanted} answered and the {total} received"
                )
    if problems:
        raise BenchError(
            f"{contender.name} ({scenario.letter}, -c{connections}): {'; '.join(problems)}\n"
            f"{done.stdout}"
        )
    return {
        "contender": contender.name,
        "scenario": scenario.name,
        "connections": connections,
        **{k: result[k] for k in ("requests_per_s", "requests", "latency_ms")},
        "cpu_us_per_request": cpu_ms * 1000 / max(result["requests"], 1),
        "envoy_counts": counts,
    }


def run_rounds(
    args: argparse.Namespace,
    made: list[Contender],
    chosen: dict[str, Scenario],
    scripts: dict[str, Path],
) -> list[dict]:
    """args.rounds rounds: in each, for each scenario, every contender that takes it in turn
    (reversed every other round), a throughput slice then a latency slice each."""
    samples = []
    for round_no in range(1, args.rounds + 1):
        for scenario in chosen.values():
            order = [c for c in made if scenario.name in c.scenarios]
            if round_no % 2 == 0:
                order.reverse()
            loads = [(THROUGHPUT_CONNECTIONS, args.slice)]
            if scenario.one_at_a_time:
                loads.append((LATENCY_CONNECTIONS, args.latency_slice))
            for contender in order:
                for connections, seconds in loads:
                    sample = load_slice(
                        contender, scenario, scripts[scenario.name], connections, seconds
                    )
                    samples.append({"round": round_no, **sample})
            rps = {
                s["contender"]: s["requests_per_s"]
                for s in samples[-len(loads) * len(order):]
                if s["connections"] == THROUGHPUT_CONNECTIONS
            }
            log(
                f"round {round_no} ({scenario.letter}) {scenario.name}: "
                + ", ".join(f"{name} {value:,.0f}/s" for name, value in rps.items())
            )
    return samples


# ---------------------------------------------------------------------------------------------
# Summary


def summarize(samples: list[dict], made: list[Contender], chosen: dict[str, Scenario]) -> dict:
    """Per scenario and contender: medians over rounds of req/s and latency (-c16), latency of
    one request at a time (-c1), CPU per request."""
    summary: dict = {}
    for scenario in chosen.values():
        per: dict = {}
        for contender in made:
            if scenario.name not in contender.scenarios:
                continue
            mine = [
                s for s in samples
                if s["scenario"] == scenario.name and s["contender"] == contender.name
            ]  # fmt: skip
            loaded = [s for s in mine if s["connections"] == THROUGHPUT_CONNECTIONS]
            single = [s for s in mine if s["connections"] == LATENCY_CONNECTIONS]
            per[contender.name] = {
                "kind": contender.kind,
                "table": contender.table,
                "requests_per_s": median([s["requests_per_s"] for s in loaded]),
                "requests_per_s_by_round": [s["requests_per_s"] for s in loaded],
                "p50_ms_c16": median([s["latency_ms"]["p50"] for s in loaded]),
                "p99_ms_c16": median([s["latency_ms"]["p99"] for s in loaded]),
                "p50_ms_c1": median([s["latency_ms"]["p50"] for s in single]) if single else None,
                "p50_ms_c1_by_round": [s["latency_ms"]["p50"] for s in single],
                "cpu_us_per_request": median([s["cpu_us_per_request"] for s in loaded]),
                "rounds": len(loaded),
            }
        summary[scenario.name] = per
    return summary


def paired_ratio(summary: dict, scenario: str, a: str, b: str) -> dict:
    """a's req/s over b's: the ratio of medians, and the ratios of each round (both measured a
    minute apart at most)."""
    first, second = summary[scenario][a], summary[scenario][b]
    by_round = [
        x / y for x, y in zip(first["requests_per_s_by_round"], second["requests_per_s_by_round"])
    ]
    return {
        "ratio": ratio(first["requests_per_s"], second["requests_per_s"]),
        "by_round": by_round,
        "min": min(by_round),
        "max": max(by_round),
    }


def latency_added_us(summary: dict, scenario: str, a: str, b: str) -> dict:
    """a's one-at-a-time median latency minus b's (µs): of medians, and per round."""
    first, second = summary[scenario][a], summary[scenario][b]
    by_round = [
        (x - y) * 1000 for x, y in zip(first["p50_ms_c1_by_round"], second["p50_ms_c1_by_round"])
    ]
    return {
        "added_us": (first["p50_ms_c1"] - second["p50_ms_c1"]) * 1000,
        "by_round": by_round,
        "min": min(by_round),
        "max": max(by_round),
    }


def targets(summary: dict) -> list[dict]:
    """The issue's targets, each with its measured value and whether it is met."""
    found = []

    def target(name: str, measured: dict, key: str, passed: bool, goal: str) -> None:
        found.append({"target": name, "goal": goal, **measured, "value": measured[key],
                      "pass": passed})  # fmt: skip

    for table in TABLES:
        if "redirect" in summary:
            r = paired_ratio(summary, "redirect", f"blobsteer-{table}", "noop-wasm")
            target(f"(a) redirect, {table} table: blobsteer / no-op wasm", r, "ratio",
                   r["ratio"] >= 0.9, ">= 0.90")  # fmt: skip
            r = paired_ratio(summary, "redirect", f"blobsteer-{table}", f"lua-{table}")
            target(f"(a) redirect, {table} table: blobsteer / Lua", r, "ratio", r["ratio"] > 1.0,
                   "> 1.00")  # fmt: skip
            r = paired_ratio(summary, "redirect", f"blobsteer-{table}", f"nginx-{table}")
            target(f"(a) redirect, {table} table: blobsteer / nginx geo", r, "ratio", True,
                   "reported")  # fmt: skip
            r = paired_ratio(summary, "redirect", f"blobsteer-tuned-{table}", f"nginx-{table}")
            target(f"(a) redirect, {table} table: blobsteer tuned / nginx geo", r, "ratio", True,
                   "reported")  # fmt: skip
        if "passthrough" in summary:
            r = paired_ratio(summary, "passthrough", f"blobsteer-{table}", "noop-wasm")
            target(f"(b) pass-through, {table} table: blobsteer / no-op wasm", r, "ratio",
                   r["ratio"] >= 0.95, ">= 0.95")  # fmt: skip
            r = paired_ratio(summary, "passthrough", f"blobsteer-{table}", f"nginx-{table}")
            target(f"(b) pass-through, {table} table: blobsteer / nginx proxy", r, "ratio", True,
                   "reported")  # fmt: skip
        for scenario in ("manifest", "index"):
            if scenario in summary:
                d = latency_added_us(summary, scenario, f"blobsteer-{table}", "envoy")
                letter = "c" if scenario == "manifest" else "d"
                goal = "< 50 µs" if scenario == "manifest" else "reported"
                target(f"({letter}) {scenario} rewrite, {table} table: median latency added "
                       "over Envoy passing it through", d, "added_us",
                       d["added_us"] < 50 or goal == "reported", goal)  # fmt: skip
    return found


# ---------------------------------------------------------------------------------------------
# Run


def bench_configs(small_path: Path, full_path: Path) -> dict[str, FilterConfig]:
    """The two filter configs, each with its own table and the same settings: 0 trusted hops,
    redirect mode, manifest rewriting on, no decision header, no existence checks (a check is a
    request of its own to a mirror, which would measure the mirror)."""
    options = {
        "client_ip": {"xff_num_trusted_hops": 0},
        "blobs": {"mode": "redirect", "redirect_status": 307},
        "manifests": {"rewrite": True},
    }
    configs = {}
    for label, path in zip(TABLES, (small_path, full_path)):
        text = table_with_options(path.read_text(), options)
        configs[label] = FilterConfig.load(label, path.resolve(), text)
    return configs


def start_all(made: list[Contender], upstream: NginxServer) -> None:
    """Start the upstream, then every contender (each waits until it answers)."""
    upstream.start(timeout=STARTUP_TIMEOUT)
    for contender in made:
        log(f"starting {contender.name} on 127.0.0.1:{contender.port}")
        contender.server.start(timeout=STARTUP_TIMEOUT)


def command_lines(made: list[Contender], upstream: NginxServer, run_dir: Path) -> dict:
    """How each kind of server and the load were run (run dir shortened)."""
    def short(argv: Sequence[str]) -> str:
        return shlex.join(argv).replace(str(run_dir), "<run dir>")

    seen = {}
    for contender in made:
        kind = "envoy" if contender.is_envoy else "nginx"
        seen.setdefault(kind, short(contender.server.command()))
    seen["upstream"] = short(upstream.command())
    for connections in (THROUGHPUT_CONNECTIONS, LATENCY_CONNECTIONS):
        argv = wrk_command(Path("<run dir>/<scenario>.lua"), 0, connections, 0)
        seen[f"wrk_c{connections}"] = shlex.join(argv).replace(":0/", ":<port>/").replace(
            "-d0s", "-d<slice>s"
        )
    return seen


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """Start everything, probe, load, summarize, write --json."""
    started = time.monotonic()
    for path in (args.small_config, args.full_config, args.wasm, args.noop_wasm, args.envoy):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (make build)")
    if not {SERVER_CPU, LOAD_CPU} <= os.sched_getaffinity(0):
        raise BenchError(f"CPUs {SERVER_CPU} and {LOAD_CPU} are needed (taskset)")
    os.sched_setaffinity(0, {LOAD_CPU})
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool):
            raise FileNotFoundError(f"{tool} not found (scripts/bootstrap installs it)")
    configs = bench_configs(args.small_config, args.full_config)
    for label, config in configs.items():
        for client in UNMAPPED_CLIENTS:
            if config.backend_for(client) is not None:
                raise BenchError(f"the {label} table maps {client}, meant to be unmapped")
    content = Content.make()
    chosen = scenarios(blob_requests(configs["demo"], configs["full"]), content)
    if args.scenarios:
        chosen = {name: chosen[name] for name in args.scenarios}
    run_dir = prepare_run_dir(args.run_dir)
    content.write(run_dir / "content")
    scripts = {}
    for scenario in chosen.values():
        scripts[scenario.name] = run_dir / f"{scenario.name}.lua"
        scripts[scenario.name].write_text(wrk_script(scenario.requests()))
    upstream_port = free_ports(1)[0]
    upstream = NginxServer(
        "upstream", run_dir / "upstream", upstream_http_block(run_dir / "content", upstream_port, content),
        upstream_port,
        LOAD_CPU,
    )
    made = contenders(args, run_dir, configs, upstream_port)
    if args.contenders:
        made = [c for c in made if any(re.fullmatch(p, c.name) for p in args.contenders)]
    machine = machine_info(args.envoy, args.wasm)
    try:
        start_all(made, upstream)
        for scenario in chosen.values():
            for contender in made:
                if scenario.name in contender.scenarios:
                    probe(contender, scenario, configs, content)
        log(f"every contender answers every scenario as it must; {args.rounds} rounds")
        samples = run_rounds(args, made, chosen, scripts)
        commands = command_lines(made, upstream, run_dir)
    finally:
        for server in [c.server for c in made] + [upstream]:
            server.stop()
    machine["loadavg_end"] = os.getloadavg()
    machine["nginx_version"] = subprocess.run(
        ["nginx", "-v"], capture_output=True, text=True, check=False
    ).stderr.strip()
    machine["wrk_version"] = subprocess.run(
        ["wrk", "-v"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0]
    summary = summarize(samples, made, chosen)
    result = {
        "machine": machine,
        "commands": {
            "bench": shlex.join([sys.executable, sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
            **commands,
        },
        "settings": {
            "rounds": args.rounds,
            "slice_s": args.slice,
            "latency_slice_s": args.latency_slice,
            "throughput_connections": THROUGHPUT_CONNECTIONS,
            "latency_connections": LATENCY_CONNECTIONS,
            "hcm_tuning": HCM_TUNING,
            "workers": 1,
        },
        "scenarios": {
            s.name: {"letter": s.letter, "title": s.title, "requests": s.requests()}
            for s in chosen.values()
        },
        "contenders": [
            {"name": c.name, "kind": c.kind, "table": c.table, "scenarios": list(c.scenarios)}
            for c in made
        ],
        "tables": {
            label: {"path": str(c.path), "prefixes": c.prefix_count, "backends": len(c.blob_urls)}
            for label, c in configs.items()
        },
        "summary": summary,
        "targets": targets(summary) if not args.contenders else [],
        "samples": samples,
        "elapsed_s": time.monotonic() - started,
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    log(f"{len(samples)} samples in {result['elapsed_s']:.0f} s written to {args.json}")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-config", type=Path, required=True, help="the demo table (A)")
    parser.add_argument("--full-config", type=Path, required=True, help="the full table (B)")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--rounds", type=int, default=10, help="rounds (default 10)")
    parser.add_argument("--slice", type=int, default=1,
                        help="whole seconds (wrk's unit) of -c16 load per contender and round "
                        "(default 1)")
    parser.add_argument("--latency-slice", type=int, default=1,
                        help="whole seconds of -c1 load per contender and round (default 1)")
    parser.add_argument("--scenarios", nargs="+", choices=["redirect", "passthrough", "manifest",
                        "index"], help="only these scenarios")
    parser.add_argument("--contenders", nargs="+", metavar="REGEX",
                        help="only contenders whose name matches (no targets are checked)")
    parser.add_argument("--wasm", type=Path, default=stk.DEFAULT_WASM, help="blobsteer's module")
    parser.add_argument("--noop-wasm", type=Path, default=DEFAULT_NOOP_WASM,
                        help="the no-op filter's module")
    parser.add_argument("--envoy", type=Path,
                        default=Path(os.environ.get("BLOBSTEER_ENVOY") or stk.DEFAULT_ENVOY),
                        help="Envoy (default $BLOBSTEER_ENVOY or .venv/bin/envoy)")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR,
                        help="configs, logs and served files (wiped)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.rounds < 1 or min(args.slice, args.latency_slice) <= 0:
        parser.error("--rounds must be at least 1, slices positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run; 0 when measured (targets met or not: the report says which)."""
    args = parse_args(argv)
    errors = (BenchError, stk.StartupError, TimeoutError, FileNotFoundError)
    return stk.run_interruptibly("compare.py", lambda: run(args, argv), errors)

if __name__ == "__main__":
    sys.exit(main())
