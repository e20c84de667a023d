"""Hostile and broken clients against one live dns2dot process.

Why: "Bad input never hurts others" (docs/ARCHITECTURE.md). Every scenario below throws one kind
of broken client at the UDP and/or TCP listener of a single dns2dot process (started
once for the module, in front of the real unbound DoT upstream) and checks two things:
what that client gets (an error answer, silence, or a closed connection, as README's
"How it behaves" and the RFCs say), and that afterwards the process is still alive and
another client is answered correctly over UDP and over TCP.

Every wait is bounded; nothing asserts how fast anything happened. Loopback only.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import resource
import selectors
import socket
import struct
import time
from collections.abc import Iterator

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from support.net import (
    LOOPBACK,
    TcpClient,
    a_addresses,
    frame,
    is_truncated,
    make_query,
    send_for,
    tcp_query,
    udp_exchange,
    udp_query,
    unread_client,
    wait_peer_closed,
)
from support.pki import Pki
from support.proc import Dns2Dot, log_tail, running_dns2dot
from support.unbound import BIG_TXT, N_NAMES, UnboundUpstream, n_address

pytestmark = pytest.mark.integration

#: dns2dot's flags for this module: short query timeout, an idle timeout above the
#: 5 s frame deadline (so a trickled frame is closed by the frame deadline, not by
#: idleness) and a small per-client in-flight limit so pipelining runs through it.
QUERY_TIMEOUT = 2
IDLE_TIMEOUT = 6
FRAME_DEADLINE = 5
MAX_INFLIGHT = 4

TRANSPORTS = ["udp", "tcp"]

#: What dns2dot itself answers to a message it will not forward.
ERROR_RCODES = (dns.rcode.FORMERR, dns.rcode.NOTIMP, dns.rcode.BADVERS)

#: How long "no answer" is awaited (a bounded wait for an event that must not happen).
SILENCE = 0.5

# Header bits (RFC 1035 §4.1.1).
QR = 0x8000
TC = 0x0200
RD = 0x0100

A_NAME = "a.example.test."
A_ADDR = "192.0.2.10"
BIG_NAME = "big.example.test."


# -- the process ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    pki: Pki, unbound: UnboundUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dns2Dot]:
    """One dns2dot (pool mode) for the whole module, forwarding to unbound."""
    with running_dns2dot(
        tmp_path_factory.mktemp("faults-client"),
        upstreams=[unbound.spec],
        cafile=pki.ca,
        extra=[
            "--timeout",
            str(QUERY_TIMEOUT),
            "--idle-timeout",
            str(IDLE_TIMEOUT),
            "--max-inflight-per-client",
            str(MAX_INFLIGHT),
        ],
    ) as d:
        yield d


_names = itertools.count(1)


def next_name() -> tuple[str, str]:
    """A fresh ``n<i>.example.test`` and its address, so answers can't be confused."""
    i = next(_names) % N_NAMES
    return f"n{i}.example.test.", n_address(i)


def assert_healthy(d: Dns2Dot) -> None:
    """The process is alive and a normal query from a new client is answered correctly,
    over UDP and over TCP."""
    assert d.alive, f"dns2dot exited with {d.proc.poll()}\n{log_tail(d)}"
    name, addr = next_name()
    r = udp_query(d.port, make_query(name), timeout=3)
    assert r.rcode() == dns.rcode.NOERROR, f"UDP {name}: {dns.rcode.to_text(r.rcode())}"
    assert a_addresses(r) == {addr}, f"UDP {name}: {r}"
    name, addr = next_name()
    r = tcp_query(d.port, make_query(name), timeout=3)
    assert r.rcode() == dns.rcode.NOERROR, f"TCP {name}: {dns.rcode.to_text(r.rcode())}"
    assert a_addresses(r) == {addr}, f"TCP {name}: {r}"
    assert d.alive, f"dns2dot exited with {d.proc.poll()}\n{log_tail(d)}"


# -- raw message building (RFC 1035 §4.1) --------------------------------------------


