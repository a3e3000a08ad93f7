"""A fleet: two blobsteer Envoys in front of one registry, sharing what they produced through a
three-member etcd cluster (`manifests.store`). containerd pulls the multi-arch demo image through
a balancer that sends its tag requests to replica A and its requests by digest to replica B, so
every manifest it fetches by a rewritten digest is one the other replica produced. Then with the
etcd leader stopped, then with etcd stopped altogether (untouched manifests, blob redirects), and
a replica restarted with empty shared data serves a digest produced before its restart."""

from __future__ import annotations

import json
import os
import signal
import time

from harness import Snapshot, StackTestCase, blob_path, request, stk, warm_existence_cache

import fleet  # noqa: E402  (scripts/fleet.py, on the path harness sets)

EU = fleet.EU
TAG_PATH = f"/v2/{stk.REPOSITORY}/manifests/{stk.TAG}"
RUNTIME = [("user-agent", stk.RUNTIME_USER_AGENT), ("accept", "application/vnd.oci.image.index.v1+json")]
sha256 = stk.build_demo_image.sha256_digest


class FleetCase(StackTestCase):
    """A stack with the fleet around it, as `make run FLEET=1` brings up."""

    stack_options = {"filter_overrides": {"manifests": {"rewrite": True, "store": fleet.store_settings()}}}

    @classmethod
    def options_for(cls, ports: stk.Ports) -> dict:
        return {"extra_clusters": fleet.etcd_cluster_yaml(ports.envoy)}

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.fleet = fleet.Fleet(cls.stack)
        cls.addClassCleanup(cls.fleet.stop)
        cls.fleet.start()


class FleetTest(FleetCase):
    with_containerd = True

    def setUp(self):
        # Both replicas start empty: what each knows comes from this test's requests and etcd.
        self.stack.restart_envoy()
        self.fleet.start_replica_b()
        warm_existence_cache(self.stack, EU)

    def counters_of(self, stats: dict) -> dict[str, int]:
        prefix = "wasmcustom.blobsteer."
        return {k.removeprefix(prefix): int(v) for k, v in stats.items() if k.startswith(prefix)}

    def replica_counters(self) -> tuple[dict[str, int], dict[str, int]]:
        """blobsteer's counters of replica A and of replica B."""
        return self.counters(), self.counters_of(self.fleet.replica_b.stats("^wasmcustom\\.blobsteer\\."))

    def pull(self) -> tuple[list[dict], list[dict]]:
        """containerd pulls through the balancer; every blob from the eu-west-3 mirror, digests
        verified. Returns what replica A and replica B logged of it."""
        snapshot, seen_by_b = Snapshot(self.stack), len(self.fleet.replica_b.requests())
        self.containerd.pull(self.fleet.balancer_ref())
        served = snapshot.blob_gets()
        self.assertEqual(set(served[EU]), self.platform_blobs())
        self.assertEqual(served["registry"], [])
        return snapshot.envoy_requests(), self.fleet.replica_b.requests()[seen_by_b:]

    def assert_rewrites_resolve_across_replicas(self) -> None:
        by_a, by_b = self.pull()
        a, b = self.replica_counters()
        tags = [r["decision"].split(";")[0] for r in by_a if r["path"] == TAG_PATH]
        store_a = {k: v for k, v in a.items() if k.startswith("store.") and v}
        self.assertTrue(tags and set(tags) == {"manifest_rewritten"}, (tags, store_a))
        by_digest = [r for r in by_b if "/manifests/sha256:" in r["path"]]
        self.assertGreaterEqual(len(by_digest), 2, "the index and the platform's manifest")
        self.assertEqual({r["decision"].split(";")[0] for r in by_digest}, {"manifest_served_by_digest"})
        self.assertEqual((a.get("store.written"), a.get("manifest_rewritten", 0) >= 1), (len(tags), True))
        # B read the index's record from etcd; serving it taught B its children's.
        self.assertEqual((b.get("store.hit"), b.get("store.miss")), (1, 0))
        # etcd holds each record the balancer's client was told about.
        records = self.fleet.etcd.get(fleet.STORE_PREFIX)
        for record in by_digest:
            # The client's own path (the log's `path` is the original's the filter asked for).
            asked = record["client_request"].split(" ", 1)[1]
            digest = asked.rpartition("/")[2]
            self.assertIn(f"{fleet.STORE_PREFIX}{stk.REPOSITORY}@{digest}", records)

    def test_a_digest_one_replica_produced_resolves_through_the_other(self):
        self.assert_rewrites_resolve_across_replicas()

    def test_with_the_etcd_leader_stopped_the_fleet_still_agrees(self):
        self.fleet.etcd.leader().stop()
        self.addCleanup(self.fleet.etcd.start)
        self.fleet.etcd.wait_writable()  # a new leader is elected
        healthy = "cluster.etcd.membership_healthy"
        for stats in (self.stack.stats, self.fleet.replica_b.stats):
            stk.wait_for(lambda: stats(f"^{healthy}$").get(healthy) == 2, "Envoy to take the stopped member out")
        self.assert_rewrites_resolve_across_replicas()

    def test_with_etcd_stopped_pulls_get_the_originals_and_still_work(self):
        self.fleet.etcd.stop()
        self.addCleanup(self.fleet.etcd.start)
        by_a, by_b = self.pull()
        tags = {r["decision"].split(";")[0] for r in by_a if r["path"] == TAG_PATH}
        self.assertEqual(tags, {"manifest_untouched"})
        by_digest = [r for r in by_b if "/manifests/sha256:" in r["path"]]
        self.assertEqual({r["decision"].split(";")[0] for r in by_digest}, {"passed_pinned_manifest"})
        a, b = self.replica_counters()
        self.assertGreaterEqual(a.get("manifest.untouched.store_unavailable", 0), 1)
        self.assertEqual(a.get("manifest_rewritten", 0), 0)
        self.assertEqual(a.get("store.failed", 0) + a.get("store.timeout", 0) >= 1, True, a)
        self.assertEqual(b.get("store.failed", 0) + b.get("store.timeout", 0), len(by_digest), b)

    def test_a_stalled_etcd_holds_no_client_longer_than_the_timeouts(self):
        """Every member stopped with SIGSTOP: connections are taken but nothing answers. A
        rewrite waits at most two store timeouts (a lease, then the write) and goes out as the
        original; a lookup waits at most one and goes upstream untouched."""
        timeout_s = fleet.store_settings()["timeout_ms"] / 1000
        for member in self.fleet.etcd.members:
            os.kill(member.pid, signal.SIGSTOP)
            self.addCleanup(os.kill, member.pid, signal.SIGCONT)
        started = time.monotonic()
        status, got, body = request(self.stack.port(EU), "GET", TAG_PATH, RUNTIME)
        waited = time.monotonic() - started
        self.assertEqual((status, sha256(body)), (200, self.image.index.digest))
        self.assertLess(waited, 2 * timeout_s + 1.0)
        digest_path = f"/v2/{stk.REPOSITORY}/manifests/sha256:{'e' * 64}"
        started = time.monotonic()
        status, _, _ = request(self.fleet.replica_b.ports.listeners[EU], "GET", digest_path, RUNTIME)
        waited = time.monotonic() - started
        self.assertEqual(status, 404, "the registry's own answer")
        self.assertLess(waited, timeout_s + 1.0)
        a, b = self.replica_counters()
        self.assertEqual((a.get("store.timeout"), a.get("manifest.untouched.store_unavailable")), (1, 1))
        self.assertEqual(b.get("store.timeout"), 1)

    def test_a_restarted_replica_serves_a_digest_produced_before_its_restart(self):
        status, got, _ = request(self.stack.port(EU), "HEAD", TAG_PATH, RUNTIME)
        produced = got["docker-content-digest"]
        self.assertEqual(status, 200)
        self.assertNotEqual(produced, self.image.index.digest)
        self.fleet.start_replica_b()  # empty shared data
        path = f"/v2/{stk.REPOSITORY}/manifests/{produced}"
        status, got, body = request(self.fleet.replica_b.ports.listeners[EU], "GET", path, [("accept", RUNTIME[1][1])])
        self.assertEqual((status, sha256(body), got["docker-content-digest"]), (200, produced, produced))
        _, b = self.replica_counters()
        self.assertEqual((b.get("store.hit"), b.get("manifest_served_by_digest")), (1, 1))


