"""What every pipelined upstream connection shares (docs/ARCHITECTURE.md, "upstream").

``UpstreamConnection`` is one connection to one upstream with many queries in flight,
each under a key unique on that connection (the DNS ID for DoT, the stream ID for
DoH), matched back by key *and* question (:func:`~dns2dot.protocol.upstream_stream.
match_answer`). Its :class:`ConnectionState` changes in one place, :meth:`_enter`.
The connection kinds are :class:`~dns2dot.upstream.dot.DotConnection` (DoT and
``plain://`` on the loop's readiness callbacks) and ``DohConnection``.

Per-query work here runs in plain callbacks rather than coroutines: a coroutine and a
future per query cost more than everything else on the UDP path.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TYPE_CHECKING, TypeVar

from dns2dot.protocol.errors import (
    FormError,
    MessageError,
    UpstreamClosedError,
    UpstreamError,
)
from dns2dot.protocol.upstream_stream import OTHER_QUESTION, match_answer
from dns2dot.transport.channel import Channel
from dns2dot.upstream.exchange import Exchange

if TYPE_CHECKING:
    from dns2dot.upstream.pool import UpstreamServer

log = logging.getLogger("dns2dot.upstream")

MAX_INFLIGHT_PER_CONNECTION = 4096
_Opened = TypeVar("_Opened")  # what a connection's transport is opened as


class ConnectionState(Enum):
    """Where an upstream connection stands."""

    # Members are singletons: identity hashing keeps the transition table's lookups
    # in C (Enum's own __hash__ is a Python call, on the path of every query).
    __hash__ = object.__hash__

    CONNECTING = "connecting"  # dialling and handshaking: queries wait to be written
    OPEN = "open"  # carrying queries
    CLOSING = "closing"  # ended: takes nothing more; what is pending is handed back next
    CLOSED = "closed"  # gone: what was pending went back to the pool


CONNECTING = ConnectionState.CONNECTING
OPEN = ConnectionState.OPEN
CLOSING = ConnectionState.CLOSING
CLOSED = ConnectionState.CLOSED
_NEXT: dict[ConnectionState, frozenset[ConnectionState]] = {
    CONNECTING: frozenset({OPEN, CLOSED}),
    OPEN: frozenset({CLOSING, CLOSED}),
    CLOSING: frozenset({CLOSED}),
    CLOSED: frozenset(),
}
_TAKING = frozenset({CONNECTING, OPEN})  # the states in which new queries are put on it


class UpstreamConnection:
    """One connection to one upstream, carrying many queries at once.

    This base class keeps what every transport shares: the queries in flight
    (``_pending``: key -> exchange and when it was sent), their matching against the
    answer's question, retirement after ``max_queries``, and handing the pending
    queries back to the pool when the connection dies. Subclasses speak the
    transport: :meth:`send`, :meth:`_run` (open, then serve) and :meth:`close`.

    Every kind runs on a channel from ``transport/`` and the loop's readiness
    callbacks.
    """

    def __init__(self, server: UpstreamServer) -> None:
        self.server = server
        self._pending: dict[int, tuple[Exchange, float]] = {}
        self.state = CONNECTING
        self.queries = 0
        self._loop = asyncio.get_running_loop()
        self.last_active = self._loop.time()
        self._task = self._loop.create_task(self._run())
        self._task.add_done_callback(self._task_done)

    def _enter(self, state: ConnectionState) -> None:
        """The one place the state changes; an impossible step is a bug, raised."""
        if state not in _NEXT[self.state]:
            raise RuntimeError(f"connection cannot go from {self.state.value} to {state.value}")
        self.state = state

    @property
    def closed(self) -> bool:
        """Whether it has ended (closing or closed): it takes no more queries."""
        return self.state is CLOSING or self.state is CLOSED

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
            self.state in _TAKING
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
        raise NotImplementedError

    def idle_since(self, now: float) -> float:
        return 0.0 if self._pending else now - self.last_active

    def _maybe_retire(self) -> None:
        """Close a connection that reached its query cap once its last answer is in."""
        if not self._pending and self.queries >= self.server.lifecycle.max_queries:
            self.close()

    async def _run(self) -> None:
        """Open the transport, then serve it until the connection ends."""
        raise NotImplementedError

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """Whichever way :meth:`_run` ended (cancelled before it ran, or raised), the
        queries still here go back to the pool: exactly once, as :meth:`_abandon`
        enters CLOSED first."""
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("%s: connection failed unexpectedly", self.server, exc_info=error)
        if self.state is not CLOSED:
            why = "connection cancelled" if error is None else "connection failed"
            self._abandon(UpstreamClosedError(why), sent=self.state is not CONNECTING)

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

    def _deliver(self, uid: int, msg: bytes) -> None:
        """An answer arrived for ``uid``: check it echoes the question, then hand it on.

        Raises :class:`MessageError` / :class:`FormError` for an answer that is not DNS.
        """
        entry = self._pending.get(uid)
        if entry is None:
            log.debug("%s: answer for unknown ID %d ignored", self.server, uid)
            return
        exchange, sent_at = entry
        answer = match_answer(msg, exchange)
        if answer is None:
            log.warning("%s: %s; ignored", self.server, OTHER_QUESTION)
            return
        del self._pending[uid]
        self._answered(uid, exchange, sent_at, answer)

    def _answered(self, uid: int, exchange: Exchange, sent_at: float, answer: bytes) -> None:
        """``exchange``, no longer pending under ``uid``, got ``answer``: hand it on."""
        exchange.legs.remove((self, uid))
        now = self._loop.time()
        self.last_active = now
        self.server.answered(now, now - sent_at)
        self.server.pool.answered(exchange, answer)
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
        self._enter(CLOSED)
        self.server.connection_closed(self, with_queries=bool(self._pending) and sent)
        pending = [exchange for exchange, _ in self._pending.values()]
        self._pending.clear()
        self._drop_queued()
        for exchange in pending:
            exchange.legs[:] = [leg for leg in exchange.legs if leg[0] is not self]
            self.server.pool.lost(exchange, self.server, error, sent=sent)

    def _drop_queued(self) -> None:
        """Forget whatever the transport queued but never wrote."""


class ChannelConnection(UpstreamConnection):
    """A connection driven by a :class:`~dns2dot.transport.channel.Channel` on the
    loop's readiness callbacks: the I/O shell the DoT, ``plain://`` and DoH kinds share.

    :meth:`_run` opens the channel (:meth:`_open`), lets the kind start on it
    (:meth:`_started`), then waits for :meth:`_end`; on every way out (the end, an
    error in the kind's own code, cancellation) the channel is closed and what is
    pending goes back to the pool once. Bytes read are decrypted and handed to
    :meth:`_received`; :meth:`_write` encrypts and sends, and what the socket does not
    take waits for it to be writable.
    """

    def __init__(self, server: UpstreamServer) -> None:
        self._channel: Channel | None = None  # set once opened
        self._fd = -1
        self._ended: asyncio.Future[BaseException | None] | None = None
        self._first_answer = True
        super().__init__(server)

    async def _open(self) -> Channel:
        """A connected, verified channel to the upstream."""
        raise NotImplementedError

    def _started(self, channel: Channel) -> None:
        """The channel is open: enter OPEN and begin (the kind's part)."""
        raise NotImplementedError

    def _received(self, data: bytes) -> bool:
        """Hand on what ``data`` completes; False once the stream is broken."""
        raise NotImplementedError

    def close(self) -> None:
        self._end(None)

    def idle_since(self, now: float) -> float:
        channel = self._channel
        if channel is not None and channel.unsent:
            return 0.0
        return super().idle_since(now)

    async def _run(self) -> None:
        channel = await self._open_or_abandon(self._open)
        if channel is None:
            return
        loop = self._loop
        self._channel = channel
        self._fd = fd = channel.sock.fileno()
        self._ended = loop.create_future()
        error: BaseException | None
        try:
            channel.acknowledge_at_once()  # shared by many clients: see TlsChannel
            loop.add_reader(fd, self._readable)
            self._started(channel)
            self._decrypt()  # records that came with the end of the handshake
            error = await self._ended
        except Exception as exc:
            # A bug costs this connection, never its queries: they go back below.
            self._log_failure(exc)
            error = exc
        finally:
            self._ended = None
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            channel.close()
        if isinstance(error, ssl.SSLError | OSError):
            log.debug("%s: connection ended: %s", self.server, error)
        self._abandon(
            UpstreamClosedError("upstream closed the connection"),
            sent=self.state is not CONNECTING,
        )

    def _end(self, error: BaseException | None) -> None:
        """Stop using the connection (the one way it ends): it takes no more queries
        now, and :meth:`_run` hands back what is pending on a later loop turn."""
        if self.state is CONNECTING:
            self._task.cancel()
        elif self.state is OPEN:
            self._enter(CLOSING)
            ended = self._ended
            if ended is not None and not ended.done():
                ended.set_result(error)

    def _write(self, data: bytes) -> None:
        """Encrypt ``data`` into memory (never blocks) and send it."""
        channel = self._channel
        if not data or self.state is not OPEN or channel is None:
            return
        try:
            channel.write(data)
        except ssl.SSLError as exc:
            self._end(exc)
            return
        self._send_ciphertext()

    def _send_ciphertext(self) -> None:
        """Send what the channel holds; the rest waits for the socket to be writable
        (bounded: at most MAX_INFLIGHT_PER_CONNECTION queries are ever waiting)."""
        channel = self._channel
        if self.state is not OPEN or channel is None:
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
        if self.state is not OPEN or channel is None:
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
        if self.state is not OPEN or channel is None:
            return
        data, ended, error = channel.decrypt()
        if channel.pending_output:  # OpenSSL has something to say (a key update)
            self._send_ciphertext()
        if data:
            try:
                ok = self._received(data)
                if self._first_answer:
                    self._first_answer = False
                    self.server.remember_session(channel)
            except Exception as exc:
                self._log_failure(exc)
                ok = False
            if not ok:
                ended = True
        if ended:
            self._end(error)
