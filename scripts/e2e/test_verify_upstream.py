"""`blobs.mode: verify_upstream` in front of a registry with htpasswd auth: the registry decides
who may have a blob, the mirror serves it."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

from harness import Snapshot, StackTestCase, blob_path, request

EU = "15.236.10.20"
MISSING = "sha256:" + "0" * 64


class VerifyUpstreamTest(StackTestCase):
    stack_options = {"registry_auth": True, "filter_overrides": {"blobs": {"mode": "verify_upstream"}}}
    with_containerd = True

    def basic(self, password: str | None = None) -> tuple[str, str]:
        creds = self.stack.credentials
        token = base64.b64encode(f"{creds.user}:{password or creds.password}".encode()).decode()
        return ("authorization", f"Basic {token}")

    def blob_request(self, method: str, digest: str, *headers: tuple[str, str]):
        return request(self.stack.port("envoy"), method, blob_path(digest), [("x-forwarded-for", EU), *headers])

    def test_the_registry_refusal_reaches_the_client_and_nobody_is_redirected(self):
        layer = self.image.layers["linux/amd64"][1].digest
        for what, headers in (("no credentials", []), ("wrong password", [self.basic("wrong")])):
            for method in ("GET", "HEAD"):
                with self.subTest(what, method=method):
                    before, snapshot = self.counters(), Snapshot(self.stack)
                    status, got, body = self.blob_request(method, layer, *headers)
                    self.assertEqual(status, 401)
                    self.assertNotIn("location", got)
                    self.assertIn("www-authenticate", got)
                    self.assertEqual(body, b"")
                    if method == "GET":
                        # The registry answered a HEAD: the GET client gets an honest empty body.
                        self.assertEqual(got["content-length"], "0")
                    self.assert_counted(before, {
                        "passed_upstream_answer": 1,
                        "backend.aws-eu-west-3.passed_upstream_answer": 1,
                    })  # fmt: skip
                    asked = self.stack.registry_requests()[snapshot.registry :]
                    self.assertEqual([(r.method, r.status) for r in asked], [("HEAD", 401)])

    def test_a_blob_the_mirror_lacks_goes_upstream_untouched(self):
        # Not on the mirror (its check says 404), so the registry answers the request as sent.
        for method in ("GET", "HEAD"):
            with self.subTest(method=method):
                before, snapshot = self.counters(), Snapshot(self.stack)
                status, got, body = self.blob_request(method, MISSING, self.basic())
                self.assertEqual(status, 404)
                self.assertNotIn("location", got)
                if method == "GET":
                    self.assertIn(b"BLOB_UNKNOWN", body)
                self.assert_counted(before, {
                    "passed_mirror_missing": 1,
                    "backend.aws-eu-west-3.passed_mirror_missing": 1,
                })  # fmt: skip
                asked = self.stack.registry_requests()[snapshot.registry :]
                self.assertEqual([(r.method, r.status) for r in asked], [(method, 404)])

    def test_an_authorized_blob_request_is_redirected_once_the_registry_says_yes(self):
        layer = self.image.layers["linux/amd64"][1].digest
        for method in ("GET", "HEAD"):
            with self.subTest(method=method):
                before, snapshot = self.counters(), Snapshot(self.stack)
                status, got, _ = self.blob_request(method, layer, self.basic())
                self.assertEqual((status, got.get("location")), (307, self.backend_url("aws-eu-west-3", layer)))
                self.assert_counted(before, {"redirected": 1, "backend.aws-eu-west-3.redirected": 1})
                asked = self.stack.registry_requests()[snapshot.registry :]
                self.assertEqual([(r.method, r.status, r.bytes) for r in asked], [("HEAD", 200, 0)])

    def test_a_range_request_is_redirected_and_the_mirror_serves_the_range(self):
        """containerd resumes a layer with `Range`: the registry's yes to it (a 206 to the
        `HEAD`) becomes the redirect, and the mirror serves the range the client asks again.
        Passed on, it was a 206 with `content-length: 0` and no bytes."""
        layer = self.image.layers["linux/amd64"][0]
        data = layer.path.read_bytes()
        location = self.backend_url("aws-eu-west-3", layer.digest)
        for extra in ([], [("if-range", f'"{layer.digest}"')]):
            with self.subTest(if_range=bool(extra)):
                before = self.counters()
                status, got, _ = self.blob_request("GET", layer.digest, self.basic(), ("range", "bytes=10-19"), *extra)
                self.assertEqual((status, got.get("location")), (307, location))
                self.assert_counted(before, {"redirected": 1, "backend.aws-eu-west-3.redirected": 1})
                port = int(location.split("/")[2].rpartition(":")[2])
                path = "/" + location.split("/", 3)[3]
                status, got, body = request(port, "GET", path, [("range", "bytes=10-19")])
                self.assertEqual((status, got.get("content-range"), body), (206, f"bytes 10-19/{len(data)}", data[10:20]))

    def test_clients_with_credentials_pull_every_blob_from_the_mirror(self):
        snapshot = Snapshot(self.stack)
        with tempfile.TemporaryDirectory() as dest:
            self.stack.skopeo_copy("aws-eu-west-3", dest, credentials=self.stack.credentials)
            self.assert_dir_copy_verified(Path(dest), self.platform_blobs())
        self.assert_served_by(snapshot, "aws-eu-west-3", self.platform_blobs())

        snapshot = Snapshot(self.stack)
        self.containerd.pull(self.stack.image_ref("aws-eu-west-3"), credentials=self.stack.credentials)
        self.assert_served_by(snapshot, "aws-eu-west-3", self.platform_blobs())
        heads = {r.path.rpartition("/")[2] for r in self.stack.registry_requests()[snapshot.registry :]
                 if r.method == "HEAD" and "/blobs/" in r.path and r.status == 200}  # fmt: skip
        self.assertEqual(heads, self.platform_blobs(), "the registry authorized every blob")

    def test_clients_without_credentials_get_nothing(self):
        snapshot = Snapshot(self.stack)
        with tempfile.TemporaryDirectory() as dest:
            result = self.stack.skopeo(
                "copy", "--src-tls-verify=false", f"docker://{self.stack.image_ref('aws-eu-west-3')}",
                f"dir:{dest}", check=False,
            )  # fmt: skip
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("unauthorized", result.stdout.lower())
        self.assert_served_by(snapshot, "aws-eu-west-3", set())
