"""Steering beyond one region, with skopeo against the real stack: a client no prefix covers is
steered to the `default_backend`; a region whose mirror lacks one layer gets that layer from its
`fallback` (checked in turn) and every other blob from its own mirror, as the mirrors' logs show."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from harness import Snapshot, StackTestCase, blob_path, request, stk

EU, US, GCP = "aws-eu-west-3", "aws-us-east-1", "gcp-europe-north1"


class SteeringTest(StackTestCase):
    @classmethod
    def options_for(cls, ports: stk.Ports) -> dict:
        """The demo's filter config, with a default backend and eu-west-3 falling back to
        us-east-1."""
        config = json.loads(stk.render_template(stk.ENVOY_DIR / "demo-filter.json.in", ports.variables()))
        for backend in config["backends"]:
            if backend["name"] == EU:
                backend["fallback"] = [US]
        config["default_backend"] = GCP
        return {"filter_config_override": json.dumps(config)}

    def copy(self, via: str) -> dict[str, list[str]]:
        snapshot = Snapshot(self.stack)
        with tempfile.TemporaryDirectory() as dest:
            self.stack.skopeo_copy(via, dest)
            self.assert_dir_copy_verified(Path(dest), self.platform_blobs())
        return snapshot.blob_gets()

    def test_an_unmapped_client_is_steered_to_the_default_backend(self):
        served = self.copy("unmapped")
        self.assertEqual(set(served[GCP]), self.platform_blobs())
        self.assertEqual((served["registry"], served[EU], served[US]), ([], [], []))

    def test_a_layer_the_mirror_lacks_is_checked_on_the_fallback_and_comes_from_it(self):
        layer = self.image.layers["linux/amd64"][1].digest
        path = self.stack.mirror_blob_path(EU, layer)
        saved = path.read_bytes()
        path.unlink()
        self.addCleanup(path.write_bytes, saved)
        us_seen = len(self.stack.mirror_requests(US))
        served = self.copy(EU)
        self.assertEqual(served[US], [layer])
        self.assertEqual(set(served[EU]), self.platform_blobs() - {layer})
        self.assertEqual(served["registry"], [])
        # us-east-1 was asked about that layer alone (its check), before it served it.
        heads = [
            record.path.rpartition("/")[2]
            for record in self.stack.mirror_requests(US)[us_seen:]
            if record.method == "HEAD"
        ]
        self.assertEqual(heads, [layer])


class VerifyUpstreamSteeringTest(SteeringTest):
    """The same with `blobs.mode: verify_upstream`: the registry says yes to each blob first,
    then the client's chain is checked and the client steered (every blob GET the registry saw
    went up as a HEAD, so it served none)."""

    @classmethod
    def options_for(cls, ports: stk.Ports) -> dict:
        config = json.loads(super().options_for(ports)["filter_config_override"])
        config["blobs"] = {**config.get("blobs", {}), "mode": "verify_upstream"}
        return {"filter_config_override": json.dumps(config)}
