"""The DoT listener is a pool session on a TLS transport: half-close and client policy.

Why: a DoT client is served by the same client-stream code as a TCP client in pool mode
(docs/ARCHITECTURE.md, "transport"; README "How it behaves"), so what holds for TCP
holds here: a client that ends its input (close_notify, end of stream, or both) after
its queries still gets every answer, as a TCP half-close does; a client whose frames
keep failing is closed; a client that takes none of its answers is reset within the
stall bound, long before the idle timeout. A real dns2dot in front of unbound, and a
TLS client on memory BIOs so the test controls every byte and the raw socket.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import time
from collections.abc import Iterator

import dns.message
import pytest
from support.listeners import (
    Listening,
    dot_exchange,
    listening_dns2dot,
    tls_connect,
)
from support.net import LOOPBACK, a_addresses, frame, make_query, send_for, wait_peer_closed
from support.pki import TLS_NAME, Pki
from support.unbound import UnboundUpstream, n_address

pytestmark = pytest.mark.integration

#: Issue 13's bound: a hostile client is closed within this many seconds.
CLOSE_BOUND = 5.0

_rng = random.Random(7858)


@pytest.fixture(scope="module")
def listening(
    unbound: UnboundUpstream, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Listening]:
    """dns2dot with its default idle timeout (10 s, longer than every bound here)."""
    directory = tmp_path_factory.mktemp("listen-tls-stream")
    with listening_dns2dot(unbound.spec, pki, directory) as listening:
        yield listening


class BioClient:
    """A DoT client on memory BIOs over a plain socket: the test sends each byte."""

    def __init__(self, port: int, pki: Pki, rcvbuf: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect((LOOPBACK, port))
        ctx = pki.client_context()
        ctx.set_alpn_protocols(["dot"])
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=TLS_NAME)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                data = self.sock.recv(65536)
                assert data, "closed during the handshake"
                self.incoming.write(data)
        self.sock.sendall(self.outgoing.read())

    def encrypt(self, plain: bytes) -> bytes:
        self.tls.write(plain)
        return self.outgoing.read()

    def close_notify(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        self.sock.sendall(self.outgoing.read())

    def read_to_end(self, timeout: float) -> tuple[bytes, bool]:
        """Plaintext until the server ends the connection; whether it said close_notify."""
        deadline = time.monotonic() + timeout
        plain = bytearray()
        notified = False
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                self.incoming.write_eof()
            else:
                self.incoming.write(data)
            while True:
                try:
                    chunk = self.tls.read(65536)
                except (ssl.SSLWantReadError, ssl.SSLEOFError):
                    break
                except ssl.SSLZeroReturnError:
                    notified = True
                    break
                if not chunk:  # what SSLObject.read returns for close_notify
                    notified = True
                    break
                plain += chunk
            if not data:
                break
        return bytes(plain), notified

    def close(self) -> None:
        self.sock.close()


def _answers(plain: bytes) -> list[dns.message.Message]:
    out = []
    while len(plain) >= 2:
        n = int.from_bytes(plain[:2], "big")
        assert len(plain) >= 2 + n, "a truncated answer"
        out.append(dns.message.from_wire(plain[2 : 2 + n]))
        plain = plain[2 + n :]
    assert not plain
    return out


@pytest.mark.parametrize("how", ["close_notify", "shut_wr", "close_notify_and_shut_wr"])
def test_half_close_gets_every_answer(listening: Listening, pki: Pki, how: str) -> None:
    """Queries, then the end of the client's input: every answer, then the close."""
    count = 50
    client = BioClient(listening.tls_port, pki)
    try:
        wire = b"".join(
            frame(make_query(f"n{i}.example.test", qid=i).to_wire()) for i in range(count)
        )
        client.sock.sendall(client.encrypt(wire))
        if how != "shut_wr":
            client.close_notify()
        if how != "close_notify":
            client.sock.shutdown(socket.SHUT_WR)
        plain, notified = client.read_to_end(10.0)
    finally:
        client.close()
    answers = _answers(plain)
    assert {a.id: a_addresses(a) for a in answers} == {i: {n_address(i)} for i in range(count)}
    assert notified, "the server ended without close_notify"


def test_failing_frames_close_the_client(listening: Listening, pki: Pki) -> None:
    """Random frames (never a query to answer), never reading: closed within the bound,
    as a TCP client would be; another client is served."""
    client = BioClient(listening.tls_port, pki)
    try:
        start = time.monotonic()
        junk = b"".join(frame(_rng.randbytes(1024)) for _ in range(64))
        send_for(client.sock, client.encrypt(junk), 2.0)
        assert wait_peer_closed(client.sock, CLOSE_BOUND - (time.monotonic() - start)), (
            f"a DoT client sending garbage frames still connected after {CLOSE_BOUND} s"
        )
    finally:
        client.close()
    with tls_connect(listening.tls_port, pki) as good:
        assert a_addresses(dot_exchange(good, make_query("a.example.test"))) == {"192.0.2.10"}


def test_a_query_flood_that_never_reads_is_reset(listening: Listening, pki: Pki) -> None:
    """Queries by the thousand, no answer read: reset within the stall bound, well
    before the idle timeout (10 s); another client is served meanwhile."""
    client = BioClient(listening.tls_port, pki, rcvbuf=4096)
    batch = b"".join(
        frame(make_query(f"n{i % 50}.example.test", qid=i).to_wire()) for i in range(10_000)
    )
    try:
        pending = client.encrypt(batch)
        start = time.monotonic()
        closed = False
        while not closed and time.monotonic() - start < CLOSE_BOUND:
            pending = pending[send_for(client.sock, pending, 0.3) :] or client.encrypt(batch)
            closed = wait_peer_closed(client.sock, 0.2)
        with tls_connect(listening.tls_port, pki) as good:
            assert a_addresses(dot_exchange(good, make_query("a.example.test"))) == {"192.0.2.10"}
        assert closed, f"a DoT client that never reads still connected after {CLOSE_BOUND} s"
    finally:
        client.close()
