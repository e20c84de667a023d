"""The transport-agnostic middle: a validated query in, exactly one answer out.

UDP and TCP listeners hand every query here with a ``reply`` callback; the resolver
sends it upstream and guarantees the callback is called once: with the answer, or
with SERVFAIL when the deadline passes (``--timeout``), never silence.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from dns2dot import wire
from dns2dot.errors import FormError, MessageError, UpstreamTimeoutError
from dns2dot.upstream import Exchange, UpstreamPool

SWEEP_INTERVAL = 0.05  # seconds between deadline checks: the timeout's precision

# Zone transfers are multi-message streams that a shared, pipelined connection
# cannot carry; ``--mode pipe`` forwards them byte for byte.
_STREAM_TYPES = frozenset({wire.RdataType.AXFR, wire.RdataType.IXFR})


def servfail(msg: bytes, reply: Callable[[bytes], None]) -> None:
    """Answer a message SERVFAIL without resolving it: for when no upstream is usable."""
    result = validate(msg)
    if isinstance(result, wire.Query):
        result = wire.error_response(
            msg, wire.Rcode.SERVFAIL, result, ede=23, ede_text="Network Error"
        )
    if result is not None:
        reply(result)


def validate(msg: bytes) -> wire.Query | bytes | None:
    """Check a client's message: a :class:`~dns2dot.wire.Query` to resolve, the bytes
    of an error answer to send back at once (FORMERR, NOTIMP, BADVERS), or None when
    it is not DNS enough to answer and must be dropped.
    """
    try:
        return wire.parse_query(msg)
    except MessageError:
        return None
    except FormError as exc:
        if wire.should_answer_malformed(msg):
            return wire.error_response(msg, exc.rcode)
        return None


class Resolver:
    """Answers queries through the upstream pool within ``timeout`` seconds.

    Deadlines are kept in a FIFO: every query gets the same timeout, so they expire
    in arrival order and one periodic sweep replaces a timer per query.
    """

    def __init__(self, pool: UpstreamPool, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout
        self._deadlines: deque[Exchange] = deque()
        self._loop = asyncio.get_running_loop()
        self._sweeper: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def resolve(self, msg: bytes, query: wire.Query, reply: Callable[[bytes], None]) -> None:
        """Answer ``query`` (whose raw bytes are ``msg``) through ``reply``, once."""
        if query.qtype in _STREAM_TYPES:
            reply(wire.error_response(msg, wire.Rcode.NOTIMP, query))
            return
        exchange = Exchange(msg, query, reply, self._loop.time() + self.timeout)
        self._deadlines.append(exchange)
        self.pool.submit(exchange)

    def handle(self, msg: bytes, reply: Callable[[bytes], None]) -> None:
        """Validate a client's message, then resolve it or answer the error at once."""
        result = validate(msg)
        if isinstance(result, wire.Query):
            self.resolve(msg, result, reply)
        elif result is not None:
            reply(result)

    def _sweep(self) -> None:
        now = self._loop.time()
        deadlines = self._deadlines
        while deadlines:
            exchange = deadlines[0]
            if not exchange.done:
                if exchange.deadline > now:
                    break
                exchange.fail(UpstreamTimeoutError("no answer in time"))
            deadlines.popleft()
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)