def header(qid: int, flags: int = RD, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def name_wire(name: str) -> bytes:
    return dns.name.from_text(name).to_wire()


def question(name: str = A_NAME, qtype: int = 1, qclass: int = 1) -> bytes:
    return name_wire(name) + struct.pack("!HH", qtype, qclass)


def opt_rr(payload: int = 1232, version: int = 0, ext_rcode: int = 0, rdata: bytes = b"") -> bytes:
    """An OPT pseudo-record (RFC 6891 §6.1.2)."""
    ttl = (ext_rcode << 24) | (version << 16)
    return b"\x00" + struct.pack("!HHIH", dns.rdatatype.OPT, payload, ttl, len(rdata)) + rdata


def a_rr(owner: bytes, addr: bytes = b"\xc0\x00\x02\x01") -> bytes:
    return owner + struct.pack("!HHIH", dns.rdatatype.A, 1, 60, len(addr)) + addr


def query_wire(qid: int, name: str = A_NAME, qtype: int = 1, flags: int = RD) -> bytes:
    """A plain, valid query without EDNS."""
    return header(qid, flags) + question(name, qtype)


# -- exchanges -----------------------------------------------------------------------


def exchange(port: int, transport: str, wire: bytes, timeout: float = 3.0) -> bytes | None:
    """Send ``wire`` as one datagram or one frame on a new connection; the first answer."""
    if transport == "udp":
        return udp_exchange(port, wire, timeout=timeout)
    with TcpClient(port, timeout=timeout) as c:
        c.send(frame(wire))
        return c.recv_frame(timeout)


def parse(answer: bytes) -> dns.message.Message:
    return dns.message.from_wire(answer)


def assert_error(answer: bytes | None, qid: int, rcode: int) -> dns.message.Message:
    """``answer`` is a response with ID ``qid``, QR set and ``rcode``."""
    assert answer is not None, f"no answer (expected {dns.rcode.to_text(rcode)})"
    msg = parse(answer)
    assert msg.id == qid, f"answer ID {msg.id:#06x}, query ID {qid:#06x}"
    assert msg.flags & dns.flags.QR, "answer without QR"
    assert msg.rcode() == rcode, (
        f"rcode {dns.rcode.to_text(msg.rcode())}, expected {dns.rcode.to_text(rcode)}"
    )
    return msg


def assert_not_answered(port: int, transport: str, wire: bytes) -> None:
    """No answer comes back within SILENCE; over TCP the connection stays usable."""
    if transport == "udp":
        got = udp_exchange(port, wire, timeout=SILENCE)
        assert got is None, f"unexpected answer {got.hex()}"
        return
    with TcpClient(port, timeout=3) as c:
        c.send(frame(wire))
        got = c.recv_frame(SILENCE)
        assert got is None, f"unexpected answer {got.hex()}"
        assert not c.closed_by_peer, "connection closed after an ignored message"
        name, addr = next_name()
        q = make_query(name, qid=0x5A5A)
        c.send_query(q)
        r = c.recv_message(3)
        assert r is not None, "the connection stopped answering after an ignored message"
        assert r.id == q.id and a_addresses(r) == {addr}


# == TCP framing (RFC 1035 §4.2.2, RFC 7766 §8) =======================================


def test_tcp_zero_length_prefix_closes(server: Dns2Dot) -> None:
    """A length prefix of 0 holds no message and no ID to answer: the connection is
    closed, even if a valid frame follows (RFC 1035 §4.2.2, RFC 7766 §8; README)."""
    with TcpClient(server.port) as c:
        c.send(b"\x00\x00" + frame(query_wire(0x0101)))
        assert c.recv_frame(5) is None, "a frame after a zero prefix was answered"
        assert c.closed_by_peer, "connection not closed after a zero length prefix"
    assert_healthy(server)


@pytest.mark.parametrize("length", [1, 2, 11])
def test_tcp_prefix_shorter_than_header_closes(server: Dns2Dot, length: int) -> None:
    """A length prefix below 12 cannot hold a DNS header: the connection is closed
    without an answer (RFC 1035 §4.1.1, §4.2.2; RFC 7766 §8; README)."""
    with TcpClient(server.port) as c:
        c.send(struct.pack("!H", length) + b"\x12" * length)
        assert c.recv_frame(5) is None
        assert c.closed_by_peer, f"connection not closed after a {length}-byte frame"
    assert_healthy(server)


def test_tcp_prefix_longer_than_message_stalls_then_closed(server: Dns2Dot) -> None:
    """A prefix that promises more bytes than ever come leaves a partial frame: no
    answer, other clients are served meanwhile, and the connection is closed by the
    frame deadline / idle timeout (RFC 7766 §6.2.3, §8), within a bounded 15 s wait."""
    wire = query_wire(0x0202)
    with TcpClient(server.port) as c:
        c.send(struct.pack("!H", len(wire) + 20) + wire)
        assert_healthy(server)  # served while that client stalls
        assert c.recv_frame(15) is None, "a partial frame was answered"
        assert c.closed_by_peer, "stalled partial frame not closed within 15 s"
    assert_healthy(server)


def test_tcp_trickled_frame_closed_by_frame_deadline(server: Dns2Dot) -> None:
    """Slowloris: a frame that trickles in one byte every 0.5 s keeps the connection
    active, yet never completes; the frame deadline (5 s) closes it (RFC 7766 §6.2.3
    resource protection; README "Bounded"). Bounded: at most 30 bytes / 15 s."""
    sock = socket.create_connection((LOOPBACK, server.port), timeout=3)
    closed = False
    try:
        sock.sendall(b"\x00\xc8")  # 200 bytes promised
        for _ in range(30):
            try:
                sock.sendall(b"\x00")
            except OSError:
                closed = True
                break
            sock.settimeout(0.5)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            assert data == b"", f"a partial frame was answered: {data.hex()}"
            closed = True
            break
    finally:
        sock.close()
    assert closed, "a frame trickling in for 15 s was not closed"
    assert_healthy(server)


def test_tcp_prefix_shorter_than_message(server: Dns2Dot) -> None:
    """A prefix 4 bytes short cuts the query before QTYPE/QCLASS: that frame is
    answered FORMERR under its ID; the leftover ``00 01 00 01`` then reads as a
    1-byte frame, so the connection is closed (RFC 1035 §4.1.2, §4.2.2: the server
    answers what it has read before it closes; RFC 7766 §8)."""
    wire = query_wire(0x2222)
    with TcpClient(server.port) as c:
        c.send(struct.pack("!H", len(wire) - 4) + wire)
        first = c.recv_frame(3)
        assert_error(first, 0x2222, dns.rcode.FORMERR)
        assert c.wait_closed(5), "connection not closed after the garbage length prefix"
    assert_healthy(server)


def test_tcp_query_before_framing_error_is_answered(server: Dns2Dot) -> None:
    """A valid query and a zero length prefix in the same write: the query was read
    whole before the stream broke, so it is answered, then the connection is closed
    (RFC 1035 §4.2.2: the server should not close until outstanding requests are
    satisfied; README "Every query gets one answer")."""
    name, addr = next_name()
    q = make_query(name, qid=0x2A2A)
    with TcpClient(server.port) as c:
        c.send(frame(q.to_wire()) + b"\x00\x00")
        r = c.recv_message(5)
        assert r is not None, (
            f"query before a framing error not answered (closed by peer: {c.closed_by_peer})"
        )
        assert r.id == q.id and a_addresses(r) == {addr}
        assert c.wait_closed(5), "connection not closed after the zero length prefix"
    assert_healthy(server)


def test_tcp_one_byte_at_a_time(server: Dns2Dot) -> None:
    """A query written one byte per segment is reassembled and answered (RFC 7766 §8:
    a message may arrive in any number of segments)."""
    name, addr = next_name()
    q = make_query(name, qid=0x0303)
    with TcpClient(server.port) as c:
        c.send_slowly(frame(q.to_wire()), chunk=1, pause=0.002)
        r = c.recv_message(3)
    assert r is not None, "split query not answered"
    assert r.id == q.id and a_addresses(r) == {addr}
    assert_healthy(server)


def test_tcp_split_writes_across_frame_boundaries(server: Dns2Dot) -> None:
    """Three frames written in 3-byte pieces (so prefixes and messages are split across
    segments and segments straddle frames) are all answered (RFC 7766 §8)."""
    qs = [make_query(next_name()[0], qid=0x0400 + i) for i in range(3)]
    expect = {q.id: n_addr(q) for q in qs}
    with TcpClient(server.port) as c:
        c.send_slowly(b"".join(frame(q.to_wire()) for q in qs), chunk=3, pause=0.001)
        got = [parse(m) for m in c.recv_frames(len(qs), timeout=5)]
    assert {m.id: a_addresses(m) for m in got} == {k: {v} for k, v in expect.items()}
    assert_healthy(server)


def n_addr(q: dns.message.Message) -> str:
    """The address unbound serves for the ``n<i>`` name ``q`` asks for."""
    label = q.question[0].name.labels[0].decode()
    return n_address(int(label[1:]))


def test_tcp_many_queries_coalesced_in_one_write(server: Dns2Dot) -> None:
    """50 queries in one write (one segment) are all answered, each under its own ID,
    in any order (RFC 7766 §6.2.1.1 pipelining, §8 framing)."""
    qs = [make_query(f"n{i}.example.test.", qid=0x0500 + i) for i in range(50)]
    with TcpClient(server.port) as c:
        c.send(b"".join(frame(q.to_wire()) for q in qs))
        got = [parse(m) for m in c.recv_frames(len(qs), timeout=10)]
    assert len(got) == len(qs), f"{len(got)} of {len(qs)} answered"
    assert {m.id: a_addresses(m) for m in got} == {q.id: {n_addr(q)} for q in qs}
    assert_healthy(server)


def test_tcp_garbage_frames(server: Dns2Dot) -> None:
    """Well-framed random garbage: each frame is answered FORMERR/NOTIMP under its ID
    (QR set), or not at all when it is itself an error response; the connection is
    closed or keeps serving: a valid query after it is answered (RFC 1035 §4.1.1;
    RFC 7766 §8; README)."""
    rng = random.Random(7766)
    for i in range(20):
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(12, 200)))
        gid, flags = struct.unpack_from("!HH", garbage)
        with TcpClient(server.port, timeout=3) as c:
            name, addr = next_name()
            q = make_query(name, qid=gid ^ 0xFFFF)
            c.send(frame(garbage) + frame(q.to_wire()))
            answered = False
            for _ in range(3):
                m = c.recv_frame(3)
                if m is None:
                    break
                msg = parse(m)
                assert msg.flags & dns.flags.QR, f"garbage #{i}: answer without QR"
                if msg.id == q.id and msg.question and a_addresses(msg) == {addr}:
                    answered = True
                    break
                assert msg.id == gid, f"garbage #{i}: answer ID {msg.id:#x}, sent {gid:#x}"
                assert msg.rcode() in ERROR_RCODES, msg
                assert not (flags & QR and flags & 0xF), f"garbage #{i}: error answered"
            assert answered or c.closed_by_peer, (
                f"garbage #{i} ({garbage.hex()}): neither answered nor closed"
            )
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_trailing_bytes_after_message(server: Dns2Dot, transport: str) -> None:
    """Bytes after the last record the counts announce: FORMERR under the query's ID
    (RFC 1035 §4.1: a message is exactly its sections; over TCP the frame length says
    where it ends, RFC 1035 §4.2.2)."""
    answer = exchange(server.port, transport, query_wire(0x0606) + b"\x00\x01\x02")
    assert_error(answer, 0x0606, dns.rcode.FORMERR)
    assert_healthy(server)


