"""A TCP proxy in front of MinIO whose outage a test switches on and off.

`down()` closes the listening socket (new connections are refused) and resets every open
connection, as an S3 endpoint that went away would; `up()` listens again on the same port.
The trainer under test gets `AWS_ENDPOINT_URL=proxy.url`; the test itself talks to MinIO directly.
`requests` records the (method, path) of every HTTP request that went through, for tests that
count what a trainer read.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
from urllib.parse import unquote, urlparse

REQUEST_LINE = re.compile(rb"(GET|PUT|HEAD|POST|DELETE) (/[^ \r\n]*) HTTP/1\.1\r\n")


class S3Proxy:
    def __init__(self, upstream_url: str) -> None:
        u = urlparse(upstream_url)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.connections = 0  # accepted while up
        self.requests: list[tuple[str, str]] = []  # (method, path with query), in order

    # ------------------------------------------------------------------ control

    def up(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
            s.listen(64)
            self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for c in conns:
            with contextlib.suppress(OSError):
                # RST, not FIN: the client sees "connection reset", as with a dead endpoint
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    # ------------------------------------------------------------------ plumbing

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._conns.update((client, server))
                self.connections += 1
            for a, b, log in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, log), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, log: bool) -> None:
        carry = b""  # a request line may be split between two reads
        try:
            while data := src.recv(65536):
                if log:
                    buf = carry + data
                    for m in REQUEST_LINE.finditer(buf):
                        if m.end() > len(carry):  # not seen in the previous read
                            self.requests.append(
                                (m.group(1).decode(), unquote(m.group(2).decode()))
                            )
                    carry = buf[-2048:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
