"""A fault-injecting HTTP proxy for an S3 endpoint (moto's server): each request is forwarded, or answered with a
500/503 S3 error, or its connection dropped, or (for downloads) its body cut short - by rules the test sets.

    with FaultProxy(moto.endpoint_url) as proxy:
        proxy.set_faults(FaultPlan(rate=0.2, methods=("PUT",), kinds=("503", "drop")))
        env = {**moto.env(), "AWS_ENDPOINT_URL_S3": proxy.url}

Plain HTTP/1.1 with Content-Length or chunked bodies, which is what botocore sends. Every decision is counted in
``proxy.counts`` so a test can prove the faults really happened.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}

S3_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
}


@dataclass
class FaultPlan:
    """Which requests fail and how. ``rate``: share of matching requests that get a fault; ``methods``: HTTP
    methods that may fail (empty: all); ``path_contains``: only paths with this substring (e.g. ``.safetensors``);
    ``kinds``: ``"500"``, ``"503"``, ``"drop"`` (connection closed with no answer) and ``"truncate"`` (a GET's
    body cut in half, then the connection closed)."""

    rate: float = 0.0
    methods: tuple[str, ...] = ()
    path_contains: str = ""
    kinds: tuple[str, ...] = ("500", "503", "drop")
    seed: int = 0
    first: int = 0  # the first N matching requests always fail (so a short phase surely sees faults)
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def pick(self, method: str, path: str) -> str | None:
        if self.rate <= 0 or (self.methods and method not in self.methods):
            return None
        if self.path_contains and self.path_contains not in path:
            return None
        if self.first > 0:
            self.first -= 1
        elif self.rng.random() >= self.rate:
            return None
        kinds = [k for k in self.kinds if k != "truncate" or method == "GET"] or ["503"]
        return self.rng.choice(kinds)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a dropped or cut connection is the point, not news


class FaultProxy:
    def __init__(self, target_url: str, host: str = "127.0.0.1") -> None:
        target = urlparse(target_url)
        self.target_host = target.hostname or "127.0.0.1"
        self.target_port = target.port or 80
        self.plan = FaultPlan()
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._body()
                with proxy._lock:
                    fault = proxy.plan.pick(self.command, self.path)
                    proxy.counts["requests"] += 1
                    proxy.counts[f"method:{self.command}"] += 1
                    proxy.counts[f"fault:{fault}" if fault else "forwarded"] += 1
                if fault in S3_ERRORS:
                    status, code, message = S3_ERRORS[fault]
                    xml = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                           f"<Message>{message}</Message></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(proxy.target_host, proxy.target_port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    head = self.command == "HEAD"  # no body: the upstream's Content-Length is the object's size
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP and (head or key.lower() != "content-length"):
                            self.send_header(key, value)
                    if not head:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if fault == "truncate" and len(data) > 1:
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815 - http.server's names

        self._server = _QuietServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def set_faults(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan

    def faults(self) -> int:
        return sum(n for key, n in self.counts.items() if key.startswith("fault:"))

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
