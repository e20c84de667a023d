"""dns2dot against upstreams that misbehave, and clients that send garbage.

Why: the rules "every query gets one answer", "strict TLS" and "bad input never hurts
others" are about failure paths; the in-process fake upstream produces each failure
on demand (bad certificates, silence, hang-ups mid-pipeline, reordering, wrong IDs or
questions, junk) and records what it received.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import struct
import time
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import pytest
from support.fake_upstream import OTHER_NAME, FakeUpstream, fake_address
from support.net import (
    LOOPBACK,
    TcpClient,
    a_addresses,
    frame,
    free_port,
    make_query,
    tcp_query,
    udp_exchange,
    udp_many,
    udp_query,
)
from support.pki import TLS_NAME
from support.proc import Dns2Dot

pytestmark = pytest.mark.integration

MakeFake = Callable[..., FakeUpstream]
StartDns2Dot = Callable[..., Dns2Dot]

#: Client-side bound for one answer: dns2dot's --timeout plus generous slack.
CLIENT_TIMEOUT = 8.0


def start(
    dns2dot: StartDns2Dot, *upstreams: str, timeout: float = 1, mode: str | None = None
) -> Dns2Dot:
    """dns2dot in front of ``upstreams`` with a short ``--timeout`` (keeps failures fast)."""
    return dns2dot(upstreams=list(upstreams), mode=mode, extra=["--timeout", str(timeout)])


def assert_servfail(r: dns.message.Message, q: dns.message.Message) -> None:
    """SERVFAIL for exactly this query: same ID and question, QR set, no records."""
    assert r.id == q.id
    assert r.flags & dns.flags.QR
    assert r.question == q.question
    assert r.rcode() == dns.rcode.SERVFAIL, f"expected SERVFAIL, got:\n{r}"
    assert not r.answer, f"an answer was delivered:\n{r}"


def wait_for_log(d: Dns2Dot, pattern: str, timeout: float = 5.0) -> list[str]:
    """Lines of dns2dot's log matching ``pattern`` (case-insensitive), polled until ``timeout``."""
    rx = re.compile(pattern, re.I)
    deadline = time.monotonic() + timeout
    while True:
        lines = [ln for ln in d.stderr().splitlines() if rx.search(ln)]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def eventually_noerror(port: int, name: str, timeout: float = 15.0) -> dns.message.Message:
    """Query until NOERROR (recovery after a fault may wait for a reconnect/backoff)."""
    deadline = time.monotonic() + timeout
    last: dns.message.Message | None = None
    for _ in range(100):
        last = udp_query(port, make_query(name), timeout=CLIENT_TIMEOUT)
        if last.rcode() == dns.rcode.NOERROR or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert last is not None and last.rcode() == dns.rcode.NOERROR, f"never recovered:\n{last}"
    return last


# -- certificates ----------------------------------------------------------------------

CERT_CASES = {
    "wrong_name": r"hostname|mismatch|not valid for|doesn't match|does not match|name",
    "expired": r"expired",
    "untrusted": r"issuer|unknown ca|untrusted|not trusted|self.signed|unable to get",
}
CERT_WORDS = r"certificate|cert|verif|tls|ssl"


@pytest.mark.parametrize("kind", sorted(CERT_CASES))
def test_bad_certificate_servfail(
    dns2dot: StartDns2Dot, fake_upstream: MakeFake, kind: str
) -> None:
    """Wrong name / unknown CA / expired: SERVFAIL, no query reaches the upstream, and
    the log says why in a clear line (no traceback), not once per query."""
    fake = fake_upstream(cert=kind)
    d = start(dns2dot, fake.spec)
    sent = (udp_query, tcp_query, udp_query, tcp_query, udp_query)
    for transport in sent:
        q = make_query("a.example.test.")
        assert_servfail(transport(d.port, q, timeout=CLIENT_TIMEOUT), q)
    assert fake.received == [], "a query was sent over an unverified connection"
    assert fake.connections >= 1, "dns2dot never even tried the upstream"
    reason = wait_for_log(d, CERT_CASES[kind])
    assert reason, f"no log line mentions the reason ({CERT_CASES[kind]}):\n{d.stderr()}"
    assert len(reason) < len(sent), f"the reason is logged per query:\n{d.stderr()}"
    assert any(re.search(CERT_WORDS, ln, re.I) for ln in reason), d.stderr()
    assert "Traceback" not in d.stderr(), d.stderr()
    assert d.alive


