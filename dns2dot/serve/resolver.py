"""The transport-agnostic middle: a validated query in, exactly one answer out.

UDP and TCP listeners hand every query here with a ``reply`` callback; the resolver
sends it upstream and guarantees the callback is called once: with the answer, or
with SERVFAIL when the deadline passes (``--timeout``), never silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import dns.exception
import dns.name
import dns.rcode
import dns.rdatatype

from dns2dot.policy.admission import Verdict
from dns2dot.policy.cache import BOGUS, SECURE, Cache, CacheEntry, Trust, Validated, cache_key
from dns2dot.policy.rules import RuleSet
from dns2dot.protocol import wire
from dns2dot.protocol.errors import FormError, MessageError, ProtocolError, UpstreamClosedError
from dns2dot.serve.stats import Stats
from dns2dot.upstream.exchange import FINISHED, Exchange
from dns2dot.upstream.pool import Clock, Timer, UpstreamPool

if TYPE_CHECKING:  # the DNSSEC modules load dnspython's DNSSEC: only when validating
    from dns2dot.policy.dnssec import Result, Validator
    from dns2dot.serve.validation import Validating

log = logging.getLogger("dns2dot.resolver")
qlog = logging.getLogger("dns2dot.query")

SWEEP_INTERVAL = 0.05  # seconds between deadline checks: the timeout's precision
MAINTENANCE_INTERVAL = 0.5  # seconds between upstream idle checks and probes
PREFETCH_MIN_HITS = 2

# Zone transfers are multi-message streams that a shared, pipelined connection
# cannot carry; ``--mode pipe`` forwards them byte for byte.
_STREAM_TYPES = frozenset({wire.RdataType.AXFR, wire.RdataType.IXFR})
_VALIDATED = b"\x04"  # in a cache key: the answer of a DO+CD query, validated
_CLASS_IN = 1
_NOT_VALIDATED = Validated(Trust.INSECURE)  # an upstream error: nothing to validate
_TRUST = {"secure": SECURE, "insecure": Trust.INSECURE, "bogus": BOGUS}
_FETCH_TAIL = struct.Struct("!HH")


def servfail(msg: bytes, reply: Callable[[bytes], None]) -> bool:
    """Answer a message SERVFAIL without resolving it: for when no upstream is usable.

    Like every handler, returns whether ``reply`` is (or will be) called.
    """
    result = validate(msg)
    if isinstance(result, wire.Query):
        result = wire.error_response(
            msg, wire.Rcode.SERVFAIL, result, ede=23, ede_text="Network Error"
        )
    if result is None:
        return False
    reply(result)
    return True


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


def refuse(msg: bytes, reply: Callable[[bytes], None]) -> bool:
    """Answer every query REFUSED: the handler for TCP clients not on the access list."""
    response = turn_away(msg, Verdict.REFUSE) if len(msg) >= wire.HEADER_LEN else None
    if response is None:
        return False
    reply(response)
    return True


def validate(msg: bytes) -> wire.Query | bytes | None:
    """Check a client's message: a :class:`~dns2dot.protocol.wire.Query` to resolve, the bytes
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


@dataclass(frozen=True)
class AnswerPolicy:
    """What the resolver does to queries and answers besides forwarding them."""

    pad_block: int  # RFC 8467 block-length padding upstream; 0: off (--no-padding)
    keep_client_subnet: bool  # forward the client's ECS option (RFC 7871)
    stale_after: float = 1.8  # serve a stale entry once the upstream is this slow
    prefetch: bool = True


