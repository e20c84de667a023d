"""Persistent, pipelined DNS-over-TLS connections to the upstreams (RFC 7858, RFC 7766).

``UpstreamConnection`` is one TLS stream with one reader loop and many queries in
flight, each under an ID unique on that connection, matched back by ID *and* question.
``UpstreamServer`` is one configured upstream: its connections, its TLS session for
resumption, its health. ``UpstreamPool`` puts an :class:`Exchange` on the preferred
usable server, and moves it elsewhere when a connection fails.

Per-query work here runs in plain callbacks rather than coroutines: a coroutine and a
future per query were the largest cost in the profile of the UDP path.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from tornado.iostream import SSLIOStream, StreamClosedError

from dns2dot import wire, x509
from dns2dot.errors import (
    FormError,
    MessageError,
    PinMismatchError,
    UpstreamClosedError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeoutError,
)
from dns2dot.framing import FrameDecoder, frame
from dns2dot.strategy import Health, failover_order
from dns2dot.tls import classify_failure, describe_failure

log = logging.getLogger("dns2dot.upstream")

READ_CHUNK = 65536
MAX_INFLIGHT_PER_CONNECTION = 4096
MAX_CONNECTIONS_PER_SERVER = 4
RESENDS = 1  # a query lost with its connection is sent again once (DESIGN.md)


@dataclass(frozen=True)
class UpstreamSpec:
    """One DoT upstream as configured: ``IP[:PORT][#TLS_NAME]`` plus optional pins."""

    host: str
    port: int = 853
    name: str | None = None
    pins: tuple[str, ...] = field(default=())

    @property
    def verify_name(self) -> str:
        """What the certificate must match: the TLS name, else the IP address."""
        return self.name or self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" + (f"#{self.name}" if self.name else "")


class Exchange:
    """One client query on its way through the upstreams; answered exactly once.

    ``reply`` receives the bytes for the client: the upstream's answer under the
    client's ID, or an error response built here.
    """

    __slots__ = (
        "connection",
        "deadline",
        "done",
        "key",
        "msg",
        "query",
        "reply",
        "resends",
        "upstream_id",
    )

    def __init__(
        self,
        msg: bytes,
        query: wire.Query,
        reply: Callable[[bytes], None],
        deadline: float,
    ) -> None:
        self.msg = msg
        self.query = query
        self.key = query.key
        self.reply = reply
        self.deadline = deadline
        self.done = False
        self.resends = 0
        self.connection: UpstreamConnection | None = None
        self.upstream_id = -1

    def finish(self, answer: bytes) -> None:
        """Deliver an upstream answer under the client's ID."""
        if self.done:
            return
        self.done = True
        self.connection = None
        self.reply(wire.with_id(answer, self.query.id))

    def fail(self, error: UpstreamError) -> None:
        """Answer SERVFAIL: the RFC 8914 code says which kind of failure it was."""
        if self.done:
            return
        self.done = True
        if self.connection is not None:
            self.connection.forget(self)
        if isinstance(error, UpstreamTimeoutError):
            ede, text = 22, "No Reachable Authority"  # RFC 8914 §5.23
        else:
            ede, text = 23, "Network Error"  # RFC 8914 §5.24
        self.reply(
            wire.error_response(self.msg, wire.Rcode.SERVFAIL, self.query, ede=ede, ede_text=text)
        )


class UpstreamConnection:
    """One TLS stream to one upstream, carrying many queries at once.

    Queries sent before the handshake completes are buffered and written in one go;
    writes made in one loop iteration are coalesced into one TLS record batch.
    """

    def __init__(self, server: UpstreamServer) -> None:
        self.server = server
        self._pending: dict[int, Exchange] = {}
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        # Random start: IDs need only be unique per connection, but need not be guessable.
        self._next_id = random.getrandbits(16)
        self._stream: SSLIOStream | None = None
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run())

    @property
    def inflight(self) -> int:
        return len(self._pending)

    def send(self, exchange: Exchange) -> None:
        uid = self._allocate_id()
        exchange.connection = self
        exchange.upstream_id = uid
        self._pending[uid] = exchange
        self._outbox.append(frame(wire.with_id(exchange.msg, uid)))
        if self._stream is not None and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def forget(self, exchange: Exchange) -> None:
        """Stop waiting for an answer (the exchange timed out or was answered elsewhere)."""
        if self._pending.get(exchange.upstream_id) is exchange:
            del self._pending[exchange.upstream_id]
        exchange.connection = None

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        else:
            self._task.cancel()

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

    async def _run(self) -> None:
        server = self.server
        try:
            self._stream = await server.open_stream()
        except UpstreamError as exc:
            self._abandon(exc, sent=False)
            return
        except asyncio.CancelledError:
            self._abandon(UpstreamClosedError("connection cancelled"), sent=False)
            return
        self._flush()
        stream = self._stream
        decoder = FrameDecoder(min_length=wire.HEADER_LEN)
        first = True
        try:
            while True:
                data = await stream.read_bytes(READ_CHUNK, partial=True)
                for msg in decoder.feed(data):
                    self._on_answer(msg)
                if decoder.error is not None:
                    log.warning("%s: bad framing from upstream, reconnecting", server)
                    break
                if first:
                    first = False
                    server.remember_session(stream)
        except StreamClosedError:
            pass
        except (MessageError, FormError) as exc:
            log.warning("%s: malformed answer (%s), reconnecting", server, exc)
        finally:
            stream.close()
        self._abandon(UpstreamClosedError("upstream closed the connection"), sent=True)

    def _on_answer(self, msg: bytes) -> None:
        uid = wire.message_id(msg)
        exchange = self._pending.get(uid)
        if exchange is None:
            log.debug("%s: answer with unknown ID %d ignored", self.server, uid)
            return
        key = wire.answer_key(msg)
        if key != exchange.key:
            if key is None and wire.rcode_of(msg) != wire.Rcode.NOERROR:
                # An error answer that omits the question (RFC 1035 allows it).
                del self._pending[uid]
                exchange.connection = None
                self.server.pool.retry_or_fail(exchange, UpstreamClosedError("error"))
                return
            log.debug("%s: answer for ID %d echoes another question", self.server, uid)
            return
        del self._pending[uid]
        exchange.connection = None
        exchange.finish(msg)

    def _abandon(self, error: UpstreamError, *, sent: bool) -> None:
        """Hand the queries still pending back to the pool, then forget this connection."""
        self.closed = True
        self.server.connection_closed(self, error, connected=self._stream is not None)
        pending = list(self._pending.values())
        self._pending.clear()
        self._outbox.clear()
        for exchange in pending:
            exchange.connection = None
            if sent:
                self.server.pool.retry_or_fail(exchange, error)
            else:
                self.server.pool.submit(exchange)


