"""Manifest rewriting with real clients: containerd pulls the multi-arch demo image by tag from a
mapped region and fetches every blob from the mirror's `urls`, never from the registry or through
the filter; skopeo, not a runtime, gets the registry's manifest; digest-pinned pulls get exactly
the bytes they pinned."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from harness import Snapshot, StackTestCase, request, stk, warm_existence_cache

EU = "aws-eu-west-3"
ACCEPT = [
    ("accept", "application/vnd.oci.image.index.v1+json"),
    ("accept", "application/vnd.oci.image.manifest.v1+json"),
    ("user-agent", stk.RUNTIME_USER_AGENT),
]


sha256 = stk.build_demo_image.sha256_digest


class ManifestRewriteTest(StackTestCase):
    stack_options = {"filter_overrides": {"manifests": {"rewrite": True}}, "envoy_concurrency": 2}
    with_containerd = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # The demo's backends are checked: a blob is advertised in `urls` only once the cache
        # knows it is on the mirror. A client of eu-west-3 asking for every blob of every
        # platform (a 307 each) is what teaches it; us-east-1 is left unknown on purpose.
        warm_existence_cache(cls.stack, EU)

    def test_blobs_not_known_on_the_mirror_are_not_advertised(self):
        before = self.counters()
        status, got, body = self.manifest("GET", "1.0", via="aws-us-east-1")
        self.assertEqual((status, sha256(body)), (200, self.image.index.digest))
        self.assertEqual(self.counters()["manifest.untouched.blobs_unverified"] - before.get("manifest.untouched.blobs_unverified", 0), 1)
        warm_existence_cache(self.stack, "aws-us-east-1")
        status, got, body = self.manifest("GET", "1.0", via="aws-us-east-1")
        self.assertNotEqual(sha256(body), self.image.index.digest)
        self.assertEqual(got["docker-content-digest"], sha256(body))

    def manifest(self, method: str, reference: str, via: str = EU):
        path = f"/v2/{stk.REPOSITORY}/manifests/{reference}"
        return request(self.stack.port(via), method, path, ACCEPT)

    def test_head_and_get_by_tag_agree_and_every_worker_gives_the_same_bytes(self):
        status, head, body = self.manifest("HEAD", "1.0")
        self.assertEqual((status, body), (200, b""))
        new = head["docker-content-digest"]
        self.assertNotEqual(new, self.image.index.digest)
        bodies = set()
        for _ in range(24):  # new connections, spread over both workers by the kernel
            status, got, body = self.manifest("GET", "1.0")
            self.assertEqual((status, got["docker-content-digest"], got["content-length"]), (200, new, head["content-length"]))
            self.assertEqual((sha256(body), got["etag"]), (new, f'"{new}"'))
            bodies.add(body)
        self.assertEqual(len(bodies), 1)
        workers = self.stack.stats(r"^listener\.127\.0\.0\.1_\d+\.worker_\d+\.downstream_cx_total$")
        self.assertGreaterEqual(sum(1 for v in workers.values() if v), 2, workers)
        index = json.loads(bodies.pop())
        for entry in index["manifests"]:
            self.assertNotIn("urls", entry)
            status, got, child = self.manifest("GET", entry["digest"])
            self.assertEqual((status, sha256(child), len(child)), (200, entry["digest"], entry["size"]))
            doc = json.loads(child)
            for descriptor in [doc["config"], *doc["layers"]]:
                self.assertEqual(descriptor["urls"], [self.backend_url(EU, descriptor["digest"])])

    def test_containerd_pulls_by_tag_every_blob_from_the_mirror_urls(self):
        snapshot, before = Snapshot(self.stack), self.counters()
        result = self.containerd.pull(self.stack.image_ref(EU, "1.0"))
        self.assertIn("done", result.stdout)
        self.assert_served_by(snapshot, EU, self.platform_blobs())
        # No blob request reached Envoy at all: containerd went to the urls.
        self.assertEqual([r["path"] for r in snapshot.envoy_requests() if "/blobs/" in r["path"]], [])
        moved = {k: v - before.get(k, 0) for k, v in self.counters().items() if v != before.get(k, 0)}
        self.assertNotIn("redirected", moved)
        self.assertGreaterEqual(moved.get("manifest_rewritten", 0), 1, moved)

    def test_skopeo_by_tag_gets_the_original_and_its_blobs_through_redirects(self):
        """skopeo is not a runtime (`manifests.user_agents`): it gets the registry's manifest,
        and every blob still comes from the mirror, through the filter's redirects."""
        snapshot, before = Snapshot(self.stack), self.counters()
        with tempfile.TemporaryDirectory() as dest:
            self.stack.skopeo_copy(EU, dest)
            self.assert_dir_copy_verified(Path(dest), self.platform_blobs())
            child = self.image.manifests["linux/amd64"]
            self.assertEqual(sha256((Path(dest) / "manifest.json").read_bytes()), child.digest)
        self.assert_served_by(snapshot, EU, self.platform_blobs())
        moved = {k: v - before.get(k, 0) for k, v in self.counters().items() if v != before.get(k, 0)}
        self.assertEqual(moved.get("manifest.untouched.user_agent"), 1, moved)
        self.assertNotIn("manifest_rewritten", moved)
        self.assertEqual(moved.get("redirected"), len(self.platform_blobs()))

    def test_a_pull_pinned_to_the_original_digest_gets_the_original_bytes(self):
        status, got, body = self.manifest("GET", self.image.index.digest)
        self.assertEqual((status, sha256(body), got["docker-content-digest"]), (200, self.image.index.digest, self.image.index.digest))
        snapshot, before = Snapshot(self.stack), self.counters()
        self.containerd.pull(self.stack.image_ref(EU, self.image.index.digest))
        self.assert_served_by(snapshot, EU, self.platform_blobs())
        # The original manifests carry no urls: the blobs came through the filter's redirects.
        self.assertEqual(self.counters()["redirected"] - before.get("redirected", 0), len(self.platform_blobs()))

    def test_the_rewritten_digest_resolves_to_the_same_bytes(self):
        _, head, _ = self.manifest("HEAD", "1.0")
        new = head["docker-content-digest"]
        status, got, by_digest = self.manifest("GET", new)
        _, _, by_tag = self.manifest("GET", "1.0")
        self.assertEqual((status, by_digest, got["docker-content-digest"]), (200, by_tag, new))
        snapshot = Snapshot(self.stack)
        self.containerd.pull(self.stack.image_ref(EU, new))
        self.assert_served_by(snapshot, EU, self.platform_blobs())
        # Asked through another region, the digest still names the eu-west-3 rewrite.
        status, _, other = self.manifest("GET", new, via="aws-us-east-1")
        self.assertEqual((status, other), (200, by_digest))

    def test_clients_without_a_backend_get_the_original(self):
        for via in ("unmapped", "garbage"):
            status, got, body = self.manifest("GET", "1.0", via=via)
            self.assertEqual((status, sha256(body)), (200, self.image.index.digest))


