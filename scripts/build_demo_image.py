#!/usr/bin/env python3
"""Build the blobsteer demo image, offline and deterministically.

The result is an OCI image layout whose tag `1.0` names an OCI image index for linux/amd64 and
linux/arm64. Each platform is an OCI image manifest with a real image config (architecture, os,
rootfs.diff_ids that match the uncompressed layers) and two gzip layers: a base layer shared by
both platforms (a few KiB of text) and a platform layer carrying 1 MiB of pseudo-random bytes, so
that pulling moves real data. Tar entries have fixed mtimes and owners and gzip streams have
mtime 0, so the same input gives the same digests on every run.

Usage: build_demo_image.py OUT_DIR      (prints the index digest; OUT_DIR is replaced)

Also importable: `build(out_dir) -> DemoImage`.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

TAG = "1.0"
REPOSITORY = "demo/hello"
PLATFORMS = (("amd64", None), ("arm64", "v8"))
CREATED = "2024-01-01T00:00:00Z"
MTIME = 1704067200  # CREATED, as a Unix time
RANDOM_BYTES = 1 << 20

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclasses.dataclass(frozen=True)
class Blob:
    """One content-addressed blob of the layout."""

    digest: str
    size: int
    media_type: str
    path: Path


@dataclasses.dataclass(frozen=True)
class DemoImage:
    """What `build` wrote: the layout directory and every blob, by role."""

    layout: Path
    index: Blob
    manifests: dict[str, Blob]  # "linux/amd64" -> image manifest
    configs: dict[str, Blob]  # "linux/amd64" -> image config
    layers: dict[str, list[Blob]]  # "linux/amd64" -> [base layer, platform layer]

    @property
    def blobs(self) -> list[Blob]:
        """Every blob of the layout once (index, manifests, configs, layers)."""
        unique = {self.index.digest: self.index}
        for group in (self.manifests.values(), self.configs.values()):
            unique.update((b.digest, b) for b in group)
        for layers in self.layers.values():
            unique.update((b.digest, b) for b in layers)
        return list(unique.values())

    @property
    def layer_and_config_blobs(self) -> list[Blob]:
        """The blobs a client fetches from `/blobs/` (configs and layers), each once."""
        unique = {b.digest: b for b in self.configs.values()}
        for layers in self.layers.values():
            unique.update((b.digest, b) for b in layers)
        return list(unique.values())


def sha256_digest(data: bytes) -> str:
    """The OCI digest string of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: object) -> bytes:
    """Compact JSON with the key order given, as stored in the layout."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def pseudo_random(seed: str, size: int) -> bytes:
    """`size` deterministic, incompressible bytes: SHA-256 in counter mode over `seed`."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def tar_bytes(entries: list[tuple[str, bytes | None, int]]) -> bytes:
    """A deterministic tar of (path, content or None for a directory, mode) entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content, mode in entries:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            info.mode = mode
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def base_layer_tar() -> bytes:
    """The layer shared by every platform: a few KiB of text files."""
    motd = "".join(f"line {i:04d}: hello from the blobsteer demo image\n" for i in range(80))
    return tar_bytes(
        [
            ("etc/", None, 0o755),
            ("etc/hello.txt", b"hello, blobsteer\n", 0o644),
            ("usr/", None, 0o755),
            ("usr/share/", None, 0o755),
            ("usr/share/hello/", None, 0o755),
            ("usr/share/hello/motd.txt", motd.encode(), 0o644),
        ]
    )


def platform_layer_tar(arch: str) -> bytes:
    """The platform's own layer: its name and 1 MiB of pseudo-random data."""
    return tar_bytes(
        [
            ("usr/", None, 0o755),
            ("usr/share/", None, 0o755),
            ("usr/share/hello/", None, 0o755),
            ("usr/share/hello/arch.txt", f"linux/{arch}\n".encode(), 0o644),
            (
                "usr/share/hello/payload.bin",
                pseudo_random(f"blobsteer-demo-{arch}", RANDOM_BYTES),
                0o644,
            ),
        ]
    )


