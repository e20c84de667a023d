"""The DNS-over-TLS listener (RFC 7858): pool-mode sessions over the loop's TLS transport.

A :class:`DotSession` is what a pool session is to a TCP client (RFC 7766 framing,
answers in any order as soon as they are ready, at most ``max_inflight`` unanswered
queries before reading stops, unread answers bounded by ``max_write_buffer``, idle and
slow-frame deadlines) for a client that speaks TLS. It is an ``asyncio.Protocol``
on the TLS transport that :class:`~dns2dot.transport.server_tls.TlsListener` makes:
the transport hands it plaintext and encrypts what it writes, so the session sees a
decrypted byte stream and nothing of TLS.

Answers carry what the query asked of EDNS: padding to 468-octet blocks and the idle
timeout as edns-tcp-keepalive (see dns2dot/protocol/encrypted.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, cast

from dns2dot.protocol.encrypted import Asks, client_asks, finish_answer
from dns2dot.protocol.framing import FrameDecoder, frame
from dns2dot.serve.tcp import TcpLimits
from dns2dot.transport.server_tls import reset

if TYPE_CHECKING:
    from dns2dot.serve.tls_clients import EncryptedServer

log = logging.getLogger("dns2dot.dot")

Handler = Callable[[bytes, Callable[[bytes], None]], bool]


class DotSession(asyncio.Protocol):
    """One DNS-over-TLS client, its queries answered through ``handler``."""

    def __init__(
        self, server: EncryptedServer, handler: Handler, limits: TcpLimits, host: str
    ) -> None:
        self._server = server
        self._handler = handler
        self._limits = limits
        self.host = host
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._inflight = 0
        self._waiting: list[bytes] = []
        self._paused = False
        self._input_ended = False
        self.last_active = self._loop.time()
        self.frame_started = 0.0

    # -- the transport's callbacks -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._server.sessions.add(self)
        self.last_active = self._loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.sessions.discard(self)
        self._transport = None
        self._outbox.clear()
        self._waiting.clear()

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        self.last_active = now
        decoder = self._decoder
        was_buffered = decoder.buffered
        messages = decoder.feed(data)
        if decoder.buffered and not was_buffered:
            self.frame_started = now
        self._serve(messages)
        if decoder.error is not None and self._transport is not None:
            log.debug("closing DoT client %s: %s", self.host, decoder.error)
            self._server.stats.dropped["framing"] += 1
            self._end_input()

    def eof_received(self) -> bool | None:
        # Over TLS the transport closes after the peer's close_notify whatever this
        # returns; answers still in flight are lost, as the peer asked.
        self._input_ended = True
        return None

    # -- queries -------------------------------------------------------------------------

    def _serve(self, messages: list[bytes]) -> None:
        cap = self._limits.max_inflight
        for index, msg in enumerate(messages):
            if self._inflight >= cap:
                self._waiting.extend(messages[index:])
                self._pause()
                return
            self._dispatch(msg)
        if self._inflight >= cap:
            self._pause()

    def _dispatch(self, msg: bytes) -> None:
        asks = client_asks(msg)
        reply = self._reply if not asks else partial(self._reply_finished, asks)
        self._inflight += 1
        try:
            handled = self._handler(msg, reply)
        except Exception:
            log.exception("closing DoT client after an unexpected error")
            self._inflight -= 1
            self.close()
            return
        if not handled:
            self._inflight -= 1  # not DNS at all: no answer will come

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _end_input(self) -> None:
        self._input_ended = True
        self._pause()
        self._decoder = FrameDecoder()
        self._close_if_done()

    # -- answers -------------------------------------------------------------------------

    def _reply_finished(self, asks: Asks, answer: bytes) -> None:
        self._reply(finish_answer(answer, asks, self._limits.idle_timeout))

    def _reply(self, answer: bytes) -> None:
        self._inflight -= 1
        if self._transport is None:
            return
        self.last_active = self._loop.time()
        self._outbox.append(frame(answer))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write the answers of this loop iteration as one TLS write."""
        self._flush_scheduled = False
        transport = self._transport
        outbox = self._outbox
        if transport is None or not outbox:
            outbox.clear()
            return
        transport.write(b"".join(outbox) if len(outbox) > 1 else outbox[0])
        outbox.clear()
        if transport.get_write_buffer_size() > self._limits.max_write_buffer:
            log.debug("closing DoT client %s that does not read its answers", self.host)
            self._server.stats.dropped["unread_output"] += 1
            reset(transport)
            return
        if self._waiting and self._inflight < self._limits.max_inflight:
            waiting, self._waiting = self._waiting, []
            self._serve(waiting)
        if (
            self._paused
            and not self._waiting
            and not self._input_ended
            and self._inflight < self._limits.max_inflight
        ):
            self._paused = False
            transport.resume_reading()
            self.frame_started = self._loop.time()
        self._close_if_done()

    def _close_if_done(self) -> None:
        if (
            self._input_ended
            and self._inflight == 0
            and not self._waiting
            and not self._outbox
            and self._transport is not None
        ):
            self._transport.close()

    # -- the server's calls --------------------------------------------------------------

    def expired(self, now: float) -> str | None:
        if (
            not self._paused
            and self._decoder.buffered
            and now - self.frame_started > self._limits.frame_timeout
        ):
            return "slow_frame"
        if self._inflight == 0 and now - self.last_active > self._limits.idle_timeout:
            return "idle"
        return None

    def shutdown(self) -> None:
        """Read no more; close once what was asked is answered."""
        if self._transport is not None:
            self._end_input()

    def close(self) -> None:
        """Close (idle, slow, shutting down); reset a client that left answers unread.

        The TLS transport stops reading a client whose answers pile up (its write
        buffer's high-water mark), so a client that does not read ends up idle, and a
        polite close would wait for it to read first.
        """
        transport = self._transport
        if transport is not None:
            if transport.get_write_buffer_size():
                self._server.stats.dropped["unread_output"] += 1
                reset(transport)
            else:
                transport.close()
            self._transport = None
        self._server.sessions.discard(self)