class Resolver:
    """Answers queries from the cache or through the upstream pool within ``timeout``.

    Deadlines are kept in FIFOs: every query gets the same timeout, so they expire in
    arrival order and one periodic sweep replaces a timer per query. The other FIFOs
    hold the half-way marks at which a slow query is also sent to another upstream,
    and the moments at which a stale cache entry is served to a waiting client. At
    most ``max_inflight`` queries wait at once; beyond that, new ones are refused at
    once rather than queued behind a stuck upstream.
    """

    def __init__(
        self,
        pool: UpstreamPool,
        timeout: float,
        max_inflight: int,
        *,
        policy: AnswerPolicy,
        cache: Cache | None = None,
        rules: RuleSet | None = None,
        zone_pools: Sequence[UpstreamPool] = (),
        stats: Stats | None = None,
        clock: Clock | None = None,
        validator: Validator | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self._wall = wall  # RRSIG validity periods are wall-clock times
        self.dnssec: Validating | None = None  # --dnssec validate: answers are validated
        self.validator = validator
        self.stats = stats or Stats()
        self.log_queries = False
        self._rules = rules if rules is not None and not rules.empty else None
        self.zone_pools = list(zone_pools)
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.cache = cache
        self.policy = policy
        self.inflight = 0
        self._deadlines: deque[Exchange] = deque()
        self._hedges: deque[Exchange] = deque()
        self._stale: deque[tuple[float, Exchange]] = deque()
        self._loop: Clock = clock or asyncio.get_running_loop()  # time and timers
        self._sweeper: Timer | None = None
        self._next_maintenance = 0.0
        self._on_reply = self._count  # made once: every exchange shares this bound method
        self._aborted = False
        self._validating: deque[_Pending] = deque()  # clients waiting on a validation

    @property
    def validator(self) -> Validator | None:
        return self.dnssec.validator if self.dnssec is not None else None

    @validator.setter
    def validator(self, validator: Validator | None) -> None:
        """Validate upstream answers with ``validator`` (None: ``--dnssec off``). The
        counts of earlier validations are kept; the key cache goes with the validator."""
        if validator is None:
            self.dnssec = None
        elif self.dnssec is None:
            from dns2dot.serve.validation import Validating

            self.dnssec = Validating(validator, self._fetch, self._wall)
        else:
            self.dnssec.validator = validator

    @property
    def rules(self) -> RuleSet | None:
        return self._rules

    @rules.setter
    def rules(self, rules: RuleSet | None) -> None:
        """New rules (a reload): queries the cache knew by their bytes are asked again,
        as a new rule or zone may now answer them."""
        self._rules = rules
        if self.cache is not None:
            self.cache.forget_queries()

    def start(self) -> None:
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def resolve(
        self,
        msg: bytes,
        query: wire.Query,
        reply: Callable[[bytes], None],
        transport: str = "udp",
    ) -> None:
        """Answer ``query`` (whose raw bytes are ``msg``) through ``reply``, once."""
        now = self._loop.time()
        if query.qtype in _STREAM_TYPES:
            self._local(wire.error_response(msg, wire.Rcode.NOTIMP, query), query, reply, transport)
            return
        pool = self.pool
        zone = b""
        rules = self._rules
        if rules is not None:
            matched = rules.match(query, msg)
            if isinstance(matched, bytes):
                self._local(matched, query, reply, transport)
                return
            if matched is not None:
                pool = self.zone_pools[matched]
                # Answers from a zone's own upstreams are cached apart from the others.
                zone = rules.zones[matched].encode()
        validating = self.dnssec is not None and query.qclass == _CLASS_IN and _encrypted(pool)
        cache = self.cache
        stale: CacheEntry | None = None
        key = b""
        if cache is not None:
            # Validated answers are asked with DO and CD whatever the client set: one
            # entry serves every client, each through its own view.
            key = (query.key + _VALIDATED if validating else cache_key(query)) + zone
            entry = cache.get(key, now)
            if entry is not None:
                if entry.fresh(now):
                    answer = cache.render(entry, query, now, stale=False)
                    cache.remember(msg, key, query, entry, answer, now)
                    self._local(answer, query, reply, transport)
                    self._maybe_prefetch(entry, key, msg, query, now)
                    return
                views = entry.dnssec
                if views is None or views.verdict.trust is not BOGUS:  # never a bogus one
                    stale = entry
        if self.inflight >= self.max_inflight:
            self.stats.refused["overload"] += 1
            overloaded = wire.error_response(
                msg, wire.Rcode.REFUSED, query, ede=0, ede_text="dns2dot is overloaded"
            )
            self._local(overloaded, query, reply, transport)
            return
        self.inflight += 1
        if validating:
            self._resolve_validated(msg, query, reply, transport, now, pool, key, stale)
            return
        exchange = self._exchange(msg, query, reply, now, pool)
        exchange.on_reply = self._on_reply
        exchange.started = now
        exchange.transport = transport
        if cache is not None:
            exchange.store = partial(self._store, key, query)
            if stale is not None:
                exchange.fallback = partial(self._render_stale, stale, query)
                self._stale.append((now + self.policy.stale_after, exchange))
        pool.submit(exchange)

    def _resolve_validated(
        self,
        msg: bytes,
        query: wire.Query,
        reply: Callable[[bytes], None],
        transport: str,
        now: float,
        pool: UpstreamPool,
        key: bytes,
        stale: CacheEntry | None,
    ) -> None:
        """:meth:`resolve`'s upstream path with ``--dnssec validate``: asked with DO and
        CD, the answer is validated (:class:`Validating`) before the client gets it."""
        pending = _Pending(reply, transport)
        exchange = self._exchange(msg, query, partial(self._exchange_replied, pending), now, pool)
        exchange.upstream_msg = wire.dnssec_query(exchange.upstream_msg)
        exchange.started = now
        exchange.transport = transport
        exchange.store = partial(self._check, pending, key, pool)
        pending.exchange = exchange
        if stale is not None:
            exchange.fallback = partial(self._render_stale, stale, query)
            self._stale.append((now + self.policy.stale_after, exchange))
        pool.submit(exchange)

    def _check(self, pending: _Pending, key: bytes, pool: UpstreamPool, answer: bytes) -> bytes:
        """The upstream answer of a validated query (the exchange's ``store``): start its
        validation; a client that set CD gets it now, unvalidated (RFC 4035 §3.2.2)."""
        exchange = pending.exchange
        assert exchange is not None and self.dnssec is not None
        query = exchange.query
        cd = bool(query.flags & wire.CD)
        if answer[3] & 0x0F not in (wire.Rcode.NOERROR, wire.Rcode.NXDOMAIN) or answer[2] & (
            wire.TC >> 8
        ):
            if self.cache is not None:
                self.cache.put(key, answer, self._loop.time(), _NOT_VALIDATED, query.qtype)
            return wire.with_ad_cd(answer, False, cd)  # nothing to validate: as it came
        pending.validating = True
        if cd:
            self._deliver(pending, self._view(exchange, answer, None))
        elif not pending.answered:
            self._validating.append(pending)  # held to the query's deadline by the sweep
        done = partial(self._validated, pending, key, answer)
        self.dnssec.validate(query.qname, query.qtype, answer, pool, done)
        return answer

    def _validated(self, pending: _Pending, key: bytes, answer: bytes, result: Result) -> None:
        """A validation ended: cache the answer with its verdict, answer the client."""
        exchange = pending.exchange
        assert exchange is not None and self.dnssec is not None
        query = exchange.query
        now = self._loop.time()
        trust = _TRUST[result.security.value]
        until = result.valid_until
        verdict = Validated(
            trust,
            None if result.ede is None else int(result.ede),
            None if until is None else now + (until - self.dnssec.wall()),
        )
        cache = self.cache
        client = None
        if cache is not None and cache.put(key, answer, now, verdict, query.qtype):
            entry = cache.peek(key)
            if entry is not None and not pending.answered:
                client = cache.render(entry, query, now, stale=False)
        if not pending.answered:
            self._deliver(pending, client or self._view(exchange, answer, verdict))

    @staticmethod
    def _view(exchange: Exchange, answer: bytes, verdict: Validated | None) -> bytes:
        """An upstream answer as this client gets it when the cache does not make it:
        SERVFAIL with EDE if bogus (unless CD), DNSSEC records only for DO, AD if secure
        and asked for (RFC 6840 §5.7). ``verdict`` None: not validated (CD)."""
        query = exchange.query
        cd = bool(query.flags & wire.CD)
        if verdict is not None and verdict.trust is BOGUS and not cd:
            code = verdict.ede or 6
            return wire.error_response(
                exchange.msg,
                wire.Rcode.SERVFAIL,
                query,
                ede=code,
                ede_text=wire.EDE_TEXT.get(code, ""),
            )
        client = wire.for_client(answer, query)
        if verdict is not None and verdict.ede is not None:  # insecure: EDE 1 or 2
            client = wire.with_ede(client, verdict.ede, wire.EDE_TEXT.get(verdict.ede, ""))
        do = query.edns is not None and query.edns.do
        if not do:
            # What cannot be walked goes as it came: the validation judged what it read.
            with contextlib.suppress(ProtocolError):
                client = wire.without_dnssec(client, query.qtype)
        ad = (
            verdict is not None
            and verdict.trust is SECURE
            and not cd
            and (do or bool(query.flags & wire.AD))
        )
        return wire.with_ad_cd(client, ad, cd)

    def _validation_late(self, pending: _Pending) -> None:
        """A client's deadline passed while its answer was being validated: SERVFAIL
        (EDE 22) now; the validation goes on, and its verdict is cached for the next."""
        exchange = pending.exchange
        if pending.answered or exchange is None:
            return
        self._deliver(
            pending,
            wire.error_response(
                exchange.msg,
                wire.Rcode.SERVFAIL,
                exchange.query,
                ede=22,
                ede_text="No Reachable Authority",
            ),
        )

    def _exchange_replied(self, pending: _Pending, answer: bytes) -> None:
        """The exchange's own reply: an error or a stale answer goes to the client; an
        upstream answer under validation waits for :meth:`_validated`."""
        if not pending.validating:
            self._deliver(pending, answer)

    def _deliver(self, pending: _Pending, answer: bytes) -> None:
        """The one way a validated query's answer goes to its client, taken once."""
        if pending.answered:
            return
        pending.answered = True
        assert pending.exchange is not None
        self._count(pending.exchange, answer)
        pending.reply(answer)

    def _fetch(
        self, pool: UpstreamPool, name: bytes, rdtype: int, done: Callable[[bytes | None], None]
    ) -> None:
        """A DS or DNSKEY query of the validation's own, with DO and CD, through ``pool``."""
        if self._aborted:
            done(None)
            return
        msg = wire.HEADER.pack(0, wire.RD, 1, 0, 0, 0) + name + _FETCH_TAIL.pack(rdtype, 1)
        try:
            query = wire.parse_query(msg)
        except ProtocolError:
            done(None)
            return
        exchange = self._exchange(msg, query, done, self._loop.time(), pool)
        exchange.upstream_msg = wire.dnssec_query(exchange.upstream_msg)
        pool.submit(exchange)

    def _count(self, exchange: Exchange, answer: bytes) -> None:
        """Account for a query answered through the upstreams (its ``on_reply``)."""
        self.inflight -= 1
        elapsed = self._loop.time() - exchange.started
        self.stats.answered(exchange.transport, exchange.query.qtype, answer[3] & 0x0F, elapsed)
        if self.log_queries:
            log_query(exchange.transport, exchange.query, answer, elapsed)

    def _local(
        self, answer: bytes, query: wire.Query, reply: Callable[[bytes], None], transport: str
    ) -> None:
        """Send an answer made without an upstream (cache, rule, error), and count it."""
        self.stats.answered(transport, query.qtype, answer[3] & 0x0F, 0.0)
        if self.log_queries:
            log_query(transport, query, answer, 0.0)
        reply(answer)

    def handle(self, msg: bytes, reply: Callable[[bytes], None], transport: str = "tcp") -> bool:
        """Validate a client's message, then resolve it or answer the error at once.

        Returns whether ``reply`` is (or will be) called: False for a dropped message.
        """
        if self.cache is not None:
            answer = self.known_answer(msg, transport, self._loop.time())
            if answer is not None:
                reply(answer)
                return True
        return self.handle_new(msg, reply, transport)

    def handle_new(self, msg: bytes, reply: Callable[[bytes], None], transport: str) -> bool:
        """:meth:`handle` for a message :meth:`known_answer` has already turned down."""
        result = validate(msg)
        if isinstance(result, wire.Query):
            self.resolve(msg, result, reply, transport)
        elif result is not None:
            self.stats.answered(transport, 0, result[3] & 0x0F, 0.0)
            reply(result)
        else:
            self.stats.dropped["malformed"] += 1
            return False
        return True

    def known_answer(self, msg: bytes, transport: str, now: float) -> bytes | None:
        """The cached answer to a query whose bytes (all but the ID) were answered
        before, counted; None: take :meth:`handle`. No callback, so a batch of
        datagrams is answered without a closure each (``now``: the loop's time, read
        once per batch)."""
        cache = self.cache
        if cache is None:
            return None
        known = cache.known(msg, now)
        if known is None:
            return None
        answer = msg[:2] + known.answer
        counted = known.counted
        if counted is None or counted[0] != transport:
            key = (transport, known.query.qtype, answer[3] & 0x0F)
            counted = known.counted = (transport, self.stats.at_once(key))
        counted[1][0] += 1
        if self.log_queries:
            log_query(transport, known.query, answer, 0.0)
        if now >= known.prefetch_at:  # the entry's last tenth: maybe refresh it
            self._maybe_prefetch(known.entry, known.key, msg, known.query, now)
        return answer

    def turned_away(self, verdict: Verdict) -> None:
        """Count a client the admission check did not serve."""
        if verdict is Verdict.REFUSE:
            self.stats.refused["acl"] += 1
        else:
            self.stats.dropped["ratelimit"] += 1

    def snapshot(self) -> dict[str, object]:
        """The counters and gauges of this process, for the metrics endpoint."""
        cache = self.cache
        upstreams = {}
        for pool in (self.pool, *self.zone_pools):
            for server in pool.servers:
                upstreams[str(server)] = {
                    "up": 1 if server.health.up else 0,
                    "srtt": server.health.srtt,
                    "failures": dict(server.failures),
                    "handshakes": dict(server.handshakes),
                }
        return self.stats.snapshot(
            cache={
                "hits": cache.hits if cache else 0,
                "misses": cache.misses if cache else 0,
                "entries": len(cache) if cache else 0,
            },
            inflight=self.inflight,
            upstreams=upstreams,
            rules=dict(self.rules.hits) if self.rules else {},
            dnssec=dict(self.dnssec.results) if self.dnssec is not None else {},
            ready=self.pool.usable,
        )

    def _exchange(
        self,
        msg: bytes,
        query: wire.Query,
        reply: Callable[[bytes], None],
        now: float,
        pool: UpstreamPool,
    ) -> Exchange:
        upstream_msg = wire.prepare_upstream(
            msg,
            query,
            pad_block=self.policy.pad_block,
            keep_client_subnet=self.policy.keep_client_subnet,
        )
        exchange = Exchange(msg, query, reply, now + self.timeout, upstream_msg)
        self._deadlines.append(exchange)
        if len(pool.servers) > 1:
            self._hedges.append(exchange)
        return exchange

    def _store(self, key: bytes, query: wire.Query, answer: bytes) -> bytes:
        """Cache an upstream answer; return it as the cache would serve it.

        So the first client already sees the TTL clamps and the padding gone; an answer
        that is not cacheable goes out as it came.
        """
        cache = self.cache
        assert cache is not None
        now = self._loop.time()
        if not cache.put(key, answer, now):
            return answer
        entry = cache.peek(key)
        if entry is None:
            return answer
        if entry.clamped:
            return cache.render(entry, query, now, stale=False)
        return entry.answer  # padding removed; the client's ID goes in on the way out

    def _render_stale(self, entry: CacheEntry, query: wire.Query) -> bytes:
        assert self.cache is not None
        return self.cache.render(entry, query, self._loop.time(), stale=True)

    def _maybe_prefetch(
        self, entry: CacheEntry, key: bytes, msg: bytes, query: wire.Query, now: float
    ) -> None:
        """A popular entry in the last tenth of its life is refreshed before it expires."""
        if (
            not self.policy.prefetch
            or entry.hits < PREFETCH_MIN_HITS
            or entry.refreshing
            or entry.expires - now >= (entry.expires - entry.stored) / 10
        ):
            return
        entry.refreshing = True
        if entry.dnssec is not None:  # validated like any other answer, answering nobody
            pending = _Pending(_ignore, "")
            pending.answered = True
            exchange = self._exchange(msg, query, _ignore, now, self.pool)
            exchange.upstream_msg = wire.dnssec_query(exchange.upstream_msg)
            exchange.store = partial(self._check, pending, key, self.pool)
            pending.exchange = exchange
            self.pool.submit(exchange)
            return
        exchange = self._exchange(msg, query, _ignore, now, self.pool)
        exchange.store = partial(self._store, key, query)
        self.pool.submit(exchange)

    def abort(self) -> None:
        """Answer every query still waiting SERVFAIL now (the grace period is over)."""
        self._aborted = True  # a validation's fetch from now on fails at once
        waiting = list(self._deadlines)  # failing one may start another (a fetch)
        self._deadlines.clear()
        for exchange in waiting:
            if exchange.state is not FINISHED:
                exchange.fail(UpstreamClosedError("dns2dot is shutting down"))
        while self._validating:
            self._validation_late(self._validating.popleft())
        self._hedges.clear()
        self._stale.clear()

    def _sweep(self) -> None:
        """Run :meth:`_sweep_once`, and again later whatever happens: an error (a bug)
        must not end the timeouts, hedges and stale answers for good."""
        try:
            self._sweep_once()
        except Exception:
            log.exception("resolver sweep failed")
        finally:
            self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep_once(self) -> None:
        now = self._loop.time()
        deadlines = self._deadlines
        while deadlines:
            exchange = deadlines[0]
            if exchange.state is not FINISHED and exchange.deadline > now:
                break
            deadlines.popleft()  # first: an error below must not repeat on every sweep
            if exchange.state is not FINISHED:
                (exchange.pool or self.pool).timed_out(exchange, self.timeout)
        hedges = self._hedges
        half = self.timeout / 2
        while hedges:
            exchange = hedges[0]
            if exchange.state is not FINISHED and exchange.deadline - half > now:
                break
            hedges.popleft()
            if exchange.state is not FINISHED:
                (exchange.pool or self.pool).hedge(exchange)
        stale = self._stale
        while stale and (stale[0][1].state is FINISHED or stale[0][0] <= now):
            stale.popleft()[1].answer_early()
        validating = self._validating
        while validating and (validating[0].answered or validating[0].deadline <= now):
            self._validation_late(validating.popleft())
        if now >= self._next_maintenance:
            self._next_maintenance = now + MAINTENANCE_INTERVAL
            for pool in (self.pool, *self.zone_pools):
                pool.maintain()


def log_query(transport: str, query: wire.Query, answer: bytes, seconds: float) -> None:
    """One line per query, only with ``--log-queries``: names are private."""
    try:
        name = dns.name.from_wire(query.qname, 0)[0].to_text()
    except dns.exception.DNSException:
        name = "?"
    qlog.info(
        "%s %s %s %s %.1fms",
        transport,
        name,
        dns.rdatatype.to_text(dns.rdatatype.RdataType(query.qtype)),
        dns.rcode.to_text(dns.rcode.Rcode(answer[3] & 0x0F)),
        seconds * 1000,
    )


def _encrypted(pool: UpstreamPool) -> bool:
    """Whether a pool's upstreams are DoT or DoH: a ``plain://`` zone is not validated."""
    return all(server.spec.tls for server in pool.servers)


class _Pending:
    """A validated query's client: answered once, by :meth:`Resolver._deliver`."""

    __slots__ = ("answered", "exchange", "reply", "transport", "validating")

    @property
    def deadline(self) -> float:
        return self.exchange.deadline if self.exchange is not None else 0.0

    def __init__(self, reply: Callable[[bytes], None], transport: str) -> None:
        self.reply = reply
        self.transport = transport
        self.exchange: Exchange | None = None
        self.validating = False  # the upstream answered; its validation runs
        self.answered = False


def _ignore(_: bytes) -> None:
    """The reply of a prefetch: nobody is waiting for it."""
