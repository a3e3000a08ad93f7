"""Every Envoy config the repository ships as a file (not a template) passes Envoy's own
`--mode validate`, run from the repository's root as its comments say: a config users copy
must not drift from what Envoy 1.40 accepts."""

from __future__ import annotations

import json
import subprocess
import unittest

from harness import RUN_ROOT, example_filter_config, stk

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

    def test_the_platform_recipes_carry_a_filter_configuration_the_filter_accepts(self):
        """envoy/platforms/: the JSON object after `pluginConfig:` (Istio) or `config:` (Envoy
        Gateway), checked by `blobsteer check` as users would before applying it."""
        for path, key in (("istio-wasmplugin.yaml", "pluginConfig"), ("envoy-gateway-extension-policy.yaml", "config")):
            with self.subTest(recipe=path):
                text = (stk.ENVOY_DIR / "platforms" / path).read_text()
                start = text.index(f"{key}: {{") + len(key) + 2
                config = json.JSONDecoder().raw_decode(text[start:])[0]
                checked = RUN_ROOT / type(self).__name__ / f"{path}.json"
                checked.parent.mkdir(parents=True, exist_ok=True)
                checked.write_text(json.dumps(config))
                result = stk.run_command([str(stk.CLI), "check", str(checked)], check=False)
                self.assertEqual(result.returncode, 0, result.stdout)
                self.assertIn("ok: 2 backends", result.stdout)