class RewriteCacheTest(StackTestCase):
    """Backends without existence checks: each VM keeps its rewrites, so the second tag request
    for the index gets the same bytes without its children being fetched from the registry
    again; another backend's rewrite is made afresh."""

    @classmethod
    def options_for(cls, ports: stk.Ports) -> dict:
        config = json.loads(stk.render_template(stk.ENVOY_DIR / "demo-filter.json.in", ports.variables()))
        for backend in config["backends"]:
            del backend["cluster"]
        config["manifests"] = {"rewrite": True}
        return {"filter_config_override": json.dumps(config), "envoy_concurrency": 1}

    def child_gets(self, since: int) -> list[str]:
        """The registry's GETs of a manifest by digest since `since` requests."""
        return [r.path for r in self.stack.registry_requests()[since:] if r.method == "GET" and "/manifests/sha256:" in r.path]

    def tag_request(self, via: str) -> bytes:
        """A tag GET of the index; waits until the registry has logged its own GET of the tag."""
        since = len(self.stack.registry_requests())
        status, got, body = request(self.stack.port(via), "GET", f"/v2/{stk.REPOSITORY}/manifests/1.0", ACCEPT)
        self.assertEqual((status, got["docker-content-digest"]), (200, sha256(body)))
        self.assertNotEqual(sha256(body), self.image.index.digest)
        stk.wait_for(lambda: any(r.path.endswith("/manifests/1.0") for r in self.stack.registry_requests()[since:]), "the registry to log the tag GET")
        return body

    def test_a_second_tag_request_needs_no_child_fetched(self):
        children = {entry.digest for entry in self.image.manifests.values()}
        before, since = self.counters(), len(self.stack.registry_requests())
        first = self.tag_request(EU)
        self.assertEqual(set(self.child_gets(since)), {f"/v2/{stk.REPOSITORY}/manifests/{d}" for d in children})
        since = len(self.stack.registry_requests())
        second = self.tag_request(EU)
        self.assertEqual((second, self.child_gets(since)), (first, []))
        # Another backend: not the same rewrite, so its children are fetched and rewritten.
        since = len(self.stack.registry_requests())
        other = self.tag_request("aws-us-east-1")
        self.assertNotEqual(other, first)
        self.assertEqual(len(self.child_gets(since)), len(children))
        after = self.counters()
        self.assertEqual(after["manifest_rewritten"] - before.get("manifest_rewritten", 0), 3)
