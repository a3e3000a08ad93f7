"""The parts of the benchmarks that run Envoy: configs and the request mix, the Envoy, readings
of it, wrk, common statistics; the table report; compare.py's content and contenders."""
