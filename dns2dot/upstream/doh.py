"""DNS over HTTPS upstreams (RFC 8484): POST ``application/dns-message`` over HTTP/2.

:class:`DohConnection` is an :class:`~dns2dot.upstream.connection.UpstreamConnection` like the
DoT one, on the same :class:`~dns2dot.transport.channel.TlsChannel` (verified name and
pins, session resumption, readiness callbacks, quick ACKs) with the same bookkeeping of
queries in flight and hand-back to the pool when things fail. Only the protocol
differs: :class:`~dns2dot.protocol.http2.H2Client` (sans-IO) turns queries into streams
on one long-lived connection, each query its own stream, answers matched by stream and
then by question.
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

import enum
import logging
from collections import deque

from dns2dot.protocol import http2, wire
from dns2dot.protocol.doh import (
    Http1Reader,
    Http1Response,
    http1_request,
    response_problem,
)
from dns2dot.protocol.errors import UpstreamClosedError, UpstreamError
from dns2dot.transport.channel import Channel, TlsChannel
from dns2dot.upstream.connection import (
    MAX_INFLIGHT_PER_CONNECTION,
    OPEN,
    ChannelConnection,
)
from dns2dot.upstream.exchange import Exchange
from dns2dot.upstream.pool import UpstreamServer

log = logging.getLogger("dns2dot.doh")


class Phase(enum.Enum):
    """Where a DoH connection's HTTP stands; changed only by :meth:`DohConnection._to`,
    which keeps the connection's own :class:`ConnectionState` in step (OPENING is
    CONNECTING, ENDED is CLOSING or CLOSED, the rest OPEN)."""

    OPENING = "opening"  # connecting and handshaking; queries wait in the queue
    H2_STARTING = "h2-starting"  # HTTP/2 preface sent; streams wait for the server's SETTINGS
    H2 = "h2"  # HTTP/2: many streams at once
    HTTP1 = "http/1.1"  # the fallback: one request at a time
    DRAINING = "draining"  # GOAWAY, or stream IDs used up: streams in flight finish, no new
    ENDED = "ended"  # over: run() hands back what is still pending


class DohConnection(ChannelConnection):
    """One HTTPS connection to a DoH upstream, many queries on it as HTTP/2 streams."""

    def __init__(self, server: UpstreamServer) -> None:
        self.phase = Phase.OPENING
        self._h2: http2.H2Client | None = None
        self._queued: deque[Exchange] = deque()  # waiting for the connection or a stream
        self._flush_scheduled = False
        self._http1: Http1Reader | None = None
        self._http1_uid = 0  # the request in flight on HTTP/1.1; 0 for none
        self._authority = _authority(server)
        super().__init__(server)

    # -- what the pool sees -----------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Room for one more query: below the server's concurrent stream limit.

        When every connection is full the pool opens another one (up to its limit)
        instead of queueing here: servers cap streams per connection (unbound at 100).
        """
        state = self.phase
        if state is Phase.H2:
            assert self._h2 is not None
            limit = min(self._h2.max_streams, MAX_INFLIGHT_PER_CONNECTION)
        elif state is Phase.H2_STARTING or state is Phase.OPENING:
            limit = http2.DEFAULT_MAX_STREAMS
        elif state is Phase.HTTP1:
            limit = MAX_INFLIGHT_PER_CONNECTION
        else:
            return False
        return super().accepting and self.load < limit

    @property
    def has_room(self) -> bool:
        """A draining connection takes nothing more, even when every other is full."""
        return self.phase is not Phase.DRAINING and super().has_room

    @property
    def load(self) -> int:
        return len(self._pending) + len(self._queued)

    def idle_since(self, now: float) -> float:
        return 0.0 if self._queued else super().idle_since(now)

    def send(self, exchange: Exchange) -> None:
        self._queued.append(exchange)
        if self.phase is Phase.HTTP1:
            self._http1_next()
        elif not self._flush_scheduled and self.phase is Phase.H2:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def close(self) -> None:
        if self._channel is None:
            self._task.cancel()
            return
        conn = self._h2
        if conn is not None and self.phase in (Phase.H2_STARTING, Phase.H2, Phase.DRAINING):
            conn.close()
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

    def _to(self, phase: Phase, error: BaseException | None = None) -> None:
        """The one place the phase changes; ENDED ends the connection (its
        :meth:`_run` then hands back what is still pending)."""
        if self.phase is Phase.ENDED or self.phase is phase:
            return
        if self.phase is Phase.OPENING:
            self._enter(OPEN)
        self.phase = phase
        if phase is Phase.ENDED:
            super()._end(error)

    def _end(self, error: BaseException | None) -> None:
        self._to(Phase.ENDED, error)

    async def _open(self) -> Channel:
        return await self.server.open_channel()

    def _started(self, channel: Channel) -> None:
        if isinstance(channel, TlsChannel) and channel.tls.selected_alpn_protocol() == "h2":
            self._start_h2()
        else:
            self._http1 = Http1Reader()
            self._to(Phase.HTTP1)
            self._http1_next()

    def _received(self, data: bytes) -> bool:
        if self._http1 is not None:
            self._http1_received(data)
        else:
            self._h2_received(data)
        return True

    # -- HTTP/2 -----------------------------------------------------------------------

    def _start_h2(self) -> None:
        self._h2 = http2.H2Client(self._authority, self.server.spec.path)
        self._to(Phase.H2_STARTING)
        self._flush()

    def _flush(self) -> None:
        """Open a stream for each queued query while the server allows more, and send
        everything there is to say: one write per loop turn, however many queries."""
        self._flush_scheduled = False
        conn = self._h2
        if conn is None or self.phase is Phase.ENDED:
            return
        if self._queued and self.phase is Phase.H2:
            self._start_queued(conn)  # not before the server's SETTINGS: its stream limit
        self._write(conn.data_to_send())

    def _start_queued(self, conn: http2.H2Client) -> None:
        limit = min(conn.max_streams, MAX_INFLIGHT_PER_CONNECTION)
        queued = self._queued
        streams = conn.streams  # open on the server, answered or not by us
        while queued and len(streams) < limit:
            exchange = queued.popleft()
            if exchange.done:
                continue
            if conn.exhausted:
                queued.appendleft(exchange)
                self._to(Phase.DRAINING)  # this connection is used up: retire it
                self._hand_back_queued()
                return
            self._track(conn.request(wire.with_id(exchange.upstream_msg, 0)), exchange)

    def _h2_received(self, data: bytes) -> None:
        conn = self._h2
        assert conn is not None
        for event in conn.receive(data):
            if isinstance(event, http2.Response):
                entry = self._pending.get(event.stream_id)
                if entry is not None:
                    problem = response_problem(event.status, event.content_type)
                    self._stream_answered(event.stream_id, entry[0], event.body, problem)
            elif isinstance(event, http2.StreamFailed):
                entry = self._pending.get(event.stream_id)
                if entry is not None:
                    self._stream_answered(event.stream_id, entry[0], b"", event.problem)
            elif isinstance(event, http2.StreamReset):
                # Even a refused stream (never processed, RFC 9113 §8.7) counts as sent:
                # the query is tried once more, not again and again on a server
                # shedding load.
                error = UpstreamClosedError(f"stream reset (error code {event.error_code})")
                self._give_back(event.stream_id, error, sent=True)
            elif isinstance(event, http2.GoAway):
                self._to(Phase.DRAINING)
                self._hand_back_queued()
                for stream_id in event.lost:
                    # Beyond the GOAWAY's last stream: never processed (RFC 9113 §6.8).
                    self._give_back(stream_id, UpstreamClosedError("GOAWAY"), sent=False)
            elif isinstance(event, http2.SettingsChanged):
                if event.max_streams == 0:
                    # No stream may be opened, for as long as the server likes (RFC 9113
                    # §6.5.2 asks servers to keep that short, and to close instead when
                    # they want no requests). A DNS query cannot wait that out: the
                    # queued ones are that upstream's SERVFAIL now (the pool tries
                    # another), the streams in flight finish, and the connection retires.
                    self._to(Phase.DRAINING)
                    self._refuse_queued("the server allows no streams (MAX_CONCURRENT_STREAMS 0)")
                elif self.phase is Phase.H2_STARTING:
                    self._to(Phase.H2)  # the queued streams are opened below
            elif isinstance(event, http2.ConnectionBroken):
                log.warning(
                    "%s: HTTP/2 protocol error (%s), reconnecting", self.server, event.reason
                )
                self._write(conn.data_to_send())  # the GOAWAY saying why
                self._end(None)
                return
        self._flush()
        if self.phase is Phase.DRAINING and not self._pending:
            self._end(None)

    def _stream_answered(
        self, uid: int, exchange: Exchange, body: bytes, problem: str | None
    ) -> None:
        """A stream's (or the HTTP/1.1 request's) response: the answer, or that
        upstream's SERVFAIL when the HTTP answer is unusable."""
        if problem is None and len(body) < wire.HEADER_LEN:
            problem = "answer shorter than a DNS header"
        if problem is None:
            self._deliver(uid, body)
            if uid not in self._pending:
                return
            # Not the question asked: a stream has one response, so nothing else will
            # come for it; like an HTTP error, that upstream's SERVFAIL.
            problem = "an answer did not echo its question"
        # An unusable HTTP answer: that upstream's SERVFAIL (the pool tries another).
        log.debug("%s: %s", self.server, problem)
        self.server.failures["http"] += 1
        servfail = wire.error_response(exchange.msg, wire.Rcode.SERVFAIL, exchange.query)
        self._release(uid)
        self.server.pool.answered(exchange, servfail)
        self._maybe_retire()

    def _refuse_queued(self, problem: str) -> None:
        """Queries not on a stream yet: that upstream's SERVFAIL, which the pool retries
        on an upstream not tried yet (not here again: no loop of new connections)."""
        queued = list(self._queued)
        self._queued.clear()
        log.debug("%s: %s", self.server, problem)
        for exchange in queued:
            if exchange.done:
                continue
            self.server.failures["http"] += 1
            servfail = wire.error_response(exchange.msg, wire.Rcode.SERVFAIL, exchange.query)
            self.server.pool.answered(exchange, servfail)

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
        if self._http1_uid or self.phase is not Phase.HTTP1:
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
                self._stream_answered(uid, entry[0], b"", reader.broken)
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
        self._stream_answered(uid, entry[0], response.body, problem)


def _authority(server: UpstreamServer) -> str:
    """``:authority`` (and ``Host``): the TLS name, and the port unless it is 443."""
    spec = server.spec
    host = f"[{spec.verify_name}]" if ":" in spec.verify_name else spec.verify_name
    return host if spec.port == 443 else f"{host}:{spec.port}"