class LiveFleetTest(FleetCase):
    """`make run FLEET=1 LIVE=1`: both replicas read the filter's configuration from the one ECDS
    resource, so one swap moves the whole fleet."""

    stack_options = {**FleetCase.stack_options, "live": True}

    def locations(self) -> tuple[str, str]:
        """Where replica A and replica B send a client of aws-eu-west-3 for a layer."""
        layer = self.image.layers["linux/amd64"][0].digest
        answers = [
            request(port, "HEAD", blob_path(layer))
            for port in (self.stack.port(EU), self.fleet.replica_b.ports.listeners[EU])
        ]
        self.assertEqual([status for status, _, _ in answers], [307, 307])
        return answers[0][1]["location"], answers[1][1]["location"]

    def test_one_swap_moves_every_replica(self):
        layer = self.image.layers["linux/amd64"][0].digest
        eu, us = self.backend_url(EU, layer), self.backend_url("aws-us-east-1", layer)
        self.assertEqual(self.locations(), (eu, eu))
        config = json.loads(self.stack.filter_config_text())
        for backend in config["backends"]:
            if backend["name"] == EU:
                moved = [c for c in backend["cidrs"] if c.startswith("15.236.")]
                backend["cidrs"] = [c for c in backend["cidrs"] if c not in moved]
        for backend in config["backends"]:
            if backend["name"] == "aws-us-east-1":
                backend["cidrs"] += moved
        self.assertTrue(moved, "the map has the client's prefix")
        self.stack.deliver_filter_config(json.dumps(config))
        stk.wait_for(lambda: self.locations() == (us, us), "both replicas to steer by the new map", 10)