class UpstreamServer:
    """One configured upstream: its connections, TLS session and health."""

    def __init__(
        self,
        pool: UpstreamPool,
        spec: UpstreamSpec,
        context: ssl.SSLContext,
        connect_timeout: float,
    ) -> None:
        self.pool = pool
        self.spec = spec
        self.context = context
        self.connect_timeout = connect_timeout
        self.health = Health()
        self.connections: list[UpstreamConnection] = []
        self.tls_session: ssl.SSLSession | None = None
        self._last_problem: str | None = None

    def __str__(self) -> str:
        return str(self.spec)

    def send(self, exchange: Exchange) -> bool:
        """Put the exchange on the least busy connection; False if all are full."""
        best: UpstreamConnection | None = None
        for connection in self.connections:
            if best is None or connection.inflight < best.inflight:
                best = connection
        if best is None or best.inflight >= MAX_INFLIGHT_PER_CONNECTION:
            if len(self.connections) >= MAX_CONNECTIONS_PER_SERVER:
                return False
            best = UpstreamConnection(self)
            self.connections.append(best)
        best.send(exchange)
        return True

    async def open_stream(self) -> SSLIOStream:
        """A verified TLS stream to this upstream, resuming the last session if any.

        The socket is wrapped here rather than by tornado so that ``session=`` can be
        passed (DESIGN.md, "TLS session resumption"); the name is checked by OpenSSL.
        """
        spec = self.spec
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        stream: SSLIOStream | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.sock_connect(sock, (spec.host, spec.port))
                tls_sock = self.context.wrap_socket(
                    sock,
                    server_hostname=spec.verify_name,
                    session=self.tls_session,
                    do_handshake_on_connect=False,
                )
                stream = SSLIOStream(tls_sock, ssl_options=self.context)
                await stream.wait_for_handshake()
            if spec.pins:
                pin = x509.spki_pin(tls_sock.getpeercert(binary_form=True) or b"")
                if pin not in spec.pins:
                    raise PinMismatchError(f"key pin {pin} is not among the configured pins")
        except (
            OSError,
            StreamClosedError,
            TimeoutError,
            PinMismatchError,
            x509.CertificateError,
        ) as exc:
            if stream is not None:
                stream.close()
            else:
                sock.close()
            cause: BaseException = exc
            if isinstance(exc, StreamClosedError) and exc.real_error is not None:
                cause = exc.real_error
            raise self._failed(cause) from exc
        if self.health.succeeded() or self._last_problem is not None:
            log.warning("%s: usable again", self)
        self._last_problem = None
        log.debug(
            "%s: connected, %s, session %s",
            self,
            stream.socket.version(),
            "resumed" if stream.socket.session_reused else "new",
        )
        return stream

    def _failed(self, cause: BaseException) -> UpstreamError:
        """Mark the upstream down and log the reason, once per distinct reason."""
        problem = describe_failure(cause)
        delay = self.health.failed(asyncio.get_running_loop().time())
        if problem != self._last_problem:
            log.warning("%s: %s; not used for %.1f s", self, problem, delay)
            self._last_problem = problem
        else:
            log.debug("%s: %s again; not used for %.1f s", self, problem, delay)
        if isinstance(cause, ssl.SSLError | PinMismatchError):
            # Never resume a session with a peer that failed verification.
            self.tls_session = None
        return classify_failure(cause)(f"{self}: {problem}")

    def remember_session(self, stream: SSLIOStream) -> None:
        session = getattr(stream.socket, "session", None)
        if session is not None:
            self.tls_session = session

    def connection_closed(
        self, connection: UpstreamConnection, error: UpstreamError, *, connected: bool
    ) -> None:
        if connection in self.connections:
            self.connections.remove(connection)

    def close(self) -> None:
        for connection in list(self.connections):
            connection.close()


class UpstreamPool:
    """The configured upstreams, in order of preference (failover)."""

    def __init__(
        self,
        specs: list[UpstreamSpec],
        context: ssl.SSLContext,
        *,
        connect_timeout: float = 3.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.servers = [UpstreamServer(self, s, context, connect_timeout) for s in specs]
        self._clock = clock

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    def submit(self, exchange: Exchange) -> None:
        """Send the exchange to the most preferred usable upstream, or fail it now."""
        if exchange.done:
            return
        now = self._now()
        if now >= exchange.deadline:
            exchange.fail(UpstreamTimeoutError("deadline passed"))
            return
        for index in failover_order([s.health for s in self.servers], now):
            if self.servers[index].send(exchange):
                return
        exchange.fail(UpstreamConnectError("no upstream is usable"))

    def retry_or_fail(self, exchange: Exchange, error: UpstreamError) -> None:
        """A sent query lost its connection: send it again once, then give up."""
        if exchange.done:
            return
        if exchange.resends < RESENDS:
            exchange.resends += 1
            self.submit(exchange)
        else:
            exchange.fail(error)

    async def open_pipe_stream(self) -> tuple[UpstreamServer, SSLIOStream]:
        """A fresh TLS stream of its own for a pipe session, first usable upstream first."""
        last: UpstreamError = UpstreamConnectError("no upstream is usable")
        for index in failover_order([s.health for s in self.servers], self._now()):
            server = self.servers[index]
            try:
                return server, await server.open_stream()
            except UpstreamError as exc:
                last = exc
        raise last

    def close(self) -> None:
        for server in self.servers:
            server.close()
