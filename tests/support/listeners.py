"""dns2dot with its encrypted listeners (DoT and DoH for clients), and small clients for them.

Why: the listener tests start dns2dot in front of the real unbound upstream with
``--listen-tls`` and ``--listen-https`` on free loopback ports and talk to it over TLS
with clients we control (Python's ssl, h2) beside the real ones (kdig, dig, curl,
dnsperf). Every call is bounded by a deadline.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message

from .net import LOOPBACK, free_port
from .pki import TLS_NAME, CertFiles, Pki
from .proc import Dns2Dot, start_dns2dot


@dataclass
class Listening:
    """A running dns2dot and the ports of its DoT and DoH listeners."""

    proc: Dns2Dot
    tls_port: int
    https_port: int
    cert: Path
    key: Path


def copy_leaf(leaf: CertFiles, directory: Path) -> tuple[Path, Path]:
    """A copy of ``leaf`` that a test may overwrite (rotation) without touching the PKI."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "server.pem", directory / "server.key"
    shutil.copyfile(leaf.cert, cert)
    shutil.copyfile(leaf.key, key)
    return cert, key


def start_listening(
    start: Callable[..., Dns2Dot],
    upstream: str,
    pki: Pki,
    directory: Path,
    *,
    extra: Sequence[str] = (),
    **kw: Any,
) -> Listening:
    """dns2dot (through the ``dns2dot`` fixture's factory ``start``) with both listeners."""
    cert, key = copy_leaf(pki.good, directory)
    tls_port, https_port = free_port(), free_port()
    proc = start(
        upstreams=[upstream],
        extra=[
            "--listen-tls",
            f"{LOOPBACK}:{tls_port}",
            "--listen-https",
            f"{LOOPBACK}:{https_port}",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            *extra,
        ],
        **kw,
    )
    return Listening(proc, tls_port, https_port, cert, key)


@contextmanager
def listening_dns2dot(upstream: str, pki: Pki, directory: Path) -> Iterator[Listening]:
    """:func:`start_listening` for a module's tests; every dns2dot it started is stopped
    on the way out."""
    made: list[Dns2Dot] = []

    def start(**kw: object) -> Dns2Dot:
        d = start_dns2dot(directory / "log", cafile=pki.ca, **kw)  # type: ignore[arg-type]
        made.append(d)
        return d

    try:
        yield start_listening(start, upstream, pki, directory)
    finally:
        for d in made:
            d.stop()


def tls_connect(
    port: int,
    pki: Pki,
    *,
    alpn: Sequence[str] = ("dot",),
    session: ssl.SSLSession | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 5.0,
) -> ssl.SSLSocket:
    """A verified TLS connection to 127.0.0.1:``port`` for the name dns.test."""
    ctx = context or pki.client_context()
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    raw = socket.create_connection((LOOPBACK, port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=TLS_NAME, session=session)
    except BaseException:
        raw.close()
        raise


def recv_exact(sock: socket.socket, count: int, timeout: float = 5.0) -> bytes:
    """``count`` bytes from ``sock`` within ``timeout`` (raises on end of stream)."""
    deadline = time.monotonic() + timeout
    data = b""
    while len(data) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"got {len(data)} of {count} bytes")
        sock.settimeout(remaining)
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"end of stream after {len(data)} of {count} bytes")
        data += chunk
    return data


def dot_exchange(sock: socket.socket, query: dns.message.Message) -> dns.message.Message:
    """One query over an open DoT connection; the answer parsed (dnspython checks it)."""
    wire = query.to_wire()
    sock.sendall(struct.pack("!H", len(wire)) + wire)
    (length,) = struct.unpack("!H", recv_exact(sock, 2))
    return dns.message.from_wire(recv_exact(sock, length))


def peer_certificate(port: int, pki: Pki) -> bytes:
    """The DER certificate the DoT listener presents now."""
    with tls_connect(port, pki) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes ``sock`` (end of stream or reset) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(4096):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False