def test_ip_upstream_needs_ip_in_certificate(
    dns2dot: StartDns2Dot, fake_upstream: MakeFake
) -> None:
    """``-u IP:PORT`` (no #name) is verified against the IP: a cert without that IP fails."""
    fake = fake_upstream(cert="wrong_name")  # SAN wrong.test only
    d = start(dns2dot, f"{LOOPBACK}:{fake.port}")
    q = make_query("a.example.test.")
    assert_servfail(udp_query(d.port, q, timeout=CLIENT_TIMEOUT), q)
    assert fake.received == []


def test_ip_upstream_with_ip_san_works(dns2dot: StartDns2Dot, fake_upstream: MakeFake) -> None:
    """The good cert carries IP SAN 127.0.0.1, so ``-u 127.0.0.1:PORT`` verifies."""
    fake = fake_upstream(cert="good")
    d = start(dns2dot, f"{LOOPBACK}:{fake.port}", timeout=3)
    r = udp_query(d.port, make_query("a.example.test."), timeout=CLIENT_TIMEOUT)
    assert a_addresses(r) == {"192.0.2.1"}


def test_sni_and_tls_version(dns2dot: StartDns2Dot, fake_upstream: MakeFake) -> None:
    """dns2dot sends the TLS name as SNI and negotiates TLS 1.2 or newer."""
    fake = fake_upstream()
    d = start(dns2dot, fake.spec, timeout=3)
    udp_query(d.port, make_query("a.example.test."), timeout=CLIENT_TIMEOUT)
    assert TLS_NAME in fake.sni
    assert fake.tls_versions and all(v in ("TLSv1.2", "TLSv1.3") for v in fake.tls_versions)


# -- connection faults -----------------------------------------------------------------


def _check_one_answer_each(
    answers: dict[int, list[bytes]], queries: dict[int, dns.message.Message]
) -> int:
    """Each query: exactly one answer, either the right one or SERVFAIL. Returns #NOERROR."""
    ok = 0
    for qid, q in queries.items():
        got = answers.get(qid, [])
        assert len(got) == 1, f"query {q.question[0].name} got {len(got)} answers"
        r = dns.message.from_wire(got[0])
        assert r.question == q.question
        if r.rcode() == dns.rcode.NOERROR:
            assert a_addresses(r) == {fake_address(q.question[0].name.to_text())}
            ok += 1
        else:
            assert_servfail(r, q)
    return ok


def _tcp_pipeline(port: int, queries: dict[int, dns.message.Message]) -> dict[int, list[bytes]]:
    got: dict[int, list[bytes]] = {}
    with TcpClient(port) as c:
        c.send(b"".join(frame(q.to_wire()) for q in queries.values()))
        for w in c.recv_frames(len(queries), timeout=30):
            got.setdefault(int.from_bytes(w[:2], "big"), []).append(w)
        extra = c.recv_frame(timeout=0.3)  # a duplicate would show up here
        if extra is not None:
            got.setdefault(int.from_bytes(extra[:2], "big"), []).append(extra)
    return got


def _queries(first: int, count: int) -> dict[int, dns.message.Message]:
    out: dict[int, dns.message.Message] = {}
    for i in range(first, first + count):
        q = make_query(f"q{i}.example.test.", qid=i)
        out[q.id] = q
    return out


def test_upstream_closes_mid_pipeline(dns2dot: StartDns2Dot, fake_upstream: MakeFake) -> None:
    """The upstream hangs up after 3 answers per connection: every client query still
    gets exactly one answer (the right one or SERVFAIL), then service recovers."""
    fake = fake_upstream(mode="close_after", close_after=3)
    d = start(dns2dot, fake.spec, timeout=2)
    tcp_qs = _queries(1, 20)
    udp_qs = _queries(101, 10)
    ok = _check_one_answer_each(_tcp_pipeline(d.port, tcp_qs), tcp_qs)
    ok += _check_one_answer_each(udp_many(d.port, udp_qs.values(), timeout=20), udp_qs)
    assert ok >= 3, "not even the first connection's answers were delivered"
    fake.configure(mode="normal")
    eventually_noerror(d.port, "q999.example.test.")
    assert d.alive


