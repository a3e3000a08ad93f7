"""A mirror that lacks a blob, refuses, fails, is down or hangs never breaks a pull: the filter
checks the mirror first (HEAD through the backend's cluster) and sends the client upstream when
the mirror cannot serve. Each fault is injected into the real stack."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from harness import Snapshot, StackTestCase, blob_path, fake_mirror, request, stk

EU = "aws-eu-west-3"
EU_XFF = "15.236.10.20"
TTL_S = 2
TIMEOUT_MS = 1500


class MirrorFaultsTest(StackTestCase):
    stack_options = {
        "filter_overrides": {"existence_check": {"negative_ttl_s": TTL_S, "timeout_ms": TIMEOUT_MS}}
    }
    with_containerd = True

    def setUp(self):
        # A fresh Envoy: an empty existence cache (shared data lives in the process) and counters.
        self.stack.restart_envoy()

    def pull(self) -> dict[str, list[str]]:
        """skopeo pulls the demo image as a client in eu-west-3; every blob's digest verified.
        Returns who served which blob."""
        snapshot = Snapshot(self.stack)
        with tempfile.TemporaryDirectory() as dest:
            self.stack.skopeo_copy(EU, dest)
            self.assert_dir_copy_verified(Path(dest), self.platform_blobs())
        return snapshot.blob_gets()

    def moved(self, before: dict[str, int], *names: str) -> dict[str, int]:
        after = self.counters()
        return {name: after.get(name, 0) - before.get(name, 0) for name in names}

    def assert_all_from_registry(self, served: dict[str, list[str]]) -> None:
        self.assertEqual(set(served["registry"]), self.platform_blobs())
        self.assertEqual(served[EU], [])

    def test_a_layer_the_mirror_lacks_comes_from_the_registry_the_rest_from_the_mirror(self):
        layer = self.image.layers["linux/amd64"][1].digest
        path = self.stack.mirror_blob_path(EU, layer)
        saved = path.read_bytes()
        path.unlink()
        self.addCleanup(path.write_bytes, saved)

        before = self.counters()
        served = self.pull()
        self.assertEqual(served["registry"], [layer])
        self.assertEqual(set(served[EU]), self.platform_blobs() - {layer})
        self.assertEqual(
            self.moved(before, "redirected", "passed_mirror_missing", "check.sent", "check.present", "check.not_found"),
            {"redirected": 2, "passed_mirror_missing": 1, "check.sent": 3, "check.present": 2, "check.not_found": 1},
        )
        # containerd, next: every answer now comes from the cache, and the pull still works.
        before, snapshot = self.counters(), Snapshot(self.stack)
        self.containerd.pull(self.stack.image_ref(EU))
        served = snapshot.blob_gets()
        self.assertEqual((served["registry"], set(served[EU])), ([layer], self.platform_blobs() - {layer}))
        self.assertEqual(
            self.moved(before, "check.sent", "check.cache_present", "check.cache_absent"),
            {"check.sent": 0, "check.cache_present": 2, "check.cache_absent": 1},
        )

    def test_a_mirror_that_refuses_or_fails_is_skipped(self):
        for status, outcome in ((403, "check.forbidden"), (500, "check.failed")):
            with self.subTest(status=status):
                self.stack.restart_envoy()
                self.stack.mirrors.set_fault(EU, status)
                self.addCleanup(self.stack.mirrors.set_fault, EU, None)
                before = self.counters()
                self.assert_all_from_registry(self.pull())
                self.assertEqual(
                    self.moved(before, "redirected", "passed_mirror_missing", outcome),
                    {"redirected": 0, "passed_mirror_missing": 3, outcome: 3},
                )
                self.stack.mirrors.set_fault(EU, None)

    def test_a_mirror_that_is_down_is_skipped(self):
        self.stack.stop_mirrors()
        self.addCleanup(self.stack.start_mirrors)
        before = self.counters()
        self.assert_all_from_registry(self.pull())
        self.assertEqual(
            self.moved(before, "redirected", "passed_mirror_missing", "check.unavailable"),
            {"redirected": 0, "passed_mirror_missing": 3, "check.unavailable": 3},
        )

    def test_a_mirror_that_hangs_is_given_up_after_the_timeout(self):
        self.stack.stop_mirrors()
        self.addCleanup(self.stack.start_mirrors)
        hung = fake_mirror(self.stack.port("mirror:" + EU), delay=None)
        self.addCleanup(hung.close)
        before = self.counters()
        started = time.monotonic()
        self.assert_all_from_registry(self.pull())
        self.assertGreaterEqual(time.monotonic() - started, TIMEOUT_MS / 1000)
        self.assertEqual(
            self.moved(before, "redirected", "passed_mirror_missing", "check.timeout"),
            {"redirected": 0, "passed_mirror_missing": 3, "check.timeout": 3},
        )
        self.assertEqual(len(hung.requests), 3)
        self.assertTrue(all(line.startswith("HEAD /containers/images/sha256:") for line in hung.requests))

    def test_clients_return_to_the_mirror_after_the_negative_cache_time(self):
        layer = self.image.layers["linux/amd64"][0].digest
        ask = lambda: request(self.stack.port("envoy"), "HEAD", blob_path(layer), [("x-forwarded-for", EU_XFF)])
        self.stack.mirrors.set_fault(EU, 500)
        self.addCleanup(self.stack.mirrors.set_fault, EU, None)
        self.assertEqual(ask()[0], 200)  # from the registry
        self.stack.mirrors.set_fault(EU, None)
        before = self.counters()
        self.assertEqual(ask()[0], 200)  # the mirror is back, but its absence is still believed
        self.assertEqual(self.moved(before, "check.sent", "check.cache_absent"), {"check.sent": 0, "check.cache_absent": 1})
        stk.wait_for(lambda: ask()[0] == 307, "clients to return to the mirror", timeout=TTL_S + 5)
        self.assertEqual(self.moved(before, "check.sent", "check.present"), {"check.sent": 1, "check.present": 1})

    def test_concurrent_requests_for_one_blob_share_one_check(self):
        self.stack.stop_mirrors()
        self.addCleanup(self.stack.start_mirrors)
        slow = fake_mirror(self.stack.port("mirror:" + EU), delay=0.8)  # under the timeout, wide enough for every client to arrive first
        self.addCleanup(slow.close)
        layer = self.image.layers["linux/amd64"][0].digest
        results: list[int] = []
        def one():
            results.append(request(self.stack.port("envoy"), "HEAD", blob_path(layer), [("x-forwarded-for", EU_XFF)])[0])
        clients = [threading.Thread(target=one) for _ in range(8)]
        before = self.counters()
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        self.assertEqual(results, [307] * 8)
        self.assertEqual(len(slow.requests), 1, slow.requests)
        self.assertEqual(
            self.moved(before, "check.sent", "check.coalesced", "redirected"),
            {"check.sent": 1, "check.coalesced": 7, "redirected": 8},
        )

    def test_the_registry_down_gets_envoy_503_through_and_envoy_keeps_serving(self):
        self.stack.stop_registry()
        self.addCleanup(self.stack.start_registry)
        layer = self.image.layers["linux/amd64"][0].digest
        manifest, got, _ = request(self.stack.port("envoy"), "GET", f"/v2/{stk.REPOSITORY}/manifests/1.0",
                                   [("x-forwarded-for", EU_XFF)])  # fmt: skip
        self.assertEqual((manifest, got.get("x-blobsteer-decision")), (503, "passed_not_blob"))
        unmapped, got, _ = request(self.stack.port("envoy"), "GET", blob_path(layer), [("x-forwarded-for", "198.51.100.7")])
        self.assertEqual((unmapped, got.get("x-blobsteer-decision")), (503, "passed_no_backend; client=198.51.100.7"))
        # Blob redirects do not need the registry at all.
        status, got, _ = request(self.stack.port("envoy"), "GET", blob_path(layer), [("x-forwarded-for", EU_XFF)])
        self.assertEqual((status, got["location"]), (307, self.backend_url(EU, layer)))
        self.assertEqual(stk.http_request(self.stack.ports.admin, "/ready")[2], b"LIVE\n")

    def test_an_envoy_restart_between_pulls_keeps_serving(self):
        before = self.counters()
        served = self.pull()
        self.assertEqual((served["registry"], set(served[EU])), ([], self.platform_blobs()))
        self.assertEqual(self.moved(before, "check.sent"), {"check.sent": 3})
        self.stack.restart_envoy()
        served = self.pull()
        self.assertEqual((served["registry"], set(served[EU])), ([], self.platform_blobs()))
        # A new process starts with an empty cache: the mirror is asked again.
        self.assertEqual(self.counters()["check.sent"], 3)
