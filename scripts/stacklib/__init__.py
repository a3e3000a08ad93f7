"""The parts of the local stack (`scripts/stack.py`), one job per module: paths, ports, probes,
texts (logs and templates), processes, the servers, and supervising a foreground run."""