def test_lost_query_resent_at_most_once(dns2dot: StartDns2Dot, fake_upstream: MakeFake) -> None:
    """A connection that dies with the query in flight: it is sent again once, not forever."""
    fake = fake_upstream(mode="close_after", close_after=0)
    d = start(dns2dot, fake.spec, timeout=2)
    q = make_query("q4242.example.test.")
    assert_servfail(udp_query(d.port, q, timeout=CLIENT_TIMEOUT), q)
    time.sleep(0.5)  # let any (wrong) extra retries show up
    n = fake.query_names().count("q4242.example.test.")
    assert 1 <= n <= 2, f"the query reached the upstream {n} times"


def test_never_answers_servfail(dns2dot: StartDns2Dot, fake_upstream: MakeFake) -> None:
    """An upstream that reads but never answers: SERVFAIL after --timeout, UDP and TCP."""
    fake = fake_upstream(mode="silent")
    d = start(dns2dot, fake.spec, timeout=1)
    q = make_query("a.example.test.")
    assert_servfail(udp_query(d.port, q, timeout=CLIENT_TIMEOUT), q)
    qs = _queries(1, 5)
    for qid, ws in _tcp_pipeline(d.port, qs).items():
        assert len(ws) == 1
        assert_servfail(dns.message.from_wire(ws[0]), qs[qid])
    assert fake.wait_for_queries(1)


def test_out_of_order_answers(dns2dot: StartDns2Dot, fake_upstream: MakeFake) -> None:
    """Answers come back reversed in groups of 8: each client still gets its own answer."""
    fake = fake_upstream(mode="reverse", reorder=8, reorder_wait=0.3)
    d = start(dns2dot, fake.spec, timeout=3)
    tcp_qs = _queries(1, 16)
    udp_qs = _queries(201, 16)
    assert _check_one_answer_each(_tcp_pipeline(d.port, tcp_qs), tcp_qs) == 16
    assert _check_one_answer_each(udp_many(d.port, udp_qs.values(), timeout=20), udp_qs) == 16


def _exchange(transport: str, port: int, q: dns.message.Message) -> dns.message.Message:
    """One query over UDP or TCP, raw, so that an unparseable answer fails with its bytes."""
    if transport == "udp":
        wire = udp_exchange(port, q.to_wire(), timeout=CLIENT_TIMEOUT)
    else:
        with TcpClient(port) as c:
            c.send_query(q)
            wire = c.recv_frame(timeout=CLIENT_TIMEOUT)
    assert wire is not None, f"no answer over {transport}"
    try:
        return dns.message.from_wire(wire)
    except dns.exception.DNSException as exc:
        problem = repr(exc)
    pytest.fail(
        f"dns2dot passed an unparseable message to the {transport} client ({problem}): {wire.hex()}"
    )


@pytest.mark.parametrize("mode", ["wrong_id", "wrong_question", "garbage", "garbage_raw"])
def test_bad_answers_never_delivered(
    dns2dot: StartDns2Dot, fake_upstream: MakeFake, mode: str
) -> None:
    """An answer with the wrong ID, another question, or junk (``garbage``: the right ID
    followed by 0xff bytes) is never passed to the client: it gets SERVFAIL; once the
    upstream behaves, answers flow again."""
    fake = fake_upstream(mode=mode)
    d = start(dns2dot, fake.spec, timeout=1)
    for transport in ("udp", "tcp"):
        q = make_query("a.example.test.")
        r = _exchange(transport, d.port, q)
        assert_servfail(r, q)
        assert OTHER_NAME not in r.to_text()
    fake.configure(mode="normal")
    eventually_noerror(d.port, "a.example.test.")
    assert d.alive


def test_slow_upstream_within_timeout(dns2dot: StartDns2Dot, fake_upstream: MakeFake) -> None:
    """An upstream slower than usual but well within --timeout still answers."""
    fake = fake_upstream(mode="slow", delay=0.3)
    d = start(dns2dot, fake.spec, timeout=5)
    r = udp_query(d.port, make_query("q7.example.test."), timeout=CLIENT_TIMEOUT)
    assert a_addresses(r) == {fake_address("q7.example.test.")}


