"""Property-based fuzzing of dns2dot's UDP and TCP listeners, live, on loopback.

Why: the unit tests of ``wire`` and ``framing`` feed bytes to pure functions; this
throws the same kind of bytes (random, and mutated valid queries: bit flips,
truncation, insertion, deletion, rewritten counts and flags) at the real listeners of
one running process, in front of the real unbound DoT upstream, and checks what a
client can observe:

- every response parses as DNS, has QR set and carries the ID of the message it
  answers (for a fuzzed message: the fuzzed message's ID);
- a message of at least 12 bytes that is not itself an error response (QR set with a
  non-zero rcode) gets an answer (README: "Every query gets one answer"; only input
  shorter than a header, and error responses, are not answered);
- on TCP, a frame of fewer than 12 bytes closes the connection;
- after every example, a normal query is answered on the same socket (when it is
  still open) and from new UDP and TCP clients, and the process is alive.

Bounded: 200 examples per test, short socket deadlines, no timing assertions.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.net import (
    LOOPBACK,
    TcpClient,
    a_addresses,
    frame,
    make_query,
    tcp_query,
    udp_query,
)
from support.pki import Pki
from support.proc import Dns2Dot, running_dns2dot
from support.unbound import N_NAMES, UnboundUpstream, n_address

pytestmark = pytest.mark.integration

QUERY_TIMEOUT = 2
#: How long one example may wait for the answers it expects (the query timeout, then
#: SERVFAIL, fits in it).
ANSWER_WAIT = QUERY_TIMEOUT + 3.0

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def server(
    pki: Pki, unbound: UnboundUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dns2Dot]:
    """One dns2dot (pool mode, default limits) for every example of every test here."""
    with running_dns2dot(
        tmp_path_factory.mktemp("fuzz-listeners"),
        upstreams=[unbound.spec],
        cafile=pki.ca,
        extra=["--timeout", str(QUERY_TIMEOUT)],
    ) as d:
        yield d


# -- normal queries ------------------------------------------------------------------

_names = itertools.count(1)


def sentinel(avoid: set[int]) -> tuple[dns.message.Message, str]:
    """A normal query for a fresh ``n<i>`` name with an ID not in ``avoid``."""
    i = next(_names)
    qid = (0x4000 + i * 7919) & 0xFFFF
    while qid in avoid:
        qid = (qid + 1) & 0xFFFF
    k = i % N_NAMES
    return make_query(f"n{k}.example.test.", qid=qid), n_address(k)


def is_sentinel_answer(msg: dns.message.Message, q: dns.message.Message, addr: str) -> bool:
    return msg.id == q.id and msg.question == q.question and a_addresses(msg) == {addr}


def assert_healthy(d: Dns2Dot, context: str) -> None:
    """Alive, and new UDP and TCP clients get correct answers."""
    assert d.alive, f"dns2dot died ({d.proc.poll()}) after {context}\n{d.stderr()[-3000:]}"
    q, addr = sentinel(set())
    r = udp_query(d.port, q, timeout=3)
    assert a_addresses(r) == {addr}, f"UDP after {context}: {r}"
    q, addr = sentinel(set())
    r = tcp_query(d.port, q, timeout=3)
    assert a_addresses(r) == {addr}, f"TCP after {context}: {r}"


# -- what a response to a fuzzed message must look like ----------------------------------


def msg_id(data: bytes) -> int:
    return (data[0] << 8) | data[1]


def answerable(data: bytes) -> bool:
    """README: everything of header size that is not an error response is answered."""
    return len(data) >= 12 and not (data[2] & 0x80 and data[3] & 0x0F)


def parse_response(raw: bytes, context: str) -> dns.message.Message:
    """``raw`` parsed by dnspython; it must be DNS and have QR set.

    dnspython parses an UPDATE (opcode 5) message by RFC 2136's rules, which reject a
    zone section that is not of type SOA; an error answer to a malformed UPDATE
    echoes the client's own zone section, so such a message is checked as a plain
    DNS message (its opcode bits cleared) instead.
    """
    try:
        msg = dns.message.from_wire(raw)
    except dns.exception.DNSException as exc:
        error: dns.exception.DNSException = exc
        if len(raw) >= 4 and (raw[2] >> 3) & 0x0F == dns.opcode.UPDATE:
            try:
                msg = dns.message.from_wire(raw[:2] + bytes([raw[2] & 0x87]) + raw[3:])
            except dns.exception.DNSException as again:
                error = again
            else:
                assert msg.flags & dns.flags.QR, f"response without QR: {raw.hex()}\n{context}"
                return msg
        raise AssertionError(f"response is not DNS ({error!r}): {raw.hex()}\n{context}") from exc
    assert msg.flags & dns.flags.QR, f"response without QR: {raw.hex()}\n{context}"
    return msg


# -- inputs --------------------------------------------------------------------------


def _base_queries() -> list[bytes]:
    """Valid queries the mutations start from: plain, EDNS, DO/CD, options, compression."""
    out = [make_query("a.example.test.", "A", qid=0x1111).to_wire()]
    out.append(make_query("n7.example.test.", "AAAA", edns=0, qid=0x2222).to_wire())
    out.append(make_query("big.example.test.", "TXT", edns=0, payload=4096, qid=3).to_wire())
    q = dns.message.make_query(
        "example.test.",
        "MX",
        use_edns=0,
        want_dnssec=True,
        options=[dns.edns.ECSOption("192.0.2.0", 24), dns.edns.GenericOption(10, b"12345678")],
    )
    q.id = 0x4444
    q.flags |= dns.flags.CD
    out.append(q.to_wire())
    # An additional A record whose owner is a pointer to the question name, then OPT.
    head = struct.pack("!HHHHHH", 0x5555, 0x0100, 1, 0, 0, 2)
    quest = b"\x03www\x07example\x04test\x00" + struct.pack("!HH", 1, 1)
    extra = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\xc0\x00\x02\x01"
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    out.append(head + quest + extra + opt)
    return out


BASES = _base_queries()


@st.composite
def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    """1-4 mutations of ``data``: bit flips, byte sets, truncation, insertion, deletion,
    and (when there is a header) rewritten counts or flags."""
    msg = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(
            st.sampled_from(["flip", "set", "truncate", "insert", "delete", "count", "flags"])
        )
        if op == "insert" or not msg:
            i = draw(st.integers(0, len(msg)))
            msg[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "flip":
            i = draw(st.integers(0, len(msg) - 1))
            msg[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            msg[draw(st.integers(0, len(msg) - 1))] = draw(st.integers(0, 255))
        elif op == "truncate":
            del msg[draw(st.integers(0, len(msg) - 1)) :]
        elif op == "delete":
            i = draw(st.integers(0, len(msg) - 1))
            del msg[i : i + draw(st.integers(1, 8))]
        elif op == "count" and len(msg) >= 12:
            value = draw(st.sampled_from([0, 1, 2, 3, 0xFF, 0xFFFF]) | st.integers(0, 0xFFFF))
            struct.pack_into("!H", msg, 4 + 2 * draw(st.integers(0, 3)), value)
        elif op == "flags" and len(msg) >= 4:
            struct.pack_into("!H", msg, 2, draw(st.integers(0, 0xFFFF)))
    return bytes(msg)


#: Inputs that once broke a property, run first on every run (found by these tests).
#: An UPDATE whose zone section is of type A: the NOTIMP answer echoes it.
KNOWN_UPDATE = bytes.fromhex("1111280000010000000000000161076578616d706c6504746573740000010001")
#: A query whose additional section holds a CNAME whose RDATA is a pointer into the
#: header (and an OPT): unbound answers FORMERR echoing that record.
KNOWN_BAD_RDATA = bytes.fromhex(
    "55550100000100000000000203777777076578616d706c6504746573740000010001"
    "c00c000500010000003c0004c0000201"
    "00002904d0000000000000"
)

random_bytes = st.binary(min_size=0, max_size=600)
mutated_queries = st.sampled_from(BASES).flatmap(mutate)
any_message = st.one_of(random_bytes, mutated_queries)
#: Streams for the raw TCP listener: random bytes, or framed (mutated) queries whose
#: framing is itself mutated.
raw_streams = st.one_of(
    random_bytes,
    mutated_queries,
    st.lists(st.one_of(st.sampled_from(BASES), mutated_queries), min_size=1, max_size=3)
    .map(lambda ms: b"".join(frame(m) for m in ms))
    .flatmap(mutate),
)


# -- UDP -----------------------------------------------------------------------------


def udp_probe(d: Dns2Dot, data: bytes) -> None:
    """Send ``data`` as one datagram and a normal query after it, from the same socket;
    check every datagram that comes back."""
    fid = msg_id(data) if len(data) >= 2 else None
    want = answerable(data)
    q, addr = sentinel({fid} if fid is not None else set())
    context = f"fuzzed datagram: {data.hex()}"
    fuzz_answers = 0
    sentinel_answered = False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, (LOOPBACK, d.port))
        s.sendto(q.to_wire(), (LOOPBACK, d.port))
        deadline = time.monotonic() + ANSWER_WAIT
        while not (sentinel_answered and (fuzz_answers or not want)):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            s.settimeout(remaining)
            try:
                raw, _ = s.recvfrom(65535)
            except TimeoutError:
                break
            msg = parse_response(raw, context)
            if is_sentinel_answer(msg, q, addr):
                sentinel_answered = True
                continue
            assert fid is not None and msg.id == fid, (
                f"answer ID {msg.id:#06x}, fuzzed ID {fid}\n{context}"
            )
            fuzz_answers += 1
    assert sentinel_answered, f"normal query after the fuzzed one not answered\n{context}"
    if want:
        assert fuzz_answers == 1, f"{fuzz_answers} answers to an answerable message\n{context}"


@FUZZ
@given(data=random_bytes)
def test_udp_random_bytes(server: Dns2Dot, data: bytes) -> None:
    """Random datagrams (0-600 bytes): answers are DNS, QR set, the datagram's ID;
    everything of header size that is not an error response is answered (RFC 1035
    §4.1.1, §4.2.1)."""
    udp_probe(server, data)
    assert_healthy(server, f"datagram {data.hex()}")


@FUZZ
@example(data=KNOWN_UPDATE)
@example(data=KNOWN_BAD_RDATA)
@given(data=mutated_queries)
def test_udp_mutated_queries(server: Dns2Dot, data: bytes) -> None:
    """Mutated valid queries as datagrams: same properties (RFC 1035 §4.1, RFC 6891
    §6.1.1)."""
    udp_probe(server, data)
    assert_healthy(server, f"datagram {data.hex()}")


# -- TCP, framed ---------------------------------------------------------------------


def tcp_framed_probe(d: Dns2Dot, data: bytes) -> None:
    """Send ``data`` in one frame and a normal query in the next, on a new connection."""
    fid = msg_id(data) if len(data) >= 2 else None
    q, addr = sentinel({fid} if fid is not None else set())
    context = f"fuzzed frame: {data.hex()}"
    with TcpClient(d.port, timeout=3) as c:
        with contextlib.suppress(OSError):  # closed early: checked below
            c.send(frame(data) + frame(q.to_wire()))
        if len(data) < 12:
            assert c.recv_frame(ANSWER_WAIT) is None, f"a short frame was answered\n{context}"
            assert c.closed_by_peer, f"a {len(data)}-byte frame did not close the connection"
            return
        want = answerable(data)
        fuzz_answers = 0
        sentinel_answered = False
        deadline = time.monotonic() + ANSWER_WAIT
        while not (sentinel_answered and (fuzz_answers or not want)):
            raw = c.recv_frame(max(0.0, deadline - time.monotonic()))
            if raw is None:
                break
            msg = parse_response(raw, context)
            if is_sentinel_answer(msg, q, addr):
                sentinel_answered = True
                continue
            assert msg.id == fid, f"answer ID {msg.id:#06x}, fuzzed ID {fid:#06x}\n{context}"
            fuzz_answers += 1
        assert not c.closed_by_peer, f"a well-framed message closed the connection\n{context}"
        assert sentinel_answered, f"normal query after the fuzzed frame not answered\n{context}"
        if want:
            assert fuzz_answers == 1, f"{fuzz_answers} answers to an answerable frame\n{context}"


@FUZZ
@example(data=KNOWN_UPDATE)
@example(data=KNOWN_BAD_RDATA)
@given(data=any_message)
def test_tcp_framed_messages(server: Dns2Dot, data: bytes) -> None:
    """Random and mutated messages, correctly framed: answers are DNS, QR set, the
    message's ID; a frame below 12 bytes closes the connection; otherwise the connection
    keeps serving (RFC 1035 §4.2.2, RFC 7766 §8)."""
    tcp_framed_probe(server, data)
    assert_healthy(server, f"frame {data.hex()}")


# -- TCP, raw (unframed) -------------------------------------------------------------


def split_frames(stream: bytes) -> tuple[list[bytes], str, int]:
    """What a correct RFC 1035 §4.2.2 reader makes of ``stream``: the whole messages,
    and how it ends: "boundary", "partial" (a frame not complete) or "error" (a
    length below 12, which closes the connection); plus where the remainder starts."""
    pos = 0
    msgs: list[bytes] = []
    while len(stream) - pos >= 2:
        length = (stream[pos] << 8) | stream[pos + 1]
        if length < 12:
            return msgs, "error", pos
        if pos + 2 + length > len(stream):
            return msgs, "partial", pos
        msgs.append(stream[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return msgs, ("boundary" if pos == len(stream) else "partial"), pos


def complete_stream(stream: bytes) -> tuple[bytes, list[bytes], str]:
    """``stream`` with a partial last frame completed by zero bytes, so that nothing
    waits for a frame deadline; the messages in it and how it ends."""
    for _ in range(3):
        msgs, state, pos = split_frames(stream)
        if state != "partial":
            return stream, msgs, state
        if len(stream) - pos < 2:
            stream += b"\x00"
        else:
            length = (stream[pos] << 8) | stream[pos + 1]
            stream += b"\x00" * (pos + 2 + length - len(stream))
    msgs, state, _ = split_frames(stream)
    assert state != "partial"
    return stream, msgs, state


def tcp_raw_probe(d: Dns2Dot, data: bytes) -> None:
    """Write ``data`` unframed (completed to a frame boundary), then a normal query
    when the stream is still in sync; check every frame that comes back."""
    stream, msgs, state = complete_stream(data)
    ids = Counter(msg_id(m) for m in msgs)
    expected = Counter(msg_id(m) for m in msgs if answerable(m))
    q, addr = sentinel(set(ids))
    if state == "boundary":
        stream += frame(q.to_wire())
    context = f"raw stream: {data.hex()} (sent {len(stream)} bytes, ends {state})"
    got: Counter[int] = Counter()
    sentinel_answered = False
    with TcpClient(d.port, timeout=3) as c:
        with contextlib.suppress(OSError):  # closed early: checked below
            c.send(stream)
        deadline = time.monotonic() + ANSWER_WAIT
        while not (sentinel_answered and got >= expected):
            raw = c.recv_frame(max(0.0, deadline - time.monotonic()))
            if raw is None:
                break
            msg = parse_response(raw, context)
            if is_sentinel_answer(msg, q, addr):
                sentinel_answered = True
                continue
            got[msg.id] += 1
            assert got[msg.id] <= ids[msg.id], (
                f"answer with ID {msg.id:#06x}: no such message unanswered\n{context}"
            )
        if state == "error":
            assert c.closed_by_peer or c.wait_closed(ANSWER_WAIT), (
                f"a length prefix below 12 did not close the connection\n{context}"
            )
            return
        assert not c.closed_by_peer, f"a stream in sync was closed\n{context}"
        assert sentinel_answered, f"normal query after the stream not answered\n{context}"
        assert got >= expected, f"answered {dict(got)}, expected {dict(expected)}\n{context}"


@FUZZ
@example(data=frame(KNOWN_UPDATE) + frame(KNOWN_BAD_RDATA))
@given(data=raw_streams)
def test_tcp_raw_streams(server: Dns2Dot, data: bytes) -> None:
    """Unframed bytes on the TCP listener (random bytes, bare queries whose ID becomes
    the length, framed queries with mutated framing): dns2dot reads them as frames;
    every answer is DNS, QR set, the ID of one of the frames; in-sync streams keep
    serving; a length below 12 closes (RFC 1035 §4.2.2, RFC 7766 §8)."""
    tcp_raw_probe(server, data)
    assert_healthy(server, f"raw stream {data.hex()}")


#: Up to 20 fuzzed messages framed correctly and written at once on one connection.
pipelined_batches = st.lists(any_message, min_size=2, max_size=20).map(
    lambda ms: b"".join(frame(m) for m in ms)
)


@FUZZ
@given(data=pipelined_batches)
def test_tcp_pipelined_batches(server: Dns2Dot, data: bytes) -> None:
    """Up to 20 random and mutated messages pipelined in one write on one connection:
    each answerable one is answered under its own ID, in any order; ignored ones do not
    hold the connection up; the normal query after them is answered, unless a frame
    below 12 bytes closed the connection (RFC 7766 §6.2.1.1, §7, §8)."""
    tcp_raw_probe(server, data)
    assert_healthy(server, f"pipelined batch {data.hex()}")


def test_process_survived(server: Dns2Dot) -> None:
    """After all the fuzzing the process is alive, serves UDP and TCP, and logged no
    traceback or unhandled task exception (RFC 7766 §10: a server must withstand
    hostile clients; docs/ARCHITECTURE.md: impossible to crash with bad input)."""
    assert_healthy(server, "all fuzzing")
    log = server.stderr()
    for marker in ("Traceback", "exception was never retrieved", "Exception in callback"):
        assert marker not in log, f"{marker!r} in dns2dot's log:\n{log[-4000:]}"
