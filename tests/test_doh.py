"""DNS-over-HTTPS upstreams (RFC 8484) end to end: dns2dot as a real process in front of
unbound serving DoH, and in front of an in-process fake DoH server that injects faults.

Why: DoH is a second transport under the same promises as DoT (docs/ARCHITECTURE.md): strict TLS
(name and pins), every query answered exactly once (the answer, or SERVFAIL within the
timeout; never silence, never someone else's bytes), failover between upstreams of
either kind, and what goes on the wire is what RFC 8484 says: POST
``application/dns-message``, message ID 0, padding, the TLS name as ``:authority``.
Real clients (dig, kdig, dnsperf) drive it; everything is on loopback.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest
from support.dnsperf import run_dnsperf
from support.doh import (
    CONTENT_TYPE,
    DOH_PATH,
    DohRequest,
    FakeDoh,
    UnboundDoh,
    doh_spec,
    spki_pin,
    start_unbound_doh,
)
from support.fake_upstream import fake_address
from support.net import (
    LOOPBACK,
    TcpClient,
    a_addresses,
    frame,
    free_port,
    make_query,
    tcp_query,
    udp_many,
    udp_query,
)
from support.pki import TLS_NAME, Pki
from support.proc import Dns2Dot, require_tool, run_dns2dot, start_dns2dot
from support.unbound import BIG_TXT, N_NAMES, n_address

pytestmark = pytest.mark.integration

TIMEOUT = "2"  # dns2dot --timeout for most tests: failures show up within it
# Every reply must come within dns2dot's timeout; this is the client's own bound, far
# above it, so that "no reply" means dns2dot dropped the query, not that it was slow.
CLIENT_WAIT = 8.0


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unbound_doh(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnboundDoh]:
    """unbound serving ``example.test.`` over DoT and DoH, for the whole module."""
    require_tool("kdig")
    up = start_unbound_doh(tmp_path_factory.mktemp("unbound-doh"), pki)
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="module")
def doh_proxy(
    pki: Pki, unbound_doh: UnboundDoh, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dns2Dot]:
    """dns2dot with unbound's DoH as its only upstream, cache off (every query goes up)."""
    d = start_dns2dot(
        tmp_path_factory.mktemp("dns2dot-doh"),
        upstreams=[unbound_doh.doh_spec],
        cafile=pki.ca,
        extra=["--timeout", TIMEOUT, "--cache-size", "0"],
    )
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def fake_doh(pki: Pki) -> Iterator[Callable[..., FakeDoh]]:
    """Factory: ``fake_doh(mode=..., alpn=..., **settings)`` -> started FakeDoh, stopped after."""
    made: list[FakeDoh] = []

    def make(**kw: Any) -> FakeDoh:
        fake = FakeDoh(pki, **kw)
        made.append(fake)
        return fake.start()

    try:
        yield make
    finally:
        for fake in made:
            fake.stop()


def proxy(
    dns2dot: Callable[..., Dns2Dot], upstreams: Sequence[str], *extra: str, timeout: str = TIMEOUT
) -> Dns2Dot:
    """A dns2dot with ``upstreams``, ``--timeout``, the cache off, and ``extra`` flags."""
    return dns2dot(
        upstreams=list(upstreams), extra=["--timeout", timeout, "--cache-size", "0", *extra]
    )


# -- clients -----------------------------------------------------------------------------


@dataclass
class ToolAnswer:
    """What dig or kdig printed for one response."""

    status: str
    qid: int
    flags: set[str]
    answers: list[tuple[str, str]] = field(default_factory=list)  # (type, rdata)
    raw: str = ""


_HEADER = re.compile(r"->>HEADER<<- opcode: \w+[,;] status: (\w+)[,;] id: (\d+)")
_FLAGS = re.compile(r"^;; [Ff]lags: ([a-z ]*);", re.M)
_RR = re.compile(r"^\S+\s+\d+\s+IN\s+(\S+)\s+(.*)$")


