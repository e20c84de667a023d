"""What every pipelined upstream connection shares, and DoT over a tornado stream.

``UpstreamConnection`` is one connection to one upstream with many queries in flight,
each under a key unique on that connection, matched back by key *and* question.
``DotConnection`` speaks RFC 7858 framing over a tornado stream (``plain://`` zones).

Per-query work here runs in plain callbacks rather than coroutines: a coroutine and a
future per query cost more than everything else on the UDP path.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from tornado.iostream import IOStream, StreamClosedError

from dns2dot.protocol import wire
from dns2dot.protocol.errors import (
    FormError,
    MessageError,
    UpstreamClosedError,
    UpstreamError,
)
from dns2dot.protocol.framing import FrameDecoder, frame_with_id
from dns2dot.transport.streams import read_available
from dns2dot.upstream.exchange import Exchange

if TYPE_CHECKING:
    from dns2dot.upstream.pool import UpstreamServer

log = logging.getLogger("dns2dot.upstream")

MAX_INFLIGHT_PER_CONNECTION = 4096
_Opened = TypeVar("_Opened")  # what a connection's transport is opened as


class UpstreamConnection:
    """One stream to one upstream, carrying many queries at once; one reader loop.

    This base class keeps what every transport shares: the queries in flight (by a
    key unique on the connection: the DNS ID for DoT, the stream ID for DoH), their
    matching against the answer's question, retirement after ``max_queries``, and
    handing the pending queries back to the pool when the connection dies.
    Subclasses speak the transport: :meth:`send` and :meth:`_serve`.
    """

    def __init__(self, server: UpstreamServer) -> None:
        self.server = server
        self._pending: dict[int, tuple[Exchange, float]] = {}
        self._stream: IOStream | None = None
        self.closed = False
        self.queries = 0
        self._loop = asyncio.get_running_loop()
        self.last_active = self._loop.time()
        self._task = self._loop.create_task(self._run())

    @property
    def load(self) -> int:
        """Queries on this connection: in flight, and queued by the transport."""
        return len(self._pending)

    @property
    def has_room(self) -> bool:
        """Whether it can take one more query at all (DNS IDs are 16 bits)."""
        return self.load < 0xFFFF

    @property
    def accepting(self) -> bool:
        """Whether new queries should be put on this connection."""
        return (
            not self.closed
            and self.queries < self.server.lifecycle.max_queries
            and len(self._pending) < MAX_INFLIGHT_PER_CONNECTION
        )

    def send(self, exchange: Exchange) -> None:
        raise NotImplementedError

    def _track(self, uid: int, exchange: Exchange) -> None:
        """Remember ``exchange`` as waiting under ``uid`` here."""
        now = self._loop.time()
        self._pending[uid] = (exchange, now)
        exchange.legs.append((self, uid))
        self.queries += 1
        self.last_active = now

    def forget(self, uid: int, exchange: Exchange) -> None:
        """Stop waiting for ``exchange`` here (answered elsewhere, or timed out)."""
        entry = self._pending.get(uid)
        if entry is not None and entry[0] is exchange:
            del self._pending[uid]
            self._maybe_retire()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        else:
            self._task.cancel()

    def idle_since(self, now: float) -> float:
        return 0.0 if self._pending else now - self.last_active

    def _maybe_retire(self) -> None:
        """Close a connection that reached its query cap once its last answer is in."""
        if not self._pending and self.queries >= self.server.lifecycle.max_queries:
            self.close()

    async def _run(self) -> None:
        stream = await self._open_or_abandon(self.server.open_stream)
        if stream is None:
            return
        self._stream = stream
        try:
            await self._serve(stream)
        except StreamClosedError:
            pass
        except Exception as exc:
            self._log_failure(exc)
        finally:
            stream.close()
        self._abandon(UpstreamClosedError("upstream closed the connection"), sent=True)

    async def _open_or_abandon(self, open_: Callable[[], Awaitable[_Opened]]) -> _Opened | None:
        """Open the transport; if that fails (or is cancelled), hand the queries that
        waited for it back to the pool and return None."""
        try:
            return await open_()
        except UpstreamError as exc:
            self._abandon(exc, sent=False)
        except asyncio.CancelledError:
            self._abandon(UpstreamClosedError("connection cancelled"), sent=False)
        return None

    def _log_failure(self, exc: Exception) -> None:
        """Say why handling the upstream's answers failed; the connection is dropped."""
        if isinstance(exc, MessageError | FormError):
            log.warning("%s: malformed answer (%s), reconnecting", self.server, exc)
        else:
            # A bug must cost one connection (its queries are sent again), never the
            # upstream: without this the dead connection would keep taking queries.
            log.error("%s: connection failed unexpectedly, reconnecting", self.server, exc_info=exc)

    async def _serve(self, stream: IOStream) -> None:
        """Write what is queued, then read answers until the stream closes."""
        raise NotImplementedError

    def _deliver(self, uid: int, msg: bytes) -> None:
        """An answer arrived for ``uid``: check it echoes the question, then hand it on."""
        entry = self._pending.get(uid)
        if entry is None:
            log.debug("%s: answer for unknown ID %d ignored", self.server, uid)
            return
        exchange, sent_at = entry
        if not wire.echoes(msg, exchange.question):
            key = wire.answer_key(msg)  # the same question spelt otherwise, or not at all
            if key == exchange.key:
                pass
            elif key is None and msg[4] == msg[5] == 0 and wire.rcode_of(msg):
                # An error answer without the question (RFC 1035 allows it): the client
                # gets the same rcode in an answer of ours, never the upstream's bytes.
                msg = wire.error_response(exchange.msg, wire.rcode_of(msg), exchange.query)
            else:
                # Logged at warning level, identical each time so that repeats are folded.
                log.warning("%s: an answer did not echo its question; ignored", self.server)
                return
        self._release(uid)
        now = self._loop.time()
        self.last_active = now
        self.server.answered(now, now - sent_at)
        self.server.pool.answered(exchange, msg)
        self._maybe_retire()

    def _release(self, uid: int) -> Exchange:
        exchange, _ = self._pending.pop(uid)
        exchange.legs.remove((self, uid))
        return exchange

    def _give_back(self, uid: int, error: UpstreamError, *, sent: bool) -> None:
        """Hand one pending query back to the pool (to be sent elsewhere, or failed)."""
        if uid in self._pending:
            exchange = self._release(uid)
            self.server.pool.lost(exchange, self.server, error, sent=sent)
            self._maybe_retire()

    def _abandon(self, error: UpstreamError, *, sent: bool) -> None:
        """Hand the queries still pending back to the pool, then forget this connection."""
        self.closed = True
        self.server.connection_closed(self, with_queries=bool(self._pending) and sent)
        pending = [exchange for exchange, _ in self._pending.values()]
        self._pending.clear()
        self._drop_queued()
        for exchange in pending:
            exchange.legs[:] = [leg for leg in exchange.legs if leg[0] is not self]
            self.server.pool.lost(exchange, self.server, error, sent=sent)

    def _drop_queued(self) -> None:
        """Forget whatever the transport queued but never wrote."""


