"""Unit tests for :mod:`dns2dot.admission`: the access list and the rate limit.

Pure: addresses are strings, the clock is a number the test moves by hand.
"""

from __future__ import annotations

import re

import pytest

from dns2dot.policy.admission import (
    DEFAULT_ALLOW,
    AccessList,
    Admission,
    RateLimiter,
    Verdict,
    parse_networks,
)


@pytest.fixture
def default_acl() -> AccessList:
    return AccessList(parse_networks(DEFAULT_ALLOW))


class Clock:
    """A hand-moved clock for :class:`Admission`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- access list


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.1",
        "100.64.0.1",
        "100.127.255.254",
        "169.254.1.1",
        "::1",
        "fc00::1",
        "fd12:3456:789a::1",
        "fe80::1",
        "FE80::ABCD",
        "fe80::1%eth0",
        "fe80::1%2",
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
        "::ffff:192.168.0.10",
    ],
)
def test_default_allows_local_and_private(default_acl: AccessList, host: str) -> None:
    assert default_acl.allows(host)


@pytest.mark.parametrize(
    "host",
    [
        "8.8.8.8",
        "1.1.1.1",
        "172.15.255.255",
        "172.32.0.1",
        "192.169.0.1",
        "100.63.255.255",
        "100.128.0.1",
        "169.255.0.1",
        "11.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "2001:4860:4860::8888",
        "2606:4700:4700::1111",
        "::",
        "::2",
        "fec0::1",
        "fe00::1",
        "::ffff:8.8.8.8",
        "::ffff:1.1.1.1",
        "64:ff9b::808:808",  # NAT64 of a public address
    ],
)
def test_default_refuses_public(default_acl: AccessList, host: str) -> None:
    assert not default_acl.allows(host)


@pytest.mark.parametrize(
    "host",
    [
        "",
        "localhost",
        "garbage",
        "127.0.0.1.evil",
        "127.0.0.01",
        "127.1",
        "10.0.0.256",
        "::1::1",
        "%eth0",
        " 127.0.0.1",
        "127.0.0.1:53",
        "[::1]",
    ],
)
def test_garbage_hosts_refused(default_acl: AccessList, host: str) -> None:
    assert not default_acl.allows(host)


def test_garbage_verdict_is_refuse(default_acl: AccessList) -> None:
    admission = Admission(default_acl, RateLimiter(10), Clock())
    assert admission.verdict("not-an-address", datagram=True) is Verdict.REFUSE
    assert admission.verdict("not-an-address", datagram=False) is Verdict.REFUSE


def test_answers_are_stable_when_cached(default_acl: AccessList) -> None:
    for _ in range(3):
        assert default_acl.allows("10.1.1.1")
        assert not default_acl.allows("8.8.4.4")
        assert not default_acl.allows("junk")


def test_custom_networks() -> None:
    acl = AccessList(parse_networks(["203.0.113.0/24", "2001:db8:1::/48", "198.51.100.7"]))
    assert acl.allows("203.0.113.1")
    assert acl.allows("203.0.113.255")
    assert acl.allows("::ffff:203.0.113.9")
    assert acl.allows("2001:db8:1:ffff::1")
    assert acl.allows("198.51.100.7")
    assert not acl.allows("198.51.100.8")
    assert not acl.allows("203.0.114.1")
    assert not acl.allows("2001:db8:2::1")
    assert not acl.allows("127.0.0.1")  # the defaults are replaced, not extended
    assert not acl.allows("::1")


def test_allow_everything() -> None:
    acl = AccessList(parse_networks(["0.0.0.0/0", "::/0"]))
    assert acl.allows("8.8.8.8")
    assert acl.allows("2001:4860:4860::8888")
    assert not acl.allows("junk")


def test_empty_access_list_refuses_all() -> None:
    acl = AccessList(())
    assert not acl.allows("127.0.0.1")
    assert not acl.allows("::1")


def test_parse_networks() -> None:
    nets = parse_networks([" 10.1.2.3/8 ", "::1", "192.0.2.1"])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "::1/128", "192.0.2.1/32"]
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33'")):
        parse_networks(["10.0.0.0/33"])
    with pytest.raises(ValueError, match="'nonsense'"):
        parse_networks(["127.0.0.0/8", "nonsense"])


# --------------------------------------------------------------------------- rate limit


def test_prefixes() -> None:
    assert RateLimiter.prefix("192.0.2.77") == RateLimiter.prefix("192.0.2.1")
    assert RateLimiter.prefix("192.0.2.1") != RateLimiter.prefix("192.0.3.1")
    assert RateLimiter.prefix("2001:db8:0:ff::1") == RateLimiter.prefix("2001:db8:0:1::2")
    assert RateLimiter.prefix("2001:db8:0:100::1") != RateLimiter.prefix("2001:db8:0:1::1")
    assert RateLimiter.prefix("fe80::1%eth0") == RateLimiter.prefix("fe80::2")


def test_burst_of_qps_then_refused() -> None:
    limiter = RateLimiter(5)
    assert [limiter.allow("192.0.2.1", 0.0) for _ in range(5)] == [True] * 5
    assert not limiter.allow("192.0.2.1", 0.0)
    assert not limiter.allow("192.0.2.200", 0.0)  # same /24, same bucket


def test_refills_over_time() -> None:
    limiter = RateLimiter(4)
    for _ in range(4):
        assert limiter.allow("192.0.2.1", 10.0)
    assert not limiter.allow("192.0.2.1", 10.0)
    assert not limiter.allow("192.0.2.1", 10.2)  # 0.8 of a token
    assert limiter.allow("192.0.2.1", 10.25)  # one token back
    assert not limiter.allow("192.0.2.1", 10.25)
    assert limiter.allow("192.0.2.1", 10.5)
    # A long pause refills only up to the burst.
    assert [limiter.allow("192.0.2.1", 100.0) for _ in range(6)] == [True] * 4 + [False] * 2


def test_refused_queries_do_not_cost_tokens() -> None:
    limiter = RateLimiter(2)
    assert limiter.allow("192.0.2.1", 0.0)
    assert limiter.allow("192.0.2.1", 0.0)
    for _ in range(100):
        assert not limiter.allow("192.0.2.1", 0.0)
    assert limiter.allow("192.0.2.1", 0.5)


def test_sustained_rate() -> None:
    limiter = RateLimiter(10)
    allowed = sum(limiter.allow("192.0.2.1", i / 100) for i in range(1000))  # 100 q/s for 10 s
    assert 10 + 99 <= allowed <= 10 + 101  # the burst, then qps over 9.99 s


def test_different_slash24_independent() -> None:
    limiter = RateLimiter(2)
    assert limiter.allow("192.0.2.1", 0.0)
    assert limiter.allow("192.0.2.2", 0.0)
    assert not limiter.allow("192.0.2.3", 0.0)
    assert limiter.allow("192.0.3.1", 0.0)
    assert limiter.allow("198.51.100.1", 0.0)
    assert limiter.allow("198.51.100.1", 0.0)
    assert not limiter.allow("198.51.100.1", 0.0)


def test_ipv6_per_slash56() -> None:
    limiter = RateLimiter(2)
    assert limiter.allow("2001:db8:0:1::1", 0.0)
    assert limiter.allow("2001:db8:0:ff::2", 0.0)  # same /56
    assert not limiter.allow("2001:db8:0:42::3", 0.0)
    assert limiter.allow("2001:db8:0:100::1", 0.0)  # next /56
    assert limiter.allow("2001:db8:1::1", 0.0)
    assert limiter.allow("fe80::1%eth0", 0.0)
    assert limiter.allow("fe80::2", 0.0)
    assert not limiter.allow("fe80::3%eth1", 0.0)


def test_fractional_qps_allows_some_queries() -> None:
    """``--ratelimit`` takes any positive number; 0.5 means one query every two seconds.

    The bucket holds at most ``qps`` tokens and a query costs a whole one, so with
    qps < 1 the bucket never reaches 1 and every datagram is refused (SLIP) forever.
    """
    limiter = RateLimiter(0.5)
    allowed = [limiter.allow("192.0.2.1", float(t)) for t in range(10)]
    assert any(allowed)
    assert sum(allowed) <= 6


# --------------------------------------------------------------------------- verdicts


def test_verdicts() -> None:
    clock = Clock()
    admission = Admission(AccessList(parse_networks(DEFAULT_ALLOW)), RateLimiter(2), clock)
    assert admission.verdict("8.8.8.8", datagram=True) is Verdict.REFUSE
    assert admission.verdict("8.8.8.8", datagram=False) is Verdict.REFUSE
    assert admission.verdict("10.0.0.1", datagram=True) is Verdict.SERVE
    assert admission.verdict("10.0.0.2", datagram=True) is Verdict.SERVE
    assert admission.verdict("10.0.0.3", datagram=True) is Verdict.SLIP
    assert admission.verdict("10.0.1.1", datagram=True) is Verdict.SERVE  # another /24
    # TCP is never rate limited: it cannot be spoofed into an amplification.
    for _ in range(10):
        assert admission.verdict("10.0.0.3", datagram=False) is Verdict.SERVE
    clock.now += 0.5
    assert admission.verdict("10.0.0.3", datagram=True) is Verdict.SERVE
    assert admission.verdict("10.0.0.3", datagram=True) is Verdict.SLIP


def test_refused_datagrams_do_not_use_the_rate_limit() -> None:
    admission = Admission(AccessList(parse_networks(["10.0.0.0/24"])), RateLimiter(1), Clock())
    for _ in range(5):
        assert admission.verdict("8.8.8.8", datagram=True) is Verdict.REFUSE
    assert admission.verdict("10.0.0.1", datagram=True) is Verdict.SERVE


def test_without_limiter_or_clock_everything_allowed_is_served() -> None:
    acl = AccessList(parse_networks(DEFAULT_ALLOW))
    for admission in (Admission(acl), Admission(acl, RateLimiter(1), None)):
        for _ in range(20):
            assert admission.verdict("127.0.0.1", datagram=True) is Verdict.SERVE
        assert admission.verdict("1.2.3.4", datagram=True) is Verdict.REFUSE


def test_verdict_values() -> None:
    assert {v.value for v in Verdict} == {"serve", "refuse", "slip"}
