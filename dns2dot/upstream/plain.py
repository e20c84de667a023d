"""Cleartext DNS over TCP upstreams (``plain://``), only ever for a forwarding rule
that names one: the DoT connection over a
:class:`~dns2dot.transport.channel.PlainChannel`."""

from __future__ import annotations

from dns2dot.transport.channel import Channel
from dns2dot.upstream.dot import DotConnection


class PlainDotConnection(DotConnection):
    """DNS over plain TCP, pipelined like DoT (RFC 7766)."""

    async def _open(self) -> Channel:
        return await self.server.open_plain_channel()
