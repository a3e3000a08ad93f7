"""Hostile requests, one table row each: none may get a 5xx from the filter, a `Location` outside
the configured backends, or crash the wasm VM. What the filter leaves alone must reach the client
exactly as the registry answers it."""

from __future__ import annotations

import dataclasses

from harness import StackTestCase, blob_path, request

HEX = "d0852262d08fb507d7786cc9a96e1646d59476e1d849fefc8a0cc097b19a7e90"
EU = "15.236.10.20"


@dataclasses.dataclass
class Row:
    """One request and what must happen to it."""

    what: str
    method: str = "GET"
    path: str = ""  # default: a real blob of the demo image
    xff: list[str | bytes] = dataclasses.field(default_factory=lambda: [EU])
    extra: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    redirect: str | None = None  # the backend the client must be sent to
    passed: str | None = None  # the filter's reason for leaving the request alone
    envoy_status: int | None = None  # Envoy itself refuses it before any filter runs


ROWS = [
    Row("1,000 addresses, a mapped one rightmost", xff=[", ".join(["198.51.100.1"] * 999 + [EU])],
        redirect="aws-eu-west-3"),
    Row("1,000 addresses, garbage rightmost", xff=[", ".join([EU] * 999 + ["x"])], passed="passed_no_client_ip"),
    Row("1,000 header lines", xff=["198.51.100.9"] * 999 + [EU], redirect="aws-eu-west-3"),
    Row("10,000 addresses (over Envoy's header limit)", xff=[",".join(["1.1.1.1"] * 9_999 + [EU])], envoy_status=431),
    Row("5,000 addresses (under it)", xff=[",".join(["1.1.1.1"] * 4_999 + [EU])], redirect="aws-eu-west-3"),
    Row("40 KiB of garbage in x-forwarded-for", xff=["a" * 40_000], passed="passed_no_client_ip"),
    Row("a 60 KiB header", extra=[("x-pad", "p" * 61_440)], envoy_status=431),
    Row("NUL in x-forwarded-for", xff=[f"{EU}\0"], envoy_status=400),
    Row("bytes that are not UTF-8 in x-forwarded-for", xff=[EU.encode() + b"\xc3\x28"], passed="passed_no_client_ip"),
    Row("non-ASCII digits in x-forwarded-for", xff=["１５.236.10.20".encode()], passed="passed_no_client_ip"),
    Row("IPv6 zone id", xff=["fe80::1%eth0"], passed="passed_no_client_ip"),
    Row("port out of range", xff=[f"{EU}:65536"], passed="passed_no_client_ip"),
    Row("bracketed IPv4", xff=[f"[{EU}]"], passed="passed_no_client_ip"),
    Row("dot segments in the digest", path=f"/v2/demo/hello/blobs/sha256:../../{HEX[6:]}", passed="passed_not_blob"),
    Row("dot segments in the name", path=f"/v2/demo/../hello/blobs/sha256:{HEX}", passed="passed_not_blob"),
    Row("encoded CR LF after the digest", path=f"/v2/demo/hello/blobs/sha256:{HEX}%0d%0aSet-Cookie:x", passed="passed_not_blob"),
    Row("encoded slash in the name", path=f"/v2/demo%2Fhello/blobs/sha256:{HEX}", passed="passed_not_blob"),
    Row("uppercase hex", path=f"/v2/demo/hello/blobs/sha256:{HEX.upper()}", passed="passed_not_blob"),
    Row("overlong digest", path=f"/v2/demo/hello/blobs/sha256:{HEX}0", passed="passed_not_blob"),
    Row("unknown algorithm", path=f"/v2/demo/hello/blobs/md5:{HEX[:32]}", passed="passed_not_blob"),
    Row("sha512 of the wrong length", path=f"/v2/demo/hello/blobs/sha512:{HEX}", passed="passed_not_blob"),
    Row("a query string is ignored", path=f"/v2/demo/hello/blobs/sha256:{HEX}?x=%0d%0a", redirect="aws-eu-west-3"),
    Row("verify_upstream's registry mark, in redirect mode", path=f"/v2/demo/hello/blobs/sha256:{HEX}?blobsteer=registry",
        redirect="aws-eu-west-3"),
    *[Row(f"method {m}", method=m, passed="passed_method") for m in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS")],
]  # fmt: skip


class HostileRequestsTest(StackTestCase):
    """The demo stack in redirect mode, hit with one hostile request per row."""

    def test_every_row(self):
        backends = {self.stack.url("mirror:" + name) for name in self.stack.ports.mirrors}
        envoy = self.stack.port("envoy")
        for row in ROWS:
            with self.subTest(row.what):
                path = row.path or blob_path(f"sha256:{HEX}")
                headers = [("x-forwarded-for", v) for v in row.xff] + row.extra
                status, got, body = request(envoy, row.method, path, headers)
                self.assertLess(status, 500)
                location = got.get("location")
                decision = got.get("x-blobsteer-decision", "")
                if row.redirect:
                    self.assertEqual(status, 307)
                    self.assertEqual(location, f"{self.stack.url('mirror:' + row.redirect)}/containers/images/sha256:{HEX}")
                    self.assertTrue(any(location.startswith(b + "/") for b in backends), location)
                elif row.envoy_status:
                    self.assertEqual((status, decision), (row.envoy_status, ""))
                else:
                    # Untouched: the very answer the registry gives when asked directly (its own
                    # Location included, e.g. the 301 Go's router sends for dot segments).
                    direct, direct_headers, direct_body = request(self.stack.port("registry"), row.method, path)
                    self.assertEqual((status, body), (direct, direct_body))
                    self.assertEqual(location, direct_headers.get("location"))
                    self.assertTrue(decision.startswith(row.passed), decision)

        # The VM survived every row: it still redirects, and nothing panicked or trapped.
        status, got, _ = request(envoy, "GET", blob_path(f"sha256:{HEX}"), [("x-forwarded-for", EU)])
        self.assertEqual(status, 307)
        log = self.stack.envoy_log.read_text(errors="replace")
        for sign in ("panicked", "Function: proxy_on", "wasm trap", "failed to"):
            self.assertNotIn(sign, log)
