"""Polling with a deadline, and the plain HTTP and TCP probes the stack and its tests use, all
against 127.0.0.1."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable, Mapping

LOOPBACK = "127.0.0.1"
POLL_INTERVAL = 0.05


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 10.0):
    """Poll `predicate` until it returns something truthy (returned) or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def http_request(
    port: int,
    path: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 request to 127.0.0.1 (no proxy, no redirects): (status, headers, body).
    Header names are as the server sent them; a repeated header keeps its last value."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def http_status(port: int, path: str) -> int | None:
    """The status of `GET path` on 127.0.0.1:`port`, or None when nothing answers."""
    try:
        return http_request(port, path, timeout=1.0)[0]
    except (OSError, http.client.HTTPException):
        return None


def tcp_accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection((LOOPBACK, port), timeout=1.0).close()
    except OSError:
        return False
    return True
