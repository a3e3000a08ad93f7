"""The stack's BLOBSTEER_*_PORT variables: a bad value is one clear line, never a traceback.

No stack is started here: every case is refused before anything binds or runs.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import unittest

from harness import stk

import fleet  # noqa: E402  (scripts/fleet.py, on the path harness sets)

HIGHEST_BASE = 65535 - 75  # a fleet's etcd peers sit at base+73..+75


class PortVariables(unittest.TestCase):
    def refused(self, env: dict[str, str]) -> str:
        with self.assertRaises(stk.BadPort) as caught:
            stk.Ports.from_env(env)
        return str(caught.exception)

    def test_a_base_port_must_leave_room_for_every_port_of_the_stack(self):
        want = (
            "BLOBSTEER_BASE_PORT={!r} is not a usable base port: set it to a number from 1 to "
            f"{HIGHEST_BASE} (the stack's ports go up to 75 above it)"
        )
        too_high = ["65500", str(HIGHEST_BASE + 1)]
        for bad in ["abc", *too_high, "0", "-1", "18000.5", " 18000", "１８０００"]:
            with self.subTest(bad=bad):
                self.assertEqual(self.refused({"BLOBSTEER_BASE_PORT": bad}), want.format(bad))
        highest = stk.Ports.from_env({"BLOBSTEER_BASE_PORT": str(HIGHEST_BASE)})
        self.assertEqual(max(highest.variables().values()), 65535 - 12, "the mirrors, at +63")
        self.assertEqual(max(max(fleet.etcd_ports(HIGHEST_BASE))), 65535)
        self.assertEqual(stk.Ports.from_env({"BLOBSTEER_BASE_PORT": "1"}).envoy, 1)

    def test_every_other_port_variable_is_checked_by_name(self):
        ports = stk.Ports.from_env({})
        for variable in ports.variables():
            for bad in ["abc", "0", "65536"]:
                with self.subTest(variable=variable, bad=bad):
                    self.assertEqual(
                        self.refused({variable: bad}),
                        f"{variable}={bad!r} is not a TCP port: set it to a number from 1 to 65535",
                    )
        self.assertEqual(stk.Ports.from_env({"BLOBSTEER_ADMIN_PORT": "65535"}).admin, 65535)
        # Empty means unset: the default from the base.
        self.assertEqual(stk.Ports.from_env({"BLOBSTEER_ENVOY_PORT": ""}).envoy, 18000)

    def test_stack_py_and_fleet_py_say_it_in_one_line_and_exit_1(self):
        """`make run`, with FLEET=1 and LIVE=1 in every combination, refuses a bad port before
        starting anything."""
        commands = [
            ("stack.py", ["run"]), ("stack.py", ["run", "--live"]),
            ("fleet.py", ["run"]), ("fleet.py", ["run", "--live"]),
        ]  # fmt: skip
        for (script, args), (variable, value) in itertools.product(commands, [
            ("BLOBSTEER_BASE_PORT", "abc"),
            ("BLOBSTEER_BASE_PORT", "65500"),
            ("BLOBSTEER_REGISTRY_PORT", "99999"),
        ]):  # fmt: skip
            with self.subTest(script=script, args=args, variable=variable, value=value):
                env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBSTEER_")}
                env[variable] = value
                done = subprocess.run(
                    [sys.executable, str(stk.REPO_ROOT / "scripts" / script), *args],
                    env=env, capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                self.assertEqual(done.returncode, 1, done.stderr)
                self.assertNotIn("Traceback", done.stderr)
                lines = done.stderr.splitlines()
                self.assertEqual(len(lines), 1, done.stderr)
                want = f"{script}: {variable}={value!r} is not a "
                self.assertTrue(lines[0].startswith(want), lines)
                self.assertEqual(done.stdout, "")


if __name__ == "__main__":
    unittest.main()