class DotConnection(UpstreamConnection):
    """DNS over TLS (RFC 7858): length-prefixed messages, matched by DNS ID.

    Queries sent before the handshake completes are buffered and written in one go;
    writes made in one loop iteration are coalesced into one batch of TLS records.
    """

    def __init__(self, server: UpstreamServer) -> None:
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._connected = False  # queries wait in the outbox until then
        # Random start: IDs need only be unique per connection, but need not be guessable.
        self._next_id = random.getrandbits(16)
        self._decoder = FrameDecoder(min_length=wire.HEADER_LEN)
        super().__init__(server)

    def send(self, exchange: Exchange) -> None:
        uid = self._allocate_id()
        self._track(uid, exchange)
        self._outbox.append(frame_with_id(exchange.upstream_msg, uid))
        if self._connected and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def idle_since(self, now: float) -> float:
        return 0.0 if self._outbox else super().idle_since(now)

    def _allocate_id(self) -> int:
        uid = self._next_id
        while uid in self._pending:
            uid = (uid + 1) & 0xFFFF
        self._next_id = (uid + 1) & 0xFFFF
        return uid

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox or self._stream is None or self._stream.closed():
            return
        data = b"".join(self._outbox) if len(self._outbox) > 1 else self._outbox[0]
        self._outbox.clear()
        self._stream.write(data)

    def _drop_queued(self) -> None:
        self._outbox.clear()

    async def _serve(self, stream: IOStream) -> None:
        self._connected = True
        self._flush()
        first = True
        while True:
            if not self._received(await read_available(stream)):
                return
            if first:
                first = False
                self.server.remember_session(stream)

    def _received(self, data: bytes) -> bool:
        """Deliver the answers in ``data``; False once the framing is broken."""
        for msg in self._decoder.feed(data):
            self._deliver(wire.message_id(msg), msg)
        if self._decoder.error is not None:
            log.warning("%s: bad framing from upstream, reconnecting", self.server)
            return False
        return True
