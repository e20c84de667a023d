"""What the encrypted listeners (DoT and DoH) share: their clients, counted and swept.

:class:`EncryptedServer` binds nothing itself: it runs a
:class:`~dns2dot.transport.server_tls.ChannelListener` per listening socket (each client
on the memory-BIO server transport once its handshake is done), keeps every
client session, refuses clients beyond ``max_clients``, closes sessions idle for
longer than the idle timeout (and DoT frames that trickle in), and on shutdown asks
each session to stop politely (HTTP/2 GOAWAY) before closing it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Protocol

from tornado.netutil import bind_sockets

from dns2dot.protocol import http2_hpack
from dns2dot.serve.doh import serve_doh
from dns2dot.serve.dot import serve_dot
from dns2dot.serve.stats import Stats
from dns2dot.serve.tcp import PoolSession, TcpLimits
from dns2dot.transport.server_tls import (
    HANDSHAKE_TIMEOUT,
    Certificates,
    ChannelListener,
)
from dns2dot.transport.tls_server_channel import TlsServerTransport

log = logging.getLogger("dns2dot.tls")

SWEEP_INTERVAL = 1.0
Handler = Callable[[bytes, Callable[[bytes], None]], bool]


class Session(Protocol):
    """One encrypted client connection, as the server sees it."""

    def expired(self, now: float) -> str | None: ...

    def shutdown(self) -> None: ...

    def close(self) -> None: ...


class EncryptedServer:
    """The clients of one encrypted listener kind (``dot`` or ``doh``).

    ``serve(server, transport, host)`` starts a session on a server TLS transport
    whose handshake is done.
    """

    def __init__(
        self,
        kind: str,
        context: Callable[[], ssl.SSLContext],
        serve: Callable[[EncryptedServer, TlsServerTransport, str], object],
        limits: TcpLimits,
        stats: Stats,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.kind = kind
        self.limits = limits
        self.stats = stats
        self.sessions: set[Session] = set()
        self._context = context
        self._serve = serve
        self._handshake_timeout = handshake_timeout
        self._listeners: list[ChannelListener] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._full_logged = False
        self.draining = False

    def add_sockets(self, sockets: list[socket.socket]) -> None:
        serve = self._serve
        listener = ChannelListener(
            sockets,
            self._context,
            lambda transport, host: serve(self, transport, host),
            self._admit,
            self._handshake_timeout,
        )
        listener.start()
        self._listeners.append(listener)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    def _admit(self) -> bool:
        """Room for one more client? Handshakes under way count: they hold a socket too."""
        handshaking = sum(listener.handshaking for listener in self._listeners)
        if len(self.sessions) + handshaking < self.limits.max_clients:
            self._full_logged = False
            return True
        if not self._full_logged:
            log.warning("%d %s clients connected: refusing more", len(self.sessions), self.kind)
            self._full_logged = True
        self.stats.dropped["max_clients"] += 1
        return False

    def stop_accepting(self) -> None:
        """Close the listening sockets and ask every client to finish (GOAWAY)."""
        self.draining = True
        for listener in self._listeners:
            listener.stop_accepting()
        for session in list(self.sessions):
            session.shutdown()

    def stop(self) -> None:
        """Stop accepting and close every client connection."""
        self.draining = True
        for listener in self._listeners:
            listener.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for session in list(self.sessions):
            session.close()

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for session in list(self.sessions):
            reason = session.expired(now)
            if reason is None:
                continue
            if isinstance(session, PoolSession):
                session.close(reason)  # counts the reason itself
            else:
                self.stats.dropped[reason] += 1
                session.close()
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)


class Address(Protocol):
    """A listen address (dns2dot.config.ListenAddress, which this layer cannot import)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class EncryptedListeners:
    """The DoT and DoH listeners of one process: certificates, sockets and servers.

    ``handler(host, transport)`` says how a client's queries are answered (resolved,
    or refused by ``--allow``); ``bind_error(address, exc, option)`` is the exception
    to raise for an address that cannot be bound.
    """

    def __init__(
        self,
        *,
        dot: Sequence[Address],
        doh: Sequence[Address],
        https_path: str,
        cert: str,
        key: str,
        limits: TcpLimits,
        stats: Stats,
        handler: Callable[[str, str], Handler],
        bind_error: Callable[[Address, OSError, str], Exception],
        reuse_port: bool = False,
    ) -> None:
        self.certificates = Certificates(cert, key)  # ConfigError (exit 2) for a bad pair
        self.bound: list[tuple[str, str, int, list[socket.socket]]] = []
        try:
            for kind, option, addresses in (
                ("dot", "--listen-tls", dot),
                ("doh", "--listen-https", doh),
            ):
                for address in addresses:
                    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
                    try:
                        sockets = bind_sockets(
                            address.port,
                            address.host,
                            family=family,
                            backlog=1024,
                            reuse_port=reuse_port,
                        )
                    except OSError as exc:
                        raise bind_error(address, exc, option) from None
                    port = sockets[0].getsockname()[1]
                    self.bound.append((kind, address.host, port, sockets))
        except BaseException:
            self._close_sockets()
            raise
        if doh:
            http2_hpack.prepare()  # not on the first request's time
        certificates = self.certificates
        self.servers = {
            "dot": EncryptedServer(
                "dot",
                lambda: certificates.dot,
                lambda server, transport, host: serve_dot(server, handler(host, "dot"), transport),
                limits,
                stats,
            ),
            "doh": EncryptedServer(
                "doh",
                lambda: certificates.https,
                lambda server, transport, host: serve_doh(
                    server, handler(host, "doh"), transport, https_path, host
                ),
                limits,
                stats,
            ),
        }

    def addresses(self) -> list[tuple[str, str, int]]:
        """(kind, host, port) of every listener, ports resolved."""
        return [(kind, host, port) for kind, host, port, _ in self.bound]

    def start(self) -> None:
        for kind, _, _, sockets in self.bound:
            self.servers[kind].add_sockets(sockets)
        self.certificates.watch()

    @property
    def clients(self) -> int:
        return sum(len(server.sessions) for server in self.servers.values())

    def stop_accepting(self) -> None:
        for server in self.servers.values():
            server.stop_accepting()

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.certificates.stop()
        self._close_sockets()

    def _close_sockets(self) -> None:
        for _, _, _, sockets in self.bound:
            for sock in sockets:
                sock.close()
