"""The texts the stack reads and writes: log tails, access logs in the combined format,
config templates and the blocks of them a run drops."""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Mapping
from pathlib import Path


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def render_template(path: Path, values: Mapping[str, object]) -> str:
    """`path` rendered with string.Template; every placeholder must have a value."""
    return string.Template(path.read_text()).substitute({k: str(v) for k, v in values.items()})


def deep_merge(base: dict, overrides: Mapping) -> dict:
    """A copy of `base` with `overrides` merged in: objects recursively, None deletes a key,
    anything else (lists included) replaces."""
    merged = dict(base)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclasses.dataclass(frozen=True)
class AccessRecord:
    """One request from an access log in the combined format (registry and mirrors)."""

    method: str
    path: str
    status: int
    bytes: int
    user_agent: str


_COMBINED = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>\S+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) '
    r'(?P<bytes>\d+|-) "[^"]*" "(?P<agent>[^"]*)"'
)
# A blob path, with the query the filter marks a client's way back to the registry with.
BLOB_PATH = re.compile(r"^/v2/(?P<name>[^?]+)/blobs/(?P<digest>sha256:[0-9a-f]{64})(?:\?[^?]*)?$")


def read_access_log(path: Path) -> list[AccessRecord]:
    """The requests of a combined-format access log, in order (other lines are skipped)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        match = _COMBINED.match(line)
        if match:
            size = match["bytes"]
            records.append(
                AccessRecord(
                    match["method"],
                    match["path"],
                    int(match["status"]),
                    0 if size == "-" else int(size),
                    match["agent"],
                )
            )
    return records


def drop_marked_block(text: str, marker: str) -> str:
    """`text` without the lines from `# >>> marker` to `# <<< marker`, both included."""
    name = re.escape(marker)
    block = re.compile(rf"^[ \t]*# >>> {name}\n.*?^[ \t]*# <<< {name}\n", re.MULTILINE | re.DOTALL)
    result, count = block.subn("", text)
    if count != 1:
        raise ValueError(f"expected one block marked {marker!r}, found {count}")
    return result
