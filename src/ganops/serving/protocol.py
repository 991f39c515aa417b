"""The HTTP/1.1 connection as the serving process runs it: uvicorn's httptools protocol with the limits it lacks.

uvicorn has ``limit_concurrency`` (503 beyond it) and an idle keep-alive timeout, but with httptools it reads a
request head of any size (llhttp has no limit: a 64 MiB header was read and answered 200) and waits for a slow
client for ever. :func:`guarded_protocol` returns a subclass that, per connection:

* counts the bytes of each request head (request line + headers) as they arrive and, past ``max_header_bytes``,
  answers **431** and closes the connection, before feeding the parser the rest: at most ``max_header_bytes`` of a
  head is ever buffered (a pipelined head sharing a read with the previous request's body can exceed it by at most
  that one read, 256 KiB);
* gives each request head ``header_timeout_s`` from the connection's opening (the first request) or its first byte
  (later requests on a keep-alive connection; the gap before it is uvicorn's keep-alive timeout), and each body
  ``body_timeout_s`` from the end of its head; a client that is slower gets **408** (when no response has started)
  and the connection is closed. The app sees ``http.disconnect``.

The refusals are counted through ``on_refusal(reason)`` (``ganops_serving_connection_refusals_total{reason}``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["REFUSALS", "guarded_protocol"]

logger = logging.getLogger(__name__)

REFUSALS = ("headers_too_large", "header_timeout", "body_timeout")

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Set by :func:`guarded_protocol` on a subclass of its own (uvicorn builds one instance per connection)."""

    max_header_bytes: int = 32 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    on_refusal: Callable[[str], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True
        self._deadline: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------------------------------------- timers

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, reason)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, reason: str) -> None:
        self._deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        what = "request headers" if reason == "header_timeout" else "request body"
        limit = self.header_timeout_s if reason == "header_timeout" else self.body_timeout_s
        self._refuse(408, reason, f"the {what} did not arrive within {limit:g} s")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` (unless a response has started) and close; the app, if running, sees a disconnect."""
        if self.on_refusal is not None:
            self.on_refusal(reason)
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
        logger.warning("closing the connection of %s: %s", client, message)
        cycle = self.cycle
        in_flight = cycle is not None and not cycle.response_complete
        if not (in_flight and cycle.response_started):
            body = json.dumps({"error": {"code": reason, "message": message}}).encode()
            head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
            headers = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            self.transport.write(head + headers + body)
        if in_flight:
            cycle.disconnected = True  # the app's sends are dropped, its receive() answers http.disconnect
            cycle.message_event.set()
        self._in_head = False
        self.transport.close()

    # -------------------------------------------------------------------------------------- the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if self._deadline is None and idle and not self.transport.is_closing():
            # The first byte after a response (a new head, or the blank lines llhttp skips): the head's clock runs.
            self._arm(self.header_timeout_s, "header_timeout")
        if self._in_head and not self.transport.is_closing():
            room = self.max_header_bytes - self._head_bytes
            if len(data) > room:
                head, rest = data[: max(room, 0)], data[max(room, 0) :]
                self._head_bytes += len(head)
                if head:
                    super().data_received(head)
                if self.transport.is_closing():
                    return
                if self._in_head:  # the head goes on past the limit: never feed the parser more of it
                    self._refuse(431, "headers_too_large",
                                 f"the request line and headers are larger than {self.max_header_bytes} bytes")
                    return
                if rest:
                    self.data_received(rest)
                return
            self._head_bytes += len(data)
        super().data_received(data)

    # ------------------------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._deadline is None:
            self._arm(self.header_timeout_s, "header_timeout")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._arm(self.body_timeout_s, "body_timeout")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head = True  # what comes next is the head of the next request
        self._head_bytes = 0
        super().on_message_complete()


def guarded_protocol(
    *,
    max_header_bytes: int,
    header_timeout_s: float,
    body_timeout_s: float,
    on_refusal: Callable[[str], None] | None = None,
) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` enforcing these limits."""
    return type(
        "GanopsHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "max_header_bytes": max_header_bytes,
            "header_timeout_s": header_timeout_s,
            "body_timeout_s": body_timeout_s,
            "on_refusal": staticmethod(on_refusal) if on_refusal is not None else None,
        },
    )
