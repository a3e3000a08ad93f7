"""Filter configs and the request mix: what the filter should answer to each blob request,
computed here from the JSON itself (longest prefix, non_routable, blob_url template)."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

from benchlib.common import BenchError


TABLE_KEYS = ("backends", "non_routable")  # what the two configs are meant to differ in
TRUSTED_PROXY = "192.0.2.1"  # appended to x-forwarded-for once per trusted hop (TEST-NET-1)
REPOSITORIES = ("library/sample", "kube-apiserver", "sig-storage/csi-provisioner")
ADDRESSES_PER_PREFIX = 4
MAX_CLIENTS_PER_FAMILY = 24  # at most this many IPv4 and as many IPv6 client addresses
# Client addresses every run tries first (the README's examples); more are drawn from the small
# config's prefixes. Only those both configs map to a backend are used.
SEED_ADDRESSES = ("15.236.10.20", "44.192.1.2", "2a05:d012::5", "15.193.1.5")


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """A filter config file: its text and a longest-prefix-match model of it."""

    label: str  # "small" or "full"
    path: Path
    text: str
    blob_urls: dict[str, str]  # backend name -> blob_url template
    # (ip version, prefix length) -> {network as int: backend name, or None for non_routable}
    prefixes: dict[tuple[int, int], dict[int, str | None]]

    @classmethod
    def load(cls, label: str, path: Path, text: str | None = None) -> FilterConfig:
        """Index the config in `path` (or `text`, said to come from there): only the keys
        this benchmark needs are read; the filter itself checks them all."""
        text = path.read_text() if text is None else text
        try:
            return cls._index(label, path, text)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise BenchError(
                f"{path}: not a filter config this benchmark can read ({type(err).__name__}: "
                f"{err}); `target/release/blobsteer check {path}` says what is wrong"
            ) from err

    @classmethod
    def _index(cls, label: str, path: Path, text: str) -> FilterConfig:
        data = json.loads(text)
        prefixes: dict[tuple[int, int], dict[int, str | None]] = {}

        def add(cidr: str, backend: str | None) -> None:
            net = ipaddress.ip_network(cidr)
            prefixes.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = (
                backend
            )

        blob_urls = {}
        for backend in data["backends"]:
            blob_urls[backend["name"]] = backend["blob_url"]
            for cidr in backend["cidrs"]:
                add(cidr, backend["name"])
        for cidr in data.get("non_routable", []):
            add(cidr, None)
        return cls(label, path, text, blob_urls, prefixes)

    @property
    def options(self) -> dict:
        """Every top-level setting but the table (`backends`, `non_routable`)."""
        return {k: v for k, v in json.loads(self.text).items() if k not in TABLE_KEYS}

    @property
    def xff_num_trusted_hops(self) -> int:
        """`client_ip.xff_num_trusted_hops` (default 0)."""
        return int(self.options.get("client_ip", {}).get("xff_num_trusted_hops", 0))

    @property
    def prefix_count(self) -> int:
        """Backend and non-routable prefixes together."""
        return sum(map(len, self.prefixes.values()))

    def backend_for(self, address: str) -> str | None:
        """The backend the longest matching prefix names (None: no match, or non-routable)."""
        ip = ipaddress.ip_address(address)
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        bits = ip.max_prefixlen
        value = int(ip)
        for length in range(bits, -1, -1):
            table = self.prefixes.get((ip.version, length))
            if table:
                network = value >> (bits - length) << (bits - length)
                if network in table:
                    return table[network]
        return None

    def location(self, backend: str, repository: str, digest: str) -> str:
        """The Location the filter builds from `backend`'s blob_url template."""
        algorithm, _, encoded = digest.partition(":")
        values = {
            "digest": digest,
            "algorithm": algorithm,
            "encoded": encoded,
            "repository": repository,
        }
        return re.sub(r"\{(\w+)\}", lambda m: values[m[1]], self.blob_urls[backend])


