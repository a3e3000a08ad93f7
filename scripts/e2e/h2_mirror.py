"""A crafted mirror that speaks cleartext HTTP/2 (prior knowledge) and can stall a response
after its headers: what Envoy delivers to a filter's callout as an answer with zero headers."""

from __future__ import annotations

import socket
import struct
import threading

from harness import RawServer

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
STATUS_200 = b"\x88"  # HPACK: static table entry 8, `:status: 200`


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_literal(name: str, value: str) -> bytes:
    """A header field as an HPACK literal without indexing, no Huffman (short strings only)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


class H2Mirror(RawServer):
    """A crafted mirror speaking cleartext HTTP/2 (prior knowledge), as Envoy's cluster does
    here. It answers each request's `HEADERS` (the check's `HEAD`) with `:status: 200`: with
    `END_STREAM` while `stall` is clear, else with headers only (and a `content-length`), then
    nothing on that stream. Records `HEADERS stream <id>` per request in `requests`, and each
    frame received as (type, flags, stream) in `frames`."""

    def __init__(self, port: int):
        self.stall = threading.Event()
        self.frames: list[tuple[int, int, int]] = []
        super().__init__(port, lambda *_: None)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        pending = b""

        def read(size: int) -> bytes:
            nonlocal pending
            while len(pending) < size:
                if self.stopped.is_set():
                    raise EOFError
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    raise EOFError
                pending += chunk
            data, pending = pending[:size], pending[size:]
            return data

        try:
            if read(len(PREFACE)) != PREFACE:
                return
            conn.sendall(h2_frame(SETTINGS, 0, 0))
            while True:
                head = read(9)
                kind, flags = head[3], head[4]
                stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                payload = read(int.from_bytes(head[:3], "big"))
                self.frames.append((kind, flags, stream))
                if kind == SETTINGS and not flags & ACK:
                    conn.sendall(h2_frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    conn.sendall(h2_frame(PING, ACK, 0, payload))
                elif kind == HEADERS:
                    self.requests.append(f"HEADERS stream {stream}")
                    if self.stall.is_set():
                        fields = STATUS_200 + hpack_literal("content-length", "1024")
                        conn.sendall(h2_frame(HEADERS, END_HEADERS, stream, fields))
                    else:
                        conn.sendall(h2_frame(HEADERS, END_HEADERS | END_STREAM, stream, STATUS_200))
                elif kind == GOAWAY:
                    return
        except (EOFError, OSError):
            pass
        finally:
            conn.close()