def test_tcp_error_answer_keeps_connection_open(server: Dns2Dot) -> None:
    """A FORMERR does not end the session: a valid query on the same connection right
    after a malformed one is answered (RFC 7766 §6.2.1: connections are persistent;
    RFC 1035 §4.1.1)."""
    name, addr = next_name()
    q = make_query(name, qid=0x0707)
    with TcpClient(server.port) as c:
        c.send(frame(header(0x0708, TC | RD) + question()) + frame(q.to_wire()))
        got = {parse(m).id: parse(m) for m in c.recv_frames(2, timeout=5)}
    assert set(got) == {0x0707, 0x0708}, f"answers for {sorted(got)}"
    assert got[0x0708].rcode() == dns.rcode.FORMERR
    assert a_addresses(got[0x0707]) == {addr}
    assert_healthy(server)


def test_tcp_dropped_error_responses_do_not_stall_connection(server: Dns2Dot) -> None:
    """Error responses sent as queries are not answered (no FORMERR ping-pong), and
    they must not count as in flight forever: after MAX_INFLIGHT + 1 of them a valid
    query on the same connection is still answered (RFC 7766 §6.2.1.1; README
    "Every query gets one answer", "Bounded")."""
    junk = header(0x0800, QR | dns.rcode.FORMERR) + question()
    name, addr = next_name()
    q = make_query(name, qid=0x0801)
    with TcpClient(server.port) as c:
        c.send(frame(junk) * (MAX_INFLIGHT + 1))
        assert c.recv_frame(SILENCE) is None, "an error response was answered"
        c.send_query(q)  # a separate read for dns2dot, after the ignored ones
        r = c.recv_message(5)
        assert r is not None, (
            f"valid query after {MAX_INFLIGHT + 1} ignored error responses not answered "
            f"(closed by peer: {c.closed_by_peer})"
        )
        assert r.id == q.id and a_addresses(r) == {addr}
    assert_healthy(server)


