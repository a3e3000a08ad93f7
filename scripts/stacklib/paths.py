"""Where the stack's files and programs are: the repository, its Envoy configs, the filter and
CLI builds, the Envoy binary and the default run directory."""

from __future__ import annotations

from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = SCRIPTS_DIR.parent
ENVOY_DIR = REPO_ROOT / "envoy"
DEFAULT_WASM = REPO_ROOT / "target" / "wasm32-wasip1" / "release" / "blobsteer.wasm"
CLI = REPO_ROOT / "target" / "release" / "blobsteer"  # `make cli`
DEFAULT_ENVOY = REPO_ROOT / ".venv" / "bin" / "envoy"
DEFAULT_RUN_DIR = REPO_ROOT / ".run" / "demo"
RUN_DIR_MARKER = ".blobsteer-stack"  # `run` wipes only a directory that has it
