"""The batched UDP listener (recvmmsg/sendmmsg through ctypes) and its asyncio fallback.

Why: on Linux every UDP query goes through ``dns2dot.transport.datagram``; a slot
mix-up there would answer one client with another's query, twice, or from the wrong
address. These tests check, on loopback only:

- the datagram layer alone: more datagrams than one batch, each echoed once, to its
  sender, in order, over IPv4 and IPv6;
- a wildcard listener answers from the address each query was sent to (127.0.0.2 on
  IPv4; fd00::53 on IPv6, in a private network namespace with that address on lo), on
  the cache-hit path and on the upstream path; the client is a socket that is not
  connected, so the kernel would deliver an answer from any address;
- both paths (batched, and ``DNS2DOT_UDP_BATCH=off``): many clients at once, hits
  and misses mixed, every query answered exactly once with its own ID and question;
  hostile datagrams (empty, 65,507 octets, cut headers) leave the process serving.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from support.fake_upstream import FakeUpstream, fake_address
from support.net import LOOPBACK, free_port, make_query
from support.pki import Pki
from support.proc import Dns2Dot, base_env, require_tool

from dns2dot.transport import datagram

Factory = Callable[..., Dns2Dot]
FakeFactory = Callable[..., FakeUpstream]

PATHS = [pytest.param({}, id="batched"), pytest.param({"DNS2DOT_UDP_BATCH": "off"}, id="asyncio")]
PATH_LOG = {"batched": "recvmmsg/sendmmsg", "asyncio": "asyncio datagram endpoint"}


def exchange_from(
    target: str, port: int, wire: bytes, bind: str, timeout: float = 5.0
) -> tuple[bytes, str]:
    """Send one datagram from an unconnected socket; the answer and its source address."""
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((bind, 0))
        s.settimeout(timeout)
        s.sendto(wire, (target, port))
        data, source = s.recvfrom(65535)
        return data, str(source[0])


# -- the datagram layer alone ----------------------------------------------------------


@pytest.mark.parametrize("family, host", [(socket.AF_INET, LOOPBACK), (socket.AF_INET6, "::1")])
def test_datagram_socket_echoes_more_than_a_batch(family: socket.AddressFamily, host: str) -> None:
    assert datagram.available()
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((host, 0))
    server.setblocking(False)
    io = datagram.DatagramSocket(server, pktinfo=False, batch=8)
    clients = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for c in clients:
            c.bind((host, 0))
            c.settimeout(5)
        count = 30
        for i in range(count):
            clients[i % 3].sendto(b"q%03d" % i, server.getsockname()[:2])
        got: list[tuple[bytes, bytes, bytes]] = []
        deadline = time.monotonic() + 5
        while len(got) < count and time.monotonic() < deadline:
            batch = io.receive()
            assert len(batch) <= 8
            got.extend(batch)
            if not batch:
                time.sleep(0.01)
        assert [p for p, _, _ in got] == [b"q%03d" % i for i in range(count)]
        for payload, name, control in got:
            assert control == b""
            if not io.queue(b"a" + payload, name, control):
                assert io.flush()
                assert io.queue(b"a" + payload, name, control)
        assert io.flush()
        for i in range(count):
            data, _ = clients[i % 3].recvfrom(100)
            # Each client's answers come back in the order it sent its queries.
            assert data == b"aq%03d" % i
        for c in clients:
            c.settimeout(0.2)
            with pytest.raises(TimeoutError):
                c.recvfrom(100)  # nothing twice
    finally:
        server.close()
        for c in clients:
            c.close()


def sockaddr_in(host: str, port: int) -> bytes:
    """struct sockaddr_in as the kernel writes it: family in host order, then the port
    and the address in network order, then eight zeros."""
    return (
        socket.AF_INET.to_bytes(2, sys.byteorder)
        + port.to_bytes(2, "big")
        + socket.inet_aton(host)
        + bytes(8)
    )


def test_datagram_socket_skips_an_answer_it_cannot_send() -> None:
    """sendmmsg stops at a message the kernel rejects (port 0 here): that one is
    skipped, the ones after it still go out, and nothing stays queued."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((LOOPBACK, 0))
    server.setblocking(False)
    io = datagram.DatagramSocket(server, pktinfo=False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind((LOOPBACK, 0))
        c.settimeout(5)
        good = sockaddr_in(LOOPBACK, c.getsockname()[1])
        assert io.queue(b"one", good, b"")
        assert io.queue(b"two", sockaddr_in(LOOPBACK, 0), b"")
        assert io.queue(b"three", good, b"")
        assert io.flush() and io.queued == 0
        assert [c.recvfrom(100)[0] for _ in range(2)] == [b"one", b"three"]
        with pytest.raises(ValueError):
            io.queue(b"x", good[:8], b"")  # not a sockaddr of this socket's family
    server.close()


def test_datagram_socket_answers_from_the_address_asked() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", 0))
    server.setblocking(False)
    io = datagram.DatagramSocket(server, pktinfo=True)
    port = server.getsockname()[1]
    try:
        for target in ("127.0.0.2", "127.0.0.3", LOOPBACK):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.bind((LOOPBACK, 0))
                c.settimeout(5)
                c.sendto(b"hello", (target, port))
                batch: list[tuple[bytes, bytes, bytes]] = []
                for _ in range(500):
                    batch = io.receive()
                    if batch:
                        break
                    time.sleep(0.01)
                [(payload, name, control)] = batch
                assert payload == b"hello" and control
                assert io.queue(b"world", name, control) and io.flush()
                data, source = c.recvfrom(100)
                assert (data, source[0]) == (b"world", target)
    finally:
        server.close()


# -- the listener, both paths ----------------------------------------------------------


def start(dns2dot: Factory, fake: FakeUpstream, env: dict[str, str], **kw: object) -> Dns2Dot:
    extra = list(kw.pop("extra", []))  # type: ignore[call-overload]
    # A generous query timeout: on a loaded machine an answer is late, not SERVFAIL.
    return dns2dot(upstreams=[fake.spec], env=env, extra=["-v", "--timeout", "30", *extra], **kw)


@pytest.mark.parametrize("env", PATHS)
def test_many_clients_each_answered_once_with_their_own_query(
    dns2dot: Factory,
    fake_upstream: FakeFactory,
    env: dict[str, str],
    request: pytest.FixtureRequest,
) -> None:
    """Eight clients send 60 queries each, all at once: a name repeated by every client
    (cache hits after the first), names of their own (misses) and a repeat of their own
    (a hit, or a miss still in flight). Every query gets exactly one answer, with its
    ID, its question and the address the fake gives that name."""
    fake = fake_upstream()
    d = start(dns2dot, fake, env)
    path = request.node.callspec.id
    assert PATH_LOG[path] in d.stderr()
    clients = 8
    per_client = 60
    sel = selectors.DefaultSelector()
    expected: dict[tuple[int, int], str] = {}
    socks = []
    for c in range(clients):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((LOOPBACK, 0))
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, c)
    try:
        for i in range(per_client):
            for c, s in enumerate(socks):
                n = 1 if i % 3 == 0 else 1000 + c * 100 + i % 20
                name = f"q{n}.example.test."
                qid = c * 1000 + i
                q = make_query(name, qid=qid)
                expected[(c, qid)] = name
                s.sendto(q.to_wire(), (LOOPBACK, d.port))
        seen: dict[tuple[int, int], int] = {}
        deadline = time.monotonic() + 40
        while len(seen) < len(expected) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                c = key.data
                while True:
                    try:
                        data = key.fileobj.recv(65535)  # type: ignore[union-attr]
                    except BlockingIOError:
                        break
                    msg = dns.message.from_wire(data)
                    k = (c, msg.id)
                    assert k in expected, f"client {c} got an answer to ID {msg.id}"
                    seen[k] = seen.get(k, 0) + 1
                    name = expected[k]
                    assert msg.rcode() == dns.rcode.NOERROR
                    assert msg.question[0].name.to_text() == name
                    assert msg.answer[0][0].address == fake_address(name)
        assert len(seen) == len(expected)
        time.sleep(0.3)  # anything answered twice arrives by now
        for s in socks:
            with pytest.raises(BlockingIOError):
                s.recv(65535)
        assert set(seen.values()) == {1}
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("env", PATHS)
def test_hostile_datagrams_leave_it_serving(
    dns2dot: Factory, fake_upstream: FakeFactory, env: dict[str, str]
) -> None:
    """An empty datagram, a 65,507-octet one (the IPv4 maximum) and cut headers get no
    answer, a query cut after its header gets FORMERR, and the next query is served."""
    fake = fake_upstream()
    d = start(dns2dot, fake, env)
    good = make_query("q7.example.test.", qid=77).to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        s.settimeout(0.5)
        for junk in (b"", b"\xab" * 65507, good[:5], good[:11]):
            s.sendto(junk, (LOOPBACK, d.port))
        with pytest.raises(TimeoutError):
            s.recvfrom(65535)
        s.sendto(good[:14], (LOOPBACK, d.port))  # a header and a cut question
        s.settimeout(5)
        data, _ = s.recvfrom(65535)
        assert data[:2] == good[:2] and data[3] & 0x0F == dns.rcode.FORMERR
        for _ in range(2):  # a miss, then a hit
            s.sendto(good, (LOOPBACK, d.port))
            answer = dns.message.from_wire(s.recvfrom(65535)[0])
            assert answer.id == 77 and answer.answer[0][0].address == fake_address("q7.")
    assert d.proc.poll() is None