def test_slow_upstream_beyond_timeout(dns2dot: StartDns2Dot, fake_upstream: MakeFake) -> None:
    """An answer later than --timeout: the client already has its SERVFAIL, and only that."""
    fake = fake_upstream(mode="slow", delay=3.0)
    d = start(dns2dot, fake.spec, timeout=1)
    q = make_query("q8.example.test.")
    got = udp_many(d.port, [q], timeout=CLIENT_TIMEOUT)
    assert len(got[q.id]) == 1
    assert_servfail(dns.message.from_wire(got[q.id][0]), q)


# -- failover --------------------------------------------------------------------------


def test_failover_after_tls_failure(dns2dot: StartDns2Dot, fake_upstream: MakeFake) -> None:
    """``-u bad -u good``: the first fails verification, answers come from the second."""
    bad = fake_upstream(cert="untrusted", a_default="192.0.2.66")
    good = fake_upstream(a_default="192.0.2.99")
    d = start(dns2dot, bad.spec, good.spec, timeout=2)
    for transport in (udp_query, tcp_query, udp_query):
        r = transport(d.port, make_query("a.example.test."), timeout=CLIENT_TIMEOUT)
        assert r.rcode() == dns.rcode.NOERROR, r
        assert a_addresses(r) == {"192.0.2.99"}
    assert bad.received == []
    assert "a.example.test." in good.query_names()


def test_failover_after_connection_refused(dns2dot: StartDns2Dot, fake_upstream: MakeFake) -> None:
    """``-u closed-port -u good``: answers come from the second."""
    good = fake_upstream(a_default="192.0.2.98")
    d = start(dns2dot, f"{LOOPBACK}:{free_port()}#{TLS_NAME}", good.spec, timeout=2)
    for transport in (udp_query, tcp_query):
        r = transport(d.port, make_query("a.example.test."), timeout=CLIENT_TIMEOUT)
        assert a_addresses(r) == {"192.0.2.98"}, r


# -- hostile clients -------------------------------------------------------------------

QNAME = b"\x01a\x07example\x04test\x00"
QUESTION = QNAME + struct.pack("!HH", 1, 1)


