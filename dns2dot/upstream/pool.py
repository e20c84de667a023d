"""The upstreams: each one's connections, TLS session and health, and the pool that
spreads queries over them by strategy (docs/ARCHITECTURE.md).

``UpstreamServer`` is one configured upstream; ``UpstreamPool`` puts an
:class:`~dns2dot.upstream.exchange.Exchange` on the upstream(s) its strategy picks,
and moves it elsewhere when a connection fails or an upstream answers SERVFAIL or
REFUSED.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from dns2dot.policy.strategy import Health, Strategy
from dns2dot.protocol import wire, x509
from dns2dot.protocol.errors import (
    PinMismatchError,
    UpstreamClosedError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeoutError,
)
from dns2dot.transport.channel import Channel, PlainChannel, TlsChannel
from dns2dot.transport.tls import TlsContexts, classify_failure, describe_failure, failure_kind
from dns2dot.upstream.connection import UpstreamConnection
from dns2dot.upstream.dot import TlsDotConnection
from dns2dot.upstream.exchange import FINISHED, Exchange
from dns2dot.upstream.plain import PlainDotConnection
from dns2dot.upstream.spec import Lifecycle, UpstreamSpec

log = logging.getLogger("dns2dot.upstream")


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time and timers for the middle: the running loop in production (which has
    both), a clock moved by hand in tests (tests/test_middle.py)."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer: ...


MAX_CONNECTIONS_PER_SERVER = 4
RESENDS = 1  # a query lost with its connection is sent again once
_RETRY_RCODES = frozenset({wire.Rcode.SERVFAIL, wire.Rcode.REFUSED})

DEFAULT_CONNECTION_TYPES: Mapping[str, type[UpstreamConnection]] = {
    "tls": TlsDotConnection,
    "plain": PlainDotConnection,
}


class UpstreamServer:
    """One configured upstream: its connections, TLS session and health."""

    def __init__(
        self,
        pool: UpstreamPool,
        index: int,
        spec: UpstreamSpec,
        context: ssl.SSLContext,
        lifecycle: Lifecycle,
    ) -> None:
        self.pool = pool
        self.index = index
        self.spec = spec
        self.context = context
        self.lifecycle = lifecycle
        self.health = Health()
        self.connections: list[UpstreamConnection] = []
        self.tls_session: ssl.SSLSession | None = None
        self.last_answer = 0.0
        self._last_problem: str | None = None
        self.failures: Counter[str] = Counter()  # by kind, for the metrics
        self.handshakes: Counter[str] = Counter()  # "true" (resumed) / "false"

    def __str__(self) -> str:
        return str(self.spec)

    def send(self, exchange: Exchange) -> bool:
        """Put the exchange on the least busy connection, opening one if all are full.

        At the connection limit it goes on the least loaded one anyway, to wait there:
        a burst is queued, not failed. False only if no connection is left at all.
        """
        best: UpstreamConnection | None = None
        for connection in self.connections:
            if connection.accepting and (best is None or connection.load < best.load):
                best = connection
        if best is None:
            if len(self.connections) < MAX_CONNECTIONS_PER_SERVER:
                best = self.connect()
            else:
                open_ones = [c for c in self.connections if not c.closed and c.has_room]
                if not open_ones:
                    return False
                best = min(open_ones, key=lambda c: c.load)
        best.send(exchange)
        return True

    def connect(self) -> UpstreamConnection:
        connection = self.pool.connection_types[self.spec.transport](self)
        self.connections.append(connection)
        return connection

    async def open_channel(self) -> TlsChannel:
        """A TLS connection to this upstream through memory BIOs: for a pooled DoT
        connection, or a pipe's splice."""
        opened = await self._open()
        assert isinstance(opened, TlsChannel)
        return opened

    async def open_plain_channel(self) -> PlainChannel:
        """A plain TCP connection to this ``plain://`` upstream (a forwarding rule's)."""
        sock = await self._open()
        assert isinstance(sock, socket.socket)
        return PlainChannel(sock)

    async def _open(self) -> socket.socket | TlsChannel:
        """Connect: TLS through memory BIOs, verified, resuming the last session (a
        ``plain`` upstream: the bare socket).

        The name is checked by OpenSSL during the handshake, the pins (if any) right
        after it, before anything is sent.
        """
        spec = self.spec
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        opened: TlsChannel | None = None
        try:
            async with asyncio.timeout(self.lifecycle.connect_timeout):
                await loop.sock_connect(sock, (spec.host, spec.port))
                if spec.transport == "plain":
                    self.health.succeeded()
                    return sock
                opened = TlsChannel(sock, self.context, spec.verify_name, self.tls_session)
                tls = opened.tls
                await opened.handshake()
            if spec.pins:
                pin = x509.spki_pin(tls.getpeercert(binary_form=True) or b"")
                if pin not in spec.pins:
                    raise PinMismatchError(f"key pin {pin} is not among the configured pins")
        except (OSError, TimeoutError, PinMismatchError, x509.CertificateError) as exc:
            (opened or sock).close()
            raise self._failed(exc) from exc
        except BaseException:
            (opened or sock).close()
            raise
        self.handshakes["true" if tls.session_reused else "false"] += 1
        if self.health.succeeded() or self._last_problem is not None:
            log.warning("%s: usable again", self)
        self._last_problem = None
        log.debug(
            "%s: connected, %s, session %s",
            self,
            tls.version(),
            "resumed" if tls.session_reused else "new",
        )
        return opened

    def _failed(self, cause: BaseException) -> UpstreamError:
        """Mark the upstream down and log the reason, once per distinct reason."""
        problem = describe_failure(cause)
        self.failures[failure_kind(cause)] += 1
        self.mark_down(problem)
        if isinstance(cause, ssl.SSLError | PinMismatchError):
            # Never resume a session with a peer that failed verification.
            self.tls_session = None
        return classify_failure(cause)(f"{self}: {problem}")

    def mark_down(self, problem: str) -> None:
        delay = self.health.failed(self.pool.clock.time())
        if problem != self._last_problem:
            log.warning("%s: %s; not used for %.1f s", self, problem, delay)
            self._last_problem = problem
        else:
            log.debug("%s: %s again; not used for %.1f s", self, problem, delay)

    def remember_session(self, connection: Channel) -> None:
        """Keep the connection's TLS session for the next handshake (after its first
        answer: TLS 1.3 sends the session tickets after the handshake)."""
        if not isinstance(connection, TlsChannel):
            return  # no TLS at all
        session = connection.tls.session
        if session is not None:
            self.tls_session = session

    def answered(self, now: float, rtt: float) -> None:
        self.last_answer = now
        self.health.answered(rtt)

    def timed_out(self, now: float, timeout: float) -> None:
        """A query sent here got no answer in time: a silent upstream is taken out.

        Silent means no answer at all for a whole timeout while queries were waiting;
        a single slow answer among many good ones does not count. Its connections are
        closed (a stuck TLS session is the usual cause), but it is marked down only
        when another upstream can take over: marking the only one down would turn a
        slow spell into SERVFAIL for everyone.
        """
        self.failures["timeout"] += 1
        if not self.health.up or now - self.last_answer <= timeout:
            return
        self.last_answer = now  # one verdict per silent spell
        for connection in list(self.connections):
            connection.close()
        if any(other.health.up for other in self.pool.servers if other is not self):
            self.mark_down("no answers (timed out)")

    def maintain(self, now: float) -> None:
        """Close idle connections; start a probe when the backoff has run out."""
        for connection in list(self.connections):
            if connection.idle_since(now) > self.lifecycle.idle_timeout:
                connection.close()
        if self.health.probe_due(now) and not self.connections:
            self.health.probing = True
            self.connect()

    def connection_closed(self, connection: UpstreamConnection, *, with_queries: bool) -> None:
        if with_queries:
            self.failures["closed"] += 1
        if connection in self.connections:
            self.connections.remove(connection)
        if self.health.probing and not self.connections:
            self.health.probing = False

    def close(self) -> None:
        for connection in list(self.connections):
            connection.close()


