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
from dns2dot.admission import Verdict
from dns2dot.errors import FormError, MessageError
from dns2dot.upstream import Exchange, UpstreamPool

SWEEP_INTERVAL = 0.05  # seconds between deadline checks: the timeout's precision
MAINTENANCE_INTERVAL = 0.5  # seconds between upstream idle checks and probes

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


def turn_away(msg: bytes, verdict: Verdict) -> bytes | None:
    """The answer for a client the admission check did not serve (None: drop).

    Refused clients get REFUSED; rate-limited ones an empty answer with TC set, which
    is no larger than their query (no amplification) and sends a real client to TCP.
    """
    if not wire.should_answer_malformed(msg) or msg[2] & 0x80:
        return None
    if verdict is Verdict.REFUSE:
        return wire.error_response(msg, wire.Rcode.REFUSED)
    response = wire.error_response(msg, wire.Rcode.NOERROR)
    return response[:2] + bytes([response[2] | (wire.TC >> 8)]) + response[3:]


def refuse(msg: bytes, reply: Callable[[bytes], None]) -> None:
    """Answer every query REFUSED: the handler for TCP clients not on the access list."""
    response = turn_away(msg, Verdict.REFUSE) if len(msg) >= wire.HEADER_LEN else None
    if response is not None:
        reply(response)


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
    in arrival order and one periodic sweep replaces a timer per query. A second FIFO
    holds the half-way marks at which a slow query is also sent to another upstream.
    At most ``max_inflight`` queries wait at once; beyond that, new ones are refused
    at once rather than queued behind a stuck upstream.
    """

    def __init__(self, pool: UpstreamPool, timeout: float, max_inflight: int = 20000) -> None:
        self.pool = pool
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.inflight = 0
        self._deadlines: deque[Exchange] = deque()
        self._hedges: deque[Exchange] = deque()
        self._loop = asyncio.get_running_loop()
        self._sweeper: asyncio.TimerHandle | None = None
        self._next_maintenance = 0.0

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
        if self.inflight >= self.max_inflight:
            reply(
                wire.error_response(
                    msg, wire.Rcode.REFUSED, query, ede=0, ede_text="dns2dot is overloaded"
                )
            )
            return
        self.inflight += 1

        def counted(answer: bytes) -> None:
            self.inflight -= 1
            reply(answer)

        exchange = Exchange(msg, query, counted, self._loop.time() + self.timeout)
        self._deadlines.append(exchange)
        if len(self.pool.servers) > 1:
            self._hedges.append(exchange)
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
                self.pool.timed_out(exchange, self.timeout)
            deadlines.popleft()
        hedges = self._hedges
        half = self.timeout / 2
        while hedges:
            exchange = hedges[0]
            if not exchange.done:
                if exchange.deadline - half > now:
                    break
                self.pool.hedge(exchange)
            hedges.popleft()
        if now >= self._next_maintenance:
            self._next_maintenance = now + MAINTENANCE_INTERVAL
            self.pool.maintain()
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)
