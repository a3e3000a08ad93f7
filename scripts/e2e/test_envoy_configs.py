"""Every Envoy config the repository ships as a file (not a template) passes Envoy's own
`--mode validate`, run from the repository's root as its comments say: a config users copy
must not drift from what Envoy 1.40 accepts."""

from __future__ import annotations

import subprocess
import unittest

from harness import stk

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