def header(
    qid: int, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    """A raw 12-byte DNS header."""
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


FORMERR_CASES = {
    "qr_set": header(0x1111, flags=0x8100) + QUESTION,
    "qdcount_0": header(0x1112, qd=0),
    "qdcount_2": header(0x1113, qd=2) + QUESTION + QUESTION,
    "pointer_loop": header(0x1114) + b"\xc0\x0c" + struct.pack("!HH", 1, 1),
    "pointer_out_of_range": header(0x1115) + b"\xc0\xff" + struct.pack("!HH", 1, 1),
    "label_overrun": header(0x1116) + b"\x3fabc",
    "no_type_class": header(0x1117) + QNAME,
    "lying_ancount": header(0x1118, an=3) + QUESTION,
    "lying_arcount": header(0x1119, ar=2) + QUESTION,
}
NOTIMP_CASES = {
    "status": header(0x2221, flags=2 << 11) + QUESTION,
    "notify": header(0x2222, flags=4 << 11) + QUESTION,
    "update": header(0x2223, flags=5 << 11) + QUESTION,
}


def _rcode_of(wire: bytes) -> tuple[int, bool, int]:
    """(ID, QR, RCODE) from a raw answer header."""
    qid, flags = struct.unpack("!HH", wire[:4])
    return qid, bool(flags & 0x8000), flags & 0xF


def _assert_error(wire: bytes | None, sent: bytes, rcode: int) -> None:
    assert wire is not None, "no answer"
    assert len(wire) >= 12
    qid, qr, rc = _rcode_of(wire)
    assert qid == int.from_bytes(sent[:2], "big")
    assert qr
    assert rc == rcode, f"expected {dns.rcode.Rcode(rcode)!r}, got {dns.rcode.Rcode(rc)!r}"


@pytest.fixture
def plain(dns2dot: StartDns2Dot, fake_upstream: MakeFake) -> Dns2Dot:
    """dns2dot (pool mode) in front of a well-behaved fake upstream."""
    return start(dns2dot, fake_upstream().spec, timeout=2)


def _still_serving(d: Dns2Dot) -> None:
    assert d.alive, d.stderr()
    r = udp_query(d.port, make_query("q1.example.test."), timeout=CLIENT_TIMEOUT)
    assert a_addresses(r) == {fake_address("q1")}
    r = tcp_query(d.port, make_query("q2.example.test."), timeout=CLIENT_TIMEOUT)
    assert a_addresses(r) == {fake_address("q2")}


@pytest.mark.parametrize("case", sorted(FORMERR_CASES))
def test_malformed_query_formerr(plain: Dns2Dot, case: str) -> None:
    """A malformed query with a readable header gets FORMERR (same ID) on UDP and TCP."""
    wire = FORMERR_CASES[case]
    _assert_error(udp_exchange(plain.port, wire, timeout=CLIENT_TIMEOUT), wire, dns.rcode.FORMERR)
    with TcpClient(plain.port) as c:
        c.send(frame(wire))
        _assert_error(c.recv_frame(timeout=CLIENT_TIMEOUT), wire, dns.rcode.FORMERR)
    _still_serving(plain)


@pytest.mark.parametrize("case", sorted(NOTIMP_CASES))
def test_other_opcodes_notimp(plain: Dns2Dot, case: str) -> None:
    """Opcodes other than QUERY get NOTIMP (UDP and TCP)."""
    wire = NOTIMP_CASES[case]
    _assert_error(udp_exchange(plain.port, wire, timeout=CLIENT_TIMEOUT), wire, dns.rcode.NOTIMP)
    with TcpClient(plain.port) as c:
        c.send(frame(wire))
        _assert_error(c.recv_frame(timeout=CLIENT_TIMEOUT), wire, dns.rcode.NOTIMP)


def test_udp_short_and_garbage_datagrams(plain: Dns2Dot) -> None:
    """Datagrams under 12 bytes are dropped; random junk never kills the process."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for short in (b"", b"\x00", b"\x12\x34\x01\x00\x00\x01", b"x" * 11):
            s.sendto(short, (LOOPBACK, plain.port))
        s.settimeout(1.0)
        with pytest.raises(TimeoutError):
            data = s.recvfrom(65535)
            pytest.fail(f"a reply to a datagram shorter than a header: {data!r}")
    rng = random.Random(7858)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(200):
            s.sendto(rng.randbytes(rng.randint(12, 600)), (LOOPBACK, plain.port))
        s.sendto(rng.randbytes(60000), (LOOPBACK, plain.port))
    _still_serving(plain)


def test_tcp_short_frame_closes(plain: Dns2Dot) -> None:
    """A frame shorter than a DNS header closes that connection."""
    with TcpClient(plain.port) as c:
        c.send(frame(b"\x12\x34\x01"))
        assert c.wait_closed(timeout=CLIENT_TIMEOUT)
    _still_serving(plain)


def test_tcp_zero_length_frame_closes(plain: Dns2Dot) -> None:
    """A length-0 frame closes that connection."""
    with TcpClient(plain.port) as c:
        c.send(b"\x00\x00")
        assert c.wait_closed(timeout=CLIENT_TIMEOUT)
    _still_serving(plain)


def test_tcp_stalled_and_junk_clients_do_not_hurt_others(plain: Dns2Dot) -> None:
    """A client stalled mid-frame, one sending junk, one vanishing with 1000 queries
    in flight, and 50 connect-and-close clients: everyone else is still served."""
    rng = random.Random(853)
    stalled = TcpClient(plain.port)
    junk = TcpClient(plain.port)
    try:
        stalled.send(b"\x01\x00" + b"\x00" * 20)  # claims 256 bytes, sends 20, stalls
        with contextlib.suppress(OSError):  # dns2dot may close it mid-write: fine
            junk.send(rng.randbytes(8192))
        with TcpClient(plain.port) as gone:
            gone.send(b"".join(frame(q.to_wire()) for q in _queries(1, 1000).values()))
        for _ in range(50):
            socket.create_connection((LOOPBACK, plain.port), timeout=5).close()
        _still_serving(plain)
    finally:
        stalled.close()
        junk.close()
    _still_serving(plain)


def test_pipe_mode_survives_junk(dns2dot: StartDns2Dot, fake_upstream: MakeFake) -> None:
    """--mode pipe: junk on one TCP connection doesn't disturb the process or others."""
    d = start(dns2dot, fake_upstream().spec, timeout=2, mode="pipe")
    rng = random.Random(53)
    with TcpClient(d.port) as junk:
        with contextlib.suppress(OSError):
            junk.send(rng.randbytes(4096))
        with TcpClient(d.port) as zero:
            zero.send(b"\x00\x00")
            _still_serving(d)
    _still_serving(d)
