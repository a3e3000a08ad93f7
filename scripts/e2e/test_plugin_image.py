"""The filter shipped as one verified artifact. `make image` (scripts/build_plugin_image.py)
builds the OCI image Istio and Envoy Gateway take (the "compat" layout: one tar+gzip layer with
`plugin.wasm`) and pushes it to the registry; pulled back with skopeo, its `plugin.wasm` hashes
to the build's sha256. An Envoy loads the same module through `vm_config.code.remote` from an
HTTP server with its sha256, and refuses it with a wrong one: every request then gets a 503
(the filter is required, not `fail_open`)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest
from pathlib import Path

from harness import RUN_ROOT, StackTestCase, blob_path, free_ports, request, stk

EU = "aws-eu-west-3"


def wasm_sha256() -> str:
    """The sha256 of the module `make build` wrote."""
    return hashlib.sha256(stk.DEFAULT_WASM.read_bytes()).hexdigest()


class PluginImageTest(StackTestCase):
    def test_the_pushed_image_holds_exactly_the_built_module(self):
        ref = f"{stk.LOOPBACK}:{self.stack.ports.registry}/blobsteer/plugin:test"
        layout = RUN_ROOT / type(self).__name__ / "plugin-layout"
        built = subprocess.run(
            [sys.executable, str(stk.SCRIPTS_DIR / "build_plugin_image.py"), "--out", str(layout), "--tag", "test", "--push", ref],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        self.assertEqual(built.returncode, 0, built.stderr)
        manifest_digest = next(line.split()[2] for line in built.stdout.splitlines() if line.startswith("image manifest"))
        self.assertIn(f"plugin.wasm    sha256:{wasm_sha256()}", built.stdout)
        # The registry serves the manifest with that digest (Istio's sha256 of an oci:// url).
        headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        status, got, _ = stk.http_request(self.stack.ports.registry, "/v2/blobsteer/plugin/manifests/test", "HEAD", headers)
        self.assertEqual((status, got.get("Docker-Content-Digest")), (200, manifest_digest))
        with tempfile.TemporaryDirectory() as work:
            pulled = Path(work) / "pulled"
            self.stack.skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{pulled}:test")
            index = json.loads((pulled / "index.json").read_text())
            manifest = json.loads(self.blob(pulled, index["manifests"][0]["digest"]))
            self.assertEqual(index["manifests"][0]["digest"], manifest_digest)
            [layer] = manifest["layers"]
            self.assertEqual(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip")
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(self.blob(pulled, layer["digest"])))) as tar:
                self.assertEqual(tar.getnames(), ["plugin.wasm"])
                module = tar.extractfile("plugin.wasm").read()
        self.assertEqual(hashlib.sha256(module).hexdigest(), wasm_sha256())

    @staticmethod
    def blob(layout: Path, digest: str) -> bytes:
        return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


class RemoteCodeTest(unittest.TestCase):
    """Envoy fetches the module from the eu-west-3 mirror (nginx) through its cluster."""

    @classmethod
    def setUpClass(cls) -> None:
        run_dir = RUN_ROOT / cls.__name__
        shutil.rmtree(run_dir, ignore_errors=True)
        ports = free_ports()
        uri = f"http://{stk.LOOPBACK}:{ports.mirrors[EU]}/containers/images/blobsteer.wasm"
        remote = {"uri": uri, "cluster": "mirror_aws_eu_west_3", "sha256": wasm_sha256()}
        cls.stack = stk.Stack(run_dir, ports=ports, wasm_remote=remote)
        cls.addClassCleanup(cls.stack.stop)
        cls.stack.start_registry(redirect=False)
        cls.stack.seed()
        cls.stack.start_mirrors()
        shutil.copyfile(stk.DEFAULT_WASM, cls.stack.mirror_blob_path(EU, "blobsteer.wasm"))

    def blob_request(self) -> tuple[int, dict[str, str]]:
        layer = self.stack.image.layers["linux/amd64"][0].digest
        status, got, _ = request(self.stack.port(EU), "GET", blob_path(layer))
        return status, got

    def test_the_module_is_fetched_and_checked_then_steers(self):
        self.stack.wasm_remote = {**self.stack.wasm_remote, "sha256": wasm_sha256()}
        self.stack.restart_envoy()
        status, got = self.blob_request()
        self.assertEqual(status, 307)
        self.assertIn("/containers/images/sha256:", got["location"])
        self.assertIn("Wasm remote code fetch is unstable", self.stack.envoy_log.read_text())
        fetched = [r for r in self.stack.mirror_requests(EU) if r.path.endswith("/blobsteer.wasm")]
        self.assertTrue(fetched and all(r.status == 200 for r in fetched), fetched)

    def test_a_wrong_sha256_is_refused_and_every_request_fails_closed(self):
        self.stack.wasm_remote = {**self.stack.wasm_remote, "sha256": "0" * 64}
        self.stack.restart_envoy()
        self.assertEqual(self.blob_request()[0], 503)
        status, _, _ = request(self.stack.port(EU), "GET", "/v2/")
        self.assertEqual(status, 503, "no request passes without the filter")
