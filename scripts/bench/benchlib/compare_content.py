"""What scripts/bench/compare.py serves and asks: the upstream's blobs, image manifest and
index, and the scenarios (redirect, pass-through, manifest and index rewrite) as request mixes."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[2]
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import stack as stk  # noqa: E402
from benchlib.configs import BlobRequest  # noqa: E402

# Clients no table maps: documentation ranges (RFC 5737, RFC 3849).
UNMAPPED_CLIENTS = ("192.0.2.10", "198.51.100.7", "203.0.113.9", "2001:db8::1")
LAYERS = 8  # layers of the manifest of (c) and of each child of (d)
CHILDREN = ("amd64", "arm64")  # platforms of the index of (d)
SMALL_BLOB_BYTES = 1024
demo = stk.build_demo_image  # the media types and digests of the demo image's own build
OCI_MANIFEST, OCI_INDEX = demo.MEDIA_MANIFEST, demo.MEDIA_INDEX
OCI_CONFIG, OCI_LAYER = demo.MEDIA_CONFIG, demo.MEDIA_LAYER
sha256 = demo.sha256_digest


def image_manifest(platform: str) -> bytes:
    """An OCI image manifest with a config and LAYERS layers, distinct per platform."""
    def descriptor(media_type: str, what: str, size: int) -> dict:
        return {"mediaType": media_type, "digest": sha256(what.encode()), "size": size}

    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, f"config-{platform}", 1469),
        "layers": [
            descriptor(OCI_LAYER, f"layer-{platform}-{n}", 1_000_000 + 4099 * n)
            for n in range(LAYERS)
        ],
    }
    return json.dumps(manifest, indent=3).encode()


@dataclasses.dataclass(frozen=True)
class Content:
    """What the upstream serves: a small blob, an image manifest, an index and its children."""

    blob: bytes
    manifest: bytes
    index: bytes
    children: dict[str, bytes]  # digest -> manifest

    @classmethod
    def make(cls) -> Content:
        """The bench's content, the same every run."""
        children = {}
        entries = []
        for platform in CHILDREN:
            child = image_manifest(platform)
            children[sha256(child)] = child
            entries.append({
                "mediaType": OCI_MANIFEST,
                "digest": sha256(child),
                "size": len(child),
                "platform": {"architecture": platform, "os": "linux"},
            })
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        blob = bytes(random.Random(1).getrandbits(8) for _ in range(SMALL_BLOB_BYTES))
        return cls(blob, image_manifest("image"), json.dumps(index, indent=3).encode(), children)

    @property
    def blob_path(self) -> str:
        """The small blob's path (under /v2/bench/, which no route redirect takes)."""
        return f"/v2/bench/small/blobs/{sha256(self.blob)}"

    def write(self, root: Path) -> None:
        """The files the upstream nginx serves."""
        (root / "children").mkdir(parents=True, exist_ok=True)
        (root / "blob").write_bytes(self.blob)
        (root / "manifest.json").write_bytes(self.manifest)
        (root / "index.json").write_bytes(self.index)
        for digest, child in self.children.items():
            (root / "children" / digest.partition(":")[2]).write_bytes(child)


MANIFEST_PATH = "/v2/bench/image/manifests/latest"
INDEX_PATH = "/v2/bench/index/manifests/latest"


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One kind of request, sent with each client of `clients` in turn."""

    name: str
    letter: str
    title: str
    paths: tuple[str, ...]  # cycled with the clients
    clients: tuple[str, ...]  # x-forwarded-for values
    status_class: str  # what Envoy must count for every request: "2xx" or "3xx"
    blobsteer_counter: str  # wasmcustom.blobsteer.<this> must grow by every request
    one_at_a_time: bool = False  # also measure the latency of one request at a time (-c1)

    def requests(self) -> list[tuple[str, str]]:
        """(path, x-forwarded-for) pairs of the load, in order."""
        count = max(len(self.paths), len(self.clients))
        return [
            (self.paths[i % len(self.paths)], self.clients[i % len(self.clients)])
            for i in range(count)
        ]


def scenarios(blobs: Sequence[BlobRequest], content: Content) -> dict[str, Scenario]:
    """The four scenarios; `blobs` are requests whose client both tables map."""
    mapped = tuple(r.xff for r in blobs)
    return {
        s.name: s
        for s in (
            Scenario("redirect", "a", "blob redirect, mapped client",
                     tuple(r.path for r in blobs), mapped, "3xx", "redirected"),
            Scenario("passthrough", "b", f"pass-through of a {SMALL_BLOB_BYTES} B blob, "
                     "unmapped client", (content.blob_path,), UNMAPPED_CLIENTS, "2xx",
                     "passed_no_backend"),
            Scenario("manifest", "c", f"manifest rewrite, {LAYERS}-layer image (tag request)",
                     (MANIFEST_PATH,), mapped, "2xx", "manifest_rewritten", True),
            Scenario("index", "d", f"index rewrite, {len(CHILDREN)} children fetched and "
                     "rewritten (tag request)", (INDEX_PATH,), mapped, "2xx",
                     "manifest_rewritten", True),
        )
    }  # fmt: skip
