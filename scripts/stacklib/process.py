"""Servers run as children, each in its own session with a PID file, stopped by exactly that
PID; and client commands run to completion with their output kept."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from stacklib.probes import POLL_INTERVAL
from stacklib.texts import log_tail

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: get SIGTERM when the parent dies (or exit if it already has)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


class StartupError(RuntimeError):
    """A server exited or did not become ready in time.

    `returncode` is its exit status (None if it was still running and had to be stopped),
    `log` the tail of its log, `log_path` the whole log.
    """

    def __init__(self, name: str, reason: str, returncode: int | None, log_path: Path):
        self.returncode = returncode
        self.log_path = log_path
        self.log = log_tail(log_path)
        super().__init__(f"{name} {reason}; last lines of {log_path}:\n{self.log}")


class ManagedProcess:
    """A server run as our child in its own session, with a PID file, stopped by its PID.

    Subclasses say how to launch it (`command`, which also writes its config) and when it is
    ready (`ready`).
    """

    def __init__(self, name: str, run_dir: Path, log_path: Path, stdout_path: Path | None = None):
        self.name = name
        self.run_dir = run_dir
        self.log_path = log_path
        self.stdout_path = stdout_path or log_path
        self.pid_path = run_dir / f"{name}.pid"
        self.returncode: int | None = None
        self._proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """Write whatever config the server needs and return its argv."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the server answers."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The PID while started, else None."""
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def exited(self) -> bool:
        """Whether the process was started, was not stopped by us, and has exited."""
        return self._proc is not None and self._proc.poll() is not None

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Start the server and wait until `ready()`; raise StartupError with its log if it
        exits first or is not ready by the deadline (then it is stopped)."""
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        self.returncode = None
        with open(self.stdout_path, "ab") as out, open(self.log_path, "ab") as err:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")
        atexit.register(self.stop)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self._proc.poll() is not None:
                returncode = self.stop()
                raise StartupError(
                    self.name, f"exited with status {returncode}", returncode, self.log_path
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise StartupError(
                    self.name, f"was not ready after {timeout:g}s", None, self.log_path
                )
            time.sleep(POLL_INTERVAL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop the server (SIGTERM to its PID, SIGKILL after `timeout`), reap it and anything
        left in its process group, remove its PID file; return its exit status."""
        proc = self._proc
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Children it left behind: its process group id is its PID (start_new_session).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.pid_path.unlink(missing_ok=True)
        atexit.unregister(self.stop)
        self._proc = None
        self.returncode = proc.returncode
        return self.returncode

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


class CommandFailed(RuntimeError):
    """A client command (skopeo, ctr, ...) exited non-zero; `result` holds its output."""

    def __init__(self, result: subprocess.CompletedProcess):
        self.result = result
        command = " ".join(map(str, result.args))
        super().__init__(f"{command} exited with status {result.returncode}:\n{result.stdout}")


def run_command(
    argv: list[str],
    *,
    check: bool = True,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run a client command to completion: stdout and stderr together, as text, in .stdout."""
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )
    if check and result.returncode != 0:
        raise CommandFailed(result)
    return result