def test_tcp_idle_timeout_after_dropped_message(server: Dns2Dot) -> None:
    """A connection whose only message was an ignored error response is idle, and the
    idle timeout closes it like any other (RFC 7766 §6.2.3); bounded wait of
    IDLE_TIMEOUT + 8 s."""
    with TcpClient(server.port) as c:
        c.send(frame(header(0x0900, QR | dns.rcode.SERVFAIL) + question()))
        assert c.recv_frame(SILENCE) is None
        assert c.wait_closed(IDLE_TIMEOUT + 8), (
            "connection with one ignored message never closed: it counts as in flight"
        )
    assert_healthy(server)


def test_tcp_flood_without_reading(server: Dns2Dot) -> None:
    """5000 pipelined queries for a ~2.9 kB answer from a client that never reads: its
    answers pile up, the per-client write buffer limit is reached and that client is
    closed; others are served meanwhile (RFC 7766 §6.2.1.1, §10 resource use; README
    "Bounded": a client that never reads its answers is closed). Bounded: 15 s."""
    qs = b"".join(
        frame(make_query(BIG_NAME, "TXT", qid=i).to_wire()) for i in range(5000)
    )  # ~170 kB of queries, ~14 MB of answers
    with unread_client(server.port) as sock:
        send_for(sock, qs, 10)
        assert_healthy(server)  # served while the flood sits unread
        assert wait_peer_closed(sock, 15), "a client that never reads was not closed"
    assert_healthy(server)


