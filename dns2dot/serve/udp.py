"""The UDP listener: the "UDP shim" between datagrams and the TLS streams upstream.

Upstream is always a stream, so a UDP query just joins the pipelined upstream
connection (the length prefix is added there); its answer comes back unframed, and is
truncated with TC=1 when it is larger than the client accepts (RFC 1035 §4.2.1,
RFC 6891 §6.2.5), so the client retries over TCP.

On Linux the listener is :class:`BatchedUdp`: datagrams are read ``recvmmsg`` at a
time on the loop's readiness callback, cache hits are answered in the same pass
without a callback each, and every answer ready in one loop turn leaves in one
``sendmmsg``, from the address its query was sent to. Elsewhere (or with
``DNS2DOT_UDP_BATCH=off``) :class:`UdpShim`, a plain asyncio datagram protocol, serves.
Neither runs a coroutine per datagram.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from functools import partial
from typing import Any, Protocol

from dns2dot.policy.admission import REFUSE, SERVE, Admission, Verdict
from dns2dot.protocol import wire
from dns2dot.serve.resolver import Resolver, turn_away
from dns2dot.transport import datagram

log = logging.getLogger("dns2dot.udp")

SOCKET_BUFFER = 4 << 20  # absorbs bursts; the kernel caps it at net.core.rmem_max
READS_PER_WAKE = 8  # recvmmsg calls per readiness callback, so other work gets a turn
_KNOWN_PEERS = 65536  # bound of the per-address admission memo
_WILDCARDS = frozenset({"0.0.0.0", "::"})


class UdpListener(Protocol):
    """What the proxy holds of a UDP listener, whichever path serves it."""

    draining: bool

    def close(self) -> None: ...


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
        if self.draining and verdict is SERVE:
            verdict = REFUSE
            self.resolver.stats.refused["shutdown"] += 1
        elif verdict is not SERVE:
            self.resolver.turned_away(verdict)
        if verdict is not SERVE:
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


class _ShimListener:
    """The asyncio path behind :class:`UdpListener`."""

    def __init__(self, transport: asyncio.DatagramTransport, shim: UdpShim) -> None:
        self.transport = transport
        self.shim = shim

    @property
    def draining(self) -> bool:
        return self.shim.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.shim.draining = value

    def close(self) -> None:
        self.transport.close()


class BatchedUdp:
    """The Linux listener: reads and answers datagrams in batches (see the module).

    Each query is answered once: a cache hit, a turned-away client or an error right
    away, into the send arena; the rest through the resolver, whose ``reply`` queues
    the answer and asks for one flush per loop turn.
    """

    def __init__(
        self, resolver: Resolver, admission: Admission, io: datagram.DatagramSocket
    ) -> None:
        self.resolver = resolver
        self.admission = admission
        self.io = io
        self.draining = False
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._flush_due = False  # a flush is scheduled for the end of this loop turn
        self._waiting_writable = False
        self._reading = False
        # Admission by the sender's raw address (the access list alone decides, so the
        # verdict is the same every time): no text address per datagram.
        self._verdicts: dict[bytes, Verdict] = {}
        self._access = admission.access
        self._key = slice(8, 24) if io.family == socket.AF_INET6 else slice(4, 8)
        self._loop.add_reader(io.fd, self._readable)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self.io.fd)
        if self._waiting_writable:
            self._loop.remove_writer(self.io.fd)
        self.io.sock.close()

    def _readable(self) -> None:
        io = self.io
        resolver = self.resolver
        admission = self.admission
        if admission.access is not self._access or admission.limiter is not None:
            self._verdicts.clear()  # reloaded, or the rate limit needs every datagram
            self._access = admission.access
        memo = self._verdicts if admission.limiter is None else None
        key = self._key
        known_answer = resolver.known_answer
        handle_new = resolver.handle_new
        fit_udp = wire.fit_udp
        small = wire.MIN_UDP_PAYLOAD  # no larger answer can need truncating
        put = io.queue  # into the send arena; self._queue when it is full
        queue = self._queue
        serve = SERVE
        time = self._loop.time
        self._reading = True
        try:
            for _ in range(READS_PER_WAKE):
                try:
                    batch = io.receive()
                except OSError as exc:
                    log.debug("UDP receive error: %s", exc)
                    return
                now = time()
                draining = self.draining
                for data, name, control in batch:
                    verdict = memo.get(name[key]) if memo is not None else None
                    if verdict is None:
                        verdict = self._verdict(name)
                    if verdict is serve and not draining:
                        answer = known_answer(data, "udp", now)
                        if answer is not None:
                            if len(answer) > small:
                                answer = fit_udp(answer, data)
                            if not put(answer, name, control):
                                queue(answer, name, control)
                        else:
                            reply = partial(self._reply, data, name, control)
                            handle_new(data, reply, "udp")
                        continue
                    if verdict is serve:
                        verdict = REFUSE
                        resolver.stats.refused["shutdown"] += 1
                    else:
                        resolver.turned_away(verdict)
                    response = turn_away(data, verdict)
                    if response is not None:
                        queue(response, name, control)
                self._flush()
                if len(batch) < io.batch:
                    break
        finally:
            self._reading = False

    def _verdict(self, name: bytes) -> Verdict:
        """Admission for the sender in ``name`` (a sockaddr), remembered when only the
        access list decides."""
        io = self.io
        raw = name[self._key]
        try:
            host = socket.inet_ntop(io.family, raw)
        except (OSError, ValueError):
            return REFUSE
        verdict = self.admission.verdict(host, datagram=True)
        if self.admission.limiter is None:
            if len(self._verdicts) >= _KNOWN_PEERS:
                self._verdicts.clear()
            self._verdicts[raw] = verdict
        return verdict

    def _reply(self, data: bytes, name: bytes, control: bytes, answer: bytes) -> None:
        """The resolver's ``reply`` for a query it did not answer from the known hits."""
        if self.closed:
            return
        self._queue(wire.fit_udp(answer, data), name, control)
        if not self._reading and not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _queue(self, answer: bytes, name: bytes, control: bytes) -> None:
        io = self.io
        if io.queue(answer, name, control):
            return
        self._flush()
        if not io.queue(answer, name, control):
            # The socket's buffer is full and the arena too: like a full interface queue.
            log.debug("UDP send buffer full: an answer is dropped")

    def _flush(self) -> None:
        self._flush_due = False
        if self.closed or self._waiting_writable:
            return
        if not self.io.flush():
            self._waiting_writable = True
            self._loop.add_writer(self.io.fd, self._writable)

    def _writable(self) -> None:
        self._waiting_writable = False
        self._loop.remove_writer(self.io.fd)
        self._flush()


async def start_udp(
    resolver: Resolver, admission: Admission, sock: socket.socket, host: str = ""
) -> UdpListener:
    """Serve UDP on ``sock``: batched where the platform allows, else asyncio's way.

    ``host`` is the listen address: on a wildcard one, answers leave from the address
    each query was sent to.
    """
    if datagram.available():
        io = datagram.DatagramSocket(sock, pktinfo=host in _WILDCARDS)
        log.debug("udp %s: recvmmsg/sendmmsg, %d datagrams a call", host, io.batch)
        return BatchedUdp(resolver, admission, io)
    log.debug("udp %s: asyncio datagram endpoint", host)
    loop = asyncio.get_running_loop()
    transport, shim = await loop.create_datagram_endpoint(
        lambda: UdpShim(resolver, admission), sock=sock
    )
    return _ShimListener(transport, shim)
