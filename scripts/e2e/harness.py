"""What the end-to-end tests share: a real stack per test class on free ports, log snapshots,
and checks of what the clients fetched.

Each test class gets its own run directory under `.run/e2e/<class>` (kept after the run, so the
logs of a failure can be read) and its own ports, so the suite never collides with a stack a
developer left running or with anything else on the machine.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import shutil
import socket
import sys
import threading
import unittest
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stack as stk  # noqa: E402

RUN_ROOT = stk.REPO_ROOT / ".run" / "e2e"
BACKENDS = tuple(stk.MIRROR_OFFSETS)


def free_ports() -> stk.Ports:
    """A whole range of stack ports, free right now."""
    return stk.Ports.free()


def request(
    port: int, method: str, path: str, headers: list[tuple[str, str | bytes]] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request with headers sent exactly as given (repeats and raw bytes kept);
    returns (status, lowercase headers, body). A hang fails the test through the timeout."""
    conn = http.client.HTTPConnection(stk.LOOPBACK, port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers or []:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = b"" if method == "HEAD" else response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


class RawServer:
    """A plain TCP server on 127.0.0.1:`port` for injecting what real servers will not do (hang,
    lie about lengths, send trailers): for each connection it reads the request head, records
    its request line, calls `answer(request_line, conn, stopped)` and closes the connection when
    it returns (an answer that must hang waits on `stopped`)."""

    def __init__(self, port: int, answer: Callable[[str, socket.socket, threading.Event], None]):
        self.answer = answer
        self.requests: list[str] = []
        self.sock = socket.create_server((stk.LOOPBACK, port))
        self.sock.settimeout(0.1)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn.makefile("rb") as reader:
            line = reader.readline().decode(errors="replace").strip()
            while reader.readline() not in (b"\r\n", b""):
                pass
        self.requests.append(line)
        try:
            self.answer(line, conn, self.stopped)
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


def example_filter_config() -> str:
    """The filter configuration inline in envoy/example.yaml: the block scalar after
    `value: |`, every line indented deeper than its key."""
    text = (stk.ENVOY_DIR / "example.yaml").read_text()
    key = re.search(r"^( *)value: \|\n", text, re.MULTILINE)
    assert key, "no inline filter configuration in envoy/example.yaml"
    deeper = len(key[1]) + 1
    block = re.compile(rf"((?:[ ]{{{deeper},}}.*\n)+)").match(text, key.end())
    assert block, "an empty filter configuration in envoy/example.yaml"
    return block[1]


def warm_existence_cache(stack: stk.Stack, via: str) -> None:
    """A client of `via` asks for every blob of every platform of the demo image (a 307 each):
    the existence cache then knows each is on that backend's mirror, so a rewritten manifest
    may advertise them all (the demo's backends are checked)."""
    image = stack.image
    for platform in image.manifests:
        for blob in [image.configs[platform], *image.layers[platform]]:
            path = blob_path(blob.digest)
            status = request(stack.port(via), "HEAD", path)[0]
            assert status == 307, (via, path, status)


def fake_mirror(port: int, delay: float | None) -> RawServer:
    """A mirror fault nginx cannot inject: it accepts every connection and either never answers
    (`delay=None`) or answers 200 after `delay` seconds."""

    def answer(_line: str, conn, stopped) -> None:
        if delay is None:
            stopped.wait()  # hold the connection, never answer
        elif not stopped.wait(delay):
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")

    return RawServer(port, answer)


def blob_path(digest: str) -> str:
    """The registry path of a demo blob."""
    return f"/v2/{stk.REPOSITORY}/blobs/{digest}"


class Snapshot:
    """How far each log was when taken: what happened after it is what a test caused."""

    def __init__(self, stack: stk.Stack):
        self.stack = stack
        self.registry = len(stack.registry_requests())
        self.mirrors = {name: len(stack.mirror_requests(name)) for name in BACKENDS}
        self.envoy = len(settled_envoy_requests(stack))

    def blob_gets(self) -> dict[str, list[str]]:
        """Server ("registry" or a backend) -> digests it served (2xx GET) since the snapshot."""
        served: dict[str, list[str]] = {"registry": []}
        for record in self.stack.registry_requests()[self.registry :]:
            match = stk.BLOB_PATH.match(record.path)
            if match and record.method == "GET" and 200 <= record.status < 300:
                served["registry"].append(match["digest"])
        for name, seen in self.mirrors.items():
            served[name] = [
                record.path.rpartition("/")[2]
                for record in self.stack.mirror_requests(name)[seen:]
                if record.method == "GET" and 200 <= record.status < 300
            ]
        return served

    def envoy_requests(self) -> list[dict]:
        """The main listener's access-log records since the snapshot."""
        return settled_envoy_requests(self.stack)[self.envoy :]


def settled_envoy_requests(stack: stk.Stack) -> list[dict]:
    """The main listener's access log once it holds every request Envoy completed (Envoy
    flushes the file every 100 ms; its own counter says how many records to wait for)."""
    completed = "http.main.downstream_rq_completed"

    def settled():
        records = stack.envoy_requests()
        return len(records) == stack.stats(f"^{completed}$").get(completed, 0) and (records,)

    return stk.wait_for(settled, "Envoy's access log to catch up with its request counter")[0]


class StackTestCase(unittest.TestCase):
    """A test class with one stack (and optionally a containerd) for all its tests."""

    stack_options: dict = {}
    with_containerd = False

    @classmethod
    def options_for(cls, ports: stk.Ports) -> dict:
        """Stack options that depend on the ports chosen (added to `stack_options`)."""
        return {}

    @classmethod
    def setUpClass(cls) -> None:
        run_dir = RUN_ROOT / cls.__name__
        shutil.rmtree(run_dir, ignore_errors=True)
        ports = free_ports()
        options = {**cls.stack_options, **cls.options_for(ports)}
        cls.stack = stk.Stack(run_dir, ports=ports, **options)
        cls.stack.start()
        cls.addClassCleanup(cls.stack.stop)
        if cls.with_containerd:
            cls.containerd = stk.Containerd(run_dir)
            cls.containerd.start()
            cls.addClassCleanup(cls.containerd.stop)

    @property
    def image(self):
        return self.stack.image

    def platform_blobs(self, platform: str = "linux/amd64") -> set[str]:
        """The blobs a single-platform pull downloads: the config and every layer."""
        return {self.image.configs[platform].digest} | {
            layer.digest for layer in self.image.layers[platform]
        }

    def backend_url(self, backend: str, digest: str) -> str:
        """The URL the demo config gives `backend` for a blob."""
        return f"{self.stack.url('mirror:' + backend)}/containers/images/{digest}"

    def assert_served_by(self, snapshot: Snapshot, server: str, digests: set[str]) -> None:
        """Exactly `digests` were downloaded, every one of them from `server` and from nowhere
        else."""
        served = snapshot.blob_gets()
        self.assertEqual(set(served.pop(server)), digests, f"blobs served by {server}")
        for other, got in served.items():
            self.assertEqual(got, [], f"{other} served blobs it should not have")

    def assert_dir_copy_verified(self, dest: Path, digests: set[str]) -> None:
        """skopeo's `dir:` copy holds each blob under its hex digest: hash every file."""
        files = {p.name: p for p in dest.iterdir() if p.name not in ("manifest.json", "version")}
        self.assertEqual(set(files), {d.removeprefix("sha256:") for d in digests})
        for name, path in files.items():
            self.assertEqual(hashlib.sha256(path.read_bytes()).hexdigest(), name, path)

    def counters(self) -> dict[str, int]:
        """Every blobsteer counter, without the `wasmcustom.blobsteer.` prefix."""
        prefix = "wasmcustom.blobsteer."
        stats = self.stack.stats("^wasmcustom\\.blobsteer\\.")
        return {name.removeprefix(prefix): int(value) for name, value in stats.items()}

    def assert_counted(self, before: dict[str, int], expected: dict[str, int], prefix: str = "") -> None:
        """Exactly the `expected` counters among those starting with `prefix` moved since
        `before`, each by the amount given. Without a prefix, the existence checks' counters
        (`check.*`, which depend on what the cache already knows) are left out."""
        after = self.counters()
        moved = {name: after[name] - before.get(name, 0) for name in after if name.startswith(prefix)}
        if not prefix:
            moved = {name: n for name, n in moved.items() if not name.startswith("check.")}
        self.assertEqual({name: n for name, n in moved.items() if n}, expected)
