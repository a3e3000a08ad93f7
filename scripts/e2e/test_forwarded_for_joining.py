"""Repeated `x-forwarded-for` lines: Envoy joins them, in order, into one comma-separated value
before the filter sees it, over HTTP/1.1 and over HTTP/2 (h2c with prior knowledge, which the
main listener's `codec_type: AUTO` accepts). The filter then reads one chain, and
`xff_num_trusted_hops` counts from its right end across the lines: with 0 hops the last line's
address decides, with 1 hop the address before it, which only exists if both lines were joined.

Each case sends a blob request with two lines, once in each order, and checks the answer (the
307 and its `Location`, or the registry's own bytes), the decision the filter reports, the
counters, and the joined value in Envoy's access log (`%REQ(X-FORWARDED-FOR)%`). This must hold
whether the filter reads the whole header map or the single joined header.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from harness import Snapshot, StackTestCase, blob_path, request, stk

EU = "aws-eu-west-3"
EU_XFF = "15.236.10.20"  # in 15.236.0.0/15, aws-eu-west-3
UNMAPPED_XFF = "198.51.100.7"  # TEST-NET-2: no backend
EU_DECISION = f"redirected; client={EU_XFF}; prefix=15.236.0.0/15; backend={EU}"
PROTOCOLS = ("HTTP/1.1", "HTTP/2")


def curl_h2(port: int, path: str, lines: list[tuple[str, str]]) -> tuple[int, dict[str, str], bytes, str]:
    """A GET over cleartext HTTP/2 with prior knowledge, each header line sent as given (curl
    sends repeated `-H` lines of one name as separate fields); returns (status, lowercase
    headers, body, the HTTP version curl used)."""
    with tempfile.TemporaryDirectory() as tmp:
        head, body = Path(tmp) / "head", Path(tmp) / "body"
        argv = ["curl", "-sS", "--http2-prior-knowledge", "--max-time", "10",
                "-D", str(head), "-o", str(body), "-w", "%{http_version}"]  # fmt: skip
        for name, value in lines:
            argv += ["-H", f"{name}: {value}"]
        argv.append(f"http://{stk.LOOPBACK}:{port}{path}")
        version = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=20).stdout
        status_line, *fields = head.read_text().strip().splitlines()
        headers = {}
        for field in fields:
            name, _, value = field.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers, body.read_bytes(), version.strip()


class ForwardedForJoiningTest(StackTestCase):
    """`xff_num_trusted_hops: 0`: the rightmost address of the joined chain is the client."""

    # Lines (one address or a chain each) whose joined chain has EU_XFF, or UNMAPPED_XFF, where
    # this class's hop count looks; the other address is where it does not look.
    steered_lines = [UNMAPPED_XFF, EU_XFF]
    passed_lines = [EU_XFF, UNMAPPED_XFF]
    chain_then_line = [f"203.0.113.9, {UNMAPPED_XFF}", EU_XFF]

    def setUp(self):
        self.layer = self.image.layers["linux/amd64"][0]

    def send(self, protocol: str, lines: list[str]) -> tuple[int, dict[str, str], bytes]:
        """A GET of the demo layer on the main listener with one `x-forwarded-for` line per
        item of `lines`, over `protocol`."""
        fields = [("x-forwarded-for", line) for line in lines]
        path = blob_path(self.layer.digest)
        if protocol == "HTTP/1.1":
            return request(self.stack.port("envoy"), "GET", path, fields)
        status, headers, body, version = curl_h2(self.stack.port("envoy"), path, fields)
        self.assertEqual(version, "2")
        return status, headers, body

    def assert_envoy_saw(self, snapshot: Snapshot, protocol: str, lines: list[str]) -> None:
        """The one request since `snapshot` came over `protocol`, and Envoy held its lines as one
        value: the lines in the order sent, joined by commas."""
        (record,) = snapshot.envoy_requests()
        self.assertEqual((record["protocol"], record["xff"]), (protocol, ",".join(lines)))

    def assert_steered_to_eu(self, protocol: str, lines: list[str]) -> None:
        """The filter answered the 307 to aws-eu-west-3's mirror itself."""
        snapshot, before = Snapshot(self.stack), self.counters()
        status, headers, _ = self.send(protocol, lines)
        self.assertEqual(
            (status, headers.get("location"), headers.get("x-blobsteer-decision")),
            (307, self.backend_url(EU, self.layer.digest), EU_DECISION),
        )
        self.assert_counted(before, {"redirected": 1, f"backend.{EU}.redirected": 1})
        self.assert_envoy_saw(snapshot, protocol, lines)
        self.assertEqual(snapshot.blob_gets()["registry"], [])

    def assert_passed(self, protocol: str, lines: list[str], action: str, decision: str) -> None:
        """The request went upstream untouched: the registry itself served the layer's bytes."""
        snapshot, before = Snapshot(self.stack), self.counters()
        status, headers, body = self.send(protocol, lines)
        self.assertEqual((status, headers.get("x-blobsteer-decision")), (200, decision))
        self.assertNotIn("location", headers)
        self.assertEqual(body, self.layer.path.read_bytes())
        self.assert_counted(before, {action: 1})
        self.assert_envoy_saw(snapshot, protocol, lines)
        # The registry logs a request once it has sent the answer: wait for its log to say so.
        stk.wait_for(lambda: snapshot.blob_gets()["registry"], "the registry's access log to show its answer")
        self.assert_served_by(snapshot, "registry", {self.layer.digest})

    def test_two_lines_with_the_mapped_address_where_the_hops_point_are_steered(self):
        for protocol in PROTOCOLS:
            with self.subTest(protocol=protocol):
                self.assert_steered_to_eu(protocol, self.steered_lines)

    def test_two_lines_with_the_unmapped_address_where_the_hops_point_go_upstream(self):
        for protocol in PROTOCOLS:
            with self.subTest(protocol=protocol):
                self.assert_passed(
                    protocol, self.passed_lines, "passed_no_backend",
                    f"passed_no_backend; client={UNMAPPED_XFF}",
                )  # fmt: skip

    def test_a_line_holding_a_chain_and_a_line_after_it_make_one_chain(self):
        for protocol in PROTOCOLS:
            with self.subTest(protocol=protocol):
                self.assert_steered_to_eu(protocol, self.chain_then_line)


class ForwardedForJoiningOneTrustedHopTest(ForwardedForJoiningTest):
    """`xff_num_trusted_hops: 1`: the second address from the right of the joined chain is the
    client, the last line being the trusted proxy's. One line with one address leaves no client
    address at all, so each steering here needs both lines in one chain."""

    stack_options = {"filter_overrides": {"client_ip": {"xff_num_trusted_hops": 1}}}
    steered_lines = [EU_XFF, UNMAPPED_XFF]
    passed_lines = [UNMAPPED_XFF, EU_XFF]
    chain_then_line = [f"{UNMAPPED_XFF}, {EU_XFF}", "203.0.113.9"]

    def test_one_line_with_one_address_leaves_no_client_address(self):
        for protocol in PROTOCOLS:
            with self.subTest(protocol=protocol):
                self.assert_passed(protocol, [EU_XFF], "passed_no_client_ip", "passed_no_client_ip; client=none")
