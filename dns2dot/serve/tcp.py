"""The TCP listener: one session per client connection (maproxy's model).

A *pool session* reads length-prefixed queries, hands each to the resolver and writes
every answer as soon as it is ready, in any order (RFC 7766 §6.2.1.1). A *pipe
session* splices the client's socket byte for byte onto a TLS connection of its own, like
``socat tcp-listen:53,fork openssl:1.1.1.1:853``.

Both kinds are watched by one periodic sweep that closes connections idle for longer
than the idle timeout (RFC 7766 §6.2.3), frames that trickle in for longer than the
frame deadline (slowloris), and resets clients that take none of their answers for
the stall timeout, so a stalled client costs nothing but its socket. Garbage and
failing frames close a pool session (the rules are in
:mod:`dns2dot.protocol.client_stream`); in pipe mode the upstream judges the frames.

tornado accepts the connections (``add_accept_handler``); both kinds of session run on
the loop's readiness callbacks with the bare client socket. tornado's streams would
cost an object and a Future per read and treat end of stream as the end of the
connection, which would lose the answers of a client that half-closes after its
queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterable
from enum import Enum
from functools import partial
from typing import Any

from tornado.netutil import add_accept_handler

from dns2dot.policy.admission import Admission, Verdict
from dns2dot.protocol.client_stream import CLOSED, READING, RESET, STALL_TIMEOUT, ClientStream
from dns2dot.protocol.errors import UpstreamError
from dns2dot.serve.resolver import Resolver, refuse, servfail
from dns2dot.serve.stats import Stats
from dns2dot.transport.sockets import SocketTransport
from dns2dot.transport.splice import Splice
from dns2dot.transport.tls_server_channel import TlsServerTransport
from dns2dot.upstream.pool import UpstreamPool

log = logging.getLogger("dns2dot.tcp")

READ_CHUNK = 16384 + 256  # what one readiness callback reads from a client at most

SWEEP_INTERVAL = 1.0

#: The kernel's send buffer for a client connection (Linux doubles it for its own
#: bookkeeping). Left to autotuning it grows to megabytes (``tcp_wmem``) for a client
#: that does not read, which hides that client from the stall check for seconds; DNS
#: answers need far less, and a client that reads drains it in microseconds.
CLIENT_SNDBUF = 64 * 1024


#: Given a query, how its answer is to be changed before it is written, or None.
AnswerFilter = Callable[[bytes], Callable[[bytes], bytes] | None]


class TcpLimits:
    """What one TCP client may hold; see the README's option table."""

    __slots__ = (
        "frame_timeout",
        "idle_timeout",
        "max_clients",
        "max_inflight",
        "max_write_buffer",
    )

    def __init__(
        self,
        *,
        idle_timeout: float,
        max_clients: int,
        max_inflight: int,
        frame_timeout: float = 5.0,
        max_write_buffer: int = 1 << 20,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.max_clients = max_clients
        self.max_inflight = max_inflight
        self.max_write_buffer = max_write_buffer


class PoolSession:
    """One client connection whose queries share the upstream pool.

    The protocol is :class:`~dns2dot.protocol.client_stream.ClientStream` (framing, the
    in-flight cap, the bound on unread answers, the rules for malformed and failing
    frames, the deadlines); this is its I/O shell on a
    :class:`~dns2dot.transport.sockets.SocketTransport`, driven by the loop's readiness
    callbacks (no Future per read, and the end of the client's input is not the end of
    the connection: a client that half-closes after its queries gets every answer, then
    end of stream). A DoT client's session runs on a
    :class:`~dns2dot.transport.tls_server_channel.TlsServerTransport`, which has the
    same methods. Answers that arrive in one loop iteration are written in one ``send``.

    ``answer_filter``, if given, is asked for each query how its answer is to be
    changed (None: left as it is); DoT uses it for padding and keepalive.
    """

    def __init__(
        self,
        client: socket.socket | TlsServerTransport,
        handler: Callable[[bytes, Callable[[bytes], None]], bool],
        limits: TcpLimits,
        stats: Stats,
        answer_filter: AnswerFilter | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._handler = handler
        self._stats = stats
        self.stream = ClientStream(
            loop.time(),
            max_inflight=limits.max_inflight,
            max_unsent=limits.max_write_buffer,
            frame_timeout=limits.frame_timeout,
            idle_timeout=limits.idle_timeout,
        )
        self.transport: SocketTransport | TlsServerTransport
        if isinstance(client, socket.socket):
            self.transport = SocketTransport(client, loop, self._readable, self._writable)
        else:
            client.attach(self._readable, self._writable)
            self.transport = client
        self._answer_filter = answer_filter
        self._pump_handle: asyncio.Handle | None = None  # answers to write, queries to serve
        self._stall_timer: asyncio.TimerHandle | None = None  # while answers wait unwritten
        self._on_end: Callable[[], None] | None = None

    def expired(self, now: float) -> str | None:
        """Why this session should be closed now, or None."""
        return self.stream.expired(now)

    def start(self, on_end: Callable[[], None] | None = None) -> None:
        """Serve the client; ``on_end`` is called once the connection has ended. No
        task or Future of its own: an idle client costs its objects and socket only."""
        self._on_end = on_end
        self._apply()

    async def run(self) -> None:
        """Serve the client until the connection ends; it is closed on return."""
        done: asyncio.Future[None] = self._loop.create_future()
        try:
            self.start(partial(_resolve, done))
            await done
        finally:
            self.close()

    def shutdown(self) -> None:
        """Read no more; close once the queries read are answered (shutting down)."""
        self.stream.end_input(self._loop.time())
        self._apply()

    def close(self, reason: str | None = None) -> None:
        """End the connection (idempotent): a reset if answers wait unread; late answers
        are dropped."""
        self.stream.close(self._loop.time(), reason)
        self._apply()

    # -- client -> resolver ------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data = self.transport.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.stream.reset(self._loop.time())
            self._apply()
            return
        now = self._loop.time()
        self.stream.receive(data, now)
        self._serve(now)
        self._apply()

    def _serve(self, now: float) -> None:
        """Hand the resolver what the stream lets through; a handler that raises (a bug)
        closes this client only."""
        stream = self.stream
        handle = self._handler
        reply = self._reply
        answer_filter = self._answer_filter
        try:
            while batch := stream.take(now):
                reason = stream.reason
                for index, msg in enumerate(batch):
                    if answer_filter is not None:
                        change = answer_filter(msg)
                        reply = self._reply if change is None else partial(self._changed, change)
                    if not handle(msg, reply):
                        stream.dropped(now)
                    if stream.reason is not reason:  # closing: the rest is not handed on
                        stream.give_back(len(batch) - index - 1, now)
                        break
        except Exception:
            log.exception("closing client after an unexpected error")
            self._write(now)
            stream.close(now)

    # -- resolver -> client ------------------------------------------------------------

    def _changed(self, change: Callable[[bytes], bytes], answer: bytes) -> None:
        self._reply(change(answer))

    def _reply(self, answer: bytes) -> None:
        self.stream.answer(answer, self._loop.time())
        if self._pump_handle is None:  # the pump returns at once if the session ended
            self._pump_handle = self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Once per loop iteration with answers: write them, serve the queries the cap
        held back, and read again if the stream allows."""
        self._pump_handle = None
        if self.transport.closed:
            return
        now = self._loop.time()
        self._write(now)
        self._serve(now)
        self._apply()

    def _writable(self) -> None:
        self._write(self._loop.time())
        self._apply()

    def _write(self, now: float) -> None:
        stream = self.stream
        if not stream.unsent_bytes:
            return
        try:
            sent = self.transport.send(stream.output())
        except OSError:
            stream.reset(now)
            return
        stream.sent(sent, now)

    def _apply(self) -> None:
        """Make the transport do what the stream's state says."""
        stream = self.stream
        state = stream.state
        transport = self.transport
        if state is CLOSED or state is RESET:
            if not transport.closed:
                if stream.reason is not None:
                    self._stats.dropped[stream.reason] += 1
                    log.debug("closing client: %s", stream.reason)
                if state is RESET:
                    transport.reset()
                else:
                    transport.close()
            for handle in (self._pump_handle, self._stall_timer):
                if handle is not None:
                    handle.cancel()
            self._pump_handle = self._stall_timer = None
            on_end, self._on_end = self._on_end, None
            if on_end is not None:
                on_end()
            return
        transport.want_read(state is READING)
        blocked = stream.write_blocked
        transport.want_write(blocked)
        if blocked and self._stall_timer is None:
            self._stall_timer = self._loop.call_at(stream.stall_deadline, self._stall_check)

    def _stall_check(self) -> None:
        """Reset a client that took none of its answers for the stall timeout."""
        self._stall_timer = None
        if self.stream.expired(self._loop.time()) == "unread_output":
            self.close("unread_output")
        else:
            self._apply()  # progress since: wait again if answers still wait


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Pipe(Enum):
    """Where a pipe session is; changed only by ``PipeSession._to``."""

    DIALLING = "dialling"
    SPLICING = "splicing"
    FALLBACK = "fallback"  # no upstream: a pool session answers SERVFAIL
    CLOSED = "closed"


_DIALLING, _SPLICING, _FALLBACK, _PIPE_CLOSED = _Pipe  # fast to read (see client_stream)


class PipeSession:
    """One client connection spliced byte for byte onto a TLS connection of its own.

    Carries anything, zone transfers included. If no upstream can be reached over
    verified TLS, the client's queries are answered SERVFAIL instead of the connection
    just dropping, so a pipe client too always gets an answer. The copying itself is
    :class:`~dns2dot.transport.splice.Splice`. The upstream decides what is garbage; a
    client that takes none of the upstream's answers for
    :data:`~dns2dot.protocol.client_stream.STALL_TIMEOUT` seconds is reset.
    """

    def __init__(
        self, client: socket.socket, pool: UpstreamPool, limits: TcpLimits, stats: Stats
    ) -> None:
        self.client = client
        self._stats = stats
        self._pool = pool
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self.last_active = self._loop.time()
        self.state = _DIALLING
        self._fallback: PoolSession | None = None
        self._splice: Splice | None = None
        self._activity_seen = 0

    def _to(self, state: _Pipe) -> None:
        if self.state is not _PIPE_CLOSED:
            self.state = state

    def expired(self, now: float) -> str | None:
        if self._fallback is not None:
            return self._fallback.expired(now)
        splice = self._splice
        if splice is not None:
            if splice.stalled(now) >= STALL_TIMEOUT:
                return "unread_output"
            if splice.activity != self._activity_seen:
                self._activity_seen = splice.activity
                self.last_active = now
        return "idle" if now - self.last_active > self._limits.idle_timeout else None

    async def run(self) -> None:
        try:
            server, channel = await self._pool.open_pipe_channel()
        except UpstreamError:
            if self.state is _PIPE_CLOSED:  # closed while the upstreams were being dialled
                return
            self._to(_FALLBACK)
            self._fallback = PoolSession(self.client, servfail, self._limits, self._stats)
            await self._fallback.run()
            return
        if self.state is _PIPE_CLOSED:  # closed while the upstream was being dialled
            channel.close()
            return
        self._to(_SPLICING)
        self._splice = Splice(
            self.client,
            channel,
            on_upstream_data=partial(server.remember_session, channel),
            dns_framing=True,
        )
        try:
            await self._splice.run()
        finally:
            self._to(_PIPE_CLOSED)

    def close(self, reason: str | None = None) -> None:
        if reason is not None and self._fallback is None and self.state is not _PIPE_CLOSED:
            self._stats.dropped[reason] += 1
        if self._fallback is not None:
            self._fallback.close(reason)  # counts the reason itself
        if self._splice is not None:
            self._splice.close()
        self._to(_PIPE_CLOSED)
        self.client.close()


class DnsTcpServer:
    """Accepts DNS-over-TCP clients and runs a pool or pipe session for each.

    tornado accepts the connections (``tornado.netutil.add_accept_handler``); each
    session gets the bare client socket, with no tornado stream around it.
    """

    def __init__(
        self,
        resolver: Resolver,
        pool: UpstreamPool,
        admission: Admission,
        mode: str,
        limits: TcpLimits,
    ) -> None:
        self.resolver = resolver
        self.pool = pool
        self.admission = admission
        self.mode = mode
        self.limits = limits
        self.sessions: set[PoolSession | PipeSession] = set()
        self._listeners: dict[int, tuple[socket.socket, Callable[[], None]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._full_logged = False

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        """Accept clients on these listening sockets (bound and listening already)."""
        for sock in sockets:
            remove = add_accept_handler(sock, self._accepted)
            self._listeners[sock.fileno()] = (sock, remove)

    def start_sweeping(self) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    def stop_accepting(self) -> None:
        """Close the listening sockets; connected clients are still served."""
        listeners, self._listeners = self._listeners, {}
        for sock, remove in listeners.values():
            remove()
            sock.close()

    def stop(self) -> None:
        """Stop accepting and close every client connection."""
        self.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for session in list(self.sessions):
            session.close()

    def _accepted(self, client: socket.socket, address: Any) -> None:
        if len(self.sessions) >= self.limits.max_clients:
            if not self._full_logged:
                log.warning("%d TCP clients connected: refusing more", len(self.sessions))
                self._full_logged = True
            self.resolver.stats.dropped["max_clients"] += 1
            client.close()
            return
        self._full_logged = False
        client.setblocking(False)
        with contextlib.suppress(OSError):
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_SNDBUF)
            if client.family in (socket.AF_INET, socket.AF_INET6):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session: PoolSession | PipeSession
        host = address[0] if isinstance(address, tuple) else str(address)
        stats = self.resolver.stats
        if self.admission.verdict(host, datagram=False) is not Verdict.SERVE:
            stats.refused["acl"] += 1
            session = PoolSession(client, refuse, self.limits, stats)
        elif self.mode == "pipe":
            session = PipeSession(client, self.pool, self.limits, stats)
        else:
            session = PoolSession(client, self.resolver.handle, self.limits, stats)
        self.sessions.add(session)
        if isinstance(session, PoolSession):
            session.start(partial(self.sessions.discard, session))
        else:
            task = asyncio.ensure_future(session.run())
            task.add_done_callback(partial(self._ended, session))

    def _ended(self, session: PoolSession | PipeSession, task: asyncio.Future[None]) -> None:
        self.sessions.discard(session)
        if not task.cancelled() and task.exception() is not None:
            log.error("TCP session failed", exc_info=task.exception())

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        try:
            for session in list(self.sessions):
                reason = session.expired(now)
                if reason is not None:
                    session.close(reason)
        except Exception:
            log.exception("TCP sweep failed")
        finally:
            self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)
