"""DNS over HTTPS upstreams (RFC 8484): POST ``application/dns-message`` over HTTP/2.

:class:`DohConnection` is an :class:`~dns2dot.upstream.connection.UpstreamConnection` like the
DoT one, on the same :class:`~dns2dot.transport.channel.TlsChannel` (verified name and
pins, session resumption, readiness callbacks, quick ACKs) with the same bookkeeping of
queries in flight and hand-back to the pool when things fail. Only the protocol
differs: ``h2``'s sans-IO state machine turns queries into streams on one long-lived
connection, each query its own stream, answers matched by stream and then by question.
The message ID on the wire is 0 (RFC 8484 §4.1); the client's is restored on the way
back, as for DoT.

Failures map onto what the pool already knows: a refused stream (RST_STREAM
REFUSED_STREAM) or one beyond a GOAWAY's last stream was never processed and goes
elsewhere; an HTTP error, a wrong content type or an oversized body is that upstream's
SERVFAIL, which the pool retries on another upstream.

If the server does not offer ``h2`` in ALPN, HTTP/1.1 is spoken instead, one request
at a time with keep-alive: a fallback, not a fast path.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
from collections import deque

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from dns2dot.protocol import wire
from dns2dot.protocol.doh import (
    MAX_BODY,
    Http1Reader,
    Http1Response,
    StaticHeaderEncoder,
    http1_request,
    request_headers,
    response_problem,
)
from dns2dot.protocol.errors import UpstreamClosedError, UpstreamError
from dns2dot.transport.channel import TlsChannel
from dns2dot.upstream.connection import MAX_INFLIGHT_PER_CONNECTION, UpstreamConnection
from dns2dot.upstream.exchange import Exchange
from dns2dot.upstream.pool import UpstreamServer

log = logging.getLogger("dns2dot.doh")

DEFAULT_MAX_STREAMS = 100  # assumed until the server's SETTINGS arrive (RFC 9113 §6.5.2)
MAX_WINDOW = 2**31 - 1  # the largest flow-control window (RFC 9113 §6.9.1)
# Each stream's receive window: room for the largest DNS message and then some, so that
# an oversized body shows itself instead of stalling on flow control.
STREAM_WINDOW = 2 * (MAX_BODY + 1)
# The connection's receive window is opened to MAX_WINDOW once and topped up in bulk
# after this many octets, instead of a WINDOW_UPDATE for every answer.
WINDOW_REFILL = 2**30


class State(enum.Enum):
    """Where a DoH connection is; changed only by :meth:`DohConnection._enter`."""

    OPENING = "opening"  # connecting and handshaking; queries wait in the queue
    H2_STARTING = "h2-starting"  # HTTP/2 preface sent; streams wait for the server's SETTINGS
    H2 = "h2"  # HTTP/2: many streams at once
    HTTP1 = "http/1.1"  # the fallback: one request at a time
    DRAINING = "draining"  # GOAWAY (either way): the streams in flight finish, no new ones
    ENDED = "ended"  # over: run() hands back what is still pending


class DohConnection(UpstreamConnection):
    """One HTTPS connection to a DoH upstream, many queries on it as HTTP/2 streams."""

    def __init__(self, server: UpstreamServer) -> None:
        self.state = State.OPENING
        self._channel: TlsChannel | None = None
        self._fd = -1
        self._ended: asyncio.Future[BaseException | None] | None = None
        self._h2: h2.connection.H2Connection | None = None
        self._queued: deque[Exchange] = deque()  # waiting for the connection or a stream
        self._bodies: dict[int, bytes] = {}
        self._problems: dict[int, str] = {}  # stream -> why its answer is unusable
        self._unsent: dict[int, bytes] = {}  # stream -> body held back by flow control
        self._received = 0  # octets counted against the connection's receive window
        self._flush_scheduled = False
        self._first_answer = True
        self._http1: Http1Reader | None = None
        self._http1_uid = 0  # the request in flight on HTTP/1.1; 0 for none
        self._authority = _authority(server)
        self._headers: dict[int, list[tuple[bytes, bytes]]] = {}  # by body length
        # Streams open at once: assumed until the server's SETTINGS say otherwise.
        self._stream_limit = DEFAULT_MAX_STREAMS
        super().__init__(server)

    # -- what the pool sees -----------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Room for one more query: below the server's concurrent stream limit.

        When every connection is full the pool opens another one (up to its limit)
        instead of queueing here: servers cap streams per connection (unbound at 100).
        """
        state = self.state
        if state is State.H2 or state is State.H2_STARTING or state is State.OPENING:
            limit = self._stream_limit
        elif state is State.HTTP1:
            limit = MAX_INFLIGHT_PER_CONNECTION
        else:
            return False
        return super().accepting and self.load < limit

    @property
    def has_room(self) -> bool:
        """A draining connection takes nothing more, even when every other is full."""
        return self.state is not State.DRAINING and super().has_room

    @property
    def load(self) -> int:
        return len(self._pending) + len(self._queued)

    def idle_since(self, now: float) -> float:
        if self._queued or (self._channel is not None and self._channel.unsent):
            return 0.0
        return super().idle_since(now)

    def send(self, exchange: Exchange) -> None:
        self._queued.append(exchange)
        if self.state is State.HTTP1:
            self._http1_next()
        elif not self._flush_scheduled and self.state is State.H2:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def close(self) -> None:
        if self._channel is None:
            self._task.cancel()
            return
        conn = self._h2
        if conn is not None and self.state in (State.H2_STARTING, State.H2, State.DRAINING):
            with contextlib.suppress(h2.exceptions.ProtocolError):
                conn.close_connection()
                self._write(conn.data_to_send())
        self._end(None)

    def _drop_queued(self) -> None:
        self._queued.clear()

    def _abandon(self, error: UpstreamError, *, sent: bool) -> None:
        queued = list(self._queued)
        super()._abandon(error, sent=sent)
        for exchange in queued:  # never written: they go wherever the pool says
            self.server.pool.lost(exchange, self.server, error, sent=False)

    # -- the state, and the channel ---------------------------------------------------

    def _enter(self, state: State, error: BaseException | None = None) -> None:
        """The one place the state changes; ENDED wakes :meth:`_run`."""
        if self.state is State.ENDED or self.state is state:
            return
        self.state = state
        if state is State.ENDED:
            self.closed = True
        if state is State.ENDED and self._ended is not None and not self._ended.done():
            self._ended.set_result(error)

    def _end(self, error: BaseException | None) -> None:
        self._enter(State.ENDED, error)

    async def _run(self) -> None:
        channel = await self._open_or_abandon(self.server.open_channel)
        if channel is None:
            return
        loop = self._loop
        channel.acknowledge_at_once()  # shared by many clients: see TlsChannel
        self._channel = channel
        self._fd = channel.sock.fileno()
        self._ended = loop.create_future()
        try:
            loop.add_reader(self._fd, self._readable)
            if channel.tls.selected_alpn_protocol() == "h2":
                self._start_h2()
            else:
                self._http1 = Http1Reader()
                self._enter(State.HTTP1)
                self._http1_next()
            self._decrypt()  # records that came with the end of the handshake
            error = await self._ended
        finally:
            loop.remove_reader(self._fd)
            loop.remove_writer(self._fd)
            channel.close()
        if isinstance(error, ssl.SSLError | OSError):
            log.debug("%s: connection ended: %s", self.server, error)
        self._abandon(UpstreamClosedError("upstream closed the connection"), sent=True)

    def _write(self, data: bytes) -> None:
        """Encrypt ``data`` and send it (what the socket does not take waits)."""
        channel = self._channel
        if not data or channel is None or self.state is State.ENDED:
            return
        try:
            channel.tls.write(data)  # into memory: never blocks
        except ssl.SSLError as exc:
            self._end(exc)
            return
        self._send_ciphertext()

    def _send_ciphertext(self) -> None:
        channel = self._channel
        if channel is None or self.state is State.ENDED:
            return
        waited = bool(channel.unsent)
        try:
            done = channel.transmit()
        except OSError as exc:
            self._end(exc)
            return
        if done and waited:
            self._loop.remove_writer(self._fd)
        elif not done and not waited:
            self._loop.add_writer(self._fd, self._send_ciphertext)

    def _readable(self) -> None:
        channel = self._channel
        if channel is None or self.state is State.ENDED:
            return
        try:
            channel.receive()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        self._decrypt()

    def _decrypt(self) -> None:
        channel = self._channel
        if channel is None or self.state is State.ENDED:
            return
        data, ended, error = channel.decrypt()
        if channel.outgoing.pending:  # OpenSSL has something to say (a key update)
            self._send_ciphertext()
        if data:
            try:
                if self._http1 is not None:
                    self._http1_received(data)
                else:
                    self._h2_received(data)
            except Exception as exc:
                self._log_failure(exc)
                ended = True
            if self._first_answer:
                self._first_answer = False
                self.server.remember_session(channel)
        if ended:
            self._end(error)

    # -- HTTP/2 -----------------------------------------------------------------------

    def _start_h2(self) -> None:
        # Our request headers are fixed and known good, and answers are checked for what
        # matters (status, content type, size): h2's per-header validation would cost
        # more than the rest of a query.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        conn = self._h2 = h2.connection.H2Connection(config=config)
        conn.encoder = StaticHeaderEncoder()  # type: ignore[assignment]
        conn.initiate_connection()
        conn.update_settings(
            {
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            }
        )
        conn.increment_flow_control_window(MAX_WINDOW - conn.inbound_flow_control_window)
        self._enter(State.H2_STARTING)
        self._flush()

    def _flush(self) -> None:
        """Open a stream for each queued query while the server allows more, and send
        everything h2 has to say: one write per loop turn, however many queries."""
        self._flush_scheduled = False
        conn = self._h2
        if conn is None or self.state is State.ENDED:
            return
        if self._queued and self.state is State.H2:
            self._start_queued(conn)  # not before the server's SETTINGS: its stream limit
        self._write(conn.data_to_send())

    def _start_queued(self, conn: h2.connection.H2Connection) -> None:
        limit = self._stream_limit
        queued = self._queued
        pending = self._pending
        headers = self._headers
        # Our pending streams are the open ones; h2's own count walks every stream.
        while queued and len(pending) < limit:
            exchange = queued.popleft()
            if exchange.done:
                continue
            try:
                stream_id = conn.get_next_available_stream_id()
            except h2.exceptions.NoAvailableStreamIDError:
                queued.appendleft(exchange)
                self._enter(State.DRAINING)  # this connection is used up: retire it
                self._hand_back_queued()
                return
            body = wire.with_id(exchange.upstream_msg, 0)
            self._track(stream_id, exchange)
            length = len(body)
            block = headers.get(length)
            if block is None:
                if len(headers) > 64:
                    headers.clear()
                block = request_headers(self._authority, self.server.spec.path, length)
                headers[length] = block
            conn.send_headers(stream_id, block)
            self._send_body(conn, stream_id, body)

    def _send_body(self, conn: h2.connection.H2Connection, stream_id: int, body: bytes) -> None:
        """Send as much of the body as flow control allows; hold back the rest."""
        allowed = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
        if len(body) <= allowed:
            conn.send_data(stream_id, body, end_stream=True)
            self._unsent.pop(stream_id, None)
            return
        if allowed > 0:
            conn.send_data(stream_id, body[:allowed])
        self._unsent[stream_id] = body[allowed:]

    def _h2_received(self, data: bytes) -> None:
        conn = self._h2
        assert conn is not None
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.warning("%s: HTTP/2 protocol error (%s), reconnecting", self.server, exc)
            self._end(None)
            return
        for event in events:
            self._on_event(conn, event)
        if self._received >= WINDOW_REFILL:
            conn.increment_flow_control_window(self._received)
            self._received = 0
        self._flush()
        if self.state is State.DRAINING and not self._pending:
            self._end(None)

    def _on_event(self, conn: h2.connection.H2Connection, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream_id = event.stream_id
            self._received += event.flow_controlled_length or 0
            if stream_id not in self._pending:
                return  # forgotten (timed out, answered elsewhere) or failed already
            data = event.data or b""
            body = self._bodies.get(stream_id)
            body = data if body is None else body + data
            self._bodies[stream_id] = body
            if len(body) > MAX_BODY:
                self._oversized(conn, stream_id)
        elif isinstance(event, h2.events.ResponseReceived):
            self._on_response(conn, event)
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
            self._enter(State.DRAINING)
            self._hand_back_queued()
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for stream_id in [sid for sid in self._pending if sid > last]:
                # Beyond the GOAWAY's last stream: never processed (RFC 9113 §6.8).
                self._give_back(stream_id, UpstreamClosedError("GOAWAY"), sent=False)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._stream_limit = min(
                MAX_INFLIGHT_PER_CONNECTION, conn.remote_settings.max_concurrent_streams
            )
            if self.state is State.H2_STARTING:
                self._enter(State.H2)  # _h2_received opens the queued streams next
        elif isinstance(event, h2.events.WindowUpdated):
            for stream_id, rest in list(self._unsent.items()):
                self._send_body(conn, stream_id, rest)

    def _on_response(
        self, conn: h2.connection.H2Connection, event: h2.events.ResponseReceived
    ) -> None:
        if event.stream_id not in self._pending:
            return
        status = content_type = length = b""
        for name, value in event.headers or ():
            if name == b":status":
                status = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
        problem = response_problem(status.decode("latin-1"), content_type.decode("latin-1"))
        if problem is not None:
            self._problems[event.stream_id] = problem
        elif length.isdigit() and int(length) > MAX_BODY:
            self._oversized(conn, event.stream_id)

    def _oversized(self, conn: h2.connection.H2Connection, stream_id: int) -> None:
        """A body longer than any DNS message: stop it, fail the query over."""
        if stream_id in self._problems:
            return
        self._problems[stream_id] = "answer larger than a DNS message"
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            # Already over if this frame carried END_STREAM.
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self._finish_stream(stream_id)

    def _finish_stream(self, stream_id: int) -> None:
        body = self._bodies.pop(stream_id, b"")
        problem = self._problems.pop(stream_id, None)
        entry = self._pending.get(stream_id)
        if entry is None:
            return
        self._answered(stream_id, entry[0], body, problem)

    def _answered(self, uid: int, exchange: Exchange, body: bytes, problem: str | None) -> None:
        if problem is None and len(body) < wire.HEADER_LEN:
            problem = "answer shorter than a DNS header"
        if problem is None:
            self._deliver(uid, body)
            return
        # An unusable HTTP answer: that upstream's SERVFAIL (the pool tries another).
        log.debug("%s: %s", self.server, problem)
        self.server.failures["http"] += 1
        servfail = wire.error_response(exchange.msg, wire.Rcode.SERVFAIL, exchange.query)
        self._release(uid)
        self.server.pool.answered(exchange, servfail)
        self._maybe_retire()

    def _hand_back_queued(self) -> None:
        """Queries not on a stream yet go wherever the pool says (this one drains)."""
        queued = list(self._queued)
        self._queued.clear()
        error = UpstreamClosedError("connection draining")
        for exchange in queued:
            self.server.pool.lost(exchange, self.server, error, sent=False)

    # -- HTTP/1.1 fallback ------------------------------------------------------------

    def _http1_next(self) -> None:
        """Send the next queued query, unless one is on its way already."""
        if self._http1_uid or self.state is not State.HTTP1:
            return
        while self._queued:
            exchange = self._queued.popleft()
            if exchange.done:
                continue
            self._http1_uid = self._http1_uid_next()
            self._track(self._http1_uid, exchange)
            body = wire.with_id(exchange.upstream_msg, 0)
            self._write(http1_request(self._authority, self.server.spec.path, body))
            return

    def _http1_uid_next(self) -> int:
        return self.queries + 1  # unique on this connection: one more than ever sent

    def _http1_received(self, data: bytes) -> None:
        reader = self._http1
        assert reader is not None
        for response in reader.feed(data):
            self._http1_answered(response)
            if not response.keep_alive:
                self._end(None)
                return
        if reader.broken is not None:
            uid = self._http1_uid
            entry = self._pending.get(uid)
            if entry is not None:
                self._http1_uid = 0
                self._answered(uid, entry[0], b"", reader.broken)
            self._end(None)  # the stream cannot be resynchronised: reconnect
            return
        self._http1_next()

    def _http1_answered(self, response: Http1Response) -> None:
        uid, self._http1_uid = self._http1_uid, 0
        entry = self._pending.get(uid)
        if entry is None:
            return  # the query timed out meanwhile: its answer is dropped
        problem = response_problem(response.status, response.content_type)
        if problem is not None:
            problem = f"HTTP/1.1 {problem}"
        self._answered(uid, entry[0], response.body, problem)


def _authority(server: UpstreamServer) -> str:
    """``:authority`` (and ``Host``): the TLS name, and the port unless it is 443."""
    spec = server.spec
    host = f"[{spec.verify_name}]" if ":" in spec.verify_name else spec.verify_name
    return host if spec.port == 443 else f"{host}:{spec.port}"