def run_tool(tool: str, port: int, name: str, rdtype: str, *opts: str) -> ToolAnswer:
    """Run dig or kdig at dns2dot and parse the last response it printed."""
    exe = require_tool(tool)
    bounds = ["+tries=1", "+time=5"] if tool == "dig" else ["+retry=0", "+time=5"]
    argv = [exe, *bounds, *opts, f"@{LOOPBACK}", "-p", str(port), name, rdtype]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    text = res.stdout + res.stderr
    headers = list(_HEADER.finditer(text))
    assert headers, f"{tool} printed no response (exit {res.returncode}):\n{text}"
    last = text[headers[-1].start() :]
    flags = _FLAGS.search(last)
    out = ToolAnswer(
        status=headers[-1].group(1),
        qid=int(headers[-1].group(2)),
        flags=set(flags.group(1).split()) if flags else set(),
        raw=text,
    )
    in_answer = False
    for line in last.splitlines():
        if line.startswith(";;") and "SECTION" in line:
            in_answer = "ANSWER SECTION" in line
        elif not line.strip():
            in_answer = False
        elif in_answer and not line.startswith(";"):
            m = _RR.match(line.strip())
            if m:
                out.answers.append((m.group(1), m.group(2).strip()))
    return out


def ask_all(
    port: int,
    names: Sequence[str],
    rdtype: str = "A",
    *,
    qid_base: int = 0x4000,
    transport: str = "udp",
) -> dict[str, dns.message.Message]:
    """Send one query per name at once (UDP datagrams, or pipelined on one TCP
    connection); every one must get exactly one well-formed reply (its own ID and
    question) within :data:`CLIENT_WAIT`. Returns them by name."""
    queries = [make_query(n, rdtype, edns=0, qid=qid_base + i) for i, n in enumerate(names)]
    got: dict[int, list[bytes]] = {q.id: [] for q in queries}
    if transport == "udp":
        got.update(udp_many(port, queries, timeout=CLIENT_WAIT))
    else:
        with TcpClient(port, timeout=CLIENT_WAIT) as client:
            client.send(b"".join(frame(q.to_wire()) for q in queries))
            for reply in client.recv_frames(len(queries), timeout=CLIENT_WAIT):
                got.setdefault(int.from_bytes(reply[:2], "big"), []).append(reply)
    out: dict[str, dns.message.Message] = {}
    silent = [q.question[0].name.to_text() for q in queries if not got.get(q.id)]
    assert not silent, f"no {transport} reply within {CLIENT_WAIT}s for {silent}"
    for q in queries:
        replies = got[q.id]
        assert len(replies) == 1, f"{len(replies)} replies for ID {q.id}"
        msg = dns.message.from_wire(replies[0])  # garbage would raise here
        assert q.is_response(msg), f"reply does not match the query:\n{q}\n---\n{msg}"
        out[q.question[0].name.to_text()] = msg
    return out


