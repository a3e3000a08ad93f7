"""Callouts whose answer stalls after its headers: the filter's own `dispatch_http_call`s (an
index's children, a mirror's existence check) get response headers, then nothing more, until
their timeout.

Envoy then calls the filter back with no headers at all (`on_http_call_response` with
`num_headers == 0`: it had headers, so it cannot synthesise a 504, and it resets the call). A
filter that reads the answer's `:status` there makes proxy-wasm 0.2.5 panic ("unexpected status:
2"), the worker's VM traps, and with `FAIL_OPEN` the request it held never resumes while every
later request on that worker silently skips the filter. Neither shows in Envoy's wasm stats; the
log has the panic.

What is proven, each with a crafted server in place of a real part:
- an index child that stalls: the client gets the upstream's index exactly as sent, once the
  child timeout has passed, and the next blob request on the same (only) worker is still
  steered;
- an existence check that stalls: every client waiting for it is sent upstream (the registry
  serves the blob) once the check's timeout has passed, and later requests are still steered;
- in both, Envoy's wasm stats show no VM created, lost or reloaded, and its log no panic or trap.

Over HTTP/1.1 an answer to the check's `HEAD` ends with its headers, so it cannot stall after
them (a `100 Continue` or headers cut short end in Envoy's 504, which has headers). Over
HTTP/2 it can: the mirror's cluster here speaks h2c and the crafted mirror sends `HEADERS` without
`END_STREAM`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import socket
import threading
import time

from h2_mirror import RST_STREAM, H2Mirror
from harness import RUN_ROOT, RawServer, Snapshot, StackTestCase, blob_path, free_ports, request, stk

EU = "aws-eu-west-3"
EU_XFF = "15.236.10.20"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPOSITORY = "stall/app"
CHILD_TIMEOUT_MS = 1000
CHECK_TIMEOUT_MS = 1500
# How long past a callout's timeout the client may wait for its answer.
SLACK_S = 5.0
# What a VM that panicked or trapped leaves in Envoy's log.
TRAP_SIGNS = ("panicked", "Function: proxy_on", "RuntimeError", "wasm trap")


def image_manifest(layer_byte: str) -> bytes:
    """A valid OCI image manifest (its blobs need not exist: it is never rewritten)."""
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + "c" * 64, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + layer_byte * 64, "size": 3}],
    }).encode()  # fmt: skip


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def index_of(child: bytes) -> bytes:
    """An OCI index with `child` as its one (linux/amd64) manifest."""
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(child), "size": len(child),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }).encode()  # fmt: skip


def answer_head(content_type: str, length: int, status: str = "200 OK") -> bytes:
    """A response head; `connection: close`, since the crafted server closes each connection
    after one answer (a pooled connection Envoy reused would fail the next callout at once)."""
    head = f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {length}\r\n"
    return (head + "connection: close\r\n\r\n").encode()


def timed_get(port: int, path: str, headers: list[tuple[str, str]], timeout: float):
    """A GET on 127.0.0.1:`port`: (status, lowercase headers, body, seconds until the body had
    ended), or None if no whole answer came within `timeout`."""
    started = time.monotonic()
    conn = http.client.HTTPConnection(stk.LOOPBACK, port, timeout=timeout)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        got = {k.lower(): v for k, v in response.getheaders()}
        return response.status, got, body, time.monotonic() - started
    except (TimeoutError, http.client.HTTPException, OSError):
        return None
    finally:
        conn.close()


class VmHealth:
    """Checks, for a test case with a `stack`, that the filter's VMs survived what the test did:
    Envoy's wasm stats unchanged (no VM created, lost or reloaded) and no panic or trap logged.

    With `FAIL_OPEN` (the stack's policy) Envoy 1.40 moves no stat when a VM traps: only the log
    tells. With `FAIL_RELOAD` a trap moves `wasm.blobsteer.vm_reload_success` (or `_failure`)
    and `wasm.envoy.wasm.runtime.v8.created`."""

    VM_STATS = (
        "wasm.envoy.wasm.runtime.v8.created",
        "wasm.envoy.wasm.runtime.v8.active",
        "wasm.wasm_vm_count",
        "wasm.blobsteer.vm_reload",
        "wasm.blobsteer.vm_reload_success",
        "wasm.blobsteer.vm_reload_failure",
        "wasm.blobsteer.vm_reload_backoff",
    )

    def vm_stats(self) -> dict[str, int]:
        """Every `wasm.*` stat Envoy has (the names above among them)."""
        stats = self.stack.stats("^wasm\\.")
        for name in self.VM_STATS:
            self.assertIn(name, stats)
        return stats

    def envoy_log_size(self) -> int:
        return self.stack.envoy_log.stat().st_size

    def assert_vm_healthy(self, stats_before: dict[str, int], log_from: int) -> None:
        self.assertEqual(self.vm_stats(), stats_before, "Envoy's wasm VM stats moved")
        with open(self.stack.envoy_log, "rb") as log:
            log.seek(log_from)
            written = log.read().decode(errors="replace")
        for line in written.splitlines():
            for sign in TRAP_SIGNS:
                self.assertNotIn(sign, line, "Envoy logged a VM failure")

    def assert_one_worker(self) -> None:
        """Envoy runs one worker: every request of a test meets the same VM."""
        self.assertEqual(self.stack.stats("^server\\.concurrency$"), {"server.concurrency": 1})


# ---------------------------------------------------------------------------------------------
# An index child that stalls


class StalledIndexChildTest(VmHealth, StackTestCase):
    """Manifest rewriting on, the registry replaced by a crafted upstream: tag `stalls` is an
    index whose child answers `200` with its headers and part of its body, then hangs until the
    test ends; tag `missing` is an index whose child answers `404`. A mapped client asks for each
    tag; the mirrors are the stack's nginx."""

    child_timeout_s = CHILD_TIMEOUT_MS / 1000
    filter_overrides = {"manifests": {"rewrite": True, "child_timeout_ms": CHILD_TIMEOUT_MS}}

    STALLED_CHILD = image_manifest("a")
    MISSING_CHILD = image_manifest("b")
    INDEXES = {"stalls": index_of(STALLED_CHILD), "missing": index_of(MISSING_CHILD)}
    BLOB = b"a blob on the eu-west-3 mirror\n"

    @classmethod
    def setUpClass(cls) -> None:
        run_dir = RUN_ROOT / cls.__name__
        shutil.rmtree(run_dir, ignore_errors=True)
        cls.stack = stk.Stack(run_dir, ports=free_ports(), filter_overrides=cls.filter_overrides)
        cls.addClassCleanup(cls.stack.stop)
        cls.upstream = RawServer(cls.stack.ports.registry, cls.answer)
        cls.addClassCleanup(cls.upstream.close)
        cls.stack.start_mirrors()
        blob = cls.stack.mirror_blob_path(EU, sha256(cls.BLOB))
        blob.write_bytes(cls.BLOB)

    @classmethod
    def answer(cls, line: str, conn: socket.socket, stopped: threading.Event) -> None:
        path = line.split(" ")[1] if line.count(" ") == 2 else ""
        tag = path.rpartition("/manifests/")[2]
        if tag in cls.INDEXES:
            conn.sendall(answer_head(OCI_INDEX, len(cls.INDEXES[tag])) + cls.INDEXES[tag])
        elif tag == sha256(cls.STALLED_CHILD):
            child = cls.STALLED_CHILD
            conn.sendall(answer_head(OCI_MANIFEST, len(child)) + child[: len(child) // 2])
            stopped.wait()
        else:
            conn.sendall(answer_head("application/json", 0, "404 Not Found"))

    def setUp(self):
        # A fresh Envoy each time: a trap in one test must not be blamed on the next.
        self.stack.restart_envoy()
        self.assert_one_worker()
        self.upstream.requests.clear()

    def fetch_index(self, tag: str):
        """A mapped client's GET of `tag`, allowed up to the child timeout and some slack."""
        path = f"/v2/{REPOSITORY}/manifests/{tag}"
        headers = [("accept", OCI_INDEX), ("accept", OCI_MANIFEST), ("x-forwarded-for", EU_XFF),
                   ("user-agent", stk.RUNTIME_USER_AGENT)]
        got = timed_get(self.stack.port("envoy"), path, headers, self.child_timeout_s + SLACK_S)
        if got is None:
            self.fail(f"no answer to GET {path} within {self.child_timeout_s + SLACK_S:g}s")
        return got

    def assert_untouched_index(self, tag: str, got) -> None:
        status, headers, body, _ = got
        index = self.INDEXES[tag]
        self.assertEqual((status, body), (200, index))
        self.assertEqual((headers["content-type"], headers["content-length"]), (OCI_INDEX, str(len(index))))
        self.assertNotIn("docker-content-digest", headers)
        self.assertTrue(headers["x-blobsteer-decision"].startswith("manifest_untouched"), headers)

    def assert_still_steered(self) -> None:
        """A blob request of a mapped client: the filter checks the mirror and answers a 307."""
        digest = sha256(self.BLOB)
        before = self.counters()
        status, headers, _ = request(self.stack.port("envoy"), "GET", f"/v2/{REPOSITORY}/blobs/{digest}",
                                     [("x-forwarded-for", EU_XFF)])  # fmt: skip
        self.assertEqual((status, headers.get("location")), (307, self.backend_url(EU, digest)))
        self.assert_counted(before, {"redirected": 1, f"backend.{EU}.redirected": 1})

    def test_an_index_whose_child_is_missing_is_sent_untouched(self):
        """The baseline: a child the upstream does not have leaves the index as it came."""
        stats, log_from, before = self.vm_stats(), self.envoy_log_size(), self.counters()
        self.assert_untouched_index("missing", self.fetch_index("missing"))
        self.assert_counted(before, {"manifest_untouched": 1, "manifest.untouched.child_unavailable": 1})
        self.assert_still_steered()
        self.assert_vm_healthy(stats, log_from)

    def test_an_index_whose_child_stalls_after_its_headers_is_sent_untouched_in_bounded_time(self):
        stats, log_from, before = self.vm_stats(), self.envoy_log_size(), self.counters()
        got = self.fetch_index("stalls")
        self.assert_untouched_index("stalls", got)
        # The child was given its whole timeout, and not much more.
        self.assertGreaterEqual(got[3], self.child_timeout_s)
        self.assertLess(got[3], self.child_timeout_s + SLACK_S)
        self.assertEqual(self.upstream.requests, [
            f"GET /v2/{REPOSITORY}/manifests/stalls HTTP/1.1",
            f"GET /v2/{REPOSITORY}/manifests/{sha256(self.STALLED_CHILD)} HTTP/1.1",
        ])  # fmt: skip
        # Counted as a child that could not be had, like a missing one.
        self.assert_counted(before, {"manifest_untouched": 1, "manifest.untouched.child_unavailable": 1})
        # The same worker's VM still steers (the upstream is not asked for the blob).
        self.assert_still_steered()
        self.assertEqual(len(self.upstream.requests), 2)
        self.assert_vm_healthy(stats, log_from)


# ---------------------------------------------------------------------------------------------
# An existence check that stalls


class H2MirrorStack(stk.Stack):
    """The demo stack with aws-eu-west-3's mirror cluster speaking HTTP/2 (h2c)."""

    ANCHOR = "  - name: mirror_aws_eu_west_3\n    type: STATIC\n"
    H2 = (
        "    typed_extension_protocol_options:\n"
        "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
        '        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n'
        "        explicit_http_config: {http2_protocol_options: {}}\n"
    )

    def envoy_config(self) -> str:
        text = super().envoy_config()
        if text.count(self.ANCHOR) != 1:
            raise ValueError(f"envoy/demo.yaml.in no longer has one {self.ANCHOR.strip()!r}")
        return text.replace(self.ANCHOR, self.ANCHOR + self.H2)


class StalledExistenceCheckTest(VmHealth, StackTestCase):
    """The demo stack (real registry with the demo image) with aws-eu-west-3's mirror replaced by
    a crafted HTTP/2 mirror whose check answers can stall after their headers; the other mirrors
    are not started (their clients are not used)."""

    check_timeout_s = CHECK_TIMEOUT_MS / 1000
    filter_overrides = {"existence_check": {"timeout_ms": CHECK_TIMEOUT_MS}}

    @classmethod
    def setUpClass(cls) -> None:
        run_dir = RUN_ROOT / cls.__name__
        shutil.rmtree(run_dir, ignore_errors=True)
        cls.stack = H2MirrorStack(run_dir, ports=free_ports(), filter_overrides=cls.filter_overrides)
        cls.addClassCleanup(cls.stack.stop)
        cls.stack.ports.check_free()
        cls.stack.start_registry(redirect=False)
        cls.stack.seed()
        cls.mirror = H2Mirror(cls.stack.port("mirror:" + EU))
        cls.addClassCleanup(cls.mirror.close)
        cls.stack.start_envoy()

    def setUp(self):
        self.assert_one_worker()

    def ask(self, digest: str, results: list) -> None:
        """A mapped client's GET of blob `digest`; appends (status, headers, body, seconds) or
        None (no whole answer in time) to `results`."""
        timeout = self.check_timeout_s + SLACK_S
        results.append(timed_get(self.stack.port("envoy"), blob_path(digest), [("x-forwarded-for", EU_XFF)], timeout))

    def test_clients_waiting_for_a_check_that_stalls_after_its_headers_go_upstream_in_bounded_time(self):
        layer = self.image.layers["linux/amd64"][0]
        stats, log_from = self.vm_stats(), self.envoy_log_size()
        snapshot, before = Snapshot(self.stack), self.counters()
        self.mirror.stall.set()
        results: list = []
        clients = [threading.Thread(target=self.ask, args=(layer.digest, results)) for _ in range(3)]
        started = time.monotonic()
        clients[0].start()
        # The check is in flight (its headers sent back): the other clients wait for it too.
        stk.wait_for(lambda: self.mirror.requests, "the existence check to reach the mirror")
        for client in clients[1:]:
            client.start()
        for client in clients:
            client.join()
        elapsed = time.monotonic() - started
        self.assertNotIn(None, results, f"a client got no answer within {self.check_timeout_s + SLACK_S:g}s")
        for status, headers, body, _ in results:
            self.assertEqual((status, body), (200, layer.path.read_bytes()))
            self.assertTrue(headers["x-blobsteer-decision"].startswith("passed_mirror_missing"), headers)
        self.assertGreaterEqual(elapsed, self.check_timeout_s)
        self.assertLess(elapsed, self.check_timeout_s + SLACK_S)
        # The registry logs a request once it has sent the answer: wait for its log to say so.
        served = lambda: snapshot.blob_gets()["registry"]
        stk.wait_for(lambda: len(served()) >= 3, "the registry's access log to show its answers")
        self.assertEqual(served(), [layer.digest] * 3)
        # One check, answered with headers and then given up: Envoy reset its stream.
        self.assertEqual(self.mirror.requests, ["HEADERS stream 1"])
        self.assertIn((RST_STREAM, 0, 1), self.mirror.frames)
        self.assert_counted(before, {"passed_mirror_missing": 3, f"backend.{EU}.passed_mirror_missing": 3})
        after = self.counters()
        moved = {n: after[n] - before.get(n, 0) for n in after if n.startswith("check.") and after[n] != before.get(n, 0)}
        self.assertEqual((moved.pop("check.sent"), moved.pop("check.coalesced")), (1, 2))
        # The one answer is counted as some failure (which one is the filter's choice), not as
        # the 200 its headers carried.
        self.assertEqual(sum(moved.values()), 1, moved)
        self.assertNotIn("check.present", moved)

        # Later requests of the same worker are still steered, once the mirror answers whole.
        self.mirror.stall.clear()
        config = self.image.configs["linux/amd64"]
        before = self.counters()
        status, headers, _ = request(self.stack.port("envoy"), "GET", blob_path(config.digest),
                                     [("x-forwarded-for", EU_XFF)])  # fmt: skip
        self.assertEqual((status, headers.get("location")), (307, self.backend_url(EU, config.digest)))
        self.assert_counted(before, {"redirected": 1, f"backend.{EU}.redirected": 1})
        self.assertEqual(len(self.mirror.requests), 2)
        self.assert_vm_healthy(stats, log_from)
