"""Manifest rewriting reaches only the runtimes (`manifests.user_agents`, by default `containerd/`
and `cri-o/`). With rewriting on and the mirror known to hold every blob, containerd gets the
rewrite and pulls every blob from the `urls`; skopeo copies into a second registry (one image,
and `--all`) and into an OCI layout that umoci unpacks, podman pulls, and requests without an
agent or with one that merely contains "containerd" get the registry's manifest. For every tag
request a client made, `blobsteer explain` with the agent Envoy logged says what the filter did.

Before `manifests.user_agents`, every one of the copies failed: the copy tools leave layers with
`urls` out (MANIFEST_BLOB_UNKNOWN at the destination, a layout without its layers)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from copy_tools import Podman, destination_registry, umoci_unpack
from harness import RUN_ROOT, Snapshot, StackTestCase, request, stk, warm_existence_cache

EU = "aws-eu-west-3"
ACCEPT = [
    ("accept", "application/vnd.oci.image.index.v1+json"),
    ("accept", "application/vnd.oci.image.manifest.v1+json"),
]
TAG_PATH = f"/v2/{stk.REPOSITORY}/manifests/{stk.TAG}"
sha256 = stk.build_demo_image.sha256_digest


class RewriteForRuntimesTest(StackTestCase):
    stack_options = {"filter_overrides": {"manifests": {"rewrite": True}}}
    with_containerd = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        warm_existence_cache(cls.stack, EU)
        run_dir = RUN_ROOT / cls.__name__
        cls.destination = destination_registry(run_dir / "destination", cls.stack.ports.registry + 1)
        cls.addClassCleanup(cls.destination.stop)
        cls.config = run_dir / "filter.json"
        cls.config.write_text(cls.stack.filter_config_text())

    def tag_requests(self, snapshot: Snapshot) -> list[dict]:
        """The access-log records of the tag requests since `snapshot`."""
        return [r for r in snapshot.envoy_requests() if r["path"] == TAG_PATH]

    def assert_explained(self, snapshot: Snapshot, rewritten: bool) -> None:
        """Each tag request since `snapshot` was rewritten (or not) as expected, and
        `blobsteer explain`, given the agent and address Envoy logged, says the same."""
        records = self.tag_requests(snapshot)
        self.assertTrue(records, "the client asked for the tag")
        for record in records:
            decision = record["decision"].split(";")[0]
            self.assertEqual(decision, "manifest_rewritten" if rewritten else "manifest_untouched", record)
            argv = [str(stk.CLI), "explain", "--config", str(self.config), "--method", record["method"],
                    "--path", record["path"]]  # fmt: skip
            if record["user_agent"] is not None:
                argv += ["--user-agent", record["user_agent"]]
            out = subprocess.run(argv + [record["xff"]], capture_output=True, text=True, check=True).stdout
            explained = json.loads(out)
            want = ("rewrite_manifest", None) if rewritten else ("manifest_untouched", "user_agent")
            self.assertEqual((explained["action"], explained["reason"]), want, record["user_agent"])

    def destination_digest(self, repository: str) -> str:
        """The digest of the manifest bytes the destination registry serves for the tag."""
        headers = {"Accept": ", ".join(value for _, value in ACCEPT)}
        path = f"/v2/{repository}/manifests/{stk.TAG}"
        status, _, body = stk.http_request(self.destination.port, path, headers=headers)
        self.assertEqual(status, 200, path)
        return sha256(body)

    def test_containerd_gets_the_rewrite_and_every_blob_from_the_urls(self):
        snapshot = Snapshot(self.stack)
        self.containerd.pull(self.stack.image_ref(EU))
        self.assert_served_by(snapshot, EU, self.platform_blobs())
        self.assertEqual([r["path"] for r in snapshot.envoy_requests() if "/blobs/" in r["path"]], [])
        self.assertTrue(all(r["user_agent"].startswith("containerd/") for r in self.tag_requests(snapshot)))
        self.assert_explained(snapshot, rewritten=True)

    def test_skopeo_copies_into_another_registry_with_the_original_digests(self):
        child = self.image.manifests["linux/amd64"].digest
        for what, flags, want in (("one-image", [], child), ("all", ["--all"], self.image.index.digest)):
            with self.subTest(what):
                snapshot = Snapshot(self.stack)
                dest = f"docker://{stk.LOOPBACK}:{self.destination.port}/copy/{what}:{stk.TAG}"
                self.stack.skopeo(
                    "copy", *flags, "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"docker://{self.stack.image_ref(EU)}", dest,
                )  # fmt: skip
                self.assertEqual(self.destination_digest(f"copy/{what}"), want)
                self.assert_explained(snapshot, rewritten=False)

    def test_skopeo_to_an_oci_layout_keeps_every_layer_and_umoci_unpacks_it(self):
        snapshot = Snapshot(self.stack)
        with tempfile.TemporaryDirectory() as work:
            layout = Path(work) / "layout"
            self.stack.skopeo("copy", "--src-tls-verify=false", f"docker://{self.stack.image_ref(EU)}", f"oci:{layout}:{stk.TAG}")
            blobs = {f"sha256:{p.name}" for p in (layout / "blobs" / "sha256").iterdir()}
            self.assertLessEqual(self.platform_blobs(), blobs, "every layer and the config are in the layout")
            umoci_unpack(layout, stk.TAG, Path(work) / "bundle")
            self.assertTrue(any((Path(work) / "bundle" / "rootfs").iterdir()), "the layers unpacked")
        self.assert_explained(snapshot, rewritten=False)

    def test_podman_pulls_the_original_manifest(self):
        snapshot = Snapshot(self.stack)
        podman = Podman(RUN_ROOT / type(self).__name__ / "podman")
        self.addCleanup(podman.close)
        self.assertEqual(podman.pull(self.stack.image_ref(EU)), self.image.index.digest)
        self.assertTrue(all(r["user_agent"].startswith("containers/") for r in self.tag_requests(snapshot)))
        self.assert_explained(snapshot, rewritten=False)

    def test_no_agent_or_one_that_merely_contains_containerd_gets_the_original(self):
        for agent in (None, "not-containerd/1.7", "curl/7.88.1 containerd/1.7"):
            with self.subTest(agent=agent):
                snapshot, before = Snapshot(self.stack), self.counters()
                headers = ACCEPT + ([("user-agent", agent)] if agent else [])
                status, _, body = request(self.stack.port(EU), "GET", TAG_PATH, headers)
                self.assertEqual((status, sha256(body)), (200, self.image.index.digest))
                self.assert_counted(before, {"manifest_untouched": 1, "manifest.untouched.user_agent": 1})
                self.assert_explained(snapshot, rewritten=False)

    def test_a_digest_produced_for_a_runtime_resolves_for_anyone(self):
        _, head, _ = request(self.stack.port(EU), "HEAD", TAG_PATH, ACCEPT + [("user-agent", stk.RUNTIME_USER_AGENT)])
        produced = head["docker-content-digest"]
        self.assertNotEqual(produced, self.image.index.digest)
        path = f"/v2/{stk.REPOSITORY}/manifests/{produced}"
        for agent in (None, "curl/7.88.1", "cri-o/1.28.1"):
            with self.subTest(agent=agent):
                headers = ACCEPT + ([("user-agent", agent)] if agent else [])
                status, got, body = request(self.stack.port(EU), "GET", path, headers)
                self.assertEqual((status, sha256(body), got["docker-content-digest"]), (200, produced, produced))
