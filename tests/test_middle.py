"""The middle in process: Resolver, UpstreamPool and Exchange with a clock moved by
hand and fake connections (no loop, no sockets, no sleeping): retry on SERVFAIL and
REFUSED, resend once on a dead connection, hedging at half the deadline, race, stale
answers, the in-flight cap. See docs/ARCHITECTURE.md, "upstream".
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import dns.message
import dns.rcode
import dns.rrset

from dns2dot.config import Config
from dns2dot.policy.cache import Cache
from dns2dot.policy.strategy import Strategy
from dns2dot.protocol import wire
from dns2dot.protocol.errors import UpstreamClosedError
from dns2dot.proxy import answer_policy, cache_policy, lifecycle
from dns2dot.serve.resolver import SWEEP_INTERVAL, Resolver
from dns2dot.upstream.exchange import ExchangeState
from dns2dot.upstream.pool import UpstreamPool
from dns2dot.upstream.spec import UpstreamSpec

TIMEOUT = 2.0


class ManualClock:
    """``time`` and ``call_later``, moved only by :meth:`advance`."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = 0

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Handle:
        self._seq += 1
        handle = Handle()
        entry = (self.now + delay, self._seq, self._fire, (handle, callback, args))
        heapq.heappush(self._timers, entry)
        return handle

    @staticmethod
    def _fire(handle: Handle, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if not handle.cancelled:
            callback(*args)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        for _ in range(100000):  # bounded
            if not self._timers or self._timers[0][0] > end:
                break
            when, _, fire, args = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            fire(*args)
        self.now = end


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeConnection:
    """Takes exchanges; the test answers them or kills the connection."""

    made: list[FakeConnection] = []

    def __init__(self, server: Any) -> None:
        self.server = server
        self.pending: dict[int, Any] = {}
        self.closed = False
        self.queries = 0
        self._next = 1
        FakeConnection.made.append(self)

    accepting = property(lambda self: not self.closed)
    has_room = property(lambda self: True)
    load = property(lambda self: len(self.pending))

    def send(self, exchange: Any) -> None:
        uid = self._next
        self._next += 1
        self.pending[uid] = exchange
        exchange.legs.append((self, uid))
        self.queries += 1

    def forget(self, uid: int, exchange: Any) -> None:
        if self.pending.get(uid) is exchange:
            del self.pending[uid]

    def idle_since(self, now: float) -> float:
        return 0.0

    def close(self) -> None:
        self.die()

    def answer(self, rcode: int = dns.rcode.NOERROR, address: str = "192.0.2.1") -> None:
        """Answer every pending query."""
        for uid, exchange in list(self.pending.items()):
            del self.pending[uid]
            exchange.legs.remove((self, uid))
            response = dns.message.make_response(dns.message.from_wire(exchange.msg))
            response.set_rcode(rcode)
            if rcode == dns.rcode.NOERROR:
                name = response.question[0].name
                response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", address))
            self.server.pool.answered(exchange, response.to_wire())

    def die(self) -> None:
        """The connection drops with its queries sent."""
        if self.closed:
            return
        self.closed = True
        self.server.connection_closed(self, with_queries=bool(self.pending))
        pending, self.pending = list(self.pending.items()), {}
        for uid, exchange in pending:
            exchange.legs.remove((self, uid))
            self.server.pool.lost(exchange, self.server, UpstreamClosedError("gone"), sent=True)


class Middle:
    def __init__(
        self,
        upstreams: int = 2,
        strategy: str = "failover",
        cache: Cache | None = None,
        max_inflight: int = 100,
        stale_after: float = 0.5,
    ) -> None:
        FakeConnection.made = []
        self.clock = ManualClock()
        specs = [UpstreamSpec(f"192.0.2.{i + 1}", 853, "dns.test") for i in range(upstreams)]
        self.pool = UpstreamPool(
            specs,
            FakeContexts(),  # type: ignore[arg-type]
            strategy=Strategy(strategy),
            lifecycle=lifecycle(Config()),
            connection_types={"tls": FakeConnection},  # type: ignore[dict-item]
            clock=self.clock,
        )
        self.resolver = Resolver(
            self.pool,
            TIMEOUT,
            max_inflight=max_inflight,
            cache=cache,
            policy=replace(answer_policy(Config()), stale_after=stale_after, prefetch=False),
            clock=self.clock,
        )
        self.resolver.start()
        self.replies: list[dns.message.Message] = []

    def ask(self, name: str = "www.example.test.") -> None:
        msg = dns.message.make_query(name, "A").to_wire()
        self.resolver.handle(msg, lambda b: self.replies.append(dns.message.from_wire(b)), "udp")

    def conns(self, server: int) -> list[FakeConnection]:
        return list(self.pool.servers[server].connections)  # type: ignore[arg-type]


class FakeContexts:
    def for_transport(self, transport: str) -> None:
        return None


def test_servfail_and_refused_are_retried_on_another_upstream() -> None:
    m = Middle(upstreams=3)
    m.ask()
    [first] = m.conns(0)
    first.answer(dns.rcode.SERVFAIL)
    assert not m.replies, "retried, not answered"
    [second] = m.conns(1)
    second.answer(dns.rcode.REFUSED)
    assert not m.replies
    [third] = m.conns(2)
    third.answer()
    [reply] = m.replies
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer


def test_servfail_from_the_last_upstream_is_the_answer() -> None:
    m = Middle(upstreams=1)
    m.ask()
    m.conns(0)[0].answer(dns.rcode.SERVFAIL)
    [reply] = m.replies
    assert reply.rcode() == dns.rcode.SERVFAIL


def test_lost_query_is_resent_once_then_fails() -> None:
    m = Middle(upstreams=1)
    m.ask()
    [first] = m.conns(0)
    first.die()
    assert not m.replies, "sent again once"
    [second] = m.conns(0)
    assert second is not first and len(second.pending) == 1
    second.die()
    [reply] = m.replies
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert m.resolver.inflight == 0


def test_hedge_at_half_the_deadline() -> None:
    m = Middle(upstreams=2)
    m.ask()
    assert not m.conns(1), "one upstream at first"
    m.clock.advance(TIMEOUT / 2 - 2 * SWEEP_INTERVAL)
    assert not m.conns(1)
    m.clock.advance(3 * SWEEP_INTERVAL)
    [hedge] = m.conns(1)
    hedge.answer()
    [reply] = m.replies
    assert reply.rcode() == dns.rcode.NOERROR
    assert not m.conns(0)[0].pending, "the first leg is forgotten"


def test_timeout_is_servfail_within_the_deadline() -> None:
    m = Middle(upstreams=1)
    m.ask()
    m.clock.advance(TIMEOUT + 2 * SWEEP_INTERVAL)
    [reply] = m.replies
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert m.resolver.inflight == 0


def test_race_first_good_answer_wins_and_the_other_leg_is_forgotten() -> None:
    m = Middle(upstreams=2, strategy="race")
    m.ask()
    [a], [b] = m.conns(0), m.conns(1)
    assert len(a.pending) == len(b.pending) == 1
    b.answer(dns.rcode.SERVFAIL)
    assert not m.replies, "the other leg may still answer well"
    a.answer(address="192.0.2.99")
    [reply] = m.replies
    assert str(reply.answer[0][0]) == "192.0.2.99"
    m2 = Middle(upstreams=2, strategy="race")
    m2.ask()
    m2.conns(1)[0].answer()
    assert len(m2.replies) == 1
    assert not m2.conns(0)[0].pending, "the slower leg is forgotten"


def test_stale_answer_on_failure_and_early_then_refresh() -> None:
    cache = Cache(replace(cache_policy(Config()), max_entries=100))
    m = Middle(upstreams=1, cache=cache)
    m.ask()
    m.conns(0)[0].answer(address="192.0.2.1")
    assert len(m.replies) == 1
    m.clock.advance(61)  # the 60 s TTL is over: stale
    # The upstream is slow: the stale answer goes out early, the refresh goes on.
    m.ask()
    m.clock.advance(0.5 + 2 * SWEEP_INTERVAL)
    assert len(m.replies) == 2
    assert str(m.replies[1].answer[0][0]) == "192.0.2.1"
    [conn] = m.conns(0)
    [exchange] = conn.pending.values()
    assert exchange.state is ExchangeState.ANSWERED_EARLY
    conn.answer(address="192.0.2.2")
    assert len(m.replies) == 2, "one answer per query"
    assert exchange.state is ExchangeState.FINISHED
    m.ask()
    assert str(m.replies[2].answer[0][0]) == "192.0.2.2", "the refresh is cached"
    # Stale as the fallback on failure.
    m.clock.advance(61)
    m.ask()
    m.conns(0)[0].die()
    m.conns(0)[0].die()
    assert len(m.replies) == 4
    assert m.replies[3].rcode() == dns.rcode.NOERROR
    assert str(m.replies[3].answer[0][0]) == "192.0.2.2"


def test_inflight_cap_refuses_at_once() -> None:
    m = Middle(upstreams=1, max_inflight=3)
    for i in range(5):
        m.ask(f"n{i}.example.test.")
    assert [r.rcode() for r in m.replies] == [dns.rcode.REFUSED] * 2
    m.conns(0)[0].answer()
    assert [r.rcode() for r in m.replies[2:]] == [dns.rcode.NOERROR] * 3
    m.ask("again.example.test.")
    assert m.resolver.inflight == 1


def test_exchange_answers_once() -> None:
    m = Middle(upstreams=1)
    m.ask()
    [conn] = m.conns(0)
    [exchange] = conn.pending.values()
    conn.answer()
    exchange.fail(UpstreamClosedError("late"))
    exchange.finish(wire.error_response(exchange.msg, wire.Rcode.SERVFAIL, exchange.query))
    assert len(m.replies) == 1
