#!/usr/bin/env python3
"""Envoy's memory around a burst of index rewrites whose children are large: RSS before, at the
peak and after, and how many requests the upstream saw. The upstream is a crafted registry
(one index of `--children` children of `--child-bytes` each); every client is mapped to a
checked backend, so no index is rewritten and what is measured is the fetching.

    python3 scripts/bench/index_burst.py [--wasm PATH] [--child-bytes N] [--clients N] [--requests N]

Prints one JSON object. `make bench` runs it with 50 children of 3 MB, 8 clients, 5 requests
each. Before the bounds on children, that burst took Envoy from 314 to 747 MiB, for good, with
2,040 upstream requests."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import stack as stk  # noqa: E402
from harness import RawServer, request  # noqa: E402
from test_callout_stall import OCI_INDEX, OCI_MANIFEST, answer_head, image_manifest, sha256  # noqa: E402

TAG = "burst"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wasm", default=str(stk.DEFAULT_WASM))
    parser.add_argument("--children", type=int, default=50)
    parser.add_argument("--child-bytes", type=int, default=3_000_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5)
    args = parser.parse_args()

    children = [image_manifest(format(i % 16, "x")) + b" " * (args.child_bytes + i) for i in range(args.children)]
    by_digest = {sha256(c): c for c in children}
    entries = ",".join(f'{{"mediaType":"{OCI_MANIFEST}","digest":"{sha256(c)}","size":{len(c)}}}' for c in children)
    index = f'{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{entries}]}}'.encode()

    def answer(line: str, conn, _stopped) -> None:
        reference = line.split(" ")[1].rpartition("/manifests/")[2] if line.count(" ") == 2 else ""
        body = index if reference == TAG else by_digest.get(reference)
        if body is None:
            conn.sendall(answer_head("application/json", 0, "404 Not Found"))
        else:
            conn.sendall(answer_head(OCI_INDEX if reference == TAG else OCI_MANIFEST, len(body)) + body)

    run_dir = stk.REPO_ROOT / ".run" / "bench" / "index-burst"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = {"manifests": {"rewrite": True, "max_bytes": 16 << 20}}
    stack = stk.Stack(run_dir, ports=stk.Ports.free(), filter_overrides=overrides, wasm_path=args.wasm)
    upstream = RawServer(stack.ports.registry, answer)
    try:
        stack.start_mirrors()
        stack.start_envoy()
        pid = stack.envoy.pid
        headers = [("x-forwarded-for", "15.236.10.20"), ("accept", OCI_INDEX), ("accept", OCI_MANIFEST),
                   ("user-agent", stk.RUNTIME_USER_AGENT)]
        path = f"/v2/burst/app/manifests/{TAG}"
        request(stack.port("envoy"), "GET", path, headers)  # the VM's first use, not the burst
        upstream.requests.clear()
        before = rss_mib(pid)
        samples, done = [before], threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                samples.append(rss_mib(pid))

        def client() -> None:
            for _ in range(args.requests):
                request(stack.port("envoy"), "GET", path, headers)

        sampler = threading.Thread(target=sample)
        clients = [threading.Thread(target=client) for _ in range(args.clients)]
        started = time.monotonic()
        sampler.start()
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        seconds = time.monotonic() - started
        done.set()
        sampler.join()
        after = rss_mib(pid)  # once the last answer is in
        stats = stack.stats("^wasmcustom\\.blobsteer\\.manifest\\.untouched\\.")
        print(json.dumps({
            "children": args.children, "child_bytes": args.child_bytes,
            "tag_requests": args.clients * args.requests, "upstream_requests": len(upstream.requests),
            "rss_before_mib": round(before, 1), "rss_peak_mib": round(max(samples), 1),
            "rss_after_mib": round(after, 1), "seconds": round(seconds, 2),
            "untouched": {k.rpartition(".")[2]: v for k, v in stats.items() if v},
        }))  # fmt: skip
    finally:
        upstream.close()
        stack.stop()


if __name__ == "__main__":
    main()
