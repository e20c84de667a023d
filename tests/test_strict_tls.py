"""Strict TLS, proven on the wire: when no upstream verifies, not one plaintext byte
of DNS reaches the upstream port, and clients get SERVFAIL.

Why: "no query is ever sent in cleartext as a fallback" cannot be shown by dns2dot's
own logs. A recording relay sits in front of each upstream and every byte dns2dot
sends it is parsed as TLS records (content type 20-23, version 0x03xx).
"""

from __future__ import annotations

from collections.abc import Callable

import dns.flags
import dns.message
import dns.rcode
import pytest
from support.fake_upstream import FakeUpstream
from support.net import (
    LOOPBACK,
    TcpClient,
    a_addresses,
    make_query,
    tcp_query,
    udp_query,
)
from support.pki import TLS_NAME
from support.proc import Dns2Dot
from support.recorder import RecordingProxy, tls_record_problems

pytestmark = pytest.mark.integration

MakeFake = Callable[..., FakeUpstream]
MakeProxy = Callable[[int], RecordingProxy]
StartDns2Dot = Callable[..., Dns2Dot]

CLIENT_TIMEOUT = 8.0
#: A name that appears only in our queries: if it is ever on the wire in clear, we see it.
SECRET = "secret-qname-7858"
SECRET_WIRE = len(SECRET).to_bytes(1, "big") + SECRET.encode()


def _spec(proxy: RecordingProxy) -> str:
    return f"{LOOPBACK}:{proxy.port}#{TLS_NAME}"


def _ask_all_ways(d: Dns2Dot, pipe: bool) -> None:
    """UDP and TCP queries for the secret name: SERVFAIL (pipe mode TCP: SERVFAIL or a
    closed connection, never a real answer)."""
    for i, transport in enumerate((udp_query, tcp_query, udp_query)):
        q = make_query(f"{SECRET}-{i}.example.test.")
        if pipe and transport is tcp_query:
            with TcpClient(d.port) as c:
                c.send_query(q)
                r = c.recv_message(timeout=CLIENT_TIMEOUT)
            if r is None:
                continue  # pipe mode may only be able to hang up
        else:
            r = transport(d.port, q, timeout=CLIENT_TIMEOUT)
        assert r.id == q.id and r.question == q.question
        assert r.rcode() == dns.rcode.SERVFAIL, r
        assert not r.answer


def _assert_only_tls(proxies: list[RecordingProxy]) -> None:
    for p in proxies:
        assert p.wait_for_connections(1), "dns2dot never connected to the upstream port"
        problems = p.problems()
        assert not problems, "non-TLS bytes reached the upstream port:\n" + "\n".join(problems)
        for n, data in enumerate(p.upstream_bytes):
            assert SECRET_WIRE not in data, f"query name in clear on connection {n}"
            assert SECRET.encode() not in data


@pytest.mark.parametrize("mode", ["pool", "pipe"])
def test_untrusted_upstream_gets_only_tls(
    dns2dot: StartDns2Dot,
    fake_upstream: MakeFake,
    recording_proxy: MakeProxy,
    mode: str,
) -> None:
    """The only upstream has a cert from an unknown CA: SERVFAIL, and the wire holds TLS only."""
    fake = fake_upstream(cert="untrusted")
    proxy = recording_proxy(fake.port)
    d = dns2dot(
        upstreams=[_spec(proxy)],
        mode=None if mode == "pool" else mode,
        extra=["--timeout", "1"],
    )
    _ask_all_ways(d, pipe=mode == "pipe")
    _assert_only_tls([proxy])
    assert fake.received == []
    assert d.alive


