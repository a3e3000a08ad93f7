"""Live maps: the filter's configuration comes from ECDS (a resource file in a watched
directory, `Stack(live=True)`, as in envoy/live.yaml), and a new map reaches the running Envoy
without a restart. Under steady load from a client in aws-eu-west-3, a map that moves its prefix
to aws-us-east-1 is moved into place: no request fails, and the client is steered to the new
backend within a stated time. A map with a typo is refused by the filter: Envoy counts
`update_rejected` and the previous map keeps serving."""

from __future__ import annotations

import http.client
import json
import threading
import time

from harness import StackTestCase, blob_path, stk

EU, US = "aws-eu-west-3", "aws-us-east-1"
EU_PREFIX = "15.236.0.0/15"
TAKES_EFFECT_S = 2.0  # what the README promises for a swap at the demo table's size
DISCOVERY = "extension_config_discovery.http_filter.blobsteer."


class Load:
    """One client in a loop (a new connection per request, as a puller's is), recording
    (monotonic time, status, Location or error) until stopped; bounded by `limit_s`."""

    def __init__(self, port: int, path: str, limit_s: float = 30.0):
        self.port, self.path, self.limit_s = port, path, limit_s
        self.answers: list[tuple[float, int, str]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        while not self.stopped.is_set() and time.monotonic() < deadline:
            conn = http.client.HTTPConnection(stk.LOOPBACK, self.port, timeout=5)
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                self.answers.append((time.monotonic(), response.status, response.getheader("location") or ""))
            except OSError as err:
                self.answers.append((time.monotonic(), 0, repr(err)))
            finally:
                conn.close()

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


class LiveMapsTest(StackTestCase):
    stack_options = {"live": True}

    def discovery(self) -> dict[str, int]:
        stats = self.stack.stats(f"^{DISCOVERY.replace('.', '[.]')}")
        return {k.removeprefix(DISCOVERY): v for k, v in stats.items() if isinstance(v, int)}

    def moved(self, config: dict) -> dict:
        """`config` with the client's prefix moved from eu-west-3 to us-east-1."""
        for backend in config["backends"]:
            if backend["name"] == EU:
                backend["cidrs"].remove(EU_PREFIX)
            if backend["name"] == US:
                backend["cidrs"].append(EU_PREFIX)
        return config

    def wait_for_update(self, before: dict[str, int], counter: str) -> None:
        stk.wait_for(lambda: self.discovery().get(counter, 0) > before.get(counter, 0), f"ECDS {counter}")

    def test_a_new_map_steers_within_seconds_and_a_bad_one_is_refused_without_a_failure(self):
        layer = self.image.layers["linux/amd64"][0].digest
        eu, us = self.backend_url(EU, layer), self.backend_url(US, layer)
        config = json.loads(self.stack.filter_config_text())
        with Load(self.stack.port(EU), blob_path(layer)) as load:
            stk.wait_for(lambda: len(load.answers) >= 20, "the load to run")
            before = self.discovery()
            swapped_at = time.monotonic()
            self.stack.deliver_filter_config(json.dumps(self.moved(config)))
            self.wait_for_update(before, "update_success")
            stk.wait_for(lambda: load.answers[-1][2] == us, "the new map to steer the client", TAKES_EFFECT_S + 5)
            first_us = next(at for at, _, location in load.answers if location == us)
            # A map with a typo: refused; the one before keeps serving.
            before = self.discovery()
            typo = self.moved(json.loads(self.stack.filter_config_text()))
            typo["backends"][0]["cidrs"][0] = "15.236.0.0/33"
            self.stack.deliver_filter_config(json.dumps(typo))
            self.wait_for_update(before, "update_rejected")
            seen = len(load.answers)
            stk.wait_for(lambda: len(load.answers) >= seen + 20, "the load to go on after the refusal")
        answers = load.answers
        failed = [a for a in answers if a[1] != 307]
        self.assertEqual(failed, [], "no request failed during the swaps")
        took = first_us - swapped_at
        self.assertLess(took, TAKES_EFFECT_S, f"the new map took {took:.2f}s")
        switch = answers.index(next(a for a in answers if a[2] == us))
        self.assertEqual({a[2] for a in answers[:switch]}, {eu})
        self.assertEqual({a[2] for a in answers[switch:]}, {us}, "once steered anew, always")
        after = self.discovery()
        self.assertEqual((after["update_success"] - before["update_success"], after["update_rejected"] - before["update_rejected"]), (0, 1))
        self.assertIn("is not a CIDR prefix", self.stack.envoy_log.read_text())
