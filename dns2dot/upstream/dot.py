"""Pooled DNS over TLS on a :class:`~dns2dot.transport.channel.TlsChannel`."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from dns2dot.protocol.errors import UpstreamClosedError
from dns2dot.transport.channel import TlsChannel
from dns2dot.upstream.connection import DotConnection

if TYPE_CHECKING:
    from dns2dot.upstream.pool import UpstreamServer

log = logging.getLogger("dns2dot.upstream")


class TlsDotConnection(DotConnection):
    """DNS over TLS on a :class:`~dns2dot.transport.channel.TlsChannel`, driven by readiness
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
