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

    def _task_done(self, _: asyncio.Task[None]) -> None:
        """A task cancelled before it ran never reached :meth:`_open_or_abandon`."""
        if self.state is CONNECTING:
            self._abandon(UpstreamClosedError("connection cancelled"), sent=False)

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
