"""The TCP listener: one session per client connection (maproxy's model).

A *pool session* reads length-prefixed queries, hands each to the resolver and writes
every answer as soon as it is ready, in any order (RFC 7766 §6.2.1.1). A *pipe
session* splices the client's socket byte for byte onto a TLS connection of its own, like
``socat tcp-listen:53,fork openssl:1.1.1.1:853``.

Both kinds are watched by one periodic sweep that closes connections idle for longer
than the idle timeout (RFC 7766 §6.2.3) and frames that trickle in for longer than
the frame deadline (slowloris), so a stalled client costs nothing but its socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError
from tornado.tcpserver import TCPServer

from dns2dot.admission import Admission, Verdict
from dns2dot.errors import UpstreamError
from dns2dot.framing import FrameDecoder, frame
from dns2dot.metrics import Stats
from dns2dot.resolver import Resolver, refuse, servfail
from dns2dot.splice import Splice
from dns2dot.streams import READ_CHUNK
from dns2dot.upstream import UpstreamPool

log = logging.getLogger("dns2dot.tcp")

MAX_BUFFER = 4 * 65536  # a client's unread input: a few maximum-size messages
SWEEP_INTERVAL = 1.0


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
        idle_timeout: float = 10.0,
        frame_timeout: float = 5.0,
        max_clients: int = 10000,
        max_inflight: int = 256,
        max_write_buffer: int = 1 << 20,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.max_clients = max_clients
        self.max_inflight = max_inflight
        self.max_write_buffer = max_write_buffer


class PoolSession:
    """One client connection whose queries share the upstream pool.

    At most ``max_inflight`` of its queries are unanswered at once; beyond that the
    session stops reading until answers drain, so one client cannot take every slot.
    When the client breaks the framing, what it sent before is still answered
    (RFC 7766 §6.2.4: outstanding queries are answered before a server closes).
    """

    def __init__(
        self,
        client_stream: IOStream,
        handler: Callable[[bytes, Callable[[bytes], None]], bool],
        limits: TcpLimits,
        stats: Stats,
    ) -> None:
        self.client_stream = client_stream
        self._stats = stats
        self._handler = handler
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder()
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._inflight = 0
        self._below = 0  # the waiter wakes when fewer than this many are in flight
        self._waiter: asyncio.Future[None] | None = None
        self.last_active = self._loop.time()
        self.frame_started = 0.0

    def expired(self, now: float) -> str | None:
        """Why this session should be closed now, or None."""
        if self._decoder.buffered and now - self.frame_started > self._limits.frame_timeout:
            return "slow_frame"
        if self._inflight == 0 and now - self.last_active > self._limits.idle_timeout:
            return "idle"
        return None

    async def run(self) -> None:
        stream = self.client_stream
        decoder = self._decoder
        handle = self._handler
        reply = self._reply
        limits = self._limits
        try:
            while True:
                if self._inflight >= limits.max_inflight:
                    await self._until_fewer_than(limits.max_inflight)
                data = await stream.read_bytes(READ_CHUNK, partial=True)
                now = self._loop.time()
                self.last_active = now
                was_buffered = decoder.buffered
                for msg in decoder.feed(data):
                    if self._inflight >= limits.max_inflight:
                        # One read can hold thousands of queries: the cap holds per query.
                        await self._until_fewer_than(limits.max_inflight)
                    self._inflight += 1
                    if not handle(msg, reply):
                        self._inflight -= 1  # dropped: no answer will come
                if decoder.error is not None:
                    log.debug("closing client: %s", decoder.error)
                    self._stats.dropped["framing"] += 1
                    await self._until_fewer_than(1)
                    written = self._flush()
                    if written is not None:
                        await written
                    break
                if decoder.buffered and not was_buffered:
                    self.frame_started = now
        except StreamClosedError:
            pass
        finally:
            stream.close()

    async def _until_fewer_than(self, count: int) -> None:
        """Wait until fewer than ``count`` queries are unanswered (or the client is gone)."""
        while self._inflight >= count and not self.client_stream.closed():
            self._below = count
            self._waiter = self._loop.create_future()
            await self._waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _reply(self, answer: bytes) -> None:
        self._inflight -= 1
        if self._waiter is not None and self._inflight < self._below:
            self._wake()
        self.last_active = self._loop.time()
        self._outbox.append(frame(answer))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> asyncio.Future[None] | None:
        """Write the answers gathered in this loop iteration in one go."""
        self._flush_scheduled = False
        stream = self.client_stream
        if not self._outbox or stream.closed():
            self._outbox.clear()
            return None
        data = b"".join(self._outbox) if len(self._outbox) > 1 else self._outbox[0]
        self._outbox.clear()
        try:
            return stream.write(data)
        except StreamBufferFullError:
            log.debug("closing client that does not read its answers")
            self._stats.dropped["unread_output"] += 1
            stream.close()
        except StreamClosedError:
            pass
        return None

    def close(self) -> None:
        self.client_stream.close()
        self._wake()


class PipeSession:
    """One client connection spliced byte for byte onto a TLS connection of its own.

    Carries anything, zone transfers included. If no upstream can be reached over
    verified TLS, the client's queries are answered SERVFAIL instead of the connection
    just dropping, so a pipe client too always gets an answer. The copying itself is
    :class:`~dns2dot.splice.Splice`: the client's socket is taken from its tornado
    stream, which never reads it.
    """

    def __init__(
        self, client_stream: IOStream, pool: UpstreamPool, limits: TcpLimits, stats: Stats
    ) -> None:
        self.client_stream = client_stream
        self._stats = stats
        self._pool = pool
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self.last_active = self._loop.time()
        self._fallback: PoolSession | None = None
        self._splice: Splice | None = None
        self._activity_seen = 0

    def expired(self, now: float) -> str | None:
        if self._fallback is not None:
            return self._fallback.expired(now)
        splice = self._splice
        if splice is not None and splice.activity != self._activity_seen:
            self._activity_seen = splice.activity
            self.last_active = now
        return "idle" if now - self.last_active > self._limits.idle_timeout else None

    async def run(self) -> None:
        try:
            server, channel = await self._pool.open_pipe_channel()
        except UpstreamError:
            self._fallback = PoolSession(self.client_stream, servfail, self._limits, self._stats)
            await self._fallback.run()
            return
        if self.client_stream.closed():  # closed while the upstream was being dialled
            channel.close()
            return
        self._splice = Splice(
            self.client_stream.socket,
            channel,
            on_upstream_data=partial(server.remember_session, channel),
        )
        try:
            await self._splice.run()
        finally:
            self.client_stream.close()  # its socket is closed already: tornado takes note

    def close(self) -> None:
        if self._splice is not None:
            self._splice.close()
        self.client_stream.close()
        if self._fallback is not None:
            self._fallback.close()


class DnsTcpServer(TCPServer):
    """Accepts DNS-over-TCP clients and runs a pool or pipe session for each."""

    def __init__(
        self,
        resolver: Resolver,
        pool: UpstreamPool,
        admission: Admission,
        mode: str = "pool",
        limits: TcpLimits | None = None,
    ) -> None:
        super().__init__(read_chunk_size=READ_CHUNK, max_buffer_size=MAX_BUFFER)
        self.resolver = resolver
        self.pool = pool
        self.admission = admission
        self.mode = mode
        self.limits = limits or TcpLimits()
        self.sessions: set[PoolSession | PipeSession] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._full_logged = False

    def start_sweeping(self) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    def stop_accepting(self) -> None:
        """Close the listening sockets; connected clients are still served."""
        super().stop()

    def stop(self) -> None:
        """Stop accepting and close every client connection."""
        super().stop()  # idempotent in tornado
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for session in list(self.sessions):
            session.close()

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        if len(self.sessions) >= self.limits.max_clients:
            if not self._full_logged:
                log.warning("%d TCP clients connected: refusing more", len(self.sessions))
                self._full_logged = True
            self.resolver.stats.dropped["max_clients"] += 1
            stream.close()
            return
        self._full_logged = False
        stream.set_nodelay(True)
        stream.max_write_buffer_size = self.limits.max_write_buffer
        session: PoolSession | PipeSession
        host = address[0] if isinstance(address, tuple) else str(address)
        stats = self.resolver.stats
        if self.admission.verdict(host, datagram=False) is not Verdict.SERVE:
            stats.refused["acl"] += 1
            session = PoolSession(stream, refuse, self.limits, stats)
        elif self.mode == "pipe":
            session = PipeSession(stream, self.pool, self.limits, stats)
        else:
            session = PoolSession(stream, self.resolver.handle, self.limits, stats)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        dropped = self.resolver.stats.dropped
        for session in list(self.sessions):
            reason = session.expired(now)
            if reason is not None:
                dropped[reason] += 1
                session.close()
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)