def test_wildcard_listener_answers_from_the_address_asked(
    dns2dot: Factory, fake_upstream: FakeFactory
) -> None:
    """``-l 0.0.0.0:PORT`` queried at 127.0.0.2 and 127.0.0.3: the answers (a miss
    through the upstream, then a cache hit, then REFUSED for a client not on the
    access list) come from the address asked."""
    fake = fake_upstream()
    port = free_port()
    extra = ["-l", f"0.0.0.0:{port}", "--allow", "127.0.0.1/32"]
    d = start(dns2dot, fake, {}, listen_flag=False, listen_port=port, extra=extra)
    for target in ("127.0.0.2", "127.0.0.3"):
        for qid in (1, 2):  # the upstream path, then the known-hit path
            wire = make_query("q42.example.test.", qid=qid).to_wire()
            data, source = exchange_from(target, port, wire, bind=LOOPBACK)
            assert source == target
            answer = dns.message.from_wire(data)
            assert answer.id == qid and answer.answer[0][0].address == fake_address("q42.")
    wire = make_query("q42.example.test.", qid=3).to_wire()
    data, source = exchange_from("127.0.0.2", port, wire, bind="127.0.0.9")
    assert source == "127.0.0.2" and data[:2] == wire[:2]
    assert data[3] & 0x0F == dns.rcode.REFUSED
    assert d.proc.poll() is None


