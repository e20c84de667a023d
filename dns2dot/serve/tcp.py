"""The TCP listener: one session per client connection (maproxy's model).

A *pool session* reads length-prefixed queries, hands each to the resolver and writes
every answer as soon as it is ready, in any order (RFC 7766 §6.2.1.1). A *pipe
session* splices the client's socket byte for byte onto a TLS connection of its own, like
``socat tcp-listen:53,fork openssl:1.1.1.1:853``.

Both kinds are watched by one periodic sweep that closes connections idle for longer
than the idle timeout (RFC 7766 §6.2.3) and frames that trickle in for longer than
the frame deadline (slowloris), so a stalled client costs nothing but its socket.

tornado's ``TCPServer`` accepts the connections; both kinds of session then take the
client's socket from its stream and run on the loop's readiness callbacks. tornado's
reads cost a Future each and treat end of stream as the end of the connection, which
would lose the answers of a client that half-closes after its queries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from tornado.iostream import IOStream
from tornado.tcpserver import TCPServer

from dns2dot.policy.admission import Admission, Verdict
from dns2dot.protocol.errors import UpstreamError
from dns2dot.protocol.framing import FrameDecoder, frame
from dns2dot.serve.resolver import Resolver, refuse, servfail
from dns2dot.serve.stats import Stats
from dns2dot.transport.sockets import reset_on_close
from dns2dot.transport.splice import Splice
from dns2dot.transport.streams import READ_CHUNK
from dns2dot.upstream.pool import UpstreamPool

log = logging.getLogger("dns2dot.tcp")

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

    Driven by the event loop's readiness callbacks on the client's socket, as
    :class:`~dns2dot.transport.splice.Splice` is, not by tornado's reads: no Future per read, and
    the end of the client's input is not the end of the connection. A client that
    half-closes after its queries (``shutdown(SHUT_WR)``) still gets every answer, and
    then end of stream.

    At most ``max_inflight`` of its queries are unanswered at once; beyond that the
    session stops reading until answers drain, so one client cannot take every slot.
    When the client breaks the framing or ends its input, what it sent before is still
    answered (RFC 7766 §6.2.4: outstanding queries are answered before a server
    closes). Answers the client does not read are kept up to ``max_write_buffer``
    bytes; beyond that the connection is closed.
    """

    def __init__(
        self,
        client_stream: IOStream,
        handler: Callable[[bytes, Callable[[bytes], None]], bool],
        limits: TcpLimits,
        stats: Stats,
    ) -> None:
        self.client_stream = client_stream
        self._client = client_stream.socket
        self._fd = self._client.fileno()
        self._stats = stats
        self._handler = handler
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder()
        self._outbox: list[bytes] = []  # answers of this loop iteration, written at once
        self._flush_scheduled = False
        self._unsent = bytearray()  # answers the socket did not take yet
        self._inflight = 0
        # Queries read but not yet handed on, while the in-flight cap is reached.
        self._waiting: list[bytes] = []
        self._reading = False
        self._resume_scheduled = False
        self._input_ended = False  # end of stream, or broken framing: nothing more to read
        self._done: asyncio.Future[None] = self._loop.create_future()
        self.last_active = self._loop.time()
        self.frame_started = 0.0

    def expired(self, now: float) -> str | None:
        """Why this session should be closed now, or None."""
        # A frame can only trickle in while it is read: not while the cap holds reading.
        if (
            self._reading
            and self._decoder.buffered
            and now - self.frame_started > self._limits.frame_timeout
        ):
            return "slow_frame"
        if self._inflight == 0 and now - self.last_active > self._limits.idle_timeout:
            return "idle"
        return None

    async def run(self) -> None:
        """Serve the client until the connection ends; it is closed on return."""
        try:
            self._read()
            await self._done
        finally:
            self.close()

    def close(self) -> None:
        """Stop and close the connection (idempotent); late answers are dropped."""
        if self._fd >= 0:
            if self._reading:
                self._loop.remove_reader(self._fd)
            if self._unsent:
                self._loop.remove_writer(self._fd)
                reset_on_close(self._client)  # the client stopped reading
            self._fd = -1
            self._reading = False
            self._unsent.clear()
            self._waiting.clear()
        self.client_stream.close()  # closes the socket; tornado never registered it
        if not self._done.done():
            self._done.set_result(None)

    # -- client -> resolver ------------------------------------------------------------

    def _read(self) -> None:
        if not self._reading and not self._input_ended and self._fd >= 0:
            self._reading = True
            self._loop.add_reader(self._fd, self._readable)
            self.frame_started = self._loop.time()  # a part-read frame's deadline restarts

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _readable(self) -> None:
        try:
            data = self._client.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self._end_input()
            return
        now = self._loop.time()
        self.last_active = now
        decoder = self._decoder
        was_buffered = decoder.buffered
        messages = decoder.feed(data)
        if decoder.buffered and not was_buffered:
            self.frame_started = now
        if not self._serve_guarded(messages):
            return
        if decoder.error is not None:
            log.debug("closing client: %s", decoder.error)
            self._stats.dropped["framing"] += 1
            self._end_input()

    def _serve_guarded(self, messages: list[bytes]) -> bool:
        """:meth:`_serve`, closing this client (only) if the handler raises: a bug."""
        try:
            self._serve(messages)
        except Exception:
            log.exception("closing client after an unexpected error")
            self.close()
            return False
        return True

    def _serve(self, messages: list[bytes]) -> None:
        """Hand queries on while the cap allows; keep the rest and stop reading."""
        handle = self._handler
        reply = self._reply
        cap = self._limits.max_inflight
        for index, msg in enumerate(messages):
            if self._inflight >= cap:
                # One read can hold thousands of queries: the cap holds per query.
                self._waiting = messages[index:]
                self._stop_reading()
                return
            self._inflight += 1
            if not handle(msg, reply):
                self._inflight -= 1  # dropped: no answer will come
        if self._inflight >= cap:
            self._stop_reading()

    def _resume(self) -> None:
        """Answers drained below the cap: serve the queries kept, then read again."""
        self._resume_scheduled = False
        if self._fd < 0:
            return
        waiting, self._waiting = self._waiting, []
        if not self._serve_guarded(waiting):
            return
        if not self._waiting and self._inflight < self._limits.max_inflight:
            self._read()
        self._finish_if_done()

    def _end_input(self) -> None:
        """Nothing more will be read: answer what was read, then close."""
        self._input_ended = True
        self._stop_reading()
        self._decoder = FrameDecoder()  # a part-read frame will never be completed
        self._finish_if_done()

    # -- resolver -> client ------------------------------------------------------------

    def _reply(self, answer: bytes) -> None:
        self._inflight -= 1
        self.last_active = self._loop.time()
        self._outbox.append(frame(answer))
        loop = self._loop
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if (
            not self._reading
            and not self._resume_scheduled
            and self._inflight < self._limits.max_inflight
        ):
            self._resume_scheduled = True
            loop.call_soon(self._resume)

    def _flush(self) -> None:
        """Write the answers gathered in this loop iteration in one go."""
        self._flush_scheduled = False
        outbox = self._outbox
        if self._fd < 0:
            outbox.clear()
            return
        data = b"".join(outbox) if len(outbox) > 1 else outbox[0]
        outbox.clear()
        if self._unsent:  # still waiting for the socket: queue behind it
            if len(self._unsent) + len(data) > self._limits.max_write_buffer:
                self._unread_output()
                return
            self._unsent += data
            return
        try:
            sent = self._client.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            if len(data) - sent > self._limits.max_write_buffer:
                self._unread_output()
                return
            self._unsent += memoryview(data)[sent:]
            self._loop.add_writer(self._fd, self._writable)
            return
        self._finish_if_done()

    def _writable(self) -> None:
        try:
            sent = self._client.send(self._unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self._unsent[:sent]
        if sent:
            self.last_active = self._loop.time()  # a slow reader is not an idle one
        if not self._unsent:
            self._loop.remove_writer(self._fd)
            self._finish_if_done()

    def _unread_output(self) -> None:
        log.debug("closing client that does not read its answers")
        self._stats.dropped["unread_output"] += 1
        reset_on_close(self._client)
        self.close()

    def _finish_if_done(self) -> None:
        """After the input ended: close once every query read is answered and sent."""
        if (
            self._input_ended
            and self._inflight == 0
            and not self._waiting
            and not self._outbox
            and not self._unsent
        ):
            self.close()


class PipeSession:
    """One client connection spliced byte for byte onto a TLS connection of its own.

    Carries anything, zone transfers included. If no upstream can be reached over
    verified TLS, the client's queries are answered SERVFAIL instead of the connection
    just dropping, so a pipe client too always gets an answer. The copying itself is
    :class:`~dns2dot.transport.splice.Splice`: the client's socket is taken from its tornado
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
            if self.client_stream.closed():  # closed while the upstreams were being dialled
                return
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
        if self._fallback is not None:
            self._fallback.close()  # before the socket closes: it is still polled
        self.client_stream.close()


class DnsTcpServer(TCPServer):
    """Accepts DNS-over-TCP clients and runs a pool or pipe session for each."""

    def __init__(
        self,
        resolver: Resolver,
        pool: UpstreamPool,
        admission: Admission,
        mode: str,
        limits: TcpLimits,
    ) -> None:
        super().__init__()  # its streams only hand over their sockets
        self.resolver = resolver
        self.pool = pool
        self.admission = admission
        self.mode = mode
        self.limits = limits
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