def test_every_upstream_fails_verification(
    dns2dot: StartDns2Dot, fake_upstream: MakeFake, recording_proxy: MakeProxy
) -> None:
    """Three upstreams, each failing differently (expired, wrong name, unknown CA):
    SERVFAIL, and each upstream port saw nothing but TLS."""
    fakes = [fake_upstream(cert=c) for c in ("expired", "wrong_name", "untrusted")]
    proxies = [recording_proxy(f.port) for f in fakes]
    d = dns2dot(upstreams=[_spec(p) for p in proxies], extra=["--timeout", "1"])
    _ask_all_ways(d, pipe=False)
    for i in range(5):  # a few more, so any retry or fallback path gets its chance
        q = make_query(f"{SECRET}-x{i}.example.test.")
        assert udp_query(d.port, q, timeout=CLIENT_TIMEOUT).rcode() == dns.rcode.SERVFAIL
    _assert_only_tls([p for p in proxies if p.connections])
    assert any(p.connections for p in proxies)
    assert all(f.received == [] for f in fakes)


@pytest.mark.parametrize("mode", ["pool", "pipe"])
def test_plaintext_upstream_never_sees_a_query(
    dns2dot: StartDns2Dot,
    fake_upstream: MakeFake,
    recording_proxy: MakeProxy,
    mode: str,
) -> None:
    """An upstream port that speaks plain DNS over TCP (no TLS at all): dns2dot offers
    TLS, fails, answers SERVFAIL, and never falls back to sending the query in clear."""
    fake = fake_upstream(tls=False)
    proxy = recording_proxy(fake.port)
    d = dns2dot(
        upstreams=[_spec(proxy)],
        mode=None if mode == "pool" else mode,
        extra=["--timeout", "1"],
    )
    _ask_all_ways(d, pipe=mode == "pipe")
    _assert_only_tls([proxy])
    assert fake.received == [], "the plaintext upstream parsed a DNS query"


def test_recorder_sees_plaintext_when_there_is_some(
    fake_upstream: MakeFake, recording_proxy: MakeProxy
) -> None:
    """Control: the checker is not vacuous; a plain DNS query through the relay is flagged."""
    fake = fake_upstream(tls=False)
    proxy = recording_proxy(fake.port)
    q = make_query(f"{SECRET}.example.test.")
    r = tcp_query(proxy.port, q, timeout=CLIENT_TIMEOUT)
    assert r.flags & dns.flags.QR
    (data,) = proxy.upstream_bytes
    assert tls_record_problems(data)
    assert SECRET_WIRE in data


def test_good_upstream_through_relay_is_tls_only(
    dns2dot: StartDns2Dot, fake_upstream: MakeFake, recording_proxy: MakeProxy
) -> None:
    """Control: with a verifiable upstream the answer arrives, and the wire is still TLS only."""
    fake = fake_upstream()
    proxy = recording_proxy(fake.port)
    d = dns2dot(upstreams=[_spec(proxy)], extra=["--timeout", "3"])
    for transport in (udp_query, tcp_query):
        q = make_query(f"{SECRET}.example.test.")
        r = transport(d.port, q, timeout=CLIENT_TIMEOUT)
        assert a_addresses(r) == {"192.0.2.1"}
    _assert_only_tls([proxy])
    assert f"{SECRET}.example.test." in fake.query_names()
    assert any(len(b) > 0 for b in proxy.downstream_bytes)


def test_tls_record_checker_unit() -> None:
    """The record walker itself: a ClientHello-shaped record passes, DNS and junk don't."""
    hello = bytes([22, 3, 1, 0, 4]) + b"\x01\x00\x00\x00"
    appdata = bytes([23, 3, 3, 0, 2]) + b"ab"
    assert tls_record_problems(hello + appdata) == []
    assert tls_record_problems(hello + appdata[:3]) == []  # cut short at close
    assert tls_record_problems(appdata)  # must start with a handshake
    dns_query = make_query("a.example.test.").to_wire()
    assert tls_record_problems(len(dns_query).to_bytes(2, "big") + dns_query)
    assert tls_record_problems(hello + b"\x00\x20" + dns_query)
    assert tls_record_problems(bytes([22, 2, 0, 0, 1, 0]))  # SSLv2-ish version
