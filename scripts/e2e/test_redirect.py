"""Blob redirects with real clients: skopeo and containerd pull the multi-arch demo image through
Envoy, and the logs of the registry and the mirrors say who served every blob."""

from __future__ import annotations

import tempfile
from pathlib import Path

from harness import Snapshot, StackTestCase, blob_path, request


class RedirectModeTest(StackTestCase):
    """`blobs.mode: redirect`, the default: the filter answers blob requests itself."""

    with_containerd = True

    def pull_with_skopeo(self, via: str, reference: str) -> set[str]:
        """skopeo copy to `dir:`; checks every file hashes to its name; returns the digests."""
        with tempfile.TemporaryDirectory() as dest:
            self.stack.skopeo(
                "copy", "--src-tls-verify=false",
                f"docker://{self.stack.image_ref(via, reference)}", f"dir:{dest}",
            )  # fmt: skip
            self.assert_dir_copy_verified(Path(dest), self.platform_blobs())
        return self.platform_blobs()

    def assert_blob_requests_counted(self, snapshot: Snapshot, before: dict, action: str, backend: str | None):
        """The counters moved exactly as the access log says: one `action` per blob request,
        `passed_not_blob` for the rest."""
        records = snapshot.envoy_requests()
        blobs = [r for r in records if "/blobs/" in r["path"]]
        self.assertEqual(len(blobs), len(self.platform_blobs()), records)
        expected = {action: len(blobs), "passed_not_blob": len(records) - len(blobs)}
        if backend:
            expected[f"backend.{backend}.{action}"] = len(blobs)
        self.assert_counted(before, expected)
        return blobs

    def test_skopeo_by_tag_and_by_digest_downloads_every_blob_from_the_region_mirror(self):
        for reference in ("1.0", self.image.index.digest):
            with self.subTest(reference=reference):
                snapshot, before = Snapshot(self.stack), self.counters()
                digests = self.pull_with_skopeo("aws-eu-west-3", reference)
                self.assert_served_by(snapshot, "aws-eu-west-3", digests)
                blobs = self.assert_blob_requests_counted(snapshot, before, "redirected", "aws-eu-west-3")
                for record in blobs:
                    digest = record["path"].rpartition("/")[2]
                    self.assertEqual(record["status"], 307)
                    self.assertEqual(record["location"], self.backend_url("aws-eu-west-3", digest))
                    self.assertEqual(
                        record["decision"],
                        "redirected; client=15.236.10.20; prefix=15.236.0.0/15; backend=aws-eu-west-3",
                    )

    def test_ctr_by_tag_and_by_digest_downloads_every_blob_from_the_region_mirror(self):
        for via, reference in (("aws-us-east-1", "1.0"), ("gcp-europe-north1", self.image.index.digest)):
            with self.subTest(via=via, reference=reference):
                snapshot, before = Snapshot(self.stack), self.counters()
                result = self.containerd.pull(self.stack.image_ref(via, reference))
                # ctr verified each blob's digest on fetch and the layers' diff_ids on unpack.
                self.assertIn("done", result.stdout)
                self.assertIn(self.image.index.digest, result.stdout)
                self.assert_served_by(snapshot, via, self.platform_blobs())
                self.assert_blob_requests_counted(snapshot, before, "redirected", via)

    def test_unmapped_and_garbage_clients_download_every_blob_from_the_registry(self):
        for via, action in (("unmapped", "passed_no_backend"), ("garbage", "passed_no_client_ip")):
            with self.subTest(via=via, client="skopeo"):
                snapshot, before = Snapshot(self.stack), self.counters()
                self.pull_with_skopeo(via, "1.0")
                self.assert_served_by(snapshot, "registry", self.platform_blobs())
                for record in self.assert_blob_requests_counted(snapshot, before, action, None):
                    self.assertEqual(record["status"], 200)
                    self.assertTrue(record["decision"].startswith(action), record)
            with self.subTest(via=via, client="ctr"):
                snapshot = Snapshot(self.stack)
                self.containerd.pull(self.stack.image_ref(via, self.image.index.digest))
                self.assert_served_by(snapshot, "registry", self.platform_blobs())

    def test_each_address_form_gets_its_backend_or_goes_upstream(self):
        layer = self.image.layers["linux/amd64"][1]
        eu = self.backend_url("aws-eu-west-3", layer.digest)
        us = self.backend_url("aws-us-east-1", layer.digest)
        cases = [
            # (x-forwarded-for lines, expected status, expected location)
            (["15.236.10.20"], 307, eu),
            (["[2a05:d012::1]:443"], 307, eu),
            (["::ffff:44.192.0.1"], 307, us),
            (["15.236.10.20, 44.192.0.1"], 307, us),
            (["44.192.0.1", "15.236.10.20"], 307, eu),  # two header lines: the last one is rightmost
            (["15.193.0.5"], 200, None),  # AWS GLOBAL: non-routable
            (["198.51.100.7"], 200, None),
            (["15.236.10.20, garbage"], 200, None),
            ([], 200, None),
        ]
        for method in ("GET", "HEAD"):
            for xff, status, location in cases:
                with self.subTest(method=method, xff=xff):
                    got, headers, body = request(
                        self.stack.port("envoy"), method, blob_path(layer.digest),
                        [("x-forwarded-for", line) for line in xff],
                    )  # fmt: skip
                    self.assertEqual((got, headers.get("location")), (status, location))
                    if status == 200 and method == "GET":
                        self.assertEqual(len(body), layer.size)
