"""What a foreground run of servers needs: waiting until a signal or until a part dies, unwinding
on SIGTERM, and a run directory wiped only when it is a stack's and nothing of it still runs."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from stacklib.paths import RUN_DIR_MARKER
from stacklib.process import ManagedProcess
from stacklib.texts import log_tail


def live_pid_files(run_dir: Path) -> list[tuple[Path, int]]:
    """The PID files under `run_dir` (a fleet's parts keep theirs in subdirectories) whose
    process still exists."""
    live = []
    for path in sorted(run_dir.rglob("*.pid")):
        try:
            pid = int(path.read_text().strip())
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            continue
        except PermissionError:
            pass
        live.append((path, pid))
    return live


def wait_until_stopped(parts: list[ManagedProcess]) -> ManagedProcess | None:
    """Block until SIGINT/SIGTERM (returns None) or one of `parts` exits (returns it)."""
    signals = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        while True:
            for part in parts:
                if part.exited():
                    return part
            if signal.sigwaitinfo(signals).si_signo != signal.SIGCHLD:
                return None
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def serve_until_stopped(parts: list[ManagedProcess]) -> bool:
    """`run`'s wait: until Ctrl-C or SIGTERM, or until one of `parts` exits (its log's last
    lines printed); whether one did."""
    dead = wait_until_stopped(parts)
    if dead:
        print(f"\n{dead.name} exited unexpectedly; last lines of {dead.log_path}:")
        print(log_tail(dead.log_path))
    print("stopping...", flush=True)
    return dead is not None


def exit_on_sigterm(signum, frame) -> None:
    """A SIGTERM handler that unwinds like Ctrl-C, so every part started is stopped on the way
    out."""
    raise SystemExit(128 + signum)


def run_interruptibly(
    program: str, run: Callable[[], int], errors: tuple[type[BaseException], ...]
) -> int:
    """`run()` with SIGTERM and SIGINT unwinding it (also where a shell's background job ignores
    SIGINT), so every server it started is stopped on the way out; one of `errors` is printed as
    `<program>: <error>` and gives 1, Ctrl-C gives 130."""
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run()
    except errors as err:
        print(f"{program}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def prepare_run_dir(run_dir: Path) -> None:
    """Wipe a previous run's directory, refusing one that is not a stack's or whose processes
    still run."""
    if not run_dir.exists():
        return
    if any(run_dir.iterdir()) and not (run_dir / RUN_DIR_MARKER).exists():
        raise SystemExit(f"{run_dir} is not empty and not a stack's run dir; not wiping it")
    live = live_pid_files(run_dir)
    if live:
        path, pid = live[0]
        raise SystemExit(f"process {pid} from {path} is still running; stop it first")
    shutil.rmtree(run_dir)
