#!/usr/bin/env python3
"""BENCHMARKS.md, BENCHMARKS.json and BENCHMARKS.svg from one `make bench` run.

    python3 scripts/bench/report.py --compare C.json --micro M.txt [M.txt ...]
        [--table-json T.json --table-md T.md] --out-dir DIR

--compare is scripts/bench/compare.py's results, --micro divan's output of each core
micro-benchmark, --table-* scripts/bench/table.py's (startup and memory, full table against the
demo config). Every figure written comes from those files; nothing here measures anything.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from html import escape
from pathlib import Path

# The contender every other is compared with, per scenario.
BASELINE = {"redirect": "noop-wasm", "passthrough": "noop-wasm", "manifest": "envoy",
            "index": "envoy"}  # fmt: skip
DESCRIPTIONS = {
    "envoy": "Envoy, no filter (route `redirect` for (a), router alone otherwise)",
    "noop-wasm": "Envoy + no-op proxy-wasm filter (same toolchain)",
    "lua": "Envoy + Lua filter, same redirect from the same table",
    "blobsteer": "Envoy + blobsteer",
    "blobsteer-tuned": "Envoy + blobsteer, Envoy settings tuned",
    "nginx": "nginx, `geo` map + `return 307` (a), `proxy_pass` (b)",
}
COLORS = {"envoy": "#8c8c8c", "noop-wasm": "#b5b5b5", "lua": "#e3a21a", "blobsteer": "#2a6fdb",
          "blobsteer-tuned": "#6b9ef0", "nginx": "#2f9e44"}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# divan's output


def parse_divan(text: str) -> list[dict]:
    """Rows of divan's tree table: {"name": "<binary>/<group>/<bench>/<arg>", "median":
    "75.9 ns", "throughput": "1.2 GB/s" (when the bench sets a counter)}. Columns are found by
    the header's separators: the tree itself draws with the same character."""
    rows: list[dict] = []
    separators: list[int] = []
    path: list[str] = []
    for line in text.splitlines():
        if "fastest" in line and "median" in line:
            separators = [i for i, ch in enumerate(line) if ch == "│"]
            path = [line.split()[0]]
            continue
        if len(separators) < 3 or len(line) <= separators[1]:
            continue
        head = line[: separators[0]]
        median = line[separators[1] + 1 : separators[2]].strip()
        marker = re.search(r"[├╰]─ (\S+)", head)
        if marker:
            depth = marker.start() // 3 + 1
            path = path[:depth] + [marker.group(1)]
            if median:
                rows.append({"name": "/".join(path), "median": median})
        elif median and rows and rows[-1]["name"] == "/".join(path):
            rows[-1]["throughput"] = median
    return rows


# ---------------------------------------------------------------------------------------------
# Markdown


def fmt(value: float | None, digits: int = 0) -> str:
    """A number for a table cell."""
    return "n/a" if value is None else f"{value:,.{digits}f}"


