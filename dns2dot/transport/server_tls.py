"""The server side of TLS, for the encrypted listeners (DoT, RFC 7858; DoH, RFC 8484).

:class:`Certificates` loads ``--tls-cert`` and ``--tls-key`` into server contexts
(TLS 1.2 or newer, the standard library's cipher choice, session tickets on) and loads
them again on SIGHUP or when the files change on disk; a broken new pair is reported
and the contexts in use are kept. The listeners accept clients on tornado's accept
handler and wrap every socket with the context current at that moment, so a rotation
never touches a connection already made, and a handshake that is not done within
``handshake_timeout`` (a client that never finishes, or trickles its ClientHello) is
abandoned. :class:`ChannelListener` hands each client (DoT and DoH alike) a memory-BIO
:class:`~dns2dot.transport.tls_server_channel.TlsServerTransport` once its handshake is
done. See docs/ARCHITECTURE.md, "transport".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from tornado.netutil import add_accept_handler

from dns2dot.protocol.errors import ConfigError
from dns2dot.transport.tls_server_channel import TlsServerTransport

log = logging.getLogger("dns2dot.tls")

ALPN_DOT = ("dot",)  # RFC 7858 §3.2, IANA ALPN registry
ALPN_DOH = ("h2", "http/1.1")
HANDSHAKE_TIMEOUT = 3.0  # seconds a client may take to complete its TLS handshake
#: The kernel's send buffer for a client connection, as for TCP clients (see
#: dns2dot/serve/tcp.py): small enough that a client that does not read shows at once.
CLIENT_SNDBUF = 64 * 1024
WATCH_INTERVAL = 2.0  # seconds between looks at the certificate files


@dataclass(frozen=True)
class _FileState:
    """What tells a changed file: inode, size and modification time of both files."""

    cert: tuple[int, int, int]
    key: tuple[int, int, int]


def _file_state(cert: str, key: str) -> _FileState | None:
    try:
        a, b = os.stat(cert), os.stat(key)
    except OSError:
        return None
    return _FileState((a.st_ino, a.st_size, a.st_mtime_ns), (b.st_ino, b.st_size, b.st_mtime_ns))


def server_context(cert: str, key: str, alpn: tuple[str, ...]) -> ssl.SSLContext:
    """A server context presenting ``cert`` (a PEM chain) with ``key``.

    Raises :class:`ConfigError` naming ``--tls-cert`` or ``--tls-key``: a file that is
    missing or unreadable, not PEM, or a key that does not match the certificate.
    """
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not os.path.isfile(path):
            raise ConfigError(f"{option}: {path}: no such file")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"{option}: {path}: not readable")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(list(alpn))
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"--tls-key: {key}: does not match --tls-cert {cert}") from None
        # OpenSSL reads the certificate first; which file it stopped at is not in the error.
        if not _has_certificate(cert):
            raise ConfigError(f"--tls-cert: {cert}: holds no PEM certificate") from None
        raise ConfigError(f"--tls-key: {key}: holds no usable PEM private key") from None
    except OSError as exc:
        raise ConfigError(f"--tls-cert: {cert}: {exc.strerror or exc}") from None
    return context


def _has_certificate(path: str) -> bool:
    """Whether ``path`` holds a certificate OpenSSL can read."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError):
        return False
    return True


class Certificates:
    """The server contexts of the encrypted listeners, kept current with the files.

    ``dot`` offers ALPN ``dot``, ``https`` offers ``h2`` and ``http/1.1``. Both are
    replaced together by :meth:`reload`. Write new files the way certbot and
    cert-manager do (a new file renamed over the old, or a symlink swapped), so that
    no reload sees one half written.
    """

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self.dot, self.https = self._load()
        self._seen = _file_state(cert, key)
        self._watcher: asyncio.TimerHandle | None = None
        self.reloads = 0  # successful reloads, for the logs and the tests

    def _load(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        # Fresh contexts each time: a pair that fails to load leaves the ones in use
        # untouched. OpenSSL checks that the key matches the certificate.
        return (
            server_context(self.cert, self.key, ALPN_DOT),
            server_context(self.cert, self.key, ALPN_DOH),
        )

    def reload(self) -> bool:
        """Read the files again; on failure log why and keep the contexts in use."""
        self._seen = _file_state(self.cert, self.key)
        try:
            self.dot, self.https = self._load()
        except ConfigError as exc:
            log.error("TLS certificate reload failed, keeping the one in use: %s", exc)
            return False
        self.reloads += 1
        log.info("loaded the TLS certificate again from %s", self.cert)
        return True

    def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Reload whenever the files change on disk (certbot, cert-manager), polled."""
        loop = asyncio.get_running_loop()

        def look() -> None:
            state = _file_state(self.cert, self.key)
            if state is not None and state != self._seen:
                self.reload()
            self._watcher = loop.call_later(interval, look)

        self._watcher = loop.call_later(interval, look)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None


class ChannelListener:
    """Accepts clients and hands each a :class:`TlsServerTransport` once its handshake
    is done, for a session that runs on readiness callbacks (DoT, DoH).

    ``context`` is asked for the context at every accept (certificates rotate);
    ``admit`` is asked before the handshake whether there is room for one more client;
    ``serve(transport, host)`` starts the session. A failed or late handshake closes
    that client only.
    """

    def __init__(
        self,
        sockets: list[socket.socket],
        context: Callable[[], ssl.SSLContext],
        serve: Callable[[TlsServerTransport, str], object],
        admit: Callable[[], bool],
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.sockets = sockets
        self._context = context
        self._serve = serve
        self._admit = admit
        self._handshake_timeout = handshake_timeout
        self._removers: list[Callable[[], None]] = []
        self._handshakes: set[TlsServerTransport] = set()

    @property
    def handshaking(self) -> int:
        """Clients accepted whose handshake is not done yet."""
        return len(self._handshakes)

    def start(self) -> None:
        for sock in self.sockets:
            self._removers.append(add_accept_handler(sock, self._accepted))

    def _accepted(self, sock: socket.socket, address: object) -> None:
        if not self._admit():
            sock.close()
            return
        host = address[0] if isinstance(address, tuple) else str(address)
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_SNDBUF)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            transport = TlsServerTransport(sock, self._context(), asyncio.get_running_loop())
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS client %s: %s", host, exc)
            sock.close()
            return
        self._handshakes.add(transport)
        transport.handshake(
            self._handshake_timeout,
            lambda: self._done(transport, host),
            lambda why: self._failed(transport, host, why),
        )

    def _done(self, transport: TlsServerTransport, host: str) -> None:
        self._handshakes.discard(transport)
        try:
            self._serve(transport, host)
        except Exception:  # a bug in a session's start: that client only
            log.exception("TLS client %s: closed after an unexpected error", host)
            transport.reset()

    def _failed(self, transport: TlsServerTransport, host: str, why: str) -> None:
        self._handshakes.discard(transport)
        log.debug("TLS client %s: handshake failed: %s", host, why)

    def stop_accepting(self) -> None:
        """Close the listening sockets; clients connected are left alone."""
        for remove in self._removers:
            remove()
        self._removers.clear()
        for sock in self.sockets:
            sock.close()

    def stop(self) -> None:
        self.stop_accepting()
        for transport in list(self._handshakes):
            transport.close(notify=False)
        self._handshakes.clear()
