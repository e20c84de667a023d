"""The UDP listener: the "UDP shim" between datagrams and the TLS streams upstream.

Upstream is always a stream, so a UDP query just joins the pipelined upstream
connection (the length prefix is added there); its answer comes back unframed, and is
truncated with TC=1 when it is larger than the client accepts (RFC 1035 §4.2.1,
RFC 6891 §6.2.5), so the client retries over TCP.

It is a plain asyncio datagram protocol on tornado's loop: no coroutine per datagram.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from dns2dot.policy.admission import Admission, Verdict
from dns2dot.protocol import wire
from dns2dot.serve.resolver import Resolver, turn_away

log = logging.getLogger("dns2dot.udp")

SOCKET_BUFFER = 4 << 20  # absorbs bursts; the kernel caps it at net.core.rmem_max


class UdpShim(asyncio.DatagramProtocol):
    """Receives queries, answers each exactly once (or drops what is not DNS)."""

    def __init__(self, resolver: Resolver, admission: Admission) -> None:
        self.resolver = resolver
        self.admission = admission
        self.transport: asyncio.DatagramTransport | None = None
        # While shutting down, new queries are refused so clients move on at once.
        self.draining = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        transport = self.transport
        if transport is None:
            return
        verdict = self.admission.verdict(addr[0], datagram=True)
        if self.draining and verdict is Verdict.SERVE:
            verdict = Verdict.REFUSE
            self.resolver.stats.refused["shutdown"] += 1
        elif verdict is not Verdict.SERVE:
            self.resolver.turned_away(verdict)
        if verdict is not Verdict.SERVE:
            response = turn_away(data, verdict)
            if response is not None:
                transport.sendto(response, addr)
            return

        def reply(answer: bytes) -> None:
            if not transport.is_closing():
                transport.sendto(wire.fit_udp(answer, data), addr)

        self.resolver.handle(data, reply, "udp")

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for clients that went away: nothing to answer to.
        log.debug("UDP error: %s", exc)


def udp_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound, non-blocking UDP socket (``SO_REUSEPORT`` for worker processes)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def start_udp(
    resolver: Resolver, admission: Admission, sock: socket.socket
) -> tuple[asyncio.DatagramTransport, UdpShim]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: UdpShim(resolver, admission), sock=sock
    )
    return transport, protocol
