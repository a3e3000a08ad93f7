#!/usr/bin/env python3
"""Soak: the demo stack under saturating load for a bounded time, watching Envoy's memory.

`python3 scripts/soak.py [--seconds 180] [--connections 32] [--concurrency 2]` (`make soak`).
wrk cycles through a mix of requests on the main listener: blob redirects for clients of each
mapped region (existence checks cached), blob requests the mirrors lack (checked, then sent
upstream), manifest rewrites of the multi-arch tag (the index and its two children fetched and
rewritten), pass-through of pinned manifests, and requests from unmapped or garbage addresses. Envoy's
resident memory is sampled every few seconds; the run fails if any request fails (a non-2xx/3xx
answer or a socket error) or if memory keeps growing after the warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import stack as stk

SAMPLE_EVERY_S = 5
# After the warm-up, resident memory may wander but not grow by more than this.
FLAT_TOLERANCE_KIB = 4 * 1024


def request_mix(s: stk.Stack) -> list[tuple[str, str]]:
    """(path, x-forwarded-for) pairs, in the proportions wrk sends them."""
    image = s.image
    blobs = [image.configs["linux/amd64"].digest, *(layer.digest for layer in image.layers["linux/amd64"])]
    mapped = [c.xff for c in stk.CLIENT_LOCATIONS if c.backend]
    missing = "sha256:" + "e" * 64
    mix = [(f"/v2/{stk.REPOSITORY}/blobs/{d}", xff) for d in blobs for xff in mapped]
    mix += [(f"/v2/{stk.REPOSITORY}/blobs/{missing}", mapped[0])] * 2
    mix += [(f"/v2/{stk.REPOSITORY}/manifests/{image.manifests['linux/amd64'].digest}", xff) for xff in mapped]
    mix += [(f"/v2/{stk.REPOSITORY}/manifests/{stk.TAG}", xff) for xff in mapped]  # index rewrites
    mix += [(f"/v2/{stk.REPOSITORY}/blobs/{blobs[0]}", "198.51.100.7"), (f"/v2/{stk.REPOSITORY}/manifests/1.0", "not-an-ip")]
    return mix


def wrk_script(mix: list[tuple[str, str]]) -> str:
    """A wrk Lua script cycling through `mix`, counting unexpected answers: a 5xx, or a 4xx
    other than the registry's 404 for the blob that exists nowhere."""
    entries = ",\n".join(f'  {{"{path}", "{xff}"}}' for path, xff in mix)
    return f"""
local mix = {{
{entries}
}}
local i = 0
request = function()
  i = i % #mix + 1
  return wrk.format("GET", mix[i][1], {{["x-forwarded-for"] = mix[i][2], ["user-agent"] = "{stk.RUNTIME_USER_AGENT}",
    ["accept"] = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"}})
end
local unexpected = 0
response = function(status, headers, body)
  if status >= 500 or (status >= 400 and status ~= 404) then unexpected = unexpected + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("SOAK unexpected=%d\\n", unexpected))
end
"""


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=2, help="Envoy workers")
    args = parser.parse_args()
    run_dir = stk.REPO_ROOT / ".run" / "soak"
    # Its own ports by default, so a soak can run beside `make run`.
    try:
        ports = stk.Ports.from_env({"BLOBSTEER_BASE_PORT": "18200", **os.environ})
    except stk.BadPort as err:
        print(f"soak.py: {err}", file=sys.stderr)
        return 1
    rewrite = {"manifests": {"rewrite": True}}
    with stk.Stack(run_dir, ports=ports, envoy_concurrency=args.concurrency, filter_overrides=rewrite) as s:
        script = run_dir / "soak.lua"
        script.write_text(wrk_script(request_mix(s)))
        pid = s.envoy.pid
        url = s.url("envoy")
        # Warm-up: fill the existence cache and let allocators settle.
        subprocess.run(["wrk", "-t1", f"-c{args.connections}", "-d5s", "-s", str(script), url],
                       check=True, capture_output=True, text=True)  # fmt: skip
        samples = [(0.0, rss_kib(pid))]
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", "-s", str(script), url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        started = time.monotonic()
        while wrk.poll() is None:
            time.sleep(SAMPLE_EVERY_S)  # sampling period of the memory probe, not synchronisation
            samples.append((time.monotonic() - started, rss_kib(pid)))
        output = wrk.stdout.read()
        counters = {k: v for k, v in s.stats("^wasmcustom\\.blobsteer\\.").items() if v}
    requests = int(re.search(r"(\d+) requests in", output)[1])
    errors = re.search(r"Socket errors: (.*)", output)
    unexpected = int(re.search(r"SOAK unexpected=(\d+)", output)[1])
    rss = [kib for _, kib in samples]
    growth = rss[-1] - rss[0]
    ok = unexpected == 0 and errors is None and max(rss) - rss[0] <= FLAT_TOLERANCE_KIB
    print(f"## Soak ({args.seconds} s, wrk -c{args.connections}, Envoy --concurrency {args.concurrency})\n")
    print(f"- requests: {requests} ({requests / args.seconds:.0f}/s), unexpected answers: {unexpected}, "
          f"socket errors: {errors[1] if errors else 'none'}")
    print(f"- Envoy RSS after warm-up {rss[0] / 1024:.1f} MiB, max {max(rss) / 1024:.1f} MiB, "
          f"end {rss[-1] / 1024:.1f} MiB (growth {growth / 1024:+.1f} MiB over {len(samples)} samples)")
    print(f"- counters: {json.dumps(counters, sort_keys=True)}")
    print(f"- verdict: {'PASS' if ok else 'FAIL'} (no failed request, RSS within "
          f"{FLAT_TOLERANCE_KIB // 1024} MiB of the warm-up figure)")
    print("\n```\n" + output.strip() + "\n```")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
