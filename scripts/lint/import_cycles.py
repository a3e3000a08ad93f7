#!/usr/bin/env python3
"""Fails if the modules of a crate under filter/ import each other in a circle.

Imports must run one way: a module is a file under src/ (`a.rs`, `a/mod.rs` and `a/b.rs` are
modules `a` and `a::b`), and it imports `crate::x::y` (or `super::...`) as the deepest module
that exists on that path. A test module (`tests.rs`, `fake.rs`) may import anything."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
USE = re.compile(r"\buse\s+(crate|super)((?:::\w+)+)|\b(crate|super)((?:::\w+)+)::")
TEST_MODULES = {"tests", "fake"}


def modules(src: Path) -> dict[str, Path]:
    found = {}
    for path in src.rglob("*.rs"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "mod":
            parts.pop()
        if parts in (["lib"], ["main"]):
            continue
        found["::".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    text = re.sub(r"//.*", "", path.read_text())
    found = set()
    for match in USE.finditer(text):
        head = match.group(1) or match.group(3)
        tail = (match.group(2) or match.group(4)).strip(":").split("::")
        base = [] if head == "crate" else name.split("::")[:-1]
        if head == "super" and path.name == "mod.rs":
            base = name.split("::")[:-1]
        parts = base + tail
        while parts and "::".join(parts) not in known:
            parts.pop()
        target = "::".join(parts)
        if target and target != name and not name.startswith(target + "::"):
            found.add(target)
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def main() -> int:
    failed = False
    for src in sorted(ROOT.glob("filter/*/src")):
        mods = modules(src)
        graph = {
            name: imports(name, path, set(mods))
            for name, path in mods.items()
            if name.split("::")[-1] not in TEST_MODULES
        }
        for name in graph:
            graph[name] = {t for t in graph[name] if t.split("::")[-1] not in TEST_MODULES}
        found = cycle(graph)
        crate = src.parent.name
        if found:
            print(f"import circle in filter/{crate}: {' -> '.join(found)}")
            failed = True
        else:
            print(f"filter/{crate}: {len(graph)} modules, imports run one way")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