NETNS_SCRIPT = textwrap.dedent(
    """
    import socket, subprocess, sys, time
    import dns.message, dns.rcode
    ip, port, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    subprocess.run([ip, "link", "set", "lo", "up"], check=True)
    subprocess.run([ip, "-6", "addr", "add", "fd00::53/128", "dev", "lo", "nodad"], check=True)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while "udp+tcp" not in proc.stderr.readline() and time.monotonic() < deadline:
            assert proc.poll() is None, "dns2dot exited"
        for qid in (1, 2):
            # AXFR is answered NOTIMP by dns2dot itself: no upstream in here.
            wire = dns.message.make_query("x.example.test.", "AXFR", id=qid).to_wire()
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
                s.bind(("::1", 0))
                s.settimeout(5)
                s.sendto(wire, ("fd00::53", port))
                data, source = s.recvfrom(65535)
            answer = dns.message.from_wire(data)
            assert answer.id == qid and answer.rcode() == dns.rcode.NOTIMP, answer
            print(source[0])
    finally:
        proc.terminate()
        proc.wait(10)
    """
)


def test_ipv6_wildcard_listener_answers_from_the_address_asked(pki: Pki) -> None:
    """``-l [::]:PORT`` in a private network namespace with fd00::53 on lo: a query
    sent to fd00::53 from ::1 is answered from fd00::53 (without packet info the
    kernel would pick ::1)."""
    unshare = require_tool("unshare")
    ip = require_tool("ip")
    port = 5353
    argv = [
        sys.executable,
        "-m",
        "dns2dot",
        "-l",
        f"[::]:{port}",
        "-u",
        "127.0.0.1:853#dns.test",
        "--cafile",
        str(pki.ca),
    ]
    done = subprocess.run(
        [unshare, "-n", sys.executable, "-c", NETNS_SCRIPT, ip, str(port), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=base_env(),
        cwd=os.getcwd(),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["fd00::53", "fd00::53"]


@pytest.mark.parametrize("env", PATHS)
def test_ratelimit_slips_empty_truncated_answers(
    dns2dot: Factory, fake_upstream: FakeFactory, env: dict[str, str]
) -> None:
    """``--ratelimit 1``: of 20 queries sent at once, each gets exactly one answer; the
    first is served, those over the limit get an empty TC=1 answer no larger than the
    query (no amplification), so a real client retries over TCP."""
    fake = fake_upstream()
    d = start(dns2dot, fake, env, extra=["--ratelimit", "1"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        s.settimeout(5)
        sent = {}
        for qid in range(100, 120):
            wire = make_query("q9.example.test.", qid=qid).to_wire()
            sent[qid] = wire
            s.sendto(wire, (LOOPBACK, d.port))
        answers = {}
        for _ in range(len(sent)):
            data = s.recvfrom(65535)[0]
            msg = dns.message.from_wire(data)
            assert msg.id in sent and msg.id not in answers
            answers[msg.id] = (msg, data)
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recvfrom(65535)  # nothing twice
    served = [m for m, _ in answers.values() if not m.flags & dns.flags.TC]
    slipped = [(m, data) for m, data in answers.values() if m.flags & dns.flags.TC]
    assert served and slipped
    assert all(m.answer[0][0].address == fake_address("q9.") for m in served)
    for m, data in slipped:
        assert m.rcode() == dns.rcode.NOERROR and not m.answer
        assert len(data) <= len(sent[m.id])


def test_answers_counted_at_once_count_like_answered() -> None:
    """A cache hit counted on a kept counter is ``Stats.answered`` with 0 seconds, once
    folded (the snapshot folds)."""
    from dns2dot.serve.stats import Stats

    slow, fast = Stats(), Stats()
    for transport, qtype, rcode in (("udp", 1, 0), ("udp", 1, 0), ("tcp", 28, 3)):
        slow.answered(transport, qtype, rcode, 0.0)
        fast.at_once((transport, qtype, rcode))[0] += 1
    fast.answered("udp", 1, 0, 0.2)
    slow.answered("udp", 1, 0, 0.2)
    assert fast.snapshot() == slow.snapshot()
    assert fast.queries == slow.queries
    assert fast.latency == slow.latency
    fast.at_once(("udp", 1, 0))[0] += 1  # counted once more after a fold, not twice
    slow.answered("udp", 1, 0, 0.0)
    assert fast.snapshot() == slow.snapshot()


def test_bench_passes_dns2dot_env_for_the_path_a_b() -> None:
    """``python -m bench --dns2dot-env KEY=VALUE`` (repeatable) reaches every dns2dot it
    starts: how a run measures the asyncio path (``DNS2DOT_UDP_BATCH=off``)."""
    from bench.__main__ import make_settings, parse_args

    args = parse_args(
        ["--dns2dot-env", "DNS2DOT_UDP_BATCH=off", "--dns2dot-env", "PYTHONHASHSEED=0"]
    )
    assert make_settings(args).dns2dot_env == {
        "DNS2DOT_UDP_BATCH": "off",
        "PYTHONHASHSEED": "0",
    }
    assert make_settings(parse_args([])).dns2dot_env == {}
    with pytest.raises(SystemExit):
        make_settings(parse_args(["--dns2dot-env", "no-equals-sign"]))
