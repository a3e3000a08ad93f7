#!/usr/bin/env python3
"""A live map swap at the full table's size (`make bench`): an Envoy (two workers) takes the
filter's configuration from ECDS (envoy/live.yaml's mechanism); under a steady client loop from
aws-eu-west-3, the full AWS+GCP+Azure table is replaced by the same table with that backend's
URL changed, back and forth. Reported, as medians over the swaps: how long until the client is
steered by the new map, how many requests failed, and Envoy's RSS before, at its peak during,
and 3 s after each swap (every VM holds its own copy of the table).

    scripts/bench/live_swap.py --full-config .run/bench/full.json [--swaps 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stack as stk  # noqa: E402

CLIENT = "aws-eu-west-3"
SETTLE_S = 3.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def with_host(config: dict, backend: str, suffix: str) -> dict:
    """`config` with `backend`'s blob URL host given `suffix`."""
    changed = json.loads(json.dumps(config))
    for b in changed["backends"]:
        if b["name"] == backend:
            scheme, rest = b["blob_url"].split("://", 1)
            host, path = rest.split("/", 1)
            b["blob_url"] = f"{scheme}://{host.split('.', 1)[0]}{suffix}.{host.split('.', 1)[1]}/{path}"
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-config", type=Path, required=True)
    parser.add_argument("--swaps", type=int, default=5)
    args = parser.parse_args()
    full = json.loads(args.full_config.read_text())
    run_dir = stk.REPO_ROOT / ".run" / "bench" / "live-swap"
    shutil.rmtree(run_dir, ignore_errors=True)
    ports = stk.Ports.free()
    stack = stk.Stack(run_dir, ports=ports, live=True, envoy_concurrency=2, filter_config_override=json.dumps(full))
    answers: list[tuple[float, int, str]] = []
    stopped = threading.Event()
    with stack:
        layer = stack.image.layers["linux/amd64"][0].digest
        path = f"/v2/{stk.REPOSITORY}/blobs/{layer}"
        port = stack.port(CLIENT)
        backend = next(b["name"] for b in full["backends"] if b["name"].endswith("eu-west-3"))

        def load() -> None:
            while not stopped.is_set():
                conn = http.client.HTTPConnection(stk.LOOPBACK, port, timeout=5)
                try:
                    conn.request("GET", path)
                    response = conn.getresponse()
                    response.read()
                    answers.append((time.monotonic(), response.status, response.getheader("location") or ""))
                except OSError as err:
                    answers.append((time.monotonic(), 0, repr(err)))
                finally:
                    conn.close()

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        pid = stack.envoy.pid
        rows = []
        try:
            for swap in range(args.swaps):
                suffix = "-v2" if swap % 2 == 0 else ""
                before = [rss_mib(pid) for _ in range(5) if not time.sleep(0.05)]
                seen = len(answers)
                started = time.monotonic()
                stack.deliver_filter_config(json.dumps(with_host(full, backend, suffix)))
                marker = f"://aws-eu-west-3{suffix}."
                peak, effect = max(before), None
                while time.monotonic() - started < SETTLE_S or effect is None:
                    peak = max(peak, rss_mib(pid))
                    if effect is None:
                        hit = next((a for a in answers[seen:] if marker in a[2]), None)
                        if hit:
                            effect = hit[0] - started
                    if time.monotonic() - started > 30:
                        raise RuntimeError("the new map did not take effect within 30 s")
                    time.sleep(0.02)
                rows.append({"effect_ms": effect * 1000, "before": statistics.median(before), "peak": peak, "after": rss_mib(pid)})
        finally:
            stopped.set()
            loader.join()
    failed = [a for a in answers if a[1] != 307]
    median = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    backends = len(full["backends"])
    prefixes = sum(len(b["cidrs"]) for b in full["backends"])
    print(f"live swap of the full table ({backends} backends, {prefixes} prefixes), Envoy --concurrency 2, "
          f"{args.swaps} swaps under a client loop ({len(answers)} requests, {len(failed)} failed):")
    print("| median over the swaps | value |\n|---|---:|")
    print(f"| time until the client is steered by the new map | {median('effect_ms'):.0f} ms |")
    print(f"| Envoy RSS before a swap | {median('before'):.1f} MiB |")
    print(f"| Envoy RSS at its peak during a swap | {median('peak'):.1f} MiB |")
    print(f"| Envoy RSS 3 s after a swap | {median('after'):.1f} MiB |")
    print("per swap: " + ", ".join(f"{r['effect_ms']:.0f} ms / {r['before']:.0f}->{r['peak']:.0f}->{r['after']:.0f} MiB" for r in rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
