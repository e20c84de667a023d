"""One client query on its way through the upstreams (docs/ARCHITECTURE.md)."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING

from dns2dot.protocol import wire
from dns2dot.protocol.errors import UpstreamError, UpstreamTimeoutError

if TYPE_CHECKING:
    from dns2dot.upstream.connection import UpstreamConnection
    from dns2dot.upstream.pool import UpstreamPool


class ExchangeState(Enum):
    """Where an exchange stands towards its client."""

    WAITING = "waiting"  # the client has no answer yet
    ANSWERED_EARLY = "answered early"  # the client got the stale fallback; a refresh goes on
    FINISHED = "finished"  # answered (or failed) for good: nothing more happens


WAITING = ExchangeState.WAITING
ANSWERED_EARLY = ExchangeState.ANSWERED_EARLY
FINISHED = ExchangeState.FINISHED
_FORMERR = int(wire.Rcode.FORMERR)  # a global: an IntEnum member read through its class is slow


class Exchange:
    """One client query on its way through the upstreams; answered exactly once.

    ``reply`` receives the bytes for the client: the upstream's answer as
    :func:`wire.for_client` makes it (the client's ID, no padding), or an error
    response built here. ``upstream_msg`` is what goes upstream (padded, see
    :func:`wire.prepare_upstream`). ``question`` is the question section as an answer
    echoes it. ``legs`` are the connections it is waiting on (two while racing),
    ``tried`` a bit mask of the upstreams it was sent to. ``store`` sees every
    upstream answer and returns what the client gets (the cache: its TTL clamps apply
    from the first answer); ``fallback`` may supply an answer instead of SERVFAIL (a
    stale cache entry). ``state`` (an :class:`ExchangeState`) changes only in
    :meth:`_enter`; the client's reply is sent on the way out of WAITING, once.
    """

    __slots__ = (
        "deadline",
        "fallback",
        "key",
        "legs",
        "msg",
        "on_reply",
        "pool",
        "query",
        "question",
        "reply",
        "resends",
        "started",
        "state",
        "store",
        "transport",
        "tried",
        "upstream_msg",
    )

    def __init__(
        self,
        msg: bytes,
        query: wire.Query,
        reply: Callable[[bytes], None],
        deadline: float,
        upstream_msg: bytes | None = None,
    ) -> None:
        self.msg = msg
        self.upstream_msg = msg if upstream_msg is None else upstream_msg
        self.query = query
        self.key = query.key
        self.question = msg[wire.HEADER_LEN : query.question_end]  # as an answer echoes it
        self.reply = reply
        self.deadline = deadline
        self.state = WAITING
        self.resends = 0
        self.tried = 0
        self.legs: list[tuple[UpstreamConnection, int]] = []
        self.pool: UpstreamPool | None = None
        self.store: Callable[[bytes], bytes] | None = None
        self.fallback: Callable[[], bytes] | None = None
        # For the resolver's accounting: called with the exchange and the answer just
        # before ``reply``; ``started`` and ``transport`` are its to set.
        self.on_reply: Callable[[Exchange, bytes], None] | None = None
        self.started = 0.0
        self.transport = ""

    @property
    def done(self) -> bool:
        """Whether nothing more happens to it (answered or failed for good)."""
        return self.state is FINISHED

    def _enter(self, state: ExchangeState) -> None:
        """The one place the state changes; an impossible step is a bug, raised.

        The steps: WAITING -> ANSWERED_EARLY -> FINISHED, or WAITING -> FINISHED.
        """
        current = self.state
        if current is FINISHED or state is current or state is WAITING:
            raise RuntimeError(f"exchange cannot go from {self.state.value} to {state.value}")
        self.state = state

    def finish(self, answer: bytes) -> None:
        """Deliver an upstream answer under the client's ID (to the cache only, if the
        client already has a stale one).

        An upstream's FORMERR may echo the malformed parts of the query back; the
        client gets a clean FORMERR of ours instead.
        """
        early = self.state
        if early is FINISHED:
            return
        self._enter(FINISHED)
        if self.legs:
            self._detach()
        if answer[3] & 0x0F == _FORMERR:
            answer = wire.error_response(self.msg, wire.Rcode.FORMERR, self.query)
        if self.store is not None:
            answer = self.store(answer)
        if early is WAITING:
            self._respond(wire.for_client(answer, self.query))

    def fail(self, error: UpstreamError) -> None:
        """Answer SERVFAIL (or the fallback): the RFC 8914 code says what failed."""
        early = self.state
        if early is FINISHED:
            return
        self._enter(FINISHED)
        self._detach()
        if early is not WAITING:
            return
        if self.fallback is not None:
            self._respond(self.fallback())
            return
        if isinstance(error, UpstreamTimeoutError):
            ede, text = 22, "No Reachable Authority"  # RFC 8914 §5.23
        else:
            ede, text = 23, "Network Error"  # RFC 8914 §5.24
        self._respond(
            wire.error_response(self.msg, wire.Rcode.SERVFAIL, self.query, ede=ede, ede_text=text)
        )

    def answer_early(self) -> None:
        """Give the client the fallback now, but keep waiting upstream (to refresh)."""
        if self.state is WAITING and self.fallback is not None:
            self._enter(ANSWERED_EARLY)
            self._respond(self.fallback())

    def _respond(self, answer: bytes) -> None:
        """The one way to the client, taken once: on leaving WAITING."""
        if self.on_reply is not None:
            self.on_reply(self, answer)
        self.reply(answer)

    def _detach(self) -> None:
        for connection, uid in self.legs:
            connection.forget(uid, self)
        self.legs.clear()