def scenario_table(name: str, per: dict) -> list[str]:
    """One scenario's rows: every contender, by table."""
    base = per.get(BASELINE[name], {}).get("requests_per_s")
    lines = [
        f"| contender | table | req/s (-c16) | × {BASELINE[name]} | p50 / p99 ms (-c16) "
        "| p50 µs, one at a time (-c1) | CPU µs / request |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for contender, s in per.items():
        times = f"{s['p50_ms_c16']:.2f} / {s['p99_ms_c16']:.2f}"
        one_at_a_time = "—" if s["p50_ms_c1"] is None else fmt(s["p50_ms_c1"] * 1000)
        versus = s["requests_per_s"] / base if base else None
        lines.append(
            f"| {contender} | {s['table'] or '—'} | {fmt(s['requests_per_s'])} | "
            f"{fmt(versus, 2)} | {times} | {one_at_a_time} | "
            f"{fmt(s['cpu_us_per_request'], 1)} |"
        )
    return lines


def target_rows(targets: list[dict]) -> list[str]:
    """The targets with their verdicts."""
    lines = ["| target | goal | measured | per round | verdict |", "|---|---|---:|---|---|"]
    for t in targets:
        unit = " µs" if "added_us" in t else ""
        digits = 0 if unit else 3
        rounds = ", ".join(f"{v:.{digits}f}" for v in t["by_round"])
        verdict = "reported" if t["goal"] == "reported" else ("PASS" if t["pass"] else "MISS")
        lines.append(
            f"| {t['target']} | {t['goal']} | {t['value']:.{digits}f}{unit} | {rounds} | "
            f"{verdict} |"
        )
    return lines


def tuning_lines(summary: dict, settings: dict) -> list[str]:
    """What the Envoy settings tried did to blobsteer's redirects."""
    per = summary.get("redirect", {})
    lines = []
    for table in ("demo", "full"):
        plain, tuned = per.get(f"blobsteer-{table}"), per.get(f"blobsteer-tuned-{table}")
        if plain and tuned:
            lines.append(
                f"- {table} table: {fmt(plain['requests_per_s'])} → "
                f"{fmt(tuned['requests_per_s'])} redirects/s "
                f"(×{tuned['requests_per_s'] / plain['requests_per_s']:.2f}), CPU "
                f"{plain['cpu_us_per_request']:.1f} → {tuned['cpu_us_per_request']:.1f} µs "
                "per request"
            )
    setting = ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in settings["hcm_tuning"].items())
    return [f"`blobsteer-tuned` is blobsteer with {setting} in the HTTP connection manager:", "",
            *lines, "",
            "Already set for every Envoy contender: no access log, no tracing, "
            "`use_remote_address: false` (x-forwarded-for kept), hot restart disabled, one "
            "worker; blobsteer's own `decision_header` is off (a header per answer costs "
            "about a fifth of the redirect rate, scripts/bench/table.py). Settings that "
            "change what is measured (HTTP/2 to the client, more workers than nginx) were not "
            "used."]  # fmt: skip


