"""Pooled DNS over TLS (RFC 7858) on the loop's readiness callbacks.

:class:`DotConnection` joins the sans-IO core
(:class:`~dns2dot.protocol.upstream_stream.UpstreamStream`: IDs, the in-flight map,
matching, the outbox) to a :class:`~dns2dot.transport.channel.Channel` through the
shared I/O shell (:class:`~dns2dot.upstream.connection.ChannelConnection`): bytes read
go into the core, its events go to the pool, its outgoing bytes go to the channel.
:class:`TlsDotConnection` opens a TLS channel; ``PlainDotConnection``
(dns2dot/upstream/plain.py) a plain one. See docs/ARCHITECTURE.md, "upstream".
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dns2dot.protocol.errors import FramingError
from dns2dot.protocol.upstream_stream import UNKNOWN_ID, Unmatched, UpstreamStream
from dns2dot.transport.channel import Channel
from dns2dot.upstream.connection import OPEN, ChannelConnection
from dns2dot.upstream.exchange import Exchange

if TYPE_CHECKING:
    from dns2dot.upstream.pool import UpstreamServer

log = logging.getLogger("dns2dot.upstream")


class DotConnection(ChannelConnection):
    """DNS over a stream: length-prefixed messages, matched by DNS ID and question.

    Queries sent while CONNECTING wait in the core's outbox and go out in one piece
    once OPEN; queries sent in one loop iteration are written together. Every answer
    is handed on from the readiness callback that read it: one ``recv`` takes all the
    socket holds (see :class:`~dns2dot.transport.channel.TlsChannel`).
    """

    def __init__(self, server: UpstreamServer) -> None:
        self._core: UpstreamStream[Exchange] = UpstreamStream()
        self._flush_scheduled = False
        super().__init__(server)
        self._pending = self._core.in_flight  # the base's bookkeeping sees the core's map

    def send(self, exchange: Exchange) -> None:
        now = self._loop.time()
        uid = self._core.send(exchange, now)
        exchange.legs.append((self, uid))
        self.queries += 1
        self.last_active = now
        if self.state is OPEN and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def idle_since(self, now: float) -> float:
        return 0.0 if self._core.has_outgoing else super().idle_since(now)

    def _drop_queued(self) -> None:
        self._core.discard_outgoing()

    def _started(self, channel: Channel) -> None:
        self._enter(OPEN)
        self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.state is OPEN:
            self._write(self._core.data_to_send())

    def _received(self, data: bytes) -> bool:
        """Hand on the answers in ``data``; False once the stream is broken."""
        for event in self._core.data_received(data):
            if isinstance(event, tuple):  # Answered
                uid, exchange, sent_at, answer = event
                self._answered(uid, exchange, sent_at, answer)
            elif isinstance(event, Unmatched):
                if event.reason == UNKNOWN_ID:
                    log.debug("%s: answer for unknown ID %d ignored", self.server, event.uid)
                else:
                    log.warning("%s: %s; ignored", self.server, event.reason)
            else:
                if isinstance(event.error, FramingError):
                    log.warning("%s: bad framing from upstream, reconnecting", self.server)
                else:
                    log.warning("%s: malformed answer (%s), reconnecting", self.server, event.error)
                return False
        return True


class TlsDotConnection(DotConnection):
    """DNS over TLS on a :class:`~dns2dot.transport.channel.TlsChannel`."""

    async def _open(self) -> Channel:
        return await self.server.open_channel()