def table_with_options(table_text: str, options: dict) -> str:
    """A config with the table (`backends`, `non_routable`) of `table_text` and every other
    setting from `options`; backends lose their `cluster` (existence checks, which send a
    request of their own to the backend's cluster, are a setting, not the table)."""
    table = json.loads(table_text)
    merged = {key: table[key] for key in TABLE_KEYS if key in table}
    merged["backends"] = [
        {key: value for key, value in backend.items() if key != "cluster"}
        for backend in merged["backends"]
    ]
    merged.update(options)
    return json.dumps(merged, indent=2) + "\n"


def backends_with_clusters(config: FilterConfig) -> list[str]:
    """The backends that name an Envoy cluster (existence checks)."""
    return [b["name"] for b in json.loads(config.text)["backends"] if b.get("cluster")]


def differing_options(a: FilterConfig, b: FilterConfig) -> list[str]:
    """The top-level settings (table aside) that differ between two configs."""
    keys = sorted(set(a.options) | set(b.options))
    return [key for key in keys if a.options.get(key) != b.options.get(key)]


@dataclasses.dataclass(frozen=True)
class BlobRequest:
    """One blob GET of the load: path, client address, and per config the Location expected."""

    repository: str
    digest: str
    client: str  # the client address
    xff: str  # the x-forwarded-for sent: the client, then one address per trusted hop
    expected: dict[str, str]  # config label -> Location

    @property
    def path(self) -> str:
        """`/v2/<repository>/blobs/<digest>`."""
        return f"/v2/{self.repository}/blobs/{self.digest}"


def candidate_addresses(config: FilterConfig, per_prefix: int, seed: int = 7) -> Iterator[str]:
    """The seed addresses, then `per_prefix` pseudo-random addresses inside each backend prefix
    of `config`, prefixes in a shuffled order (deterministic), without repeats."""
    rng = random.Random(seed)
    prefixes = [
        (version, length, network)
        for (version, length), table in sorted(config.prefixes.items())
        for network, backend in sorted(table.items())
        if backend is not None
    ]
    rng.shuffle(prefixes)
    seen = set()
    for address in SEED_ADDRESSES:
        seen.add(address)
        yield address
    for version, length, network in prefixes:
        bits = 32 if version == 4 else 128
        for _ in range(per_prefix):
            host = rng.randrange(1 << (bits - length)) if length < bits else 0
            address = str(ipaddress.ip_address(network + host))
            if address not in seen:
                seen.add(address)
                yield address


def blob_requests(small: FilterConfig, full: FilterConfig) -> list[BlobRequest]:
    """The request mix: addresses that both configs map to a backend (IPv4 and IPv6 alike),
    each with a repository and a distinct valid sha256 digest. BenchError if either address
    family is missing."""
    hops = {small.xff_num_trusted_hops, full.xff_num_trusted_hops}
    if len(hops) != 1:
        raise BenchError(f"the configs trust different numbers of x-forwarded-for hops: {hops}")
    proxies = [TRUSTED_PROXY] * hops.pop()
    requests = []
    per_family = {4: 0, 6: 0}
    for address in candidate_addresses(small, ADDRESSES_PER_PREFIX):
        family = ipaddress.ip_address(address).version
        if per_family[family] >= MAX_CLIENTS_PER_FAMILY:
            if min(per_family.values()) >= MAX_CLIENTS_PER_FAMILY:
                break
            continue
        backends = {c.label: c.backend_for(address) for c in (small, full)}
        if None in backends.values():
            continue
        per_family[family] += 1
        index = len(requests)
        repository = REPOSITORIES[index % len(REPOSITORIES)]
        digest = "sha256:" + hashlib.sha256(f"blobsteer-bench-{index}".encode()).hexdigest()
        expected = {
            c.label: c.location(backends[c.label], repository, digest) for c in (small, full)
        }
        xff = ", ".join([address, *proxies])
        requests.append(BlobRequest(repository, digest, address, xff, expected))
    versions = {ipaddress.ip_address(r.client).version for r in requests}
    if versions != {4, 6}:
        raise BenchError(
            f"need IPv4 and IPv6 client addresses mapped by both configs, found IPv{versions}"
        )
    return requests