class LayoutWriter:
    """Writes blobs into an OCI image layout directory."""

    def __init__(self, layout: Path):
        self.layout = layout
        (layout / "blobs" / "sha256").mkdir(parents=True)

    def write(self, data: bytes, media_type: str) -> Blob:
        """Store `data` under its digest and describe it."""
        digest = sha256_digest(data)
        path = self.layout / "blobs" / "sha256" / digest.split(":", 1)[1]
        path.write_bytes(data)
        return Blob(digest, len(data), media_type, path)

    def write_json(self, value: object, media_type: str) -> Blob:
        """Store a JSON document as a blob."""
        return self.write(canonical_json(value), media_type)

    def finish(self, index: Blob, tag: str = TAG) -> None:
        """Write `oci-layout` and the top-level `index.json` naming `index` (an index or a
        manifest) as `tag`."""
        (self.layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
        top = {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                {**descriptor(index), "annotations": {"org.opencontainers.image.ref.name": tag}}
            ],
        }
        (self.layout / "index.json").write_bytes(canonical_json(top))


def descriptor(blob: Blob) -> dict:
    """The OCI descriptor of a blob."""
    return {"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size}


def platform_dict(arch: str, variant: str | None) -> dict:
    """The OCI platform object for linux/`arch`[/`variant`]."""
    platform = {"architecture": arch, "os": "linux"}
    if variant:
        platform["variant"] = variant
    return platform


def image_config(arch: str, variant: str | None, diff_ids: list[str]) -> dict:
    """A real OCI image config for the platform, with the layers' diff_ids."""
    return {
        "created": CREATED,
        **platform_dict(arch, variant),
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/cat", "/etc/hello.txt"],
            "Labels": {"org.opencontainers.image.title": "blobsteer demo"},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": CREATED, "created_by": "blobsteer build_demo_image.py: base layer"},
            {"created": CREATED, "created_by": f"blobsteer build_demo_image.py: {arch} layer"},
        ],
    }


def build(out_dir: Path) -> DemoImage:
    """Write the demo image layout to `out_dir` (replaced if it is a layout) and describe it."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        if any(out_dir.iterdir()) and not (out_dir / "oci-layout").exists():
            raise SystemExit(f"{out_dir} exists and is not an OCI layout; refusing to replace it")
        shutil.rmtree(out_dir)
    writer = LayoutWriter(out_dir)
    base_tar = base_layer_tar()
    base = writer.write(gzip.compress(base_tar, compresslevel=9, mtime=0), MEDIA_LAYER)
    manifests, configs, layers, entries = {}, {}, {}, []
    for arch, variant in PLATFORMS:
        key = f"linux/{arch}"
        arch_tar = platform_layer_tar(arch)
        own = writer.write(gzip.compress(arch_tar, compresslevel=9, mtime=0), MEDIA_LAYER)
        diff_ids = [sha256_digest(base_tar), sha256_digest(arch_tar)]
        config = writer.write_json(image_config(arch, variant, diff_ids), MEDIA_CONFIG)
        manifest = writer.write_json(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": descriptor(config),
                "layers": [descriptor(base), descriptor(own)],
            },
            MEDIA_MANIFEST,
        )
        manifests[key], configs[key], layers[key] = manifest, config, [base, own]
        entries.append({**descriptor(manifest), "platform": platform_dict(arch, variant)})
    index = writer.write_json(
        {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries}, MEDIA_INDEX
    )
    writer.finish(index)
    return DemoImage(out_dir, index, manifests, configs, layers)


def validate(image: DemoImage) -> None:
    """Check with skopeo that the layout's tag resolves to exactly the index written."""
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{image.layout}:{TAG}"],
        check=True,
        capture_output=True,
    ).stdout
    if sha256_digest(raw) != image.index.digest:
        raise SystemExit(
            f"skopeo reads {sha256_digest(raw)} at {TAG}, expected {image.index.digest}"
        )


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="OCI layout directory to (re)create")
    parser.add_argument("--no-validate", action="store_true", help="skip the skopeo check")
    args = parser.parse_args()
    image = build(args.out_dir)
    if not args.no_validate:
        validate(image)
    print(image.index.digest)


if __name__ == "__main__":
    sys.exit(main())
