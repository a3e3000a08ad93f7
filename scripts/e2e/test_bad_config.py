"""A configuration the filter refuses stops Envoy at startup, with the field in its log."""

from __future__ import annotations

import json
import shutil
import unittest

from harness import RUN_ROOT, example_filter_config, free_ports, stk

GOOD = {"name": "eu", "blob_url": "https://eu.example/containers/images/{digest}", "cidrs": ["15.236.0.0/15"]}


def config(*backends: dict, **top) -> str:
    return json.dumps({"backends": list(backends), **top})


CASES = [
    ("malformed CIDR", config({**GOOD, "cidrs": ["15.236.0.0/33"]}),
     'backends[0].cidrs[0]: "15.236.0.0/33" is not a CIDR prefix'),
    ("duplicate backend name", config(GOOD, {**GOOD, "cidrs": ["44.192.0.0/11"]}),
     'backends[1].name: "eu" is already the name of backends[0]'),
    ("one prefix in two backends", config(GOOD, {**GOOD, "name": "us"}),
     "backends[1].cidrs[0]: 15.236.0.0/15 is already listed at backends[0].cidrs[0] (eu)"),
    ("template without {digest}", config({**GOOD, "blob_url": "https://eu.example/{encoded}"}),
     'backends[0].blob_url: "https://eu.example/{encoded}" must contain {digest}'),
    ("not an http(s) URL", config({**GOOD, "blob_url": "s3://bucket/{digest}"}),
     'backends[0].blob_url: "s3://bucket/{digest}" must start with http:// or https://'),
    ("unknown key", config({**GOOD, "cidr": []}), "backends[0].cidr: unknown field `cidr`"),
    ("unknown mode", config(GOOD, blobs={"mode": "redirects"}), "blobs.mode: unknown variant `redirects`"),
    ("not JSON", "backends: []", "expected value at line 1 column 1"),
    ("a framing header as the decision header", config(GOOD, decision_header="content-length"),
     'decision_header: "content-length" is a framing, hop-by-hop, Envoy or registry-protocol header'),
    ("a registry header as the decision header", config(GOOD, decision_header="docker-content-digest"),
     'decision_header: "docker-content-digest" is a framing, hop-by-hop, Envoy or registry-protocol header'),
    ("a placeholder in the fragment", config({**GOOD, "blob_url": "http://h#{digest}"}),
     'backends[0].blob_url: "http://h#{digest}" placeholders may only appear in the path'),
    ("a placeholder in the query", config({**GOOD, "blob_url": "http://h/b?d={digest}"}),
     'backends[0].blob_url: "http://h/b?d={digest}" placeholders may only appear in the path'),
]  # fmt: skip


class BadConfigTest(unittest.TestCase):
    def test_envoy_refuses_to_start_and_says_why(self):
        run_dir = RUN_ROOT / type(self).__name__
        shutil.rmtree(run_dir, ignore_errors=True)
        for what, text, message in CASES:
            with self.subTest(what):
                stack = stk.Stack(run_dir / what.replace(" ", "-"), ports=free_ports(), filter_config_override=text)
                with self.assertRaises(stk.StartupError) as refused:
                    stack.start_envoy()
                stack.stop()
                self.assertNotEqual(refused.exception.returncode, 0)
                log = wasm_lines(stack)
                self.assertIn(f"invalid configuration: {message}", log)
                self.assertIn("Unable to create Wasm plugin blobsteer", log)

    def test_a_good_config_is_accepted_with_a_summary(self):
        run_dir = RUN_ROOT / type(self).__name__ / "good"
        shutil.rmtree(run_dir, ignore_errors=True)
        stack = stk.Stack(run_dir, ports=free_ports(), filter_config_override=config(GOOD))
        stack.start_envoy()
        self.addCleanup(stack.stop)
        self.assertRegex(
            wasm_lines(stack),
            r"configured in \d+\.\d{3} ms \(\d+ bytes\): "
            r"1 backend, 1 prefixes \(1 IPv4, 0 IPv6\), 0 non-routable, blob mode redirect",
        )


def wasm_lines(stack: stk.Stack) -> str:
    """The lines of Envoy's log about the wasm plugin (the rest is noise in a failure message)."""
    lines = stack.envoy_log.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if "wasm" in line or "Wasm" in line)


class ExampleConfigTest(unittest.TestCase):
    def test_the_filter_config_of_envoy_example_yaml_is_accepted(self):
        """The config users copy must not drift from what the filter accepts."""
        config = RUN_ROOT / type(self).__name__ / "filter.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(example_filter_config())
        result = stk.run_command([str(stk.REPO_ROOT / "target/release/blobsteer"), "check", str(config)], check=False)
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertIn(": ok: 3 backends", result.stdout)
