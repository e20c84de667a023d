"""DNS over HTTPS upstreams (RFC 8484): POST ``application/dns-message`` over HTTP/2.

:class:`DohConnection` is an :class:`~dns2dot.upstream.connection.UpstreamConnection` like the
DoT one: the same TLS stream (verified name and pins, session resumption), the same
queries-in-flight bookkeeping, the same hand-back to the pool when things fail. Only
the transport differs: ``h2``'s sans-IO state machine turns queries into streams on one
long-lived connection, each query its own stream, answers matched by stream and then
by question. The message ID on the wire is 0 (RFC 8484 §4.1); the client's is restored
on the way back, as for DoT.

Failures map onto what the pool already knows: a refused stream (RST_STREAM
REFUSED_STREAM) or one beyond a GOAWAY's last stream was never processed and goes
elsewhere as if unsent; an HTTP error, a wrong content type or an oversized body is
that upstream's SERVFAIL, which the pool retries on another upstream.

If the server does not offer ``h2`` in ALPN, HTTP/1.1 is spoken instead, one request
at a time with keep-alive: a fallback, not a fast path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from tornado.iostream import IOStream, StreamClosedError

from dns2dot.protocol import wire
from dns2dot.protocol.errors import UpstreamClosedError, UpstreamError
from dns2dot.transport.streams import read_available
from dns2dot.upstream.connection import MAX_INFLIGHT_PER_CONNECTION, UpstreamConnection
from dns2dot.upstream.exchange import Exchange
from dns2dot.upstream.pool import UpstreamServer

log = logging.getLogger("dns2dot.doh")

CONTENT_TYPE = "application/dns-message"
MAX_BODY = 65535  # a DNS message is at most this long (RFC 8484 §6)
MAX_HEADER_BYTES = 16384  # HTTP/1.1 response head
DEFAULT_MAX_STREAMS = 100  # assumed until the server's SETTINGS arrive (RFC 9113 §6.5.2)


class DohConnection(UpstreamConnection):
    """One HTTPS connection to a DoH upstream, many queries on it as HTTP/2 streams."""

    def __init__(self, server: UpstreamServer) -> None:
        self._h2: h2.connection.H2Connection | None = None
        self._http1 = False
        self._queued: deque[Exchange] = deque()  # waiting for the connection or a stream slot
        self._bodies: dict[int, bytearray] = {}
        self._problems: dict[int, str] = {}  # stream -> why its answer is unusable
        self._unsent: dict[int, bytes] = {}  # stream -> body held back by flow control
        self._goaway = False
        self._flush_scheduled = False
        self._http1_waiter: asyncio.Future[None] | None = None
        self._http1_next = 0
        super().__init__(server)

    @property
    def accepting(self) -> bool:
        """Room for one more query: below the server's concurrent stream limit.

        When every connection is full the pool opens another one (up to its limit)
        instead of queueing here: servers cap streams per connection (unbound at 100).
        """
        limit = MAX_INFLIGHT_PER_CONNECTION
        if self._h2 is not None:
            limit = min(limit, self._h2.remote_settings.max_concurrent_streams)
        elif self._stream is None:
            limit = min(limit, DEFAULT_MAX_STREAMS)
        return super().accepting and not self._goaway and self.load < limit

    @property
    def load(self) -> int:
        return len(self._pending) + len(self._queued)

    def idle_since(self, now: float) -> float:
        return 0.0 if self._queued else super().idle_since(now)

    def send(self, exchange: Exchange) -> None:
        self._queued.append(exchange)
        if self._stream is not None:
            self._start_queued()

    def _drop_queued(self) -> None:
        self._queued.clear()

    def _abandon(self, error: UpstreamError, *, sent: bool) -> None:
        queued = list(self._queued)
        super()._abandon(error, sent=sent)
        for exchange in queued:  # never written: they go wherever the pool says
            self.server.pool.lost(exchange, self.server, error, sent=False)

    # -- HTTP/2 ---------------------------------------------------------------------

    async def _serve(self, stream: IOStream) -> None:
        protocol = getattr(stream.socket, "selected_alpn_protocol", lambda: None)()
        if protocol != "h2":
            self._http1 = True
            await self._serve_http1(stream)
            return
        # Our request headers are fixed and known good, and answers are checked for what
        # matters (status, content type, size): h2's per-header validation would cost
        # more than the rest of a query.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        conn = self._h2 = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self._start_queued()
        self._flush()
        first = True
        while True:
            data = await read_available(stream)
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                log.warning("%s: HTTP/2 protocol error (%s), reconnecting", self.server, exc)
                return
            for event in events:
                self._on_event(event)
            self._start_queued()
            self._flush()
            if first:
                first = False
                self.server.remember_session(stream)
            if self._goaway and not self._pending:
                return

    def _start_queued(self) -> None:
        """Open a stream for each queued query while the server allows more."""
        conn = self._h2
        if conn is None:
            if self._http1 and self._http1_waiter is not None:
                waiter, self._http1_waiter = self._http1_waiter, None
                if not waiter.done():
                    waiter.set_result(None)
            return
        while self._queued and not self._goaway:
            # Our pending streams are the open ones; h2's own count walks every stream.
            if len(self._pending) >= conn.remote_settings.max_concurrent_streams:
                break
            exchange = self._queued.popleft()
            if exchange.done:
                continue
            try:
                stream_id = conn.get_next_available_stream_id()
            except h2.exceptions.NoAvailableStreamIDError:
                self._queued.appendleft(exchange)
                self._goaway = True  # this connection is used up: retire it
                break
            self._track(stream_id, exchange)
            conn.send_headers(stream_id, self._request_headers(len(exchange.upstream_msg)))
            self._send_body(stream_id, wire.with_id(exchange.upstream_msg, 0))
        self._schedule_flush()

    def _authority(self) -> str:
        spec = self.server.spec
        host = f"[{spec.verify_name}]" if ":" in spec.verify_name else spec.verify_name
        return host if spec.port == 443 else f"{host}:{spec.port}"

    def _request_headers(self, length: int) -> list[tuple[str, str]]:
        return [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", self._authority()),
            (":path", self.server.spec.path),
            ("accept", CONTENT_TYPE),
            ("content-type", CONTENT_TYPE),
            ("content-length", str(length)),
        ]

    def _send_body(self, stream_id: int, body: bytes) -> None:
        """Send as much of the body as flow control allows; hold back the rest."""
        conn = self._h2
        assert conn is not None
        allowed = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
        if len(body) <= allowed:
            conn.send_data(stream_id, body, end_stream=True)
            self._unsent.pop(stream_id, None)
            return
        if allowed > 0:
            conn.send_data(stream_id, body[:allowed])
        self._unsent[stream_id] = body[allowed:]

    def _on_event(self, event: h2.events.Event) -> None:
        conn = self._h2
        assert conn is not None
        if isinstance(event, h2.events.ResponseReceived):
            headers = _text_headers(event.headers or [])
            status = headers.get(":status", "")
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if status != "200":
                self._problems[event.stream_id] = f"HTTP status {status}"
            elif content_type != CONTENT_TYPE:
                self._problems[event.stream_id] = f"content type {content_type!r}"
        elif isinstance(event, h2.events.DataReceived):
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            body = self._bodies.setdefault(event.stream_id, bytearray())
            body += event.data or b""
            if len(body) > MAX_BODY and event.stream_id not in self._problems:
                self._problems[event.stream_id] = "answer larger than a DNS message"
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    # Already over if this frame carried END_STREAM.
                    conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.CANCEL)
                self._finish_stream(event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self._finish_stream(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._bodies.pop(event.stream_id, None)
            self._problems.pop(event.stream_id, None)
            self._unsent.pop(event.stream_id, None)
            # Even a refused stream (never processed, RFC 9113 §8.7) counts as sent: the
            # query is tried once more, not again and again on a server shedding load.
            self._give_back(
                event.stream_id,
                UpstreamClosedError(f"stream reset ({event.error_code!r})"),
                sent=True,
            )
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for stream_id in [sid for sid in self._pending if sid > last]:
                # Beyond the GOAWAY's last stream: never processed (RFC 9113 §6.8).
                self._give_back(stream_id, UpstreamClosedError("GOAWAY"), sent=False)
        elif isinstance(event, h2.events.WindowUpdated):
            for stream_id, rest in list(self._unsent.items()):
                self._send_body(stream_id, rest)

    def _finish_stream(self, stream_id: int) -> None:
        body = bytes(self._bodies.pop(stream_id, b""))
        problem = self._problems.pop(stream_id, None)
        entry = self._pending.get(stream_id)
        if entry is None:
            return
        if problem is None and len(body) < wire.HEADER_LEN:
            problem = "answer shorter than a DNS header"
        if problem is not None:
            self._upstream_failed(stream_id, entry[0], problem)
            return
        self._deliver(stream_id, body)

    def _upstream_failed(self, stream_id: int, exchange: Exchange, problem: str) -> None:
        """An unusable HTTP answer: that upstream's SERVFAIL (the pool tries another)."""
        log.debug("%s: %s", self.server, problem)
        self.server.failures["http"] += 1
        servfail = wire.error_response(exchange.msg, wire.Rcode.SERVFAIL, exchange.query)
        self._release(stream_id)
        self.server.pool.answered(exchange, servfail)
        self._maybe_retire()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._stream is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        conn = self._h2
        stream = self._stream
        if conn is None or stream is None or stream.closed():
            return
        data = conn.data_to_send()
        if data:
            stream.write(data)

    def close(self) -> None:
        conn = self._h2
        if conn is not None and self._stream is not None and not self._stream.closed():
            try:
                conn.close_connection()
                self._stream.write(conn.data_to_send())
            except (h2.exceptions.ProtocolError, StreamClosedError):
                pass
        super().close()

    # -- HTTP/1.1 fallback ----------------------------------------------------------

    async def _serve_http1(self, stream: IOStream) -> None:
        """One request at a time on a keep-alive connection."""
        self.server.remember_session(stream)
        spec = self.server.spec
        while True:
            exchange = self._pop_queued()
            if exchange is None:
                self._http1_waiter = self._loop.create_future()
                await self._http1_waiter
                continue
            self._http1_next += 1
            uid = self._http1_next
            self._track(uid, exchange)
            body = wire.with_id(exchange.upstream_msg, 0)
            head = (
                f"POST {spec.path} HTTP/1.1\r\nHost: {self._authority()}\r\n"
                f"Accept: {CONTENT_TYPE}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            await stream.write(head.encode("ascii") + body)
            raw = await stream.read_until(b"\r\n\r\n", max_bytes=MAX_HEADER_BYTES)
            status, headers = _parse_http1_head(raw)
            length = headers.get("content-length", "")
            if not length.isdigit() or int(length) > MAX_BODY:
                self._upstream_failed(uid, exchange, "answer without a usable Content-Length")
                return  # the stream cannot be resynchronised: reconnect
            answer = await stream.read_bytes(int(length)) if int(length) else b""
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if status != "200" or content_type != CONTENT_TYPE or len(answer) < wire.HEADER_LEN:
                self._upstream_failed(uid, exchange, f"HTTP/1.1 {status} {content_type!r}")
            else:
                self._deliver(uid, answer)
            if headers.get("connection", "").lower() == "close":
                return

    def _pop_queued(self) -> Exchange | None:
        while self._queued:
            exchange = self._queued.popleft()
            if not exchange.done:
                return exchange
        return None


def _text_headers(headers: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    """Header names (lower case) and values as text, whichever type h2 handed out."""
    return {
        (k.decode("latin-1") if isinstance(k, bytes) else k).lower(): (
            v.decode("latin-1") if isinstance(v, bytes) else v
        )
        for k, v in headers
    }


def _parse_http1_head(raw: bytes) -> tuple[str, dict[str, str]]:
    """The status code and lower-cased headers of an HTTP/1.1 response head."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = parts[1] if len(parts) > 1 and parts[0].startswith("HTTP/1.") else ""
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers
