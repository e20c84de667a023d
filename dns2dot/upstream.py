"""Persistent, pipelined DNS-over-TLS connections to the upstreams (RFC 7858, RFC 7766).

``UpstreamConnection`` is one TLS stream with one reader loop and many queries in
flight, each under an ID unique on that connection, matched back by ID *and* question.
``UpstreamServer`` is one configured upstream: its connections, its TLS session for
resumption, its health. ``UpstreamPool`` puts an :class:`Exchange` on the upstream(s)
its strategy picks, and moves it elsewhere when a connection fails or an upstream
answers SERVFAIL or REFUSED.

Per-query work here runs in plain callbacks rather than coroutines: a coroutine and a
future per query were the largest cost in the profile of the UDP path.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from tornado.iostream import IOStream, SSLIOStream, StreamClosedError

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
from dns2dot.framing import FrameDecoder, frame_with_id
from dns2dot.splice import TlsChannel, tls_handshake
from dns2dot.strategy import Health, Strategy
from dns2dot.streams import READ_CHUNK, read_available
from dns2dot.tls import TlsContexts, classify_failure, describe_failure, failure_kind

log = logging.getLogger("dns2dot.upstream")

MAX_INFLIGHT_PER_CONNECTION = 4096
MAX_CONNECTIONS_PER_SERVER = 4
RESENDS = 1  # a query lost with its connection is sent again once (DESIGN.md)
_RETRY_RCODES = frozenset({wire.Rcode.SERVFAIL, wire.Rcode.REFUSED})
_Opened = TypeVar("_Opened")  # what a connection's transport is opened as


@dataclass(frozen=True)
class UpstreamSpec:
    """One upstream as configured: where, how, and what its certificate must show.

    ``transport`` is ``tls`` (DoT, ``IP[:PORT][#TLS_NAME]``), ``https`` (DoH,
    ``https://IP[:PORT]/PATH[#TLS_NAME]``) or ``plain`` (cleartext DNS over TCP, only
    ever for a forwarding rule that names it).
    """

    host: str
    port: int = 853
    name: str | None = None
    pins: tuple[str, ...] = field(default=())
    transport: str = "tls"
    path: str = "/dns-query"

    @property
    def tls(self) -> bool:
        return self.transport != "plain"

    @property
    def verify_name(self) -> str:
        """What the certificate must match: the TLS name, else the IP address."""
        return self.name or self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.transport == "plain":
            return f"plain://{host}:{self.port}"
        name = f"#{self.name}" if self.name else ""
        if self.transport == "https":
            return f"https://{host}:{self.port}{self.path}{name}"
        return f"{host}:{self.port}{name}"


@dataclass
class Lifecycle:
    """How long upstream connections live; see the README's option table."""

    connect_timeout: float = 3.0
    idle_timeout: float = 8.0  # below the 10 s some public resolvers enforce
    max_queries: int = 50000  # per connection, then a fresh one takes over


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
    stale cache entry).
    """

    __slots__ = (
        "deadline",
        "done",
        "fallback",
        "key",
        "legs",
        "msg",
        "on_reply",
        "pool",
        "query",
        "question",
        "replied",
        "reply",
        "resends",
        "started",
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
        self.done = False
        self.replied = False
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

    def finish(self, answer: bytes) -> None:
        """Deliver an upstream answer under the client's ID.

        An upstream's FORMERR may echo the malformed parts of the query back; the
        client gets a clean FORMERR of ours instead.
        """
        if self.done:
            return
        self.done = True
        if self.legs:
            self._detach()
        if answer[3] & 0x0F == wire.Rcode.FORMERR:
            answer = wire.error_response(self.msg, wire.Rcode.FORMERR, self.query)
        if self.store is not None:
            answer = self.store(answer)
        if not self.replied:
            self._respond(wire.for_client(answer, self.query))

    def fail(self, error: UpstreamError) -> None:
        """Answer SERVFAIL (or the fallback): the RFC 8914 code says what failed."""
        if self.done:
            return
        self.done = True
        self._detach()
        if self.replied:
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
        if not self.replied and self.fallback is not None:
            self._respond(self.fallback())

    def _respond(self, answer: bytes) -> None:
        """The one way to the client, taken once."""
        self.replied = True
        if self.on_reply is not None:
            self.on_reply(self, answer)
        self.reply(answer)

    def _detach(self) -> None:
        for connection, uid in self.legs:
            connection.forget(uid, self)
        self.legs.clear()


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


class TlsDotConnection(DotConnection):
    """DNS over TLS on a :class:`~dns2dot.splice.TlsChannel`, driven by readiness
    callbacks rather than a tornado stream: the pooled connections' hot path.

    Why: every answer is one TLS record, and a tornado read cost a Future per wakeup
    and two system calls per record (header, then body); here one ``recv`` takes all
    that the socket holds, OpenSSL decrypts it from memory, and the answers are handed
    on from the callback. Only a ``plain`` upstream keeps :class:`DotConnection`.
    """

    def __init__(self, server: UpstreamServer) -> None:
        self._channel: TlsChannel | None = None
        self._fd = -1
        self._ended: asyncio.Future[BaseException | None] | None = None
        self._first_answer = True
        super().__init__(server)

    def idle_since(self, now: float) -> float:
        if self._channel is not None and self._channel.unsent:
            return 0.0
        return super().idle_since(now)

    def close(self) -> None:
        if self._channel is None:
            self._task.cancel()
        else:
            self._end(None)

    async def _run(self) -> None:
        channel = await self._open_or_abandon(self.server.open_channel)
        if channel is None:
            return
        loop = self._loop
        channel.acknowledge_at_once()  # shared by many clients: see TlsChannel
        self._channel = channel
        self._fd = channel.sock.fileno()
        self._ended = loop.create_future()
        try:
            loop.add_reader(self._fd, self._readable)
            self._connected = True
            self._flush()
            self._decrypt()  # records that came with the end of the handshake
            error = await self._ended
        finally:
            loop.remove_reader(self._fd)
            loop.remove_writer(self._fd)
            channel.close()
        if isinstance(error, ssl.SSLError | OSError):
            log.debug("%s: connection ended: %s", self.server, error)
        self._abandon(UpstreamClosedError("upstream closed the connection"), sent=True)

    def _end(self, error: BaseException | None) -> None:
        """Stop using the connection; :meth:`_run` hands back what is pending."""
        self.closed = True  # takes no more queries from now on
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(error)

    @property
    def _live(self) -> TlsChannel | None:
        """The channel, while the connection is still in use."""
        ended = self._ended
        return None if ended is None or ended.done() else self._channel

    def _flush(self) -> None:
        self._flush_scheduled = False
        channel = self._live
        if not self._outbox or channel is None:
            return
        data = b"".join(self._outbox) if len(self._outbox) > 1 else self._outbox[0]
        self._outbox.clear()
        try:
            channel.tls.write(data)  # into memory: never blocks
        except ssl.SSLError as exc:
            self._end(exc)
            return
        self._send_ciphertext()

    def _send_ciphertext(self) -> None:
        """Send what OpenSSL encrypted; the rest waits for the socket to be writable
        (bounded: at most MAX_INFLIGHT_PER_CONNECTION queries are ever waiting)."""
        channel = self._live
        if channel is None:
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
        channel = self._live
        if channel is None:
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
        channel = self._live
        if channel is None:
            return
        data, ended, error = channel.decrypt()
        if channel.outgoing.pending:  # OpenSSL has something to say (a key update)
            self._send_ciphertext()
        if data:
            try:
                ok = self._received(data)
            except Exception as exc:
                self._log_failure(exc)
                ok = False
            if self._first_answer:
                self._first_answer = False
                self.server.remember_session(channel)
            if not ok:
                ended = True
        if ended:
            self._end(error)


DEFAULT_CONNECTION_TYPES: Mapping[str, type[UpstreamConnection]] = {
    "tls": TlsDotConnection,
    "plain": DotConnection,
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

    async def open_stream(self) -> IOStream:
        """A connected stream to this upstream, for tornado: TLS (see :meth:`_open`),
        or bare TCP for a ``plain`` upstream (a forwarding rule's)."""
        sock = await self._open(memory_bio=False)
        assert isinstance(sock, socket.socket)
        if not isinstance(sock, ssl.SSLSocket):
            return IOStream(sock, read_chunk_size=READ_CHUNK)
        stream = SSLIOStream(sock, ssl_options=self.context, read_chunk_size=READ_CHUNK)
        try:
            await stream.wait_for_handshake()  # done already: tornado only takes note
        except StreamClosedError as exc:
            stream.close()
            raise self._failed(exc.real_error or exc) from exc
        return stream

    async def open_channel(self) -> TlsChannel:
        """A TLS connection of its own to this upstream, for a pipe's splice."""
        opened = await self._open(memory_bio=True)
        assert isinstance(opened, TlsChannel)
        return opened

    async def _open(self, *, memory_bio: bool) -> socket.socket | TlsChannel:
        """Connect: TLS, verified, resuming the last session.

        The socket is wrapped here rather than by tornado so that ``session=`` can be
        passed (DESIGN.md, "TLS session resumption"); the name is checked by OpenSSL
        during the handshake, the pins (if any) right after it, before anything is
        sent.
        """
        spec = self.spec
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        opened: ssl.SSLSocket | TlsChannel | None = None
        tls: ssl.SSLSocket | ssl.SSLObject
        try:
            async with asyncio.timeout(self.lifecycle.connect_timeout):
                await loop.sock_connect(sock, (spec.host, spec.port))
                if spec.transport == "plain":
                    self.health.succeeded()
                    return sock
                if memory_bio:
                    opened = TlsChannel(sock, self.context, spec.verify_name, self.tls_session)
                    tls = opened.tls
                    await opened.handshake()
                else:
                    opened = tls = self.context.wrap_socket(
                        sock,
                        server_hostname=spec.verify_name,
                        session=self.tls_session,
                        do_handshake_on_connect=False,
                    )
                    await tls_handshake(tls)
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
        delay = self.health.failed(asyncio.get_running_loop().time())
        if problem != self._last_problem:
            log.warning("%s: %s; not used for %.1f s", self, problem, delay)
            self._last_problem = problem
        else:
            log.debug("%s: %s again; not used for %.1f s", self, problem, delay)

    def remember_session(self, connection: IOStream | TlsChannel) -> None:
        """Keep the connection's TLS session for the next handshake (after its first
        answer: TLS 1.3 sends the session tickets after the handshake)."""
        tls = connection.socket if isinstance(connection, IOStream) else connection.tls
        session = getattr(tls, "session", None)
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
        strategy: Strategy | None = None,
        lifecycle: Lifecycle | None = None,
        connection_types: Mapping[str, type[UpstreamConnection]] | None = None,
    ) -> None:
        self.lifecycle = lifecycle or Lifecycle()
        self.connection_types = connection_types or DEFAULT_CONNECTION_TYPES
        unknown = {s.transport for s in specs} - set(self.connection_types)
        if unknown:
            raise ValueError(f"no connection type for transport {sorted(unknown)[0]!r}")
        self.servers = [
            UpstreamServer(self, i, s, contexts.for_transport(s.transport), self.lifecycle)
            for i, s in enumerate(specs)
        ]
        self.strategy = strategy or Strategy()
        self._healths = [server.health for server in self.servers]
        # The usual setup, one upstream, has nothing to order (see _send).
        self._only = self.servers[0] if len(self.servers) == 1 else None
        self._loop = asyncio.get_running_loop()
        self.closing = False  # shutting down: nothing is sent or sent again

    def submit(self, exchange: Exchange) -> None:
        """Send the exchange where the strategy says, or fail it now if nowhere is usable."""
        if exchange.done:
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
        if exchange.done:
            return
        if wire.rcode_of(answer) in _RETRY_RCODES:
            if exchange.legs:
                return  # the other leg of a race may still answer well
            if self._loop.time() < exchange.deadline and self._send(exchange, 1):
                return
        exchange.finish(answer)

    def hedge(self, exchange: Exchange) -> None:
        """Half the deadline has passed: also ask one more upstream, if there is one."""
        if not exchange.done:
            self._send(exchange, 1)

    def lost(
        self, exchange: Exchange, server: UpstreamServer, error: UpstreamError, *, sent: bool
    ) -> None:
        """A connection closed under the exchange: send it again elsewhere or fail it.

        A query that was never written goes wherever the strategy now says; one that
        was written is sent again once (it may have reached the upstream already).
        """
        if exchange.done or exchange.legs:
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
