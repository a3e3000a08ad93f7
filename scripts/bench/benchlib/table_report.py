"""The Markdown report of scripts/bench/table.py: its targets, verdicts and tables."""

from __future__ import annotations


from benchlib.common import ratio


CONCURRENCIES = (1, 2)
CONFIGURE_TARGET_MS = 20.0
MEMORY_TARGET_MIB = 8.0
THROUGHPUT_TARGET_RATIO = 0.95


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


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
