"""A blob request that carries a body, on a connection that goes on: the answer to the next
request on that connection is the one its client asked for.

A `GET` has no use for a body, but a requester may send one (`Content-Length` or chunked). If
the filter held such a request (for an existence check) and Envoy forwarded it as the body
arrived, the request went upstream as a `GET` while the filter still meant it as a `HEAD`, and
the answer was sent with `content-length: 0` but with the blob after it: on HTTP/1.1 the next
response a client read on that connection was bytes of the requester's choosing; on HTTP/2 the
stream was reset. The filter now leaves every request with a body to the upstream
(`passed_request_body`), in every blob mode.

Each request here is for a blob not yet in the existence cache (a fresh Envoy per test), from
a mapped client, on one keep-alive connection followed by a second request; over HTTP/2,
nghttp sends both as streams of one connection."""

from __future__ import annotations

import hashlib
import http.client
import re
import subprocess

from harness import StackTestCase, stk

EU_XFF = "15.236.10.20"
# What a desynchronised connection would hand the next request as its response.
CRAFTED = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nx-crafted: yes\r\n\r\ncrafted"


class RequestBodyTest(StackTestCase):
    """verify_upstream with existence checks: the shape that held the request."""

    stack_options = {"filter_overrides": {"blobs": {"mode": "verify_upstream"}}}

    def setUp(self):
        self.stack.restart_envoy()

    def layer(self, index: int) -> str:
        layers = self.image.layers["linux/amd64"] + self.image.layers["linux/arm64"]
        return layers[index].digest

    def assert_blob_then_next(self, body, chunked: bool, digest: str) -> None:
        """GET the blob with `body`, then `/v2/` on the same connection: the first answer is
        the registry's blob, byte for byte and framed right; the second is the registry's own
        `/v2/` answer, not bytes the requester chose."""
        conn = http.client.HTTPConnection(stk.LOOPBACK, self.stack.port("envoy"), timeout=10)
        before = self.counters()
        try:
            headers = {"x-forwarded-for": EU_XFF}
            path = f"/v2/{stk.REPOSITORY}/blobs/{digest}"
            conn.request("GET", path, body=body, headers=headers, encode_chunked=chunked)
            first = conn.getresponse()
            data = first.read()
            self.assertEqual(first.status, 200)
            self.assertEqual("sha256:" + hashlib.sha256(data).hexdigest(), digest)
            self.assertEqual(int(first.getheader("content-length")), len(data))
            conn.request("GET", "/v2/", headers=headers)
            second = conn.getresponse()
            self.assertEqual(second.status, 200)
            self.assertIsNone(second.getheader("x-crafted"))
            self.assertEqual(second.read(), b"{}")
        finally:
            conn.close()
        self.assert_counted(before, {"passed_request_body": 1, "passed_not_blob": 1})
        self.assertEqual(self.counters().get("check.sent", 0), 0, "no check for it")

    def test_a_content_length_body_is_left_to_the_upstream(self):
        self.assert_blob_then_next(CRAFTED, chunked=False, digest=self.layer(0))

    def test_a_chunked_body_is_left_to_the_upstream(self):
        self.assert_blob_then_next(iter([CRAFTED[:20], CRAFTED[20:]]), chunked=True, digest=self.layer(1))

    def test_over_http2_both_requests_on_one_connection_are_answered(self):
        """nghttp sends the blob `GET` with a body, then `/v2/`, as two streams of one
        connection: both are answered 200, and no stream is reset."""
        body = self.stack.run_dir / "crafted-body"
        body.write_bytes(CRAFTED)
        urls = [f"{self.stack.url()}/v2/{stk.REPOSITORY}/blobs/{self.layer(2)}", f"{self.stack.url()}/v2/"]
        before = self.counters()
        result = subprocess.run(
            ["nghttp", "-v", "-H", ":method: GET", "-H", f"x-forwarded-for: {EU_XFF}", "-d", str(body), *urls],
            capture_output=True, text=True, errors="replace", timeout=20,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)
        statuses = re.findall(r"recv \(stream_id=(\d+)\) :status: (\d+)", result.stdout)
        self.assertEqual([status for _, status in statuses], ["200", "200"], result.stdout[-2000:])
        self.assertEqual(len({stream for stream, _ in statuses}), 2)
        self.assertNotIn("RST_STREAM", result.stdout)
        self.assert_counted(before, {"passed_request_body": 1, "passed_not_blob": 1})


class RequestBodyRedirectModeTest(RequestBodyTest):
    """The redirect mode with existence checks: a held request that went upstream as its body
    arrived was counted `redirected` while the registry's blob came cut short."""

    stack_options = {}