def test_tcp_flood_of_distinct_queries_does_not_starve_others(server: Dns2Dot) -> None:
    """5000 distinct (uncacheable) pipelined queries from one client that does not read:
    the per-client in-flight limit keeps it from crowding the upstream, so while it
    floods, another client's queries are answered correctly, not SERVFAIL (RFC 7766
    §6.2.1.1, §10; docs/ARCHITECTURE.md "Bad input never hurts others")."""
    types = ["A", "AAAA", "MX", "TXT", "NS"]
    qs = b"".join(
        frame(make_query(f"n{i % N_NAMES}.example.test.", types[i // N_NAMES], qid=i).to_wire())
        for i in range(5000)
    )
    sock = socket.create_connection((LOOPBACK, server.port), timeout=3)
    try:
        send_for(sock, qs, 5)
        for _ in range(3):
            assert_healthy(server)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    assert_healthy(server)


def test_tcp_flood_then_reset(server: Dns2Dot) -> None:
    """5000 pipelined queries, then the client resets the connection (SO_LINGER 0)
    with most answers undelivered: the answers are discarded, the process stays up and
    others are served (RFC 7766 §6.2.4 tear-down; README "Bad input never hurts
    others")."""
    qs = b"".join(
        frame(make_query(f"n{i % N_NAMES}.example.test.", qid=i).to_wire()) for i in range(5000)
    )
    sock = socket.create_connection((LOOPBACK, server.port), timeout=3)
    try:
        send_for(sock, qs, 10)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    assert_healthy(server)
    # Once more, with the reset arriving while answers are still being written.
    sock = socket.create_connection((LOOPBACK, server.port), timeout=3)
    try:
        sock.sendall(qs[: len(qs) // 10])
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    assert_healthy(server)


def test_tcp_close_with_queries_in_flight(server: Dns2Dot) -> None:
    """A client that closes (FIN) right after 100 pipelined queries: its answers have
    nowhere to go (the first write past its close meets a reset, which ends the
    session); nothing else is affected (RFC 7766 §6.2.4)."""
    for _ in range(5):
        sock = socket.create_connection((LOOPBACK, server.port), timeout=3)
        with contextlib.closing(sock):
            sock.sendall(
                b"".join(frame(make_query(next_name()[0], qid=i).to_wire()) for i in range(100))
            )
    assert_healthy(server)


def test_tcp_pipelined_beyond_max_inflight_all_answered(server: Dns2Dot) -> None:
    """With ``--max-inflight-per-client 4``, 100 queries pipelined in one write are all
    answered correctly: the limit slows the client down, it never loses queries
    (RFC 7766 §6.2.1.1; README "--max-inflight-per-client")."""
    qs = [make_query(f"n{i + 100}.example.test.", qid=0x1000 + i) for i in range(100)]
    with TcpClient(server.port) as c:
        c.send(b"".join(frame(q.to_wire()) for q in qs))
        got = [parse(m) for m in c.recv_frames(len(qs), timeout=15)]
    assert len(got) == len(qs), f"{len(got)} of {len(qs)} answered"
    assert {m.id: a_addresses(m) for m in got} == {q.id: {n_addr(q)} for q in qs}
    assert_healthy(server)


def test_tcp_half_close_after_queries_gets_every_answer(server: Dns2Dot) -> None:
    """socat-style clients and scripts send their queries, ``shutdown(SHUT_WR)``, then
    read to the end. All 30 answers arrive (the in-flight limit of 4 still holds,
    queries read are kept, not lost), then end of stream (RFC 7766 §6.2.4)."""
    qs = [make_query(f"n{i + 300}.example.test.", qid=0x3000 + i) for i in range(30)]
    with TcpClient(server.port) as c:
        c.send(b"".join(frame(q.to_wire()) for q in qs))
        c.sock.shutdown(socket.SHUT_WR)
        got = [parse(m) for m in c.recv_frames(len(qs) + 1, timeout=15)]
        assert c.closed_by_peer, "no end of stream after the answers"
    assert {m.id: a_addresses(m) for m in got} == {q.id: {n_addr(q)} for q in qs}
    assert_healthy(server)


def test_tcp_half_close_inside_a_frame_answers_the_whole_ones(server: Dns2Dot) -> None:
    """Two queries and half of a third, then the half-close: the two are answered, the
    half is not waited for (no frame deadline needed), and the connection ends."""
    qs = [make_query(f"n{i + 340}.example.test.", qid=0x3400 + i) for i in range(3)]
    wires = [frame(q.to_wire()) for q in qs]
    with TcpClient(server.port) as c:
        c.send(wires[0] + wires[1] + wires[2][:7])
        c.sock.shutdown(socket.SHUT_WR)
        got = [parse(m) for m in c.recv_frames(3, timeout=FRAME_DEADLINE - 1)]
        assert c.closed_by_peer, "not closed before the frame deadline"
    assert sorted(m.id for m in got) == [qs[0].id, qs[1].id]
    assert_healthy(server)


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {need} needed by this test")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def test_tcp_2000_idle_connections(server: Dns2Dot) -> None:
    """2000 clients connect and send nothing: other clients are still served (UDP and
    TCP), and the idle timeout then closes every one of them cleanly (EOF, no data),
    within IDLE_TIMEOUT + 14 s (RFC 7766 §6.2.3 idle timeouts, §10; README "Bounded")."""
    count = 2000
    _raise_nofile(count + 512)
    socks: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    try:
        for _ in range(count):
            s = socket.create_connection((LOOPBACK, server.port), timeout=5)
            s.setblocking(False)
            socks.append(s)
            sel.register(s, selectors.EVENT_READ)
        assert_healthy(server)
        open_ = len(socks)
        unexpected: list[bytes] = []
        deadline = time.monotonic() + IDLE_TIMEOUT + 14
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    unexpected.append(data)
                    continue
                sel.unregister(s)
                open_ -= 1
        assert not unexpected, f"idle connections were sent data: {unexpected[:3]}"
        assert open_ == 0, f"{open_} of {count} idle connections still open"
    finally:
        sel.close()
        for s in socks:
            s.close()
    assert_healthy(server)


# == UDP datagrams that are not DNS (RFC 1035 §4.2.1, §4.1.1) ==========================


def test_udp_empty_datagram_dropped(server: Dns2Dot) -> None:
    """An empty datagram has no header and no ID to answer to: dropped, no answer
    (RFC 1035 §4.1.1; README)."""
    assert udp_exchange(server.port, b"", timeout=SILENCE) is None
    assert_healthy(server)


@pytest.mark.parametrize("length", [1, 2, 11])
def test_udp_datagram_shorter_than_header_dropped(server: Dns2Dot, length: int) -> None:
    """A datagram shorter than the 12-byte header is dropped without an answer
    (RFC 1035 §4.1.1; README)."""
    assert udp_exchange(server.port, b"\x12\x34" + b"\x00" * (length - 2), SILENCE) is None
    assert udp_exchange(server.port, b"\x12" * length, timeout=SILENCE) is None
    assert_healthy(server)


def test_udp_random_garbage(server: Dns2Dot) -> None:
    """200 random datagrams of 12..512 bytes: each is answered (FORMERR or NOTIMP, QR
    set, its own ID) unless it is itself an error response, which is dropped (RFC 1035
    §4.1.1; README: no FORMERR ping-pong)."""
    rng = random.Random(1035)
    garbage = [bytes(rng.randrange(256) for _ in range(rng.randrange(12, 512))) for _ in range(200)]
    expect = sorted(
        struct.unpack_from("!H", g)[0] for g in garbage if not (g[2] & 0x80 and g[3] & 0x0F)
    )
    ids = {struct.unpack_from("!H", g)[0] for g in garbage}
    got: list[int] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for g in garbage:
            s.sendto(g, (LOOPBACK, server.port))
        deadline = time.monotonic() + 5
        while len(got) < len(expect) and time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _ = s.recvfrom(65535)
            except TimeoutError:
                break
            msg = parse(data)
            assert msg.flags & dns.flags.QR
            assert msg.id in ids, f"answer with an ID nobody sent: {msg.id:#x}"
            assert msg.rcode() in ERROR_RCODES, msg
            got.append(msg.id)
    assert sorted(got) == expect, f"{len(got)} answers for {len(expect)} answerable datagrams"
    assert_healthy(server)


# == message content, over UDP and TCP (RFC 1035, 6891, 9619) ==========================


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_qr_set_is_formerr(server: Dns2Dot, transport: str) -> None:
    """A "query" with QR set (a NOERROR response sent to the server port) is not a
    query: FORMERR under its ID (RFC 1035 §4.1.1; README)."""
    answer = exchange(server.port, transport, header(0x1111, QR | RD) + question())
    assert_error(answer, 0x1111, dns.rcode.FORMERR)
    assert_healthy(server)


@pytest.mark.parametrize("rcode", [dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.REFUSED])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_error_response_is_not_answered(server: Dns2Dot, transport: str, rcode: int) -> None:
    """A message with QR set and a non-zero rcode is itself an error response:
    answering it could start a FORMERR loop between two servers, so it gets no answer;
    over TCP the connection keeps serving (RFC 1035 §4.1.1; README)."""
    assert_not_answered(server.port, transport, header(0x1212, QR | rcode) + question())
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tc_set_in_query_is_formerr(server: Dns2Dot, transport: str) -> None:
    """TC set in a query is meaningless: FORMERR (RFC 1035 §4.1.1)."""
    answer = exchange(server.port, transport, header(0x1313, TC | RD) + question())
    assert_error(answer, 0x1313, dns.rcode.FORMERR)
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_qdcount_zero_is_formerr(server: Dns2Dot, transport: str) -> None:
    """QDCOUNT 0: there is nothing to forward. RFC 9619 allows it in a QUERY only for
    a DNS Cookie exchange, which dns2dot does not implement; it answers FORMERR
    (RFC 1035 §4.1.1; README "QDCOUNT other than 1")."""
    answer = exchange(server.port, transport, header(0x1414, RD, qd=0))
    msg = assert_error(answer, 0x1414, dns.rcode.FORMERR)
    assert not msg.answer
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_qdcount_two_is_formerr(server: Dns2Dot, transport: str) -> None:
    """QDCOUNT 2, with both questions present: FORMERR (RFC 9619: a QUERY with
    QDCOUNT greater than 1 is malformed and is answered FORMERR)."""
    wire = header(0x1515, RD, qd=2) + question(A_NAME) + question("www.example.test.")
    answer = exchange(server.port, transport, wire)
    msg = assert_error(answer, 0x1515, dns.rcode.FORMERR)
    assert not msg.answer
    assert_healthy(server)


def _opcode_query(qid: int, opcode: int) -> bytes:
    return header(qid, (opcode << 11) | RD) + question()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unassigned_opcode_3_is_notimp(server: Dns2Dot, transport: str) -> None:
    """Opcode 3 (unassigned): NOTIMP, the opcode echoed (RFC 1035 §4.1.1)."""
    msg = assert_error(exchange(server.port, transport, _opcode_query(0x1603, 3)), 0x1603, 4)
    assert msg.opcode() == 3
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_notify_opcode_is_notimp(server: Dns2Dot, transport: str) -> None:
    """NOTIFY (opcode 4) is for authoritative servers, not a forwarder: NOTIMP
    (RFC 1035 §4.1.1 "Not Implemented")."""
    msg = assert_error(exchange(server.port, transport, _opcode_query(0x1604, 4)), 0x1604, 4)
    assert msg.opcode() == dns.opcode.NOTIFY
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_update_opcode_is_notimp(server: Dns2Dot, transport: str) -> None:
    """UPDATE (opcode 5): NOTIMP (RFC 1035 §4.1.1)."""
    wire = header(0x1605, 5 << 11) + question("example.test.", dns.rdatatype.SOA)
    msg = assert_error(exchange(server.port, transport, wire), 0x1605, dns.rcode.NOTIMP)
    assert msg.opcode() == dns.opcode.UPDATE
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_label_longer_than_63_is_formerr(server: Dns2Dot, transport: str) -> None:
    """A label length octet of 64 (0x40: not a length, an obsolete label type) and one
    of 0x80 (reserved): FORMERR (RFC 1035 §2.3.4, §4.1.4; RFC 6891 §5)."""
    for qid, length in ((0x1701, 64), (0x1702, 0x80)):
        wire = header(qid) + bytes([length]) + b"a" * length + b"\x00" + struct.pack("!HH", 1, 1)
        assert_error(exchange(server.port, transport, wire), qid, dns.rcode.FORMERR)
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_name_longer_than_255_is_formerr(server: Dns2Dot, transport: str) -> None:
    """Five 63-octet labels make a 321-octet name: FORMERR (RFC 1035 §2.3.4, §3.1)."""
    name = b"".join(b"\x3f" + b"x" * 63 for _ in range(5)) + b"\x00"
    wire = header(0x1818) + name + struct.pack("!HH", 1, 1)
    assert_error(exchange(server.port, transport, wire), 0x1818, dns.rcode.FORMERR)
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_name_over_255_via_compression_is_formerr(server: Dns2Dot, transport: str) -> None:
    """An additional record whose name reaches > 255 octets only once its pointer is
    followed (4 x 63-octet labels + a pointer to a 63-octet label): FORMERR (RFC 1035
    §2.3.4, §4.1.4)."""
    qname = b"\x3f" + b"q" * 63 + b"\x00"
    q = header(0x1819, RD, ar=1) + qname + struct.pack("!HH", 1, 1)
    owner = b"".join(b"\x3f" + b"z" * 63 for _ in range(4)) + b"\xc0\x0c"
    wire = q + a_rr(owner)
    assert_error(exchange(server.port, transport, wire), 0x1819, dns.rcode.FORMERR)
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pointer_loop_in_additional_is_formerr(server: Dns2Dot, transport: str) -> None:
    """An additional record whose owner name is a pointer to itself (and a two-pointer
    loop): FORMERR, not an endless walk (RFC 1035 §4.1.4)."""
    base = header(0x1919, RD, ar=1) + question()
    self_ptr = base + a_rr(struct.pack("!H", 0xC000 | len(base)))
    assert_error(exchange(server.port, transport, self_ptr), 0x1919, dns.rcode.FORMERR)
    # label "a" then a pointer back to that label: a -> a -> a ...
    start = len(base)
    loop = base + a_rr(b"\x01a" + struct.pack("!H", 0xC000 | start))
    assert_error(exchange(server.port, transport, loop), 0x1919, dns.rcode.FORMERR)
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_forward_pointer_is_formerr(server: Dns2Dot, transport: str) -> None:
    """A compression pointer to a later offset (the record's own RDATA): FORMERR
    (RFC 1035 §4.1.4: pointers refer to a prior occurrence)."""
    base = header(0x1A1A, RD, ar=1) + question()
    owner = struct.pack("!H", 0xC000 | (len(base) + 2 + 10))
    wire = base + owner + struct.pack("!HHIH", 1, 1, 60, 4) + b"\x00\x00\x00\x00"
    assert_error(exchange(server.port, transport, wire), 0x1A1A, dns.rcode.FORMERR)
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pointer_in_question_is_formerr(server: Dns2Dot, transport: str) -> None:
    """The question name cannot be compressed (nothing before it but the header):
    a pointer to itself, into the header, or forward is FORMERR (RFC 1035 §4.1.4)."""
    for qid, ptr in ((0x1B01, 0xC00C), (0x1B02, 0xC000), (0x1B03, 0xC012)):
        wire = header(qid) + struct.pack("!HHH", ptr, 1, 1) + b"\x01a\x00"
        assert_error(exchange(server.port, transport, wire), qid, dns.rcode.FORMERR)
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ancount_without_records_is_formerr(server: Dns2Dot, transport: str) -> None:
    """ANCOUNT=5 with no answer records present: FORMERR (RFC 1035 §4.1.1: the counts
    give the number of entries in each section)."""
    wire = header(0x1C1C, RD, an=5) + question()
    assert_error(exchange(server.port, transport, wire), 0x1C1C, dns.rcode.FORMERR)
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_arcount_higher_than_present_is_formerr(server: Dns2Dot, transport: str) -> None:
    """ARCOUNT=3 with one OPT present: FORMERR, and the answer keeps the OPT the
    client sent (RFC 1035 §4.1.1; RFC 6891 §7)."""
    wire = header(0x1D1D, RD, ar=3) + question() + opt_rr()
    assert_error(exchange(server.port, transport, wire), 0x1D1D, dns.rcode.FORMERR)
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_two_opt_records_is_formerr(server: Dns2Dot, transport: str) -> None:
    """Two OPT records in the additional section: FORMERR (RFC 6891 §6.1.1: "If a
    query message with more than one OPT RR is received, a FORMERR MUST be returned")."""
    wire = header(0x1E1E, RD, ar=2) + question() + opt_rr() + opt_rr(4096)
    assert_error(exchange(server.port, transport, wire), 0x1E1E, dns.rcode.FORMERR)
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_opt_outside_additional_is_formerr(server: Dns2Dot, transport: str) -> None:
    """An OPT record in the answer section, and one owned by a name other than the
    root: FORMERR (RFC 6891 §6.1.1: OPT only in the additional section, owner root)."""
    wire = header(0x1F01, RD, an=1) + question() + opt_rr()
    assert_error(exchange(server.port, transport, wire), 0x1F01, dns.rcode.FORMERR)
    bad_owner = b"\xc0\x0c" + opt_rr()[1:]
    wire = header(0x1F02, RD, ar=1) + question() + bad_owner
    assert_error(exchange(server.port, transport, wire), 0x1F02, dns.rcode.FORMERR)
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_rdata_past_end_is_formerr(server: Dns2Dot, transport: str) -> None:
    """An additional record whose RDLENGTH runs past the end of the message: FORMERR
    (RFC 1035 §4.1.3)."""
    wire = header(0x2020, RD, ar=1) + question() + b"\x00" + struct.pack("!HHIH", 1, 1, 0, 40)
    assert_error(exchange(server.port, transport, wire + b"\x01\x02"), 0x2020, 1)
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_malformed_rdata_in_additional_gets_wellformed_formerr(
    server: Dns2Dot, transport: str
) -> None:
    """An additional CNAME record whose RDATA is a compression pointer into the header
    (0xC000) makes the query malformed (RFC 1035 §3.3.1: CNAME RDATA is a domain name;
    §4.1.4: a pointer refers to a prior occurrence of a name). The client gets a
    well-formed FORMERR under its ID that a DNS parser accepts, not the bad record
    echoed back to it (found by tests/test_fuzz_listeners.py)."""
    bad_cname = b"\xc0\x0c" + struct.pack("!HHIH", dns.rdatatype.CNAME, 1, 60, 4)
    wire = (
        header(0x2B2B, RD, ar=2)
        + question("www.example.test.")
        + bad_cname
        + b"\xc0\x00\x02\x01"
        + opt_rr()
    )
    answer = exchange(server.port, transport, wire)
    assert answer is not None, "no answer"
    try:
        parse(answer)
    except dns.exception.DNSException as exc:
        pytest.fail(f"answer is not well-formed DNS ({exc!r}): {answer.hex()}")
    assert_error(answer, 0x2B2B, dns.rcode.FORMERR)
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_edns_version_1_is_badvers(server: Dns2Dot, transport: str) -> None:
    """EDNS version 1: BADVERS (extended rcode 16, carried in the OPT record), and the
    response's OPT says version 0, the highest dns2dot implements (RFC 6891 §6.1.3)."""
    wire = header(0x2121, RD, ar=1) + question() + opt_rr(version=1)
    answer = exchange(server.port, transport, wire)
    msg = assert_error(answer, 0x2121, dns.rcode.BADVERS)
    assert msg.edns == 0, f"response OPT version {msg.edns}"
    assert msg.question and msg.question[0].name == dns.name.from_text(A_NAME)
    assert_healthy(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_formerr_for_edns_query_carries_opt(server: Dns2Dot, transport: str) -> None:
    """A malformed query (TC set) that carries an OPT record gets its FORMERR with an
    OPT record (RFC 6891 §7: responders MUST include OPT in responses to requests that
    had one)."""
    wire = header(0x2222, TC | RD, ar=1) + question() + opt_rr()
    msg = assert_error(exchange(server.port, transport, wire), 0x2222, dns.rcode.FORMERR)
    assert msg.edns == 0, "FORMERR to an EDNS query without OPT"
    assert_healthy(server)


@pytest.mark.parametrize("qtype", ["AXFR", "IXFR"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_zone_transfer_in_pool_mode_is_notimp(server: Dns2Dot, transport: str, qtype: str) -> None:
    """AXFR / IXFR cannot be carried over the shared, pipelined upstream connections
    of pool mode: NOTIMP under the client's ID, question echoed (RFC 1035 §4.1.1;
    RFC 7766 §6.2.1.1; README "Modes")."""
    q = make_query("example.test.", qtype, qid=0x2323)
    msg = assert_error(exchange(server.port, transport, q.to_wire()), 0x2323, 4)
    assert msg.question and msg.question[0].rdtype == dns.rdatatype.from_text(qtype)
    assert_healthy(server)


@pytest.mark.parametrize("qid", [0x0000, 0x0001, 0x7FFF, 0x8000, 0xBEEF, 0xFFFF])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_formerr_echoes_client_id(server: Dns2Dot, transport: str, qid: int) -> None:
    """Error answers carry the client's own ID, whatever it is, and echo RD (RFC 1035
    §4.1.1: the ID "is copied the corresponding reply")."""
    msg = assert_error(exchange(server.port, transport, header(qid, RD, qd=0)), qid, 1)
    assert msg.flags & dns.flags.RD


# == answer sizes (RFC 1035 §4.2.1, RFC 6891 §6.2.3-6.2.5, RFC 7766 §5) ===============


def _big_rrset_strings(msg: dns.message.Message) -> list[str]:
    out: list[str] = []
    for rrset in msg.answer:
        if rrset.rdtype == dns.rdatatype.TXT:
            out += [b"".join(rd.strings).decode() for rd in rrset]
    return sorted(out)


def test_udp_big_answer_without_edns_is_truncated(server: Dns2Dot) -> None:
    """A ~2.9 kB answer to a client without EDNS (512-byte limit): TC=1, the question
    echoed, no answer records, at most 512 bytes (RFC 1035 §4.2.1; RFC 7766 §5)."""
    q = make_query(BIG_NAME, "TXT", qid=0x2424)
    raw = udp_exchange(server.port, q.to_wire())
    assert raw is not None, "no answer"
    assert len(raw) <= 512, f"{len(raw)}-byte UDP answer to a client without EDNS"
    msg = parse(raw)
    assert msg.id == q.id and is_truncated(msg)
    assert msg.question == q.question
    assert not msg.answer and not msg.authority
    assert_healthy(server)


def test_udp_big_answer_over_edns_1232_is_truncated(server: Dns2Dot) -> None:
    """EDNS buffer 1232 and a ~2.9 kB answer: TC=1, question echoed, OPT present,
    at most 1232 bytes (RFC 6891 §6.2.3, §7)."""
    q = make_query(BIG_NAME, "TXT", edns=0, payload=1232, qid=0x2525)
    raw = udp_exchange(server.port, q.to_wire())
    assert raw is not None, "no answer"
    assert len(raw) <= 1232, f"{len(raw)}-byte UDP answer to a 1232-byte client"
    msg = parse(raw)
    assert msg.id == q.id and is_truncated(msg)
    assert msg.question == q.question and not msg.answer
    assert msg.edns == 0, "truncated answer to an EDNS query without OPT"
    assert_healthy(server)


def test_udp_big_answer_over_edns_4096_is_complete(server: Dns2Dot) -> None:
    """EDNS buffer 4096 and a ~2.9 kB answer: the whole answer over UDP, TC clear
    (RFC 6891 §6.2.3)."""
    q = make_query(BIG_NAME, "TXT", edns=0, payload=4096, qid=0x2626)
    raw = udp_exchange(server.port, q.to_wire())
    assert raw is not None, "no answer"
    msg = parse(raw)
    assert msg.id == q.id and not is_truncated(msg)
    assert len(raw) > 1232
    assert _big_rrset_strings(msg) == sorted(BIG_TXT)
    assert_healthy(server)


@pytest.mark.parametrize("edns", [None, 0])
def test_tcp_big_answer_is_complete(server: Dns2Dot, edns: int | None) -> None:
    """Over TCP an answer is never truncated, with or without EDNS (RFC 7766 §5;
    RFC 1035 §4.2.2)."""
    q = make_query(BIG_NAME, "TXT", edns=edns, payload=512, qid=0x2727)
    msg = tcp_query(server.port, q, timeout=5)
    assert not is_truncated(msg)
    assert _big_rrset_strings(msg) == sorted(BIG_TXT)
    assert_healthy(server)


def test_udp_edns_payload_below_512_treated_as_512(server: Dns2Dot) -> None:
    """An EDNS buffer size below 512 (here 0 and 100) is treated as 512: a small answer
    comes back whole, not truncated (RFC 6891 §6.2.5)."""
    for payload in (0, 100):
        wire = header(0x2828, RD, ar=1) + question() + opt_rr(payload=payload)
        raw = udp_exchange(server.port, wire)
        assert raw is not None, f"no answer for payload {payload}"
        msg = parse(raw)
        assert msg.id == 0x2828 and not is_truncated(msg), f"payload {payload}: {msg}"
        assert a_addresses(msg) == {A_ADDR}
    assert_healthy(server)


# == the end: the process survived everything above ====================================


def test_log_has_no_unhandled_exceptions(server: Dns2Dot) -> None:
    """After every scenario above the process is alive and has logged no traceback and
    no unhandled task exception (RFC 7766 §10: a server must withstand hostile TCP
    clients; docs/ARCHITECTURE.md: impossible to crash with bad input)."""
    assert_healthy(server)
    log = server.stderr()
    for marker in ("Traceback", "exception was never retrieved", "Exception in callback"):
        assert marker not in log, f"{marker!r} in dns2dot's log:\n{log_tail(server, 60)}"
