"""An upstream that redirects blob requests itself (Distribution's `redirect` storage middleware,
the way a registry in front of a bucket works): the filter rewrites its `Location` to the
client's backend, and leaves it alone for everyone else."""

from __future__ import annotations

import tempfile
from pathlib import Path

from harness import Snapshot, StackTestCase, blob_path, request

# Distribution keeps only the scheme and host of the base URL. Nothing listens there: only the
# Location headers are checked for clients the filter does not steer.
STAND_IN = "http://127.0.0.1:9"


class LocationRewriteTest(StackTestCase):
    stack_options = {"registry_redirect_to": STAND_IN, "filter_overrides": {"blobs": {"mode": "verify_upstream"}}}

    def ask(self, method: str, xff: str):
        layer = self.image.layers["linux/amd64"][0].digest
        status, got, _ = request(self.stack.port("envoy"), method, blob_path(layer), [("x-forwarded-for", xff)])
        return layer, status, got

    def test_the_upstream_redirect_of_a_mapped_client_points_at_its_backend(self):
        for method in ("GET", "HEAD"):
            with self.subTest(method=method):
                before, snapshot = self.counters(), Snapshot(self.stack)
                layer, status, got = self.ask(method, "44.192.1.2")
                self.assertEqual((status, got.get("location")), (307, self.backend_url("aws-us-east-1", layer)))
                self.assertEqual(got["x-blobsteer-decision"].split(";")[0], "location_rewritten")
                self.assert_counted(before, {"location_rewritten": 1, "backend.aws-us-east-1.location_rewritten": 1})
                asked = self.stack.registry_requests()[snapshot.registry :]
                self.assertEqual([(r.method, r.status) for r in asked], [("HEAD", 307)])

    def test_the_upstream_redirect_of_an_unmapped_client_is_untouched(self):
        for method in ("GET", "HEAD"):
            with self.subTest(method=method):
                _, status, got = self.ask(method, "198.51.100.7")
                self.assertEqual(status, 307)
                self.assertTrue(got["location"].startswith(STAND_IN + "/"), got["location"])

    def test_skopeo_follows_the_rewritten_redirect_to_the_mirror(self):
        snapshot = Snapshot(self.stack)
        with tempfile.TemporaryDirectory() as dest:
            self.stack.skopeo_copy("gcp-europe-north1", dest)
            self.assert_dir_copy_verified(Path(dest), self.platform_blobs())
        self.assert_served_by(snapshot, "gcp-europe-north1", self.platform_blobs())

    def test_blobs_off_leaves_the_upstream_redirect_alone(self):
        self.stack.filter_overrides = {"blobs": {"mode": "off"}}
        self.addCleanup(self.stack.restart_envoy)
        self.addCleanup(setattr, self.stack, "filter_overrides", self.stack_options["filter_overrides"])
        self.stack.restart_envoy()
        _, status, got = self.ask("GET", "44.192.1.2")
        self.assertEqual(status, 307)
        self.assertTrue(got["location"].startswith(STAND_IN + "/"), got["location"])
        self.assertEqual(got["x-blobsteer-decision"], "passed_blobs_off")
