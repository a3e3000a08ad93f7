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

Its parts (configs and the request mix, the Envoy, readings, wrk, the report) live in
scripts/bench/benchlib/, shared with compare.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[1]
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import stack as stk  # noqa: E402  (scripts/stack.py: process, port and HTTP helpers)
from benchlib.common import (  # noqa: E402
    BenchError, log, machine_info, median, median_interval, prepare_run_dir, ratio,
)
from benchlib.configs import (  # noqa: E402
    BlobRequest, FilterConfig, backends_with_clusters, blob_requests, differing_options,
    table_with_options,
)
from benchlib.envoy import (  # noqa: E402
    Bench, BenchEnvoy, TEMPLATE, VM_LOG_TIMEOUT, check_envoy_pid,
)
from benchlib.readings import (  # noqa: E402
    bootstrap_ms, configured_lines, probe, proc_status_kib, thread_cpu_ms, wasm_memories_kib,
    worker_cpu_ms,
)
from benchlib.table_report import (  # noqa: E402
    CONCURRENCIES, CONFIGURE_TARGET_MS, MEMORY_TARGET_MIB, THROUGHPUT_TARGET_RATIO, report,
)
from benchlib.wrk import load_slice, wrk_command, wrk_script  # noqa: E402

REPO_ROOT = stk.REPO_ROOT
DEFAULT_RUN_DIR = REPO_ROOT / ".run" / "bench" / "table"

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
# ---------------------------------------------------------------------------------------------
# Command line
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
