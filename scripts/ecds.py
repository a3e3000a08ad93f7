#!/usr/bin/env python3
"""The blobsteer filter as an ECDS resource, and its delivery to a watched directory.

Envoy's extension config discovery from a file (`config_discovery` with a `path_config_source`
and a `watched_directory`, as in envoy/live.yaml) swaps the filter's configuration on every
worker when a new file is moved into that directory; a configuration the filter refuses is
counted `update_rejected` and the previous one keeps serving. So a refresh job writes the
resource next to its place and renames it there: Envoy never reads half a file.

    scripts/ecds.py --filter-config FILTER.json --wasm PATH --out DIR/blobsteer.json

Exit 0 once the resource is in place; 1 (one line) if the filter configuration is not JSON or
a file cannot be written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

RESOURCE_NAME = "blobsteer"  # the http filter's name in the listener's config_discovery
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def resource(filter_config: str, wasm_path: str | Path) -> dict:
    """The discovery response holding the filter with `filter_config` (its JSON text)."""
    wasm = {
        "name": "blobsteer",
        "root_id": "blobsteer",
        "vm_config": {
            "vm_id": "blobsteer",
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(wasm_path)}},
        },
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": filter_config},
        "failure_policy": "FAIL_RELOAD",
        "reload_config": {"backoff": {"base_interval": "1s", "max_interval": "10s"}},
        "allow_on_headers_stop_iteration": True,
    }
    return {
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": RESOURCE_NAME,
                "typed_config": {"@type": WASM_TYPE, "config": wasm},
            }
        ]
    }


def install(document: dict, target: Path) -> None:
    """Writes `document` to a temporary file in `target`'s directory, then renames it to
    `target`: the rename is what Envoy's watched directory acts on, and it is atomic."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".blobsteer-", suffix=".json", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(document, out, indent=2)
            out.write("\n")
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install the blobsteer filter as an ECDS resource.")
    parser.add_argument("--filter-config", type=Path, required=True, help="the filter's JSON configuration")
    parser.add_argument("--wasm", required=True, help="the wasm module's path, as the Envoy reads it")
    parser.add_argument("--out", type=Path, required=True, help="the resource file in the watched directory")
    args = parser.parse_args(argv)
    try:
        text = args.filter_config.read_text()
        json.loads(text)
        install(resource(text, args.wasm), args.out)
    except (OSError, ValueError) as err:
        print(f"ecds.py: {err}", file=sys.stderr)
        return 1
    print(f"ecds.py: {args.out} in place (Envoy swaps the filter's configuration now)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
