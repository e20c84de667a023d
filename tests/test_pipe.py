"""``--mode pipe`` as a process: byte for byte, bounded, and resuming TLS sessions.

The splice itself is tested on socket pairs (test_splice.py); here a real dns2dot in
pipe mode forwards to unbound over verified TLS. What a user of the socat drop-in
relies on: the bytes that come back are exactly unbound's; a client that half-closes
after its queries still gets every answer, then end of stream; a client that never reads
holds nothing back from the others and is closed once idle; an idle client is closed;
and each new client's TLS connection resumes the session (RFC 8310 §5, RFC 7858 §3.4),
which socat does not do.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
from support.net import (
    LOOPBACK,
    TcpClient,
    a_addresses,
    frame,
    free_port,
    make_query,
    send_for,
    tcp_query,
    udp_query,
    unread_client,
    wait_peer_closed,
)
from support.pki import TLS_NAME, Pki
from support.proc import Dns2Dot
from support.scrape import wait_for_metrics
from support.unbound import BIG_TXT, UnboundUpstream, n_address

pytestmark = pytest.mark.integration

Factory = Callable[..., Dns2Dot]
HANDSHAKES = "dns2dot_tls_handshakes_total"
IDLE_TIMEOUT = 3


def assert_served(d: Dns2Dot, i: int) -> None:
    """A fresh client is answered correctly over TCP (its own pipe) and over UDP."""
    assert d.alive, d.stderr()
    for ask in (tcp_query, udp_query):
        r = ask(d.port, make_query(f"n{i}.example.test."), timeout=5)
        assert r.rcode() == dns.rcode.NOERROR and a_addresses(r) == {n_address(i)}, r


def test_answers_are_the_upstreams_bytes(
    dns2dot: Factory, unbound: UnboundUpstream, pki: Pki
) -> None:
    """Four queries on one connection, one with EDNS: each answer is what unbound sends
    for the same query bytes over its own TLS connection, byte for byte where unbound
    has one way to say it (its round-robin may reorder the big TXT set's 40 records, so
    that one is compared record set by record set, and by size)."""
    d = dns2dot(upstreams=[unbound.spec], mode="pipe")
    queries = [
        make_query("n1.example.test.", qid=0x1111),
        make_query("n2.example.test.", "AAAA", qid=0x2222),
        make_query("nothere.example.test.", qid=0x3333),
        make_query("big.example.test.", "TXT", edns=0, payload=4096, qid=0x4444),
    ]
    with TcpClient(d.port) as client:
        client.send(b"".join(frame(q.to_wire()) for q in queries))
        through_pipe = client.recv_frames(len(queries), timeout=10)
    direct = []
    context = pki.client_context()
    for q in queries:
        with (
            socket.create_connection((LOOPBACK, unbound.port), timeout=5) as sock,
            context.wrap_socket(sock, server_hostname=TLS_NAME) as tls_sock,
        ):
            tls_sock.sendall(frame(q.to_wire()))
            size = int.from_bytes(_recv_exactly(tls_sock, 2), "big")
            direct.append(_recv_exactly(tls_sock, size))
    assert through_pipe[:3] == direct[:3]
    big, big_direct = through_pipe[3], direct[3]
    assert len(big) == len(big_direct)
    assert dns.message.from_wire(big) == dns.message.from_wire(big_direct)
    assert all(text.encode() in big for text in BIG_TXT)  # ~2.9 kB, whole


def test_client_that_half_closes_gets_its_answers_then_end_of_stream(
    dns2dot: Factory, unbound: UnboundUpstream
) -> None:
    """socat's behaviour, which scripts rely on: queries, then ``shutdown(SHUT_WR)``,
    then read until the server closes. Every answer arrives, and so does the end of
    stream (the splice lingers only while the upstream talks)."""
    d = dns2dot(upstreams=[unbound.spec], mode="pipe")
    queries = [make_query(f"n{i}.example.test.", qid=0x5000 + i) for i in range(1, 6)]
    with TcpClient(d.port) as client:
        client.send(b"".join(frame(q.to_wire()) for q in queries))
        client.sock.shutdown(socket.SHUT_WR)
        answers = [dns.message.from_wire(a) for a in client.recv_frames(10, timeout=10)]
        assert client.closed_by_peer, "no end of stream after the answers"
    assert [a.id for a in answers] == [q.id for q in queries]
    for i, answer in enumerate(answers, start=1):
        assert a_addresses(answer) == {n_address(i)}, answer
    assert_served(d, 7)  # and the process goes on serving


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "unbound closed early"
        data += chunk
    return data


def test_client_that_never_reads_is_closed_and_holds_nobody_back(
    dns2dot: Factory, unbound: UnboundUpstream
) -> None:
    """20,000 queries for a ~2.9 kB answer (58 MB of answers) from a client that never
    reads: its pipe stops reading the upstream rather than buffering (dns2dot grows by
    far less than the answers), other clients are served meanwhile, and once idle for
    --idle-timeout it is closed."""
    d = dns2dot(upstreams=[unbound.spec], mode="pipe", extra=["--idle-timeout", str(IDLE_TIMEOUT)])
    assert_served(d, 6)
    rss_before = rss_kib(d.proc.pid)
    flood = b"".join(
        frame(make_query("big.example.test.", "TXT", qid=i % 65536).to_wire()) for i in range(20000)
    )
    with unread_client(d.port) as sock:
        send_for(sock, flood, 5)
        assert_served(d, 7)
        grown = rss_kib(d.proc.pid) - rss_before
        assert grown < 16 * 1024, f"dns2dot grew by {grown} KiB: answers were buffered"
        assert wait_peer_closed(sock, IDLE_TIMEOUT + 8), "a client that never reads stayed"
    assert_served(d, 8)


def rss_kib(pid: int) -> int:
    """VmRSS of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_idle_client_is_closed(dns2dot: Factory, unbound: UnboundUpstream) -> None:
    """A client that connects and sends nothing is closed after --idle-timeout, as in
    pool mode (RFC 7766 §6.2.3); one that keeps asking is not."""
    d = dns2dot(upstreams=[unbound.spec], mode="pipe", extra=["--idle-timeout", str(IDLE_TIMEOUT)])
    with TcpClient(d.port) as idle, TcpClient(d.port) as busy:
        deadline = time.monotonic() + IDLE_TIMEOUT + 3  # past the timeout and a sweep
        i = 0
        while time.monotonic() < deadline:  # a query every half second: never idle
            busy.send_query(make_query(f"n{i}.example.test.", qid=i))
            r = busy.recv_message(3)
            assert r is not None and a_addresses(r) == {n_address(i)}, f"query {i}"
            time.sleep(0.5)
            i += 1
        assert idle.wait_closed(5), "the idle client was never closed"
        busy.send_query(make_query("n99.example.test.", qid=99))
        r = busy.recv_message(3)
        assert r is not None and a_addresses(r) == {n_address(99)}, "the busy client was closed"


def test_each_new_client_resumes_the_tls_session(
    dns2dot: Factory, unbound: UnboundUpstream
) -> None:
    """Every pipe client has a TLS connection of its own; after the first, each
    handshake resumes the session the previous one was given."""
    mport = free_port()
    d = dns2dot(upstreams=[unbound.spec], mode="pipe", extra=["--metrics", f"{LOOPBACK}:{mport}"])
    for i in range(4):
        r = tcp_query(d.port, make_query(f"n{i}.example.test."), timeout=5)
        assert a_addresses(r) == {n_address(i)}
    metrics = wait_for_metrics(mport, lambda m: m.sum(HANDSHAKES) >= 4)
    assert metrics.sum(HANDSHAKES, resumed="true") >= 3, metrics.text
