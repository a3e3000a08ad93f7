"""What an operator reads about a request the filter changed or left alone: Envoy's access log
keeps the client's own request line beside the one sent upstream, and every manifest answer
says what the filter decided (decision header and counters), including the registry's 404 and
a pull pinned to a digest the filter did not produce."""

from __future__ import annotations

from harness import Snapshot, StackTestCase, request, stk

EU = "15.236.10.20"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class ManifestAccessLogTest(StackTestCase):
    stack_options = {"filter_overrides": {"manifests": {"rewrite": True}}}

    def ask(self, method: str, path: str):
        headers = [("x-forwarded-for", EU), ("accept", INDEX), ("accept", MANIFEST), ("user-agent", stk.RUNTIME_USER_AGENT)]
        return request(self.stack.port("envoy"), method, path, headers)

    def test_a_head_sent_upstream_as_get_is_logged_with_the_clients_own_request(self):
        snapshot = Snapshot(self.stack)
        path = f"/v2/{stk.REPOSITORY}/manifests/{stk.TAG}"
        status, headers, _ = self.ask("HEAD", path)
        self.assertEqual(status, 200)
        self.assertTrue(headers["x-blobsteer-decision"].startswith("manifest_"), headers)
        [record] = snapshot.envoy_requests()
        self.assertEqual((record["method"], record["path"]), ("GET", path), "as sent upstream")
        self.assertEqual(record["client_request"], f"HEAD {path}")

    def test_an_unchanged_request_logs_no_client_request(self):
        snapshot = Snapshot(self.stack)
        self.ask("GET", f"/v2/{stk.REPOSITORY}/tags/list")
        [record] = snapshot.envoy_requests()
        self.assertIsNone(record["client_request"])

    def test_the_registrys_404_for_a_tag_is_counted_and_named(self):
        before = self.counters()
        status, headers, _ = self.ask("GET", f"/v2/{stk.REPOSITORY}/manifests/no-such-tag")
        self.assertEqual(status, 404)
        self.assertTrue(headers["x-blobsteer-decision"].startswith("manifest_untouched; client=15.236.10.20"))
        self.assert_counted(before, {"manifest_untouched": 1, "manifest.untouched.upstream_status": 1})

    def test_a_pull_pinned_to_a_digest_the_filter_did_not_produce_is_counted_and_named(self):
        before = self.counters()
        digest = self.image.index.digest
        status, headers, _ = self.ask("GET", f"/v2/{stk.REPOSITORY}/manifests/{digest}")
        self.assertEqual((status, headers.get("docker-content-digest")), (200, digest))
        self.assertEqual(headers["x-blobsteer-decision"], "passed_pinned_manifest")
        self.assert_counted(before, {"passed_pinned_manifest": 1})


class VerifyUpstreamAccessLogTest(StackTestCase):
    stack_options = {"filter_overrides": {"blobs": {"mode": "verify_upstream"}}}

    def test_a_get_sent_upstream_as_head_is_logged_with_the_clients_own_request(self):
        layer = self.image.layers["linux/amd64"][0].digest
        path = f"/v2/{stk.REPOSITORY}/blobs/{layer}"
        snapshot = Snapshot(self.stack)
        status, headers, _ = request(self.stack.port("envoy"), "GET", path, [("x-forwarded-for", EU)])
        self.assertEqual((status, headers.get("location")), (307, self.backend_url("aws-eu-west-3", layer)))
        [record] = snapshot.envoy_requests()
        self.assertEqual((record["method"], record["client_request"]), ("HEAD", f"GET {path}"))