def rcodes(answers: dict[str, dns.message.Message]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for msg in answers.values():
        text = dns.rcode.to_text(msg.rcode())
        counts[text] = counts.get(text, 0) + 1
    return counts


def qnames(count: int, start: int = 0) -> list[str]:
    """``q<N>.example.test.``: names the fake answers with a unique address each."""
    return [f"q{i}.example.test." for i in range(start, start + count)]


def nnames(count: int, start: int = 0) -> list[str]:
    """``n<N>.example.test.``: names unbound serves (and the fake answers 192.0.2.1)."""
    return [f"n{i}.example.test." for i in range(start, start + count)]


def assert_fake_answers(answers: dict[str, dns.message.Message]) -> None:
    for name, msg in answers.items():
        assert msg.rcode() == dns.rcode.NOERROR, f"{name}: {dns.rcode.to_text(msg.rcode())}"
        assert a_addresses(msg) == {fake_address(name)}, f"{name}: {msg}"


def assert_unbound_answers(answers: dict[str, dns.message.Message]) -> None:
    for name, msg in answers.items():
        assert msg.rcode() == dns.rcode.NOERROR, f"{name}: {dns.rcode.to_text(msg.rcode())}"
        i = int(name.split(".")[0][1:])
        assert a_addresses(msg) == {n_address(i)}, f"{name}: {msg}"


# -- real unbound over DoH: dig, kdig, dnsperf ------------------------------------------


@pytest.mark.parametrize("tool", ["dig", "kdig"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_answers_through_doh(doh_proxy: Dns2Dot, tool: str, transport: str) -> None:
    """A, AAAA, MX and NXDOMAIN come back exactly as unbound serves them over DoH."""
    opts = ("+tcp",) if transport == "tcp" else ("+notcp",)
    a = run_tool(tool, doh_proxy.port, "a.example.test", "A", *opts)
    assert (a.status, a.answers) == ("NOERROR", [("A", "192.0.2.10")]), a.raw
    aaaa = run_tool(tool, doh_proxy.port, "a.example.test", "AAAA", *opts)
    assert (aaaa.status, aaaa.answers) == ("NOERROR", [("AAAA", "2001:db8::10")]), aaaa.raw
    mx = run_tool(tool, doh_proxy.port, "example.test", "MX", *opts)
    assert (mx.status, mx.answers) == ("NOERROR", [("MX", "10 mail.example.test.")]), mx.raw
    nx = run_tool(tool, doh_proxy.port, "missing.example.test", "A", *opts)
    assert (nx.status, nx.answers) == ("NXDOMAIN", []), nx.raw
    for answer in (a, aaaa, mx, nx):
        assert "qr" in answer.flags and "tc" not in answer.flags, answer.raw


def test_big_answer_truncated_over_udp(doh_proxy: Dns2Dot) -> None:
    """A 2.9 kB answer: TC=1 over plain 512-byte UDP, all 40 records over TCP (via DoH)."""
    tc = run_tool("dig", doh_proxy.port, "big.example.test", "TXT", "+noedns", "+ignore")
    assert tc.status == "NOERROR" and "tc" in tc.flags and not tc.answers, tc.raw
    retried = run_tool("dig", doh_proxy.port, "big.example.test", "TXT")  # UDP, then TCP
    assert "tc" not in retried.flags and len(retried.answers) == len(BIG_TXT), retried.raw
    full = run_tool("kdig", doh_proxy.port, "big.example.test", "TXT", "+tcp")
    assert sorted(r for _, r in full.answers) == sorted(f'"{t}"' for t in BIG_TXT), full.raw


def test_kdig_pipelined_on_one_tcp_connection(doh_proxy: Dns2Dot) -> None:
    """Several queries on one kept-open TCP connection, each answered (RFC 7766 over DoH)."""
    exe = require_tool("kdig")
    names = nnames(8, 100)
    argv = [exe, "+retry=0", "+time=5", "+tcp", "+keepopen", f"@{LOOPBACK}"]
    argv += ["-p", str(doh_proxy.port), *names]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    for i, name in zip(range(100, 108), names, strict=True):
        assert re.search(
            rf"^{re.escape(name)}\s+\d+\s+IN\s+A\s+{n_address(i)}$", res.stdout, re.M
        ), res.stdout + res.stderr
    assert res.stdout.count("status: NOERROR") == len(names), res.stdout


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dnsperf_burst_nothing_lost(doh_proxy: Dns2Dot, tmp_path: Path, transport: str) -> None:
    """3000 queries from 10 dnsperf clients, each through DoH: every one answered."""
    datafile = tmp_path / "queries.txt"
    datafile.write_text("".join(f"n{i % N_NAMES}.example.test A\n" for i in range(3000)))
    res = run_dnsperf(
        doh_proxy.port, datafile, tcp=transport == "tcp", runs=1, clients=10, seconds=30
    )
    assert (res.sent, res.completed, res.lost) == (3000, 3000, 0), res.raw[-2000:]
    assert res.rcodes == {"NOERROR": 3000}, res.raw[-2000:]
    assert doh_proxy.alive


# -- mixed DoT / DoH failover, and the race strategy -------------------------------------


def test_failover_dead_doh_to_dot(dns2dot: Callable[..., Dns2Dot], unbound_doh: UnboundDoh) -> None:
    """First a DoH upstream nobody listens on, then DoT: the DoT upstream answers."""
    dead = doh_spec(free_port())
    p = proxy(dns2dot, [dead, unbound_doh.dot_spec])
    assert_unbound_answers(ask_all(p.port, nnames(20)))
    assert_unbound_answers(ask_all(p.port, nnames(20, 20), transport="tcp"))
    assert f"{dead}: connection refused" in p.stderr(), p.stderr()


def test_failover_dead_dot_to_doh(dns2dot: Callable[..., Dns2Dot], unbound_doh: UnboundDoh) -> None:
    """First a DoT upstream nobody listens on, then DoH: the DoH upstream answers."""
    dead = f"{LOOPBACK}:{free_port()}#{TLS_NAME}"
    p = proxy(dns2dot, [dead, unbound_doh.doh_spec])
    assert_unbound_answers(ask_all(p.port, nnames(20, 40)))
    assert_unbound_answers(ask_all(p.port, nnames(20, 60), transport="tcp"))
    assert f"{dead}: connection refused" in p.stderr(), p.stderr()


class Pounder:
    """Queries dns2dot over UDP one after another in a thread, recording every outcome."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.results: list[tuple[str, str]] = []  # (name, "NOERROR 10.1.0.5" / "TIMEOUT")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set() and i < 20000:
            name = f"n{i % N_NAMES}.example.test."
            try:
                msg = udp_query(self.port, make_query(name, edns=0), timeout=CLIENT_WAIT)
                got = f"{dns.rcode.to_text(msg.rcode())} {','.join(sorted(a_addresses(msg)))}"
            except Exception as exc:  # dns.exception.Timeout and friends: a lost query
                got = f"NO REPLY ({type(exc).__name__})"
            self.results.append((name, got))
            i += 1

    def __enter__(self) -> Pounder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(CLIENT_WAIT + 5)

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.results) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.results) >= count, f"only {len(self.results)} answers in {timeout}s"


@pytest.mark.parametrize("first", ["doh", "dot"])
def test_first_upstream_stops_mid_test(
    dns2dot: Callable[..., Dns2Dot],
    pki: Pki,
    unbound_doh: UnboundDoh,
    tmp_path: Path,
    first: str,
) -> None:
    """Two upstreams of different kinds; the first is stopped while queries flow: every
    query is still answered, correctly, by the other one."""
    doomed = start_unbound_doh(tmp_path / "doomed", pki)
    try:
        if first == "doh":
            p = proxy(dns2dot, [doomed.doh_spec, unbound_doh.dot_spec])
        else:
            p = proxy(dns2dot, [doomed.dot_spec, unbound_doh.doh_spec])
        with Pounder(p.port) as pounder:
            pounder.wait_for(50)
            doomed.stop()
            stopped_at = len(pounder.results)
            pounder.wait_for(stopped_at + 150)
        results = list(pounder.results)
    finally:
        doomed.stop()
    wrong = [
        (i, name, got)
        for i, (name, got) in enumerate(results)
        if got != f"NOERROR {n_address(int(name.split('.')[0][1:]))}"
    ]
    assert not wrong, f"stopped after answer {stopped_at}; wrong or missing: {wrong[:10]}"
    assert p.alive


def test_doh_upstream_restart_recovers(
    dns2dot: Callable[..., Dns2Dot], pki: Pki, tmp_path: Path
) -> None:
    """The only (DoH) upstream goes away: SERVFAIL within the timeout, never silence; it
    comes back on the same port: dns2dot reconnects and answers again."""
    up = start_unbound_doh(tmp_path / "restarted", pki)
    try:
        p = proxy(dns2dot, [up.doh_spec])
        assert_unbound_answers(ask_all(p.port, nnames(10, 900)))
        up.stop()
        assert rcodes(ask_all(p.port, nnames(10, 910))) == {"SERVFAIL": 10}
        up = start_unbound_doh(
            tmp_path / "restarted", pki, dot_port=up.dot_port, doh_port=up.doh_port
        )
        last: dict[str, int] = {}
        for attempt in range(40):  # backoff starts at 1 s; bounded at about 20 s
            last = rcodes(ask_all(p.port, nnames(5, 920 + attempt)))
            if last == {"NOERROR": 5}:
                break
            time.sleep(0.5)
        assert last == {"NOERROR": 5}, f"still {last} after the upstream came back"
    finally:
        up.stop()


def test_race_dot_and_doh(dns2dot: Callable[..., Dns2Dot], unbound_doh: UnboundDoh) -> None:
    """--strategy race with one DoT and one DoH upstream (the same unbound): all correct."""
    p = proxy(dns2dot, [unbound_doh.dot_spec, unbound_doh.doh_spec], "--strategy", "race")
    for start in (200, 300):
        assert_unbound_answers(ask_all(p.port, nnames(50, start)))


def test_race_sends_to_the_doh_leg(
    dns2dot: Callable[..., Dns2Dot], unbound_doh: UnboundDoh, fake_doh: Callable[..., FakeDoh]
) -> None:
    """Racing DoT against a DoH upstream that never answers: DoT's answers win, and every
    query did go to the DoH leg as well."""
    fake = fake_doh(mode="silent")
    p = proxy(dns2dot, [unbound_doh.dot_spec, fake.spec()], "--strategy", "race")
    # Both legs connected first: a query DoT has answered while the DoH connection is
    # still being set up is not sent there any more (it would be wasted), so single
    # queries go until one reaches the DoH leg (bounded).
    warm = nnames(50, 300)
    for name in warm:
        assert_unbound_answers(ask_all(p.port, [name]))
        if fake.wait_for_requests(1, timeout=0.2):
            break
    else:
        pytest.fail("no query reached the DoH leg")
    before = len(fake.requests)
    names = nnames(20, 400)
    assert_unbound_answers(ask_all(p.port, names))
    assert fake.wait_for_requests(before + len(names))
    assert sorted(set(fake.qnames()) - set(warm)) == sorted(names)
    fake.configure(mode="normal")  # now both answer: either answer is a right one
    for name, msg in ask_all(p.port, nnames(20, 500)).items():
        i = int(name.split(".")[0][1:])
        assert msg.rcode() == dns.rcode.NOERROR
        assert a_addresses(msg) in ({n_address(i)}, {fake_address(name)}), msg


# -- what goes on the wire ---------------------------------------------------------------


def check_request(request: DohRequest, fake: FakeDoh, *, padded: bool = True) -> None:
    """RFC 8484 §4.1 and §6: POST to the configured path, the DNS media type both ways,
    message ID 0, the TLS name as the authority; RFC 8467 block padding."""
    h = request.headers
    assert request.protocol == "h2" and request.method == "POST", request
    assert (h[":scheme"], h[":path"]) == ("https", fake.path), h
    assert h[":authority"] == f"{TLS_NAME}:{fake.port}", h
    assert h["content-type"] == CONTENT_TYPE and h["accept"] == CONTENT_TYPE, h
    assert int(h["content-length"]) == len(request.body), h
    assert request.dns_id == 0, f"message ID on the wire is {request.dns_id}, not 0"
    assert request.msg is not None and request.msg.question, request.body.hex()
    if padded:
        assert len(request.body) % 128 == 0, f"body of {len(request.body)} bytes is not padded"


@pytest.mark.parametrize("edns", [None, 0])
def test_wire_id_zero_padding_and_headers(
    dns2dot: Callable[..., Dns2Dot], fake_doh: Callable[..., FakeDoh], edns: int | None
) -> None:
    """Client IDs are replaced by 0 upstream and restored on the way back, over UDP and TCP."""
    fake = fake_doh()
    p = proxy(dns2dot, [fake.spec()])
    for i, qid in enumerate((0x1234, 0xBEEF, 0x0001, 0xFFFF)):
        name = f"q{700 + i}.example.test."
        q = make_query(name, edns=edns, qid=qid)
        for ask in (udp_query, tcp_query):
            reply = ask(p.port, q, timeout=CLIENT_WAIT)
            assert reply.id == qid and q.is_response(reply), reply
            assert a_addresses(reply) == {fake_address(name)}, reply
            assert (reply.edns >= 0) == (edns is not None), f"OPT mismatch:\n{reply}"
    requests = fake.requests
    assert len(requests) == 8, [r.qname for r in requests]
    for request in requests:
        check_request(request, fake)
    assert set(fake.alpn_seen) == {"h2"} and set(fake.sni) == {TLS_NAME}


def test_custom_path_and_no_padding(
    dns2dot: Callable[..., Dns2Dot], fake_doh: Callable[..., FakeDoh]
) -> None:
    """``https://IP:PORT/other/path#NAME`` posts to that path; --no-padding sends the
    client's query as it is (under ID 0)."""
    fake = fake_doh(path="/resolve/v1")
    p = proxy(dns2dot, [fake.spec()], "--no-padding")
    q = make_query("q42.example.test.", qid=0x5151)
    reply = udp_query(p.port, q, timeout=CLIENT_WAIT)
    assert reply.id == 0x5151 and a_addresses(reply) == {fake_address("q42.example.test.")}
    (request,) = fake.requests
    check_request(request, fake, padded=False)
    q.id = 0
    assert request.body == q.to_wire()


# -- faults from a fake DoH server ------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_goaway_streams_beyond_last_are_retried(
    dns2dot: Callable[..., Dns2Dot], fake_doh: Callable[..., FakeDoh], transport: str
) -> None:
    """GOAWAY naming a last stream below some in flight: those streams were never
    processed (RFC 9113 §6.8); they are sent again on a new connection and answered."""
    fake = fake_doh(mode="goaway", goaway_after=10, goaway_answer=3)
    p = proxy(dns2dot, [fake.spec()])
    names = qnames(10, 10)
    assert_fake_answers(ask_all(p.port, names, transport=transport))
    ((conn, last),) = fake.goaways
    first = [r for r in fake.requests if r.conn == conn]
    later = [r for r in fake.requests if r.conn > conn]
    beyond = sorted(r.qname for r in first if r.stream_id > last)
    assert len(first) == 10 and len(beyond) == 7, [(r.stream_id, r.qname) for r in first]
    assert sorted(r.qname for r in later) == beyond  # exactly those, once each
    for request in fake.requests:
        check_request(request, fake)
    assert_fake_answers(ask_all(p.port, qnames(5, 30)))  # and the upstream is still used


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_refused_streams_are_retried(
    dns2dot: Callable[..., Dns2Dot], fake_doh: Callable[..., FakeDoh], transport: str
) -> None:
    """RST_STREAM REFUSED_STREAM (not processed, RFC 9113 §8.7): sent again, answered."""
    fake = fake_doh(mode="refuse", fault_limit=3)
    p = proxy(dns2dot, [fake.spec()])
    names = qnames(10, 40)
    assert_fake_answers(ask_all(p.port, names, transport=transport))
    seen = fake.qnames()
    assert len(seen) == 13 and sorted(set(seen)) == sorted(names), seen


def test_always_refused_is_servfail_without_a_retry_storm(
    dns2dot: Callable[..., Dns2Dot], fake_doh: Callable[..., FakeDoh]
) -> None:
    """An upstream that refuses every stream (overloaded): clients get SERVFAIL within the
    timeout, and the upstream is not hammered with the same queries meanwhile."""
    fake = fake_doh(mode="refuse")
    p = proxy(dns2dot, [fake.spec()])
    names = qnames(10, 60)
    assert rcodes(ask_all(p.port, names)) == {"SERVFAIL": 10}
    # A retry or two per query is fair; more is a storm against an upstream in trouble.
    sent = len(fake.requests)
    assert sent <= 4 * len(names), f"{sent} requests for {len(names)} queries in {TIMEOUT}s"
    assert p.alive


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_reset_stream_single_upstream_servfail(
    dns2dot: Callable[..., Dns2Dot], fake_doh: Callable[..., FakeDoh], transport: str
) -> None:
    """RST_STREAM INTERNAL_ERROR on every stream: SERVFAIL, each query sent at most twice."""
    fake = fake_doh(mode="reset")
    p = proxy(dns2dot, [fake.spec()])
    names = qnames(10, 80)
    assert rcodes(ask_all(p.port, names, transport=transport)) == {"SERVFAIL": 10}
    assert len(fake.requests) <= 2 * len(names), len(fake.requests)
    fake.configure(mode="normal")
    assert_fake_answers(ask_all(p.port, qnames(5, 90)))


def test_reset_stream_with_a_second_upstream(
    dns2dot: Callable[..., Dns2Dot], fake_doh: Callable[..., FakeDoh], unbound_doh: UnboundDoh
) -> None:
    """RST_STREAM CANCEL from the first upstream, a good DoT second: each client gets the
    second's answer or SERVFAIL, never silence or a wrong answer."""
    import h2.errors

    fake = fake_doh(mode="reset", reset_code=int(h2.errors.ErrorCodes.CANCEL))
    p = proxy(dns2dot, [fake.spec(), unbound_doh.dot_spec])
    for name, msg in ask_all(p.port, nnames(10, 600)).items():
        if msg.rcode() != dns.rcode.SERVFAIL:
            assert_unbound_answers({name: msg})


@pytest.mark.parametrize("status", [400, 500, 503])
def test_http_error_status(
    dns2dot: Callable[..., Dns2Dot],
    fake_doh: Callable[..., FakeDoh],
    unbound_doh: UnboundDoh,
    status: int,
) -> None:
    """HTTP 4xx/5xx: that upstream's SERVFAIL; with a second upstream, its answer."""
    fake = fake_doh(mode="status", status=status)
    alone = proxy(dns2dot, [fake.spec()])
    assert rcodes(ask_all(alone.port, qnames(10, 100))) == {"SERVFAIL": 10}
    assert rcodes(ask_all(alone.port, qnames(10, 100), transport="tcp")) == {"SERVFAIL": 10}
    two = proxy(dns2dot, [fake.spec(), unbound_doh.dot_spec])
    assert_unbound_answers(ask_all(two.port, nnames(10, 700)))
    assert_unbound_answers(ask_all(two.port, nnames(10, 710), transport="tcp"))
    fake.configure(mode="normal")  # the upstream itself was never marked unusable
    assert_fake_answers(ask_all(alone.port, qnames(5, 110)))


def test_wrong_content_type(
    dns2dot: Callable[..., Dns2Dot], fake_doh: Callable[..., FakeDoh], unbound_doh: UnboundDoh
) -> None:
    """200 with a valid DNS body but ``text/html``: not used (SERVFAIL, or the second's)."""
    fake = fake_doh(mode="content_type", content_type="text/html; charset=utf-8")
    alone = proxy(dns2dot, [fake.spec()])
    assert rcodes(ask_all(alone.port, qnames(10, 120))) == {"SERVFAIL": 10}
    two = proxy(dns2dot, [fake.spec(), unbound_doh.dot_spec])
    assert_unbound_answers(ask_all(two.port, nnames(10, 720)))


@pytest.mark.parametrize("size", [70_000, 140_000])
def test_oversized_body_then_recovery(
    dns2dot: Callable[..., Dns2Dot], fake_doh: Callable[..., FakeDoh], size: int
) -> None:
    """A body longer than any DNS message: SERVFAIL for that query; the next queries to
    the same (now well-behaved) upstream are answered."""
    fake = fake_doh(mode="oversized", oversize=size, fault_limit=1)
    p = proxy(dns2dot, [fake.spec()])
    assert rcodes(ask_all(p.port, qnames(1, 140))) == {"SERVFAIL": 1}
    assert_fake_answers(ask_all(p.port, qnames(10, 150)))
    assert p.alive


def test_oversized_bodies_with_a_second_upstream(
    dns2dot: Callable[..., Dns2Dot], fake_doh: Callable[..., FakeDoh], unbound_doh: UnboundDoh
) -> None:
    fake = fake_doh(mode="oversized", oversize=100_000)
    p = proxy(dns2dot, [fake.spec(), unbound_doh.dot_spec])
    assert_unbound_answers(ask_all(p.port, nnames(10, 740)))


def test_slow_headers_beyond_timeout(
    dns2dot: Callable[..., Dns2Dot], fake_doh: Callable[..., FakeDoh]
) -> None:
    """Response headers after 3 s with --timeout 1.5: SERVFAIL (EDE 22), not a hang;
    headers after 0.2 s: answered."""
    fake = fake_doh(mode="slow", delay=3.0)
    p = proxy(dns2dot, [fake.spec()], timeout="1.5")
    answers = ask_all(p.port, qnames(5, 160))
    assert rcodes(answers) == {"SERVFAIL": 5}
    for msg in answers.values():
        assert [o.code for o in msg.options if o.otype == 15] == [22], msg
    fake.configure(delay=0.2)
    assert_fake_answers(ask_all(p.port, qnames(5, 170)))


def test_never_answers(dns2dot: Callable[..., Dns2Dot], fake_doh: Callable[..., FakeDoh]) -> None:
    fake = fake_doh(mode="silent")
    p = proxy(dns2dot, [fake.spec()], timeout="1")
    assert rcodes(ask_all(p.port, qnames(10, 180))) == {"SERVFAIL": 10}
    assert rcodes(ask_all(p.port, qnames(10, 190), transport="tcp")) == {"SERVFAIL": 10}
    assert p.alive


def test_http1_only_server(
    dns2dot: Callable[..., Dns2Dot], fake_doh: Callable[..., FakeDoh]
) -> None:
    """A server that offers only http/1.1 in ALPN: POST with Content-Length, answers work
    (UDP and TCP clients, many at once); HTTP errors there are SERVFAIL too."""
    fake = fake_doh(alpn="http/1.1")
    p = proxy(dns2dot, [fake.spec()])
    assert_fake_answers(ask_all(p.port, qnames(20, 200)))
    assert_fake_answers(ask_all(p.port, qnames(20, 220), transport="tcp"))
    reply = tcp_query(p.port, make_query("q250.example.test.", qid=0x2525), timeout=CLIENT_WAIT)
    assert reply.id == 0x2525 and a_addresses(reply) == {fake_address("q250.example.test.")}
    assert set(fake.alpn_seen) == {"http/1.1"}
    for request in fake.requests:
        assert (request.protocol, request.method, request.path) == ("http/1.1", "POST", DOH_PATH)
        assert request.headers["content-type"] == CONTENT_TYPE, request.headers
        assert int(request.headers["content-length"]) == len(request.body)
        assert request.authority == f"{TLS_NAME}:{fake.port}"
        assert request.dns_id == 0
    fake.configure(mode="status", status=502)
    assert rcodes(ask_all(p.port, qnames(5, 260))) == {"SERVFAIL": 5}
    fake.configure(mode="normal")
    assert_fake_answers(ask_all(p.port, qnames(5, 270)))


# -- TLS: name and pins ------------------------------------------------------------------


def test_pins(dns2dot: Callable[..., Dns2Dot], pki: Pki, unbound_doh: UnboundDoh) -> None:
    """--pin with the DoH server's key: answers; with another key: SERVFAIL, and it says why."""
    right = proxy(dns2dot, [unbound_doh.doh_spec], "--pin", spki_pin(pki.good.cert))
    assert_unbound_answers(ask_all(right.port, nnames(5, 800)))
    wrong = proxy(dns2dot, [unbound_doh.doh_spec], "--pin", spki_pin(pki.untrusted.cert))
    assert rcodes(ask_all(wrong.port, nnames(5, 810))) == {"SERVFAIL": 5}
    assert "pin" in wrong.stderr().lower(), wrong.stderr()


def test_wrong_tls_name_is_servfail(
    dns2dot: Callable[..., Dns2Dot], unbound_doh: UnboundDoh
) -> None:
    p = proxy(dns2dot, [doh_spec(unbound_doh.doh_port, name="wrong.test")])
    assert rcodes(ask_all(p.port, nnames(3, 820))) == {"SERVFAIL": 3}
    assert "mismatch" in p.stderr(), p.stderr()


# -- dns2dot check -----------------------------------------------------------------------


def test_check_doh_upstream_ok(pki: Pki, unbound_doh: UnboundDoh) -> None:
    res = run_dns2dot(
        ["check", "-u", unbound_doh.doh_spec, "--cafile", str(pki.ca), "--name", "example.test"]
    )
    assert res.returncode == 0, res.stdout + res.stderr
    row = next(line for line in res.stdout.splitlines() if line.startswith("https://"))
    assert row.split()[:2] == [unbound_doh.doh_spec, "ok"], res.stdout
    assert "h2" in row and "NOERROR" in row, row
    assert spki_pin(pki.good.cert) in res.stdout


def test_check_doh_wrong_name_fails(pki: Pki, unbound_doh: UnboundDoh) -> None:
    spec = doh_spec(unbound_doh.doh_port, name="wrong.test")
    res = run_dns2dot(["check", "-u", spec, "--cafile", str(pki.ca), "--timeout", TIMEOUT])
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL" in res.stdout and "mismatch" in res.stdout, res.stdout


def test_check_http1_upstream(pki: Pki, fake_doh: Callable[..., FakeDoh]) -> None:
    fake = fake_doh(alpn="http/1.1")
    res = run_dns2dot(["check", "-u", fake.spec(), "--cafile", str(pki.ca), "--json"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert '"alpn": "http/1.1"' in res.stdout and '"ok": true' in res.stdout, res.stdout


# -- configuration ----------------------------------------------------------------------


def test_name_without_bootstrap_is_a_config_error() -> None:
    res = run_dns2dot(["-l", f"{LOOPBACK}:{free_port()}", "-u", "https://name.example/dns-query"])
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--upstream" in lines[0] and "name.example" in lines[0], lines
    assert "bootstrap" in lines[0], lines


def test_yaml_without_bootstrap_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "dns2dot.yml"
    config.write_text("upstreams:\n  - address: https://dns.test/dns-query\n")
    res = run_dns2dot(["-l", f"{LOOPBACK}:{free_port()}", "-c", str(config)])
    assert res.returncode == 2 and "bootstrap" in res.stderr, res.stdout + res.stderr


def test_yaml_bootstrap(
    dns2dot: Callable[..., Dns2Dot], fake_doh: Callable[..., FakeDoh], tmp_path: Path
) -> None:
    """``address: https://NAME:PORT/PATH`` with ``bootstrap: IP``: connects to the IP,
    verifies NAME, and sends NAME as the authority."""
    fake = fake_doh()
    config = tmp_path / "dns2dot.yml"
    config.write_text(
        "upstreams:\n"
        f"  - address: https://{TLS_NAME}:{fake.port}{DOH_PATH}\n"
        f"    bootstrap: {LOOPBACK}\n"
    )
    p = dns2dot(extra=["-c", str(config), "--timeout", TIMEOUT])
    assert fake.spec() in p.startup, p.startup
    assert_fake_answers(ask_all(p.port, qnames(5, 300)))
    for request in fake.requests:
        check_request(request, fake)
    assert set(fake.sni) == {TLS_NAME}


def test_startup_line_names_both_kinds(
    dns2dot: Callable[..., Dns2Dot], unbound_doh: UnboundDoh
) -> None:
    p = proxy(dns2dot, [unbound_doh.dot_spec, unbound_doh.doh_spec])
    assert f"tls {unbound_doh.dot_spec}" in p.startup and unbound_doh.doh_spec in p.startup
