"""`blobs.mode: verify_upstream` in front of a registry with htpasswd auth: the registry decides
who may have a blob, the mirror serves it."""

from __future__ import annotations

import base64
import hashlib
import tempfile
from pathlib import Path

from harness import BACKENDS, Snapshot, StackTestCase, blob_path, request

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

    def answer_shape(self, method: str, digest: str, *headers: tuple[str, str]) -> tuple:
        """What a client can see of an answer: status, headers (but the clock's) and body."""
        status, got, body = self.blob_request(method, digest, *headers)
        timing = ("date", "x-envoy-upstream-service-time")
        return status, sorted((k, v) for k, v in got.items() if k not in timing), body

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

    def test_a_refusal_tells_nothing_of_the_mirror_which_hears_nothing_of_it(self):
        """Unauthenticated requests for a blob the mirror holds and for one it lacks get the
        same answer, and the mirror is never asked: before, the mirror was asked first (one HEAD
        per unauthenticated request) and a blob it lacked was refused with the registry's body."""
        self.stack.restart_envoy()  # an empty existence cache: nothing is known of either blob
        held = self.image.layers["linux/amd64"][1].digest
        before = {name: len(self.stack.mirror_requests(name)) for name in BACKENDS}
        for method in ("GET", "HEAD"):
            with self.subTest(method=method):
                self.assertEqual(self.answer_shape(method, held), self.answer_shape(method, MISSING))
        after = {name: len(self.stack.mirror_requests(name)) for name in BACKENDS}
        self.assertEqual(after, before, "no mirror was asked about a refused request")
        self.assertEqual(self.counters().get("check.sent", 0), 0)

    def test_a_blob_the_registry_lacks_gets_its_404_and_the_mirror_is_not_asked(self):
        for method in ("GET", "HEAD"):
            with self.subTest(method=method):
                before, snapshot = self.counters(), Snapshot(self.stack)
                status, got, body = self.blob_request(method, MISSING, self.basic())
                self.assertEqual((status, body), (404, b""))
                self.assertNotIn("location", got)
                self.assert_counted(before, {
                    "passed_upstream_answer": 1,
                    "backend.aws-eu-west-3.passed_upstream_answer": 1,
                })  # fmt: skip
                asked = self.stack.registry_requests()[snapshot.registry :]
                self.assertEqual([(r.method, r.status) for r in asked], [("HEAD", 404)])
                self.assertEqual(self.stack.mirror_requests("aws-eu-west-3")[snapshot.mirrors["aws-eu-west-3"] :], [])

    def test_a_blob_the_mirror_lacks_comes_from_the_registry_after_one_marked_redirect(self):
        """The registry said yes, the mirror lacks the blob: a HEAD gets the registry's answer;
        a GET (sent up as HEAD, so without bytes) is sent back to its own path, marked, and the
        registry serves the bytes to that."""
        self.stack.restart_envoy()
        layer = self.image.layers["linux/amd64"][1]
        self.hide_from_mirror(layer.digest)
        before, snapshot = self.counters(), Snapshot(self.stack)
        status, got, _ = self.blob_request("HEAD", layer.digest, self.basic())
        self.assertEqual((status, got.get("content-length")), (200, str(layer.size)))
        status, got, _ = self.blob_request("GET", layer.digest, self.basic())
        marked = blob_path(layer.digest) + "?blobsteer=registry"
        self.assertEqual((status, got.get("location")), (307, marked))
        status, _, body = request(self.stack.port("envoy"), "GET", marked, [("x-forwarded-for", EU), self.basic()])
        self.assertEqual((status, hashlib.sha256(body).hexdigest()), (200, layer.digest.removeprefix("sha256:")))
        self.assert_counted(before, {
            "passed_mirror_missing": 2,
            "backend.aws-eu-west-3.passed_mirror_missing": 2,
            "passed_registry_retry": 1,
        })  # fmt: skip
        self.assertEqual(self.moved_checks(before), {"check.sent": 1, "check.not_found": 1, "check.cache_absent": 1})
        asked = self.stack.registry_requests()[snapshot.registry :]
        self.assertEqual([(r.method, r.status) for r in asked], [("HEAD", 200), ("HEAD", 200), ("GET", 200)])

        # Real clients follow the redirect with their credentials: every blob is verified, the
        # hidden one served by the registry, the rest by the mirror.
        snapshot = Snapshot(self.stack)
        with tempfile.TemporaryDirectory() as dest:
            self.stack.skopeo_copy("aws-eu-west-3", dest, credentials=self.stack.credentials)
            self.assert_dir_copy_verified(Path(dest), self.platform_blobs())
        self.assert_split(snapshot, layer.digest)
        snapshot = Snapshot(self.stack)
        self.containerd.pull(self.stack.image_ref("aws-eu-west-3"), credentials=self.stack.credentials)
        self.assert_split(snapshot, layer.digest)

    def hide_from_mirror(self, digest: str) -> None:
        path = self.stack.mirror_blob_path("aws-eu-west-3", digest)
        saved = path.read_bytes()
        path.unlink()
        self.addCleanup(path.write_bytes, saved)

    def moved_checks(self, before: dict[str, int]) -> dict[str, int]:
        after = self.counters()
        moved = {n: after[n] - before.get(n, 0) for n in after if n.startswith("check.")}
        return {n: v for n, v in moved.items() if v}

    def assert_split(self, snapshot: Snapshot, hidden: str) -> None:
        served = snapshot.blob_gets()
        self.assertEqual(served["registry"], [hidden])
        self.assertEqual(set(served["aws-eu-west-3"]), self.platform_blobs() - {hidden})

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
