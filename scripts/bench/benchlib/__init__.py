"""The parts of the benchmarks that run Envoy: configs, Envoy, readings, wrk, reports."""
