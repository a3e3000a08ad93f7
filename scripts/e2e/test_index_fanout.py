"""An index cannot make the filter fan out without bound: more distinct children than
`manifests.max_children` means no child is fetched at all, a child listed a thousand times is
fetched once, and the children a VM fetches at once are bounded by
`manifests.max_child_fetches` (what the upstream sees is counted from its own request log).
Before, one tag request fetched every entry of its index: 73 tag requests made 68,918 upstream
requests, and an index of 5,000 children left about 1,000 fetches in flight."""

from __future__ import annotations

import shutil
import socket
import threading

from harness import RUN_ROOT, RawServer, StackTestCase, free_ports, request, stk
from test_callout_stall import OCI_INDEX, OCI_MANIFEST, answer_head, image_manifest, sha256

EU_XFF = "15.236.10.20"
REPOSITORY = "fanout/app"


def index(children: list[bytes]) -> bytes:
    """An OCI index listing `children` (repeats kept)."""
    entries = ",".join(
        f'{{"mediaType":"{OCI_MANIFEST}","digest":"{sha256(c)}","size":{len(c)}}}' for c in children
    )
    return f'{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{entries}]}}'.encode()


class IndexFanoutTest(StackTestCase):
    """Manifest rewriting on, the registry replaced by a crafted upstream that serves each tag's
    index and every child it lists (children are never rewritten: their blobs are fake)."""

    CHILDREN = [image_manifest(format(i % 16, "x")) + b" " * i for i in range(100)]
    INDEXES = {
        "wide": index(CHILDREN),  # 100 distinct children: more than max_children (64)
        "repeated": index([CHILDREN[0]] * 1000),
        "narrow": index(CHILDREN[:2]),
    }
    BY_DIGEST = {sha256(c): c for c in CHILDREN}

    @classmethod
    def setUpClass(cls) -> None:
        run_dir = RUN_ROOT / cls.__name__
        shutil.rmtree(run_dir, ignore_errors=True)
        overrides = {"manifests": {"rewrite": True}}
        cls.stack = stk.Stack(run_dir, ports=free_ports(), filter_overrides=overrides)
        cls.addClassCleanup(cls.stack.stop)
        cls.upstream = RawServer(cls.stack.ports.registry, cls.answer)
        cls.addClassCleanup(cls.upstream.close)
        cls.stack.start_mirrors()
        cls.stack.start_envoy()

    @classmethod
    def answer(cls, line: str, conn: socket.socket, _stopped: threading.Event) -> None:
        reference = line.split(" ")[1].rpartition("/manifests/")[2] if line.count(" ") == 2 else ""
        body = cls.INDEXES.get(reference) or cls.BY_DIGEST.get(reference)
        if body is None:
            conn.sendall(answer_head("application/json", 0, "404 Not Found"))
            return
        kind = OCI_INDEX if reference in cls.INDEXES else OCI_MANIFEST
        conn.sendall(answer_head(kind, len(body)) + body)

    def fetch(self, tag: str) -> tuple[list[str], bytes]:
        """The upstream's requests caused by one mapped client's GET of `tag`, and the body."""
        self.upstream.requests.clear()
        headers = [("x-forwarded-for", EU_XFF), ("accept", OCI_INDEX), ("accept", OCI_MANIFEST),
                   ("user-agent", stk.RUNTIME_USER_AGENT)]
        status, _, body = request(self.stack.port("envoy"), "GET", f"/v2/{REPOSITORY}/manifests/{tag}", headers)
        self.assertEqual(status, 200)
        return list(self.upstream.requests), body

    def test_an_index_of_more_children_than_allowed_fetches_none(self):
        before = self.counters()
        asked, body = self.fetch("wide")
        self.assertEqual(body, self.INDEXES["wide"])
        self.assertEqual(asked, [f"GET /v2/{REPOSITORY}/manifests/wide HTTP/1.1"])
        self.assert_counted(before, {"manifest_untouched": 1, "manifest.untouched.too_many_children": 1})

    def test_a_child_listed_a_thousand_times_is_fetched_once(self):
        asked, body = self.fetch("repeated")
        self.assertEqual(body, self.INDEXES["repeated"])
        child = f"GET /v2/{REPOSITORY}/manifests/{sha256(self.CHILDREN[0])} HTTP/1.1"
        self.assertEqual(asked, [f"GET /v2/{REPOSITORY}/manifests/repeated HTTP/1.1", child])

    def test_a_narrow_index_fetches_each_child(self):
        asked, _ = self.fetch("narrow")
        self.assertEqual(len(asked), 3, asked)
