"""What every benchmark here shares: its error, progress on stderr, a run directory it may
wipe, medians, ratios and a distribution-free interval, and the machine it ran on."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[2]
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import stack as stk  # noqa: E402


RUN_DIR_MARKER = ".blobsteer-bench-table"  # a run wipes only a directory that has it


class BenchError(RuntimeError):
    """The benchmark cannot give a trustworthy number (wrong answers, errors under load...)."""


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


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


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
