"""Every Envoy config the repository ships as a file (not a template) passes Envoy's own
`--mode validate`, run from the repository's root as its comments say: a config users copy
must not drift from what Envoy 1.40 accepts."""

from __future__ import annotations

import json
import subprocess
import unittest

from harness import example_filter_config, stk

import ecds  # noqa: E402  (scripts/ecds.py, on the path harness sets)

SHIPPED = sorted(stk.ENVOY_DIR.glob("*.yaml"))


class EnvoyConfigsTest(unittest.TestCase):
    def test_every_shipped_config_validates(self):
        self.assertTrue(SHIPPED, "no config found")
        for path in SHIPPED:
            with self.subTest(config=path.name):
                result = subprocess.run(
                    [str(stk.DEFAULT_ENVOY), "--mode", "validate", "-c", str(path.relative_to(stk.REPO_ROOT))],
                    cwd=stk.REPO_ROOT, capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                self.assertEqual(result.returncode, 0, (result.stdout + result.stderr)[-2000:])

    def test_the_shipped_live_resource_holds_the_examples_filter(self):
        """envoy/live.yaml's first resource is envoy/example.yaml's filter, as scripts/ecds.py
        writes it: the two examples cannot drift apart."""
        shipped = json.loads((stk.ENVOY_DIR / "live" / "blobsteer.json").read_text())
        wasm = "target/wasm32-wasip1/release/blobsteer.wasm"
        self.assertEqual(shipped, ecds.resource(example_filter_config(), wasm))
