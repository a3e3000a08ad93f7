"""Hostile answers from upstream: manifests that are invalid JSON, deeply nested, duplicate-keyed,
made of millions of tiny values, 50 MiB long, gzip-encoded, chunked with a trailer, or whose Content-Length lies. Envoy runs the
filter in front of a crafted upstream on the registry's port; every answer must reach the client
exactly as the upstream sends it directly, with no 5xx and no panic."""

from __future__ import annotations

import gzip
import json
import http.client
import shutil
import unittest

from harness import RUN_ROOT, RawServer, free_ports, stk

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DESCRIPTOR = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "a" * 64, "size": 1}
CONFIG = {**DESCRIPTOR, "mediaType": "application/vnd.oci.image.config.v1+json"}
IMAGE = {"schemaVersion": 2, "mediaType": MANIFEST, "config": CONFIG, "layers": [DESCRIPTOR]}
HUGE = 50 * 1024 * 1024
EU = "15.236.10.20"


def body_response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    """An answer; `connection: close`, since the crafted upstream closes each connection after
    one answer (a pooled connection Envoy reused would get a reset: Envoy's own 503)."""
    head = [f"HTTP/1.1 {status}", f"content-type: {MANIFEST}", f"content-length: {len(body)}", "connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


ANSWERS = {
    "invalid-json": body_response(b'{"schemaVersion": 2, "layers": [}'),
    "deeply-nested": body_response(b"[" * 100_000 + b"]" * 100_000),
    "duplicate-keys": body_response(b'{"schemaVersion": 2, "mediaType": "a", "mediaType": "b", "layers": []}'),
    "gzip": body_response(gzip.compress(b'{"schemaVersion": 2, "layers": []}', mtime=0), "content-encoding: gzip"),
    "chunked-trailer": (
        f"HTTP/1.1 200 OK\r\ncontent-type: {MANIFEST}\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\nconnection: close\r\n\r\n"
        "10\r\n{\"schemaVersion\"\r\n5\r\n: 2}\n\r\n0\r\nx-checksum: 1\r\n\r\n"
    ).encode(),
    "length-lies": (
        f"HTTP/1.1 200 OK\r\ncontent-type: {MANIFEST}\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n"
        '{"schemaVersion": 2}'
    ).encode(),
    "foreign-redirect": b"HTTP/1.1 307 Temporary Redirect\r\nlocation: https://elsewhere.example/x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    # Well-formed manifests that must stay exactly as published.
    "schema1": body_response(b'{"schemaVersion": 1, "name": "hostile", "tag": "1", "fsLayers": [], "signatures": []}'),
    "signature": body_response(json.dumps({**IMAGE, "subject": DESCRIPTOR}).encode()),
    "artifact": body_response(json.dumps({**IMAGE, "artifactType": "application/vnd.example.sbom"}).encode()),
    "helm-chart": body_response(json.dumps({**IMAGE, "config": {**DESCRIPTOR, "mediaType": "application/vnd.cncf.helm.config.v1+json"}}).encode()),
    "type-mismatch": body_response(json.dumps({**IMAGE, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}).encode()),
    "foreign-layers-only": body_response(json.dumps({**IMAGE, "config": {**CONFIG, "urls": ["https://elsewhere.example/c"]}, "layers": []}).encode()),
    "bad-digest": body_response(json.dumps({**IMAGE, "layers": [{**DESCRIPTOR, "digest": "sha256:ABC"}]}).encode()),
    # Just under 4 MiB of tiny values: once quadratic (a repeated-key search), then refused
    # after a bounded number of values, at the cost of an ordinary manifest of that size.
    "one-huge-object": body_response(
        b'{"schemaVersion": 2, ' + b", ".join(b'"k%d": 0' % i for i in range(300_000)) + b"}"
    ),
    "tiny-values": body_response(b'{"schemaVersion": 2, "layers": [' + b"0," * 2_000_000 + b"0]}"),
}


def crafted_upstream(port: int) -> RawServer:
    """Answers `.../<name>` with the raw bytes of `ANSWERS[name]`, or 50 MiB for `huge`."""

    def answer(line: str, conn, _stopped) -> None:
        name = line.split(" ")[1].rpartition("/")[2] if " " in line else ""
        if name != "huge":
            conn.sendall(ANSWERS.get(name, body_response(b"", status="404 Not Found")))
            return
        conn.sendall(f"HTTP/1.1 200 OK\r\ncontent-type: {MANIFEST}\r\ncontent-length: {HUGE}\r\nconnection: close\r\n\r\n".encode())
        chunk = b"[" * (1 << 20)
        for _ in range(HUGE // len(chunk)):
            conn.sendall(chunk)

    return RawServer(port, answer)


def fetch(port: int, path: str, xff: str | None) -> tuple[int, dict[str, str], bytes, str | None]:
    """(status, headers, body read until the end or the break, the break's kind if any)."""
    conn = http.client.HTTPConnection(stk.LOOPBACK, port, timeout=30)
    try:
        headers = {"user-agent": stk.RUNTIME_USER_AGENT} | ({"x-forwarded-for": xff} if xff else {})
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        try:
            return response.status, headers, response.read(), None
        except http.client.IncompleteRead as cut:
            return response.status, headers, cut.partial, "incomplete"
    finally:
        conn.close()


class HostileUpstreamTest(unittest.TestCase):
    filter_overrides: dict = {}
    held_and_broken: set = set()

    @classmethod
    def setUpClass(cls):
        run_dir = RUN_ROOT / cls.__name__
        shutil.rmtree(run_dir, ignore_errors=True)
        cls.stack = stk.Stack(run_dir, ports=free_ports(), filter_overrides=cls.filter_overrides)
        cls.upstream = crafted_upstream(cls.stack.ports.registry)
        cls.addClassCleanup(cls.upstream.close)
        cls.stack.start_envoy()
        cls.addClassCleanup(cls.stack.stop)

    def test_every_hostile_answer_reaches_the_client_as_sent(self):
        envoy, direct = self.stack.ports.envoy, self.stack.ports.registry
        backends = tuple(self.stack.url("mirror:" + name) + "/" for name in self.stack.ports.mirrors)
        for name in [*ANSWERS, "huge"]:
            for kind in ("manifests", "blobs"):
                path = f"/v2/hostile/{kind}/{name}"
                for xff in (EU, "198.51.100.7", None):
                    with self.subTest(path=path, xff=xff):
                        want = fetch(direct, path, None)
                        got = fetch(envoy, path, xff)
                        if (kind, name, xff) in self.held_and_broken:
                            # The filter held this answer to read it whole, and the upstream
                            # broke it before its end: Envoy answers 502 instead of passing on a
                            # truncated body (which the client could not verify either).
                            self.assertEqual(got[0], 502)
                            continue
                        self.assertLess(got[0], 500)
                        self.assertEqual((got[0], len(got[2]), got[2][:64]), (want[0], len(want[2]), want[2][:64]))
                        self.assertEqual(got[2], want[2])
                        self.assertEqual(got[3], want[3])
                        location = got[1].get("location")
                        self.assertTrue(location in (None, want[1].get("location")) or location.startswith(backends))
        log = self.stack.envoy_log.read_text(errors="replace")
        for sign in ("panicked", "Function: proxy_on", "wasm trap"):
            self.assertNotIn(sign, log)


class HostileUpstreamRewritingTest(HostileUpstreamTest):
    """The same answers with manifest rewriting on: the filter holds and reads each manifest of a
    mapped client, finds it is not one to rewrite, and sends it exactly as it came, counting
    why."""

    filter_overrides = {"manifests": {"rewrite": True}}
    held_and_broken = {("manifests", "length-lies", EU)}

    def test_every_reason_is_counted(self):
        prefix = "wasmcustom.blobsteer.manifest.untouched."
        before = self.stack.stats("^" + prefix.replace(".", "\\."))
        for name in ANSWERS.keys() - {"length-lies"} | {"huge"}:
            fetch(self.stack.ports.envoy, f"/v2/hostile/manifests/{name}", EU)
        after = self.stack.stats("^" + prefix.replace(".", "\\."))
        moved = {k.removeprefix(prefix): after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        self.assertEqual(moved, {
            "invalid_json": 2,  # invalid, duplicate keys
            "too_deep": 1,
            "too_many_values": 2,  # one huge object, an array of tiny values
            "encoded": 1,
            "bad_descriptor": 2,  # the chunked body (JSON, not a manifest), an uppercase digest
            "too_large": 1,
            "upstream_status": 1,  # the redirect
            "schema1": 1,
            "subject": 1,
            "artifact": 2,  # artifactType, a Helm chart's config
            "media_type_mismatch": 1,
            "nothing_to_rewrite": 1,
        })  # fmt: skip
