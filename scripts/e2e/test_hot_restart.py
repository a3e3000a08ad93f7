"""Envoy restarts under load: with Envoy's hot restart a new process takes the listeners over
and the filter's VMs are built again in it, while requests keep being answered."""

from __future__ import annotations

import tempfile
import threading
from collections import Counter
from pathlib import Path

from harness import StackTestCase, blob_path, request

EU = "aws-eu-west-3"


class HotRestartTest(StackTestCase):
    stack_options = {"envoy_hot_restart": True}

    def test_requests_keep_being_served_across_a_hot_restart(self):
        layer = self.image.layers["linux/amd64"][0].digest
        answers: Counter[str] = Counter()
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    status, got, _ = request(self.stack.port("envoy"), "HEAD", blob_path(layer), [("x-forwarded-for", "15.236.10.20")])
                    answers[f"{status} {got.get('location') == self.backend_url(EU, layer)}"] += 1
                except OSError as error:
                    answers[type(error).__name__] += 1

        clients = [threading.Thread(target=load) for _ in range(2)]
        for client in clients:
            client.start()
        old_pid = self.stack.envoy.pid
        try:
            self.stack.hot_restart_envoy()
        finally:
            stop.set()
            for client in clients:
                client.join()
        self.assertNotEqual(self.stack.envoy.pid, old_pid)
        self.assertIn("configured in", self.stack.envoy_log.read_text())
        # Every answer during the restart was the redirect, and there were many.
        self.assertEqual(list(answers), ["307 True"], answers)
        self.assertGreater(answers["307 True"], 100)
        # The new process serves a whole pull from the mirror. (Both processes wrote the access
        # log, so the servers' own logs tell who served what.)
        mirror, registry = len(self.stack.mirror_requests(EU)), len(self.stack.registry_blob_gets())
        with tempfile.TemporaryDirectory() as dest:
            self.stack.skopeo_copy(EU, dest)
            self.assert_dir_copy_verified(Path(dest), self.platform_blobs())
        gets = {r.path.rpartition("/")[2] for r in self.stack.mirror_requests(EU)[mirror:] if r.method == "GET"}
        self.assertEqual(gets, self.platform_blobs())
        self.assertEqual(len(self.stack.registry_blob_gets()), registry)