def markdown(compare: dict, micro: list[dict], table_md: str | None) -> str:
    """The whole of BENCHMARKS.md."""
    m, cmd, st = compare["machine"], compare["commands"], compare["settings"]
    lines = [
        "# blobsteer benchmarks",
        "",
        "Written by `make bench` (scripts/bench/all); every figure below comes from one run "
        "of it on one machine. The machines are small and shared: read medians and the "
        "ratios between contenders measured in the same run, never one absolute time "
        "against another run's.",
        "",
        f"- date: {m['date']}; machine: {m['cpu']}, {m['nproc']} CPUs, Linux {m['kernel']}; "
        f"load average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end",
        f"- Envoy {m['envoy_version']}; {m['nginx_version']}; {m['wrk_version']}",
        f"- blobsteer: `{Path(m['wasm']).name}`, {m['wasm_bytes']:,} bytes, sha256 "
        f"{m['wasm_sha256'][:16]}…",
        f"- tables: demo = {compare['tables']['demo']['backends']} backends, "
        f"{compare['tables']['demo']['prefixes']} prefixes (`testdata/config/three-backends.json`); "
        f"full = {compare['tables']['full']['backends']} backends, "
        f"{compare['tables']['full']['prefixes']:,} prefixes (every AWS, GCP and Azure region "
        "from `../shared/data`, by `blobsteer ranges`)",
        "- every server has one worker (Envoy `--concurrency 1`, nginx `worker_processes 1`) "
        "and runs on CPU 0; the load (`wrk` on loopback, one thread), the upstream (nginx "
        "serving static files) and the harness run on CPU 1",
        f"- order: {st['rounds']} rounds; in each, for each scenario, every contender in turn "
        f"(reversed every other round): {st['slice_s']} s at {st['throughput_connections']} "
        f"connections, then for (c) and (d) {st['latency_slice_s']} s at "
        f"{st['latency_connections']} connection; {len(compare['samples'])} slices in "
        f"{compare['elapsed_s']:.0f} s. "
        "Every request is first sent once and its answer checked (Location, body, rewritten "
        "digests); after every slice wrk's errors, Envoy's answer classes and blobsteer's own "
        "counters are checked",
        "",
        "## Targets",
        "",
        *target_rows(compare["targets"]),
        "",
        "Ratios are of the medians over rounds; \"per round\" gives each round's own ratio "
        "(both contenders measured within a minute of each other), the spread this run's "
        "noise allows.",
        "",
        "![throughput and latency per contender](BENCHMARKS.svg)",
        "",
        "## Side by side",
        "",
        "Medians over rounds. p50 one at a time is the latency of a request when it is the "
        "only one: what a filter adds to each request. CPU per request is the server's own "
        "(every thread of its process group); a server saturated at 16 connections spends one "
        "core, so there it mirrors req/s, and it shows what a contender costs when it is not.",
        "",
    ]
    for name, per in compare["summary"].items():
        scenario = compare["scenarios"][name]
        lines += [f"### ({scenario['letter']}) {scenario['title']}", "",
                  *scenario_table(name, per), ""]  # fmt: skip
    lines += ["Contenders:", ""]
    lines += [f"- `{kind}[-<table>]`: {text}" for kind, text in DESCRIPTIONS.items()]
    lines += ["", "## Envoy settings tried for redirects", "", *tuning_lines(compare["summary"], st)]
    if table_md:
        lines += ["", "## Startup and memory: full table against the demo config", "",
                  table_md.replace("### ", "#### ").strip()]  # fmt: skip
    lines += ["", "## Micro-benchmarks of the core (divan, native)", "",
              "| benchmark | median | throughput |", "|---|---:|---:|"]  # fmt: skip
    lines += [f"| {r['name']} | {r['median']} | {r.get('throughput', '')} |" for r in micro]
    lines += ["", "## Command lines", ""]
    lines += [f"- {name}: `{line}`" for name, line in cmd.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# SVG


def svg_chart(compare: dict) -> str:
    """Per scenario, two bar charts side by side: req/s and p50 latency, both at -c16."""
    width, label_w, bar_w, row_h, gap = 1000, 190, 300, 16, 34
    panels = [("requests/s, 16 connections", "requests_per_s", 1.0),
              ("p50 latency µs, 16 connections", "p50_ms_c16", 1000.0)]  # fmt: skip
    parts = []
    y = 30
    for name, per in compare["summary"].items():
        scenario = compare["scenarios"][name]
        parts.append(f'<text x="10" y="{y}" font-weight="bold">({scenario["letter"]}) '
                     f"{escape(scenario['title'])}</text>")  # fmt: skip
        y += 8
        for column, (title, key, scale) in enumerate(panels):
            x0 = label_w + column * (bar_w + 120)
            parts.append(f'<text x="{x0}" y="{y + 4}" font-size="11" fill="#555">'
                         f"{escape(title)}</text>")  # fmt: skip
            top = max(s[key] * scale for s in per.values()) or 1.0
            for row, (contender, s) in enumerate(per.items()):
                value = s[key] * scale
                by = y + 10 + row * row_h
                length = max(1.0, bar_w * value / top)
                color = COLORS.get(s["kind"], "#444")
                if column == 0:
                    parts.append(f'<text x="{label_w - 8}" y="{by + 11}" text-anchor="end" '
                                 f'font-size="12">{escape(contender)}</text>')  # fmt: skip
                parts.append(f'<rect x="{x0}" y="{by}" width="{length:.1f}" height="{row_h - 4}" '
                             f'fill="{color}"/>')  # fmt: skip
                parts.append(f'<text x="{x0 + length + 4:.1f}" y="{by + 11}" font-size="11">'
                             f"{value:,.0f}</text>")  # fmt: skip
        y += 10 + len(per) * row_h + gap
    header = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
        f'viewBox="0 0 {width} {y}" font-family="sans-serif" font-size="13">'
        f'<rect width="{width}" height="{y}" fill="white"/>'
    )
    return header + "".join(parts) + "</svg>\n"


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Write the three files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", type=Path, required=True)
    parser.add_argument("--micro", type=Path, nargs="+", required=True)
    parser.add_argument("--table-json", type=Path)
    parser.add_argument("--table-md", type=Path)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    compare = json.loads(args.compare.read_text())
    micro = [row for path in args.micro for row in parse_divan(path.read_text())]
    if not micro:
        print(f"report.py: no divan table found in {args.micro}", file=sys.stderr)
        return 1
    table_md = args.table_md.read_text() if args.table_md else None
    table = json.loads(args.table_json.read_text()) if args.table_json else None
    out = args.out_dir
    (out / "BENCHMARKS.md").write_text(markdown(compare, micro, table_md))
    (out / "BENCHMARKS.svg").write_text(svg_chart(compare))
    results = {
        "machine": compare["machine"],
        "commands": compare["commands"],
        "settings": compare["settings"],
        "targets": compare["targets"],
        "side_by_side": compare["summary"],
        "startup_and_memory": table["summary"] if table else None,
        "micro": micro,
    }
    (out / "BENCHMARKS.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'BENCHMARKS.md'}, BENCHMARKS.json and BENCHMARKS.svg", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