class UpstreamPool:
    """The configured upstreams and the strategy that spreads queries over them."""

    def __init__(
        self,
        specs: list[UpstreamSpec],
        contexts: TlsContexts,
        *,
        strategy: Strategy,
        lifecycle: Lifecycle,
        connection_types: Mapping[str, type[UpstreamConnection]] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.connection_types = connection_types or DEFAULT_CONNECTION_TYPES
        unknown = {s.transport for s in specs} - set(self.connection_types)
        if unknown:
            raise ValueError(f"no connection type for transport {sorted(unknown)[0]!r}")
        self.servers = [
            UpstreamServer(self, i, s, contexts.for_transport(s.transport), self.lifecycle)
            for i, s in enumerate(specs)
        ]
        self.strategy = strategy
        self._healths = [server.health for server in self.servers]
        # The usual setup, one upstream, has nothing to order (see _send).
        self._only = self.servers[0] if len(self.servers) == 1 else None
        self.clock: Clock = clock or asyncio.get_running_loop()
        self._loop = self.clock
        self.closing = False  # shutting down: nothing is sent or sent again

    def submit(self, exchange: Exchange) -> None:
        """Send the exchange where the strategy says, or fail it now if nowhere is usable."""
        if exchange.state is FINISHED:
            return
        exchange.pool = self
        if self.closing:
            exchange.fail(UpstreamClosedError("shutting down"))
            return
        if self._loop.time() >= exchange.deadline:
            exchange.fail(UpstreamTimeoutError("deadline passed"))
            return
        if not self._send(exchange, self.strategy.fanout) and not exchange.legs:
            exchange.fail(UpstreamConnectError("no upstream is usable"))

    def _send(self, exchange: Exchange, fanout: int) -> int:
        """Send to up to ``fanout`` usable upstreams not tried yet; return how many."""
        only = self._only
        if only is not None:
            if exchange.tried or not only.health.up or not only.send(exchange):
                return 0
            exchange.tried = 1
            return 1
        sent = 0
        for index in self.strategy.order(self._healths):
            if exchange.tried >> index & 1:
                continue
            if self.servers[index].send(exchange):
                exchange.tried |= 1 << index
                sent += 1
                if sent >= fanout:
                    break
        return sent

    def answered(self, exchange: Exchange, answer: bytes) -> None:
        """An upstream answered: deliver it, unless another upstream may do better.

        SERVFAIL and REFUSED are one upstream's trouble, not the name's: they are
        retried on an upstream not tried yet, within the same deadline.
        """
        if exchange.state is FINISHED:
            return
        if wire.rcode_of(answer) in _RETRY_RCODES:
            if exchange.legs:
                return  # the other leg of a race may still answer well
            if self._loop.time() < exchange.deadline and self._send(exchange, 1):
                return
        exchange.finish(answer)

    def hedge(self, exchange: Exchange) -> None:
        """Half the deadline has passed: also ask one more upstream, if there is one."""
        if exchange.state is not FINISHED:
            self._send(exchange, 1)

    def lost(
        self, exchange: Exchange, server: UpstreamServer, error: UpstreamError, *, sent: bool
    ) -> None:
        """A connection closed under the exchange: send it again elsewhere or fail it.

        A query that was never written goes wherever the strategy now says; one that
        was written is sent again once (it may have reached the upstream already).
        """
        if exchange.state is FINISHED or exchange.legs:
            return
        exchange.tried &= ~(1 << server.index)
        if not sent:
            self.submit(exchange)
        elif exchange.resends < RESENDS:
            exchange.resends += 1
            self.submit(exchange)
        else:
            exchange.fail(error)

    def timed_out(self, exchange: Exchange, timeout: float) -> None:
        now = self._loop.time()
        servers = {connection.server for connection, _ in exchange.legs}
        exchange.fail(UpstreamTimeoutError("no answer in time"))
        for server in servers:
            server.timed_out(now, timeout)

    def maintain(self) -> None:
        now = self._loop.time()
        for server in self.servers:
            server.maintain(now)

    @property
    def usable(self) -> bool:
        return any(health.up for health in self._healths)

    async def open_pipe_channel(self) -> tuple[UpstreamServer, TlsChannel]:
        """A fresh TLS connection of its own for a pipe session, in the strategy's order."""
        last: UpstreamError = UpstreamConnectError("no DoT upstream is usable")
        for index in self.strategy.order(self._healths):
            server = self.servers[index]
            if server.spec.transport != "tls":
                continue  # a byte-for-byte pipe needs a DNS-over-TLS stream
            try:
                return server, await server.open_channel()
            except UpstreamError as exc:
                last = exc
        raise last

    def close(self) -> None:
        """Close every connection; what was in flight is failed, never sent again."""
        self.closing = True
        for server in self.servers:
            server.close()
