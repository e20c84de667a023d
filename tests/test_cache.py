"""Unit tests for :mod:`dns2dot.cache`: answers in, answers out, the clock passed in.

Answers are built with dnspython and every rendered answer is parsed back with it.
No sockets, no loop, no real clock: ``now`` is just a number the test chooses.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from support.mutate import mutated

from dns2dot.config import Config
from dns2dot.policy.cache import (
    ENTRY_OVERHEAD,
    KNOWN_PER_ENTRY,
    STALE_ANSWER_TTL,
    Cache,
    CacheEntry,
    CachePolicy,
    cache_key,
)
from dns2dot.protocol import wire
from dns2dot.proxy import cache_policy

T0 = 1000.0  # an arbitrary clock origin: nothing depends on it being 0

# --------------------------------------------------------------------------- helpers


def make_query(
    name: str = "example.com.",
    rdtype: str = "A",
    rdclass: str = "IN",
    *,
    qid: int = 0x1234,
    edns: bool = True,
    do: bool = False,
    cd: bool = False,
) -> dns.message.QueryMessage:
    q = dns.message.make_query(
        name,
        rdtype,
        rdclass,
        id=qid,
        use_edns=0 if edns else False,
        want_dnssec=do,
    )
    if cd:
        q.flags |= dns.flags.CD
    return q


def parsed(q: dns.message.Message) -> tuple[bytes, wire.Query]:
    msg = q.to_wire()
    return msg, wire.parse_query(msg)


def wire_query(name: str = "example.com.", rdtype: str = "A") -> wire.Query:
    return parsed(make_query(name, rdtype))[1]


def make_answer(
    query: dns.message.Message,
    *,
    answer: list[dns.rrset.RRset] | None = None,
    authority: list[dns.rrset.RRset] | None = None,
    additional: list[dns.rrset.RRset] | None = None,
    rcode: int = 0,
    edns: bool = True,
    pad: int = 0,
    tc: bool = False,
) -> bytes:
    r = dns.message.make_response(query)
    r.set_rcode(dns.rcode.Rcode(rcode))
    if edns:
        r.use_edns(0, 0, 1232, pad=pad)
    else:
        r.use_edns(False)
    r.answer.extend(answer or [])
    r.authority.extend(authority or [])
    r.additional.extend(additional or [])
    if tc:
        r.flags |= dns.flags.TC
    return r.to_wire(max_size=65535)


def rrset(name: str, ttl: int, rdtype: str, *rdatas: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(name, ttl, "IN", rdtype, *rdatas)


def soa(name: str = "example.com.", ttl: int = 3600, minimum: int = 300) -> dns.rrset.RRset:
    return rrset(name, ttl, "SOA", f"ns.{name} host.{name} 1 7200 900 1209600 {minimum}")


def a_answer(
    q: dns.message.Message | None = None, ttl: int = 300, *, edns: bool = True, pad: int = 0
) -> tuple[dns.message.Message, bytes]:
    """A query and an upstream's answer to it: one A record with ``ttl``."""
    q = q if q is not None else make_query()
    name = q.question[0].name.to_text()
    return q, make_answer(q, answer=[rrset(name, ttl, "A", "192.0.2.1")], edns=edns, pad=pad)


def put_answer(
    cache: Cache, q: dns.message.Message, answer: bytes, now: float = T0
) -> tuple[bytes, wire.Query]:
    query = parsed(q)[1]
    key = cache_key(query)
    assert cache.put(key, answer, now)
    return key, query


def fetch(cache: Cache, key: bytes, now: float) -> CacheEntry:
    entry = cache.get(key, now)
    assert entry is not None
    return entry


def render(
    cache: Cache, key: bytes, query: wire.Query, now: float, *, stale: bool = False
) -> dns.message.Message:
    entry = fetch(cache, key, now)
    return dns.message.from_wire(cache.render(entry, query, now, stale=stale))


def ttls(m: dns.message.Message) -> list[int]:
    return [rr.ttl for section in (m.answer, m.authority, m.additional) for rr in section]


def policy(**kw: int) -> CachePolicy:
    """The default configuration's cache policy (``Config()``), with ``kw`` changed."""
    return replace(cache_policy(Config()), **kw)


def no_stale(**kw: int) -> CachePolicy:
    return policy(stale_ttl=0, **kw)


def header(
    qid: int = 0, flags: int = 0x8180, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = 1) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


QNAME = b"\x07example\x03com\x00"
QUESTION = QNAME + b"\x00\x01\x00\x01"
PTR_QNAME = b"\xc0\x0c"


# --------------------------------------------------------------------------- keys


def test_key_is_case_insensitive() -> None:
    assert cache_key(wire_query("Example.COM.")) == cache_key(wire_query("example.com."))


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"name": "example.com."}, {"name": "example.org."}),
        ({"rdtype": "A"}, {"rdtype": "AAAA"}),
        ({"rdclass": "IN"}, {"rdclass": "CH"}),
        ({"do": False}, {"do": True}),
        ({"cd": False}, {"cd": True}),
        ({"edns": False}, {"edns": True, "do": True}),
    ],
)
def test_key_distinguishes(one: dict[str, Any], other: dict[str, Any]) -> None:
    first = parsed(make_query(**one))[1]
    second = parsed(make_query(**other))[1]
    assert cache_key(first) != cache_key(second)


def test_key_ignores_edns_without_do_and_the_id() -> None:
    plain = parsed(make_query(edns=False, qid=1))[1]
    edns = parsed(make_query(edns=True, qid=2))[1]
    assert cache_key(plain) == cache_key(edns)


def test_do_and_cd_answers_are_separate_entries() -> None:
    cache = Cache(policy())
    q_plain = make_query()
    q_do = make_query(do=True)
    q_cd = make_query(cd=True)
    _, answer = a_answer(q_plain)
    key, _ = put_answer(cache, q_plain, answer)
    assert cache.get(cache_key(parsed(q_do)[1]), T0) is None
    assert cache.get(cache_key(parsed(q_cd)[1]), T0) is None
    _, answer_do = a_answer(q_do, ttl=50)
    key_do, query_do = put_answer(cache, q_do, answer_do)
    assert len(cache) == 2
    assert ttls(render(cache, key_do, query_do, T0)) == [50]
    assert ttls(render(cache, key, parsed(q_plain)[1], T0)) == [300]


# --------------------------------------------------------------------------- positive answers


def chain_answer(q: dns.message.Message) -> bytes:
    """A CNAME chain (TTLs 300, 100) with an NS (1000) and its glue (20)."""
    return make_answer(
        q,
        answer=[
            rrset("example.com.", 300, "CNAME", "www.example.net."),
            rrset("www.example.net.", 100, "A", "192.0.2.1"),
        ],
        authority=[rrset("example.net.", 1000, "NS", "ns.example.net.")],
        additional=[rrset("ns.example.net.", 20, "A", "192.0.2.53")],
    )


def test_positive_lifetime_is_smallest_answer_ttl() -> None:
    cache = Cache(no_stale())
    q = make_query()
    answer = chain_answer(q)
    key, _query = put_answer(cache, q, answer)
    entry = fetch(cache, key, T0)
    assert entry.expires == T0 + 100
    assert fetch(cache, key, T0 + 99.9).fresh(T0 + 99.9)
    assert cache.get(key, T0 + 100) is None  # stale_ttl=0: gone at expiry


def test_each_record_counts_down_its_own_ttl() -> None:
    cache = Cache(policy())
    q = make_query()
    answer = chain_answer(q)
    key, query = put_answer(cache, q, answer)
    assert ttls(render(cache, key, query, T0)) == [300, 100, 1000, 20]
    assert ttls(render(cache, key, query, T0 + 40)) == [260, 60, 960, 0]


@pytest.mark.parametrize(
    ("elapsed", "expected"), [(0.0, 300), (0.999, 300), (1.0, 299), (41.7, 259)]
)
def test_ttls_count_down_by_whole_seconds(elapsed: float, expected: int) -> None:
    cache = Cache(policy())
    q, answer = a_answer(ttl=300)
    key, query = put_answer(cache, q, answer)
    assert ttls(render(cache, key, query, T0 + elapsed)) == [expected]


def test_render_restores_client_id_and_spelling() -> None:
    cache = Cache(policy())
    q, answer = a_answer(make_query("example.com.", qid=1))
    key, _ = put_answer(cache, q, answer)
    _client_msg, client = parsed(make_query("ExAmPlE.cOm.", qid=0xBEEF))
    assert cache_key(client) == key
    entry = fetch(cache, key, T0)
    out = cache.render(entry, client, T0, stale=False)
    assert out[:2] == b"\xbe\xef"
    assert out[12 : 12 + len(client.qname)] == client.qname == b"\x07ExAmPlE\x03cOm\x00"
    m = dns.message.from_wire(out)
    assert m.id == 0xBEEF
    assert m.question[0].name.to_wire() == client.qname  # case kept by dnspython's parse
    assert m.flags & dns.flags.QR
    assert [rd.address for rd in m.answer[0]] == ["192.0.2.1"]


def test_stored_entry_has_id_zeroed() -> None:
    cache = Cache(policy())
    q, answer = a_answer(make_query(qid=0xABCD))
    key, _ = put_answer(cache, q, answer)
    assert fetch(cache, key, T0).answer[:2] == b"\x00\x00"


def test_put_replaces_an_entry_with_the_same_key() -> None:
    cache = Cache(policy())
    q, first = a_answer(ttl=300)
    key, query = put_answer(cache, q, first)
    _, second = a_answer(q, ttl=60)
    put_answer(cache, q, second, now=T0 + 10)
    assert len(cache) == 1
    assert cache.bytes == fetch(cache, key, T0 + 10).size
    assert ttls(render(cache, key, query, T0 + 10)) == [60]


def test_zero_ttl_answer_is_not_cached() -> None:
    cache = Cache(policy())
    q, answer = a_answer(ttl=0)
    assert not cache.put(cache_key(parsed(q)[1]), answer, T0)
    assert len(cache) == 0


# --------------------------------------------------------------------------- negative answers


@pytest.mark.parametrize(("soa_ttl", "minimum", "expected"), [(3600, 300, 300), (100, 300, 100)])
@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.NOERROR])
def test_negative_lifetime_is_min_of_soa_ttl_and_minimum(
    rcode: int, soa_ttl: int, minimum: int, expected: int
) -> None:
    cache = Cache(no_stale())
    q = make_query("nothing.example.com.")
    answer = make_answer(q, rcode=rcode, authority=[soa("example.com.", soa_ttl, minimum)])
    key, query = put_answer(cache, q, answer)
    entry = fetch(cache, key, T0)
    assert entry.expires == T0 + expected
    m = render(cache, key, query, T0 + 10)
    assert m.rcode() == rcode
    assert not m.answer
    assert m.authority[0].rdtype == dns.rdatatype.SOA
    assert m.authority[0].ttl == expected - 10  # the SOA is served with the negative TTL
    assert fetch(cache, key, T0 + expected - 0.5).fresh(T0 + expected - 0.5)
    assert cache.get(key, T0 + expected) is None


def test_negative_uses_the_authority_soa_not_one_in_additional() -> None:
    cache = Cache(no_stale())
    q = make_query("nothing.example.com.")
    answer = make_answer(
        q,
        rcode=dns.rcode.NXDOMAIN,
        authority=[soa("example.com.", 600, 600)],
        additional=[soa("example.org.", 5, 5)],
    )
    key, _ = put_answer(cache, q, answer)
    assert fetch(cache, key, T0).expires == T0 + 600


@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.NOERROR])
def test_negative_without_soa_is_not_cached(rcode: int) -> None:
    cache = Cache(policy())
    q = make_query("nothing.example.com.")
    answer = make_answer(
        q, rcode=rcode, authority=[rrset("example.com.", 300, "NS", "ns.example.com.")]
    )
    assert not cache.put(cache_key(parsed(q)[1]), answer, T0)
    assert len(cache) == 0


def test_negative_with_soa_only_in_additional_is_not_cached() -> None:
    cache = Cache(policy())
    q = make_query("nothing.example.com.")
    answer = make_answer(q, rcode=dns.rcode.NXDOMAIN, additional=[soa()])
    assert not cache.put(cache_key(parsed(q)[1]), answer, T0)


def test_servfail_cached_for_servfail_ttl() -> None:
    cache = Cache(no_stale(servfail_ttl=5))
    q = make_query()
    answer = make_answer(q, rcode=dns.rcode.SERVFAIL)
    key, query = put_answer(cache, q, answer)
    assert fetch(cache, key, T0 + 4.9).fresh(T0 + 4.9)
    assert render(cache, key, query, T0 + 4).rcode() == dns.rcode.SERVFAIL
    assert cache.get(key, T0 + 5) is None


@pytest.mark.parametrize(
    "rcode", [dns.rcode.REFUSED, dns.rcode.FORMERR, dns.rcode.NOTIMP, dns.rcode.YXDOMAIN]
)
def test_never_cached_rcodes(rcode: int) -> None:
    cache = Cache(policy())
    q = make_query()
    answer = make_answer(q, rcode=rcode, authority=[soa()])
    assert not cache.put(cache_key(parsed(q)[1]), answer, T0)
    assert len(cache) == 0


@pytest.mark.parametrize(
    ("rcode", "authority"),
    [(dns.rcode.NOERROR, False), (dns.rcode.NXDOMAIN, True), (dns.rcode.SERVFAIL, False)],
)
def test_truncated_answers_never_cached(rcode: int, authority: bool) -> None:
    cache = Cache(policy())
    q = make_query()
    answer = make_answer(
        q,
        rcode=rcode,
        tc=True,
        answer=[rrset("example.com.", 300, "A", "192.0.2.1")] if rcode == 0 else None,
        authority=[soa()] if authority else None,
    )
    assert not cache.put(cache_key(parsed(q)[1]), answer, T0)
    assert len(cache) == 0


def test_short_answer_is_not_cached() -> None:
    cache = Cache(policy())
    assert not cache.put(b"k", b"\x00" * 11, T0)
    assert not cache.put(b"k", b"", T0)


# --------------------------------------------------------------------------- clamps


def test_min_ttl_clamps_lifetime_and_rendered_ttls() -> None:
    cache = Cache(no_stale(min_ttl=60))
    q, answer = a_answer(ttl=10)
    key, query = put_answer(cache, q, answer)
    assert fetch(cache, key, T0).expires == T0 + 60
    assert ttls(render(cache, key, query, T0)) == [60]
    assert ttls(render(cache, key, query, T0 + 50)) == [10]
    assert cache.get(key, T0 + 60) is None


def test_min_ttl_makes_a_zero_ttl_answer_cacheable() -> None:
    cache = Cache(policy(min_ttl=5))
    q, answer = a_answer(ttl=0)
    key, query = put_answer(cache, q, answer)
    assert ttls(render(cache, key, query, T0)) == [5]


def test_max_ttl_clamps_lifetime_and_rendered_ttls() -> None:
    cache = Cache(no_stale(max_ttl=100))
    q = make_query()
    answer = make_answer(
        q,
        answer=[rrset("example.com.", 86400, "A", "192.0.2.1")],
        authority=[rrset("example.com.", 172800, "NS", "ns.example.com.")],
    )
    key, query = put_answer(cache, q, answer)
    assert fetch(cache, key, T0).expires == T0 + 100
    assert ttls(render(cache, key, query, T0)) == [100, 100]
    assert cache.get(key, T0 + 100) is None


def test_clamps_apply_to_negative_answers() -> None:
    q = make_query("nothing.example.com.")
    answer = make_answer(q, rcode=dns.rcode.NXDOMAIN, authority=[soa(minimum=5)])
    low = Cache(no_stale(min_ttl=30))
    key, query = put_answer(low, q, answer)
    assert fetch(low, key, T0).expires == T0 + 30
    assert ttls(render(low, key, query, T0)) == [30]
    high = Cache(no_stale(max_ttl=2))
    key, query = put_answer(high, q, answer)
    assert fetch(high, key, T0).expires == T0 + 2
    assert ttls(render(high, key, query, T0)) == [2]


def test_servfail_ttl_is_capped_by_max_ttl() -> None:
    cache = Cache(no_stale(servfail_ttl=30, max_ttl=3))
    q = make_query()
    key, _ = put_answer(cache, q, make_answer(q, rcode=dns.rcode.SERVFAIL))
    assert fetch(cache, key, T0).expires == T0 + 3


def test_ttl_with_high_bit_is_capped_not_zero() -> None:
    """RFC 8767 §4 updates RFC 2181 §8: a TTL with the high bit set is a large positive
    value, capped (here by max_ttl), not zero."""
    cache = Cache(no_stale(max_ttl=3600))
    q, answer = a_answer(ttl=300)
    body = bytearray(answer)
    # The answer record's TTL field: header, question, owner pointer, type, class.
    ttl_at = 12 + len(parsed(q)[1].qname) + 4 + 2 + 2 + 2
    assert struct.unpack_from("!I", body, ttl_at)[0] == 300
    struct.pack_into("!I", body, ttl_at, 0x80000000)
    key, query = put_answer(cache, q, bytes(body))
    assert fetch(cache, key, T0).expires == T0 + 3600
    assert ttls(render(cache, key, query, T0)) == [3600]


# --------------------------------------------------------------------------- LRU


def test_lru_eviction_by_entries_keeps_recently_read() -> None:
    cache = Cache(policy(max_entries=3))
    keys = []
    for i in range(3):
        q, answer = a_answer(make_query(f"n{i}.example.com."))
        keys.append(put_answer(cache, q, answer)[0])
    fetch(cache, keys[0], T0 + 1)  # n0 is now the most recently used
    q, answer = a_answer(make_query("n3.example.com."))
    key3, _ = put_answer(cache, q, answer, now=T0 + 2)
    assert len(cache) == 3
    assert cache.get(keys[1], T0 + 2) is None  # the least recently used went
    for key in (keys[0], keys[2], key3):
        assert cache.get(key, T0 + 2) is not None


def test_lru_eviction_by_bytes_keeps_recently_read() -> None:
    answers = []
    for i in range(4):
        q, answer = a_answer(make_query(f"n{i}.example.com."))  # same length each
        answers.append((q, answer))
    size = len(answers[0][1]) + ENTRY_OVERHEAD
    cache = Cache(policy(max_bytes=3 * size + size // 2))
    keys = [put_answer(cache, q, a)[0] for q, a in answers[:3]]
    assert cache.bytes == 3 * size
    fetch(cache, keys[0], T0 + 1)
    key3 = put_answer(cache, *answers[3], now=T0 + 2)[0]
    assert len(cache) == 3
    assert cache.bytes == 3 * size <= cache.policy.max_bytes
    assert cache.get(keys[1], T0 + 2) is None
    for key in (keys[0], keys[2], key3):
        assert cache.get(key, T0 + 2) is not None


def test_byte_bound_evicts_several_for_one_big_answer() -> None:
    small = [a_answer(make_query(f"n{i}.example.com.")) for i in range(4)]
    size = len(small[0][1]) + ENTRY_OVERHEAD
    cache = Cache(policy(max_bytes=4 * size))
    small_keys = [put_answer(cache, q, a)[0] for q, a in small]
    assert cache.bytes == 4 * size
    big_q = make_query("big.example.com.", "TXT")
    txt = '"' + "x" * 250 + '"'
    big = make_answer(big_q, answer=[rrset("big.example.com.", 300, "TXT", txt)])
    key = put_answer(cache, big_q, big, now=T0 + 1)[0]
    left = [e for e in (cache.get(k, T0 + 1) for k in small_keys) if e is not None]
    assert len(left) < 3  # the big answer pushed out more than one
    assert cache.get(small_keys[0], T0 + 1) is None  # oldest first
    big_entry = fetch(cache, key, T0 + 1)
    assert len(cache) == len(left) + 1
    assert cache.bytes == big_entry.size + sum(e.size for e in left) <= 4 * size


def test_expired_entries_removed_on_get_release_bytes() -> None:
    cache = Cache(no_stale())
    q, answer = a_answer(ttl=10)
    key, _ = put_answer(cache, q, answer)
    assert cache.bytes > 0
    assert cache.get(key, T0 + 10) is None
    assert len(cache) == 0
    assert cache.bytes == 0


# --------------------------------------------------------------------------- serve-stale


def stale_setup() -> tuple[Cache, dns.message.Message, bytes]:
    cache = Cache(policy(stale_ttl=3600))
    q = make_query()
    answer = make_answer(
        q,
        answer=[rrset("example.com.", 300, "A", "192.0.2.1", "192.0.2.2")],
        authority=[rrset("example.com.", 3600, "NS", "ns.example.com.")],
    )
    return cache, q, answer


def test_stale_entry_is_returned_not_fresh() -> None:
    cache, q, answer = stale_setup()
    key, _ = put_answer(cache, q, answer)
    for now in (T0 + 300, T0 + 300 + 3599.9):
        entry = fetch(cache, key, now)
        assert not entry.fresh(now)
    assert cache.get(key, T0 + 300 + 3600) is None
    assert len(cache) == 0


def test_stale_render_with_edns_has_ttl_30_and_ede_3() -> None:
    cache, q, answer = stale_setup()
    key, _query = put_answer(cache, q, answer)
    m = render(cache, key, parsed(make_query(qid=77))[1], T0 + 1000, stale=True)
    assert m.id == 77
    assert ttls(m) == [STALE_ANSWER_TTL] * 2 == [30, 30]
    assert m.edns == 0
    edes = [o for o in m.options if o.otype == dns.edns.OptionType.EDE]
    assert len(edes) == 1
    assert isinstance(edes[0], dns.edns.EDEOption)
    assert edes[0].code == dns.edns.EDECode.STALE_ANSWER
    assert int(edes[0].code) == 3
    assert edes[0].text == "Stale Answer"
    assert sorted(rd.address for rd in m.answer[0]) == ["192.0.2.1", "192.0.2.2"]


def test_stale_render_keeps_do_bit() -> None:
    cache = Cache(policy())
    q, answer = a_answer(make_query(do=True))
    key, query = put_answer(cache, q, answer)
    m = render(cache, key, query, T0 + 400, stale=True)
    assert m.ednsflags & dns.flags.DO


def test_stale_render_without_edns_has_no_opt() -> None:
    cache, q, answer = stale_setup()
    key, _ = put_answer(cache, q, answer)
    out_query = parsed(make_query(edns=False))[1]
    entry = fetch(cache, key, T0 + 1000)
    out = cache.render(entry, out_query, T0 + 1000, stale=True)
    m = dns.message.from_wire(out)
    assert m.edns == -1
    assert not m.options
    assert ttls(m) == [30, 30]
    assert struct.unpack_from("!H", out, 10)[0] == 0  # ARCOUNT


def test_stale_render_when_upstream_answer_had_no_opt() -> None:
    cache = Cache(policy())
    q, answer = a_answer(edns=False)
    key, query = put_answer(cache, q, answer)
    m = render(cache, key, query, T0 + 301, stale=True)
    assert m.edns == 0
    assert [o.code for o in m.options if isinstance(o, dns.edns.EDEOption)] == [3]


# --------------------------------------------------------------------------- EDNS and padding


def test_client_without_edns_gets_no_opt() -> None:
    cache = Cache(policy())
    q, answer = a_answer()
    key, _ = put_answer(cache, q, answer)
    out_query = parsed(make_query(edns=False))[1]
    m = render(cache, key, out_query, T0)
    assert m.edns == -1
    assert ttls(m) == [300]


def test_client_with_edns_gets_the_opt() -> None:
    cache = Cache(policy())
    q, answer = a_answer()
    key, query = put_answer(cache, q, answer)
    m = render(cache, key, query, T0)
    assert m.edns == 0
    assert m.payload == 1232


def has_padding(msg: bytes) -> bool:
    m = dns.message.from_wire(msg)
    return any(o.otype == dns.edns.OptionType.PADDING for o in m.options)


def test_put_strips_padding() -> None:
    cache = Cache(policy())
    q, answer = a_answer(pad=128)
    assert has_padding(answer)
    assert len(answer) % 128 == 0
    key, query = put_answer(cache, q, answer)
    entry = fetch(cache, key, T0)
    assert not has_padding(entry.answer)
    assert len(entry.answer) < len(answer)
    m = render(cache, key, query, T0 + 2)
    assert m.edns == 0
    assert not m.options
    assert ttls(m) == [298]


def test_put_strips_padding_keeps_other_options() -> None:
    cache = Cache(policy())
    q = make_query()
    r = dns.message.make_response(q)
    keep = dns.edns.GenericOption(65001, b"keep")  # type: ignore[arg-type]
    r.use_edns(0, 0, 1232, options=[keep], pad=64)
    r.answer.append(rrset("example.com.", 300, "A", "192.0.2.1"))
    answer = r.to_wire()
    assert has_padding(answer)
    key, query = put_answer(cache, q, answer)
    m = render(cache, key, query, T0)
    assert [(o.otype, o.to_wire()) for o in m.options] == [(65001, b"keep")]


def answer_with_opt_in_the_middle(pad: int) -> bytes:
    """Answer A + additional [OPT with padding, then an A record]: OPT not last."""
    padding = struct.pack("!HH", 12, pad) + b"\x00" * pad
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, len(padding)) + padding
    extra = rr(b"\x02ns" + PTR_QNAME, 1, 50, bytes([192, 0, 2, 53]))
    return (
        header(qid=0x1234, an=1, ar=2)
        + QUESTION
        + rr(PTR_QNAME, 1, 300, bytes([192, 0, 2, 1]))
        + opt
        + extra
    )


def test_put_strips_padding_when_opt_is_not_last() -> None:
    answer = answer_with_opt_in_the_middle(40)
    m0 = dns.message.from_wire(answer)  # dnspython accepts it
    assert any(o.otype == 12 for o in m0.options)
    cache = Cache(policy())
    q = make_query()
    key, query = put_answer(cache, q, answer)
    entry = fetch(cache, key, T0)
    assert len(entry.answer) == len(answer) - 44
    assert not has_padding(entry.answer)
    m = render(cache, key, query, T0 + 10)
    assert m.edns == 0
    assert not m.options
    assert [rd.address for rd in m.answer[0]] == ["192.0.2.1"]
    assert m.answer[0].ttl == 290
    assert m.additional[0].name.to_text() == "ns.example.com."
    assert m.additional[0].ttl == 40  # the record after the OPT counts down correctly
    plain = dns.message.from_wire(
        cache.render(entry, parsed(make_query(edns=False))[1], T0, stale=False)
    )
    assert plain.edns == -1
    assert plain.additional[0].ttl == 50


def test_put_keeps_unpadded_opt_in_the_middle() -> None:
    answer = answer_with_opt_in_the_middle(0)
    cache = Cache(policy())
    key, query = put_answer(cache, make_query(), answer)
    assert ttls(render(cache, key, query, T0 + 1)) == [299, 49]


# --------------------------------------------------------------------------- counters


def test_hits_and_misses() -> None:
    cache = Cache(policy(stale_ttl=100))
    q, answer = a_answer(ttl=10)
    key = cache_key(parsed(q)[1])
    assert cache.get(key, T0) is None
    assert (cache.hits, cache.misses) == (0, 1)
    put_answer(cache, q, answer)
    fetch(cache, key, T0 + 1)
    fetch(cache, key, T0 + 2)
    assert (cache.hits, cache.misses) == (2, 1)
    assert fetch(cache, key, T0 + 2).hits == 3
    fetch(cache, key, T0 + 50)  # stale: a miss
    assert (cache.hits, cache.misses) == (3, 2)
    assert cache.get(key, T0 + 200) is None  # gone: a miss
    assert (cache.hits, cache.misses) == (3, 3)


# --------------------------------------------------------------------------- malformed input


def test_put_question_less_answer_returns_false() -> None:
    """A SERVFAIL without a question (legal, RFC 1035) must give False, not raise.

    Reproducer: ``Cache(policy()).put(b"k", struct.pack("!6H", 1, 0x8182, 0, 0, 0, 0), 0)``
    raises FormError from ``wire.read_name`` in ``put`` (``lifetime`` accepted it).
    """
    cache = Cache(policy())
    assert cache.put(b"k", header(flags=0x8182, qd=0), T0) is False
    assert len(cache) == 0


def test_put_rejects_answer_with_truncated_question() -> None:
    """A SERVFAIL whose question lacks type and class is not a DNS message; caching it
    means later rendering something no client can parse."""
    answer = header(flags=0x8182) + b"\x01a\x00"
    with pytest.raises(dns.exception.FormError):
        dns.message.from_wire(answer)
    assert Cache(policy()).put(b"k", answer, T0) is False


@pytest.mark.parametrize(
    "answer",
    [
        header(an=1) + QUESTION + PTR_QNAME + b"\x00\x01",  # record header truncated
        header(an=1) + QUESTION + rr(PTR_QNAME, 1, 300, b"\x01\x02\x03\x04")[:-2],
        header(an=1) + QUESTION + b"\xc0\xff" + struct.pack("!HHIH", 1, 1, 300, 0),
        header(an=2) + QUESTION + rr(PTR_QNAME, 1, 300, b"\x01\x02\x03\x04"),  # count lies
        header(qd=1) + b"\x07example",
    ],
)
def test_put_malformed_answers_return_false(answer: bytes) -> None:
    assert Cache(policy()).put(b"k", answer, T0) is False


# --------------------------------------------------------------------------- hypothesis

names = st.sampled_from(["example.com.", "a.b.example.com.", "x.", "Mixed.Case.TEST."])


@st.composite
def dnspython_answers(draw: st.DrawFn) -> tuple[dns.message.Message, bytes]:
    name = draw(names)
    q = make_query(name, draw(st.sampled_from(["A", "AAAA", "TXT", "MX"])))
    rcode = draw(st.sampled_from([0, 0, 0, 2, 3, 5]))
    ttl = st.integers(0, 200000)
    answer = []
    if rcode == 0 and draw(st.booleans()):
        answer.append(rrset(name, draw(ttl), "A", "192.0.2.1"))
        if draw(st.booleans()):
            answer.append(rrset(name, draw(ttl), "TXT", '"hello"'))
    authority = []
    if draw(st.booleans()):
        authority.append(soa("example.com.", draw(ttl), draw(ttl)))
    if draw(st.booleans()):
        authority.append(rrset("example.com.", draw(ttl), "NS", "ns.example.com."))
    additional = []
    if draw(st.booleans()):
        additional.append(rrset("ns.example.com.", draw(ttl), "AAAA", "2001:db8::53"))
    wire_answer = make_answer(
        q,
        answer=answer,
        authority=authority,
        additional=additional,
        rcode=rcode,
        edns=draw(st.booleans()),
        pad=draw(st.sampled_from([0, 0, 128, 468])),
        tc=draw(st.integers(0, 9)) == 0,
    )
    return q, wire_answer


random_headers = st.builds(
    lambda flags, counts, body: struct.pack("!HH", 0, flags) + counts + body,
    st.integers(0, 0xFFFF),
    st.binary(min_size=8, max_size=8),
    st.binary(max_size=64),
)
hostile = st.one_of(
    st.binary(max_size=80),
    random_headers,
    mutated(dnspython_answers().map(lambda pair: pair[1]), min_ops=0),
)


def render_all_ways(cache: Cache, key: bytes, now: float) -> list[bytes]:
    entry = cache.get(key, now)
    if entry is None:
        return []
    outs = []
    for q in (make_query(edns=False), make_query(do=True), make_query("EXAMPLE.com.")):
        query = parsed(q)[1]
        for stale in (False, True):
            outs.append(cache.render(entry, query, now, stale=stale))
    return outs


@given(hostile)
@example(header(flags=0x8182, qd=0))  # a question-less SERVFAIL (see the test above)
@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_put_never_raises(answer: bytes) -> None:
    cache = Cache(policy(max_entries=4, max_bytes=4096))
    stored = cache.put(b"key", answer, T0)
    assert stored in (True, False)
    render_all_ways(cache, b"key", T0 + 1)


# Found by this test: an NXDOMAIN whose NS record's TTL is 0xC0000000, which dnspython
# reads as 0 (RFC 2181 §8) and dns2dot as a large value capped (RFC 8767 §4).
_TOP_BIT_TTL = (
    b"\x124\x81\x03\x00\x01\x00\x00\x00\x02\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
    b"\xc0\x0c\x00\x06\x00\x01\x00\x00\x00\x04\x00 \x02ns\xc0\x0c\x04host\xc0\x0c\x00\x00\x00\x01"
    b"\x00\x00\x1c \x00\x00\x03\x84\x00\x12u\x00\x00\x00\x00\x04"
    b"\xc0\x0c\x00\x02\x00\x01\xc0\x00\x00\x00\x00\x02\xc0)"
)


@given(mutated(dnspython_answers().map(lambda pair: pair[1]), min_ops=0))
@example(_TOP_BIT_TTL)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_render_of_parseable_answers_parses(answer: bytes) -> None:
    """Whatever dnspython can read, the cache stores and renders into something it reads."""
    try:
        original = dns.message.from_wire(answer)
    except dns.exception.DNSException:
        event("not DNS for dnspython")
        return
    if len(original.question) != 1:
        return
    cache = Cache(policy())
    if not cache.put(b"key", answer, T0):
        event("not cached")
        return
    entry = fetch(cache, b"key", T0)
    client = make_query(original.question[0].name.to_text().upper(), qid=4321)
    _client_msg, query = parsed(client)
    if len(query.qname) != entry.qname_len:
        return
    for stale in (False, True):
        out = cache.render(entry, query, T0 + 3, stale=stale)
        m = dns.message.from_wire(out)
        assert m.id == 4321
        assert m.rcode() == original.rcode()
        assert m.question[0].name == original.question[0].name
        assert [sorted(r.to_text() for r in rs) for rs in m.answer] == [
            sorted(r.to_text() for r in rs) for rs in original.answer
        ]
        assert not any(o.otype == dns.edns.OptionType.PADDING for o in m.options)
        for got, read in zip(
            [rs.ttl for rs in m.answer + m.authority],
            [rs.ttl for rs in original.answer + original.authority],
            strict=True,
        ):
            # dnspython reads a TTL with the top bit set as 0 (RFC 2181 §8); RFC 8767 §4
            # makes it a large value, capped, which is what the cache does: so a 0 read
            # by dnspython may be either, and only bounds the TTL by the cap.
            was = 2**31 - 1 if read == 0 else read
            if stale:
                assert got == STALE_ANSWER_TTL
            elif original.rcode() == dns.rcode.SERVFAIL:
                assert got <= was  # SERVFAIL records are not clamped (lives 2 s anyway)
            else:
                assert got <= min(was, policy().max_ttl)
    # A client without EDNS gets what wire.client_view makes of the answer with EDNS.
    plain_client = make_query(original.question[0].name.to_text().upper(), qid=4321, edns=False)
    plain = cache.render(entry, parsed(plain_client)[1], T0 + 3, stale=False)
    assert plain == wire.client_view(cache.render(entry, query, T0 + 3, stale=False), False)
    event(f"rendered rcode {original.rcode()}")


@given(dnspython_answers())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_wellformed_answers_round_trip(pair: tuple[dns.message.Message, bytes]) -> None:
    q, answer = pair
    original = dns.message.from_wire(answer)
    cache = Cache(policy())
    query = parsed(q)[1]
    key = cache_key(query)
    stored = cache.put(key, answer, T0)
    rcode = original.rcode()
    tc = bool(original.flags & dns.flags.TC)
    soa_rrs = [rs for rs in original.authority if rs.rdtype == dns.rdatatype.SOA]
    if tc or rcode not in (0, 2, 3):
        assert not stored
        return
    if rcode == 0 and original.answer:
        expected = min(rs.ttl for rs in original.answer)
    elif rcode in (0, 3):
        if not soa_rrs:
            assert not stored
            return
        expected = min(soa_rrs[0].ttl, soa_rrs[0][0].minimum)
    else:
        expected = 2
    expected = min(expected, 86400)
    assert stored == (expected > 0)
    event(f"stored={stored}")
    if not stored:
        return
    entry = fetch(cache, key, T0)
    assert entry.expires == T0 + expected
    m = dns.message.from_wire(cache.render(entry, query, T0, stale=False))
    assert m.answer == original.answer
    assert m.authority == original.authority
    assert (m.edns >= 0) == (original.edns >= 0)
    assert not any(o.otype == dns.edns.OptionType.PADDING for o in m.options)


# --------------------------------------------------------------------------- known queries


def serve_once(cache: Cache, q: dns.message.Message, now: float) -> bytes:
    """The long way, as the resolver takes it: get, render, remember."""
    msg, query = parsed(q)
    key = cache_key(query)
    entry = fetch(cache, key, now)
    answer = cache.render(entry, query, now, stale=False)
    cache.remember(msg, key, query, entry, answer, now)
    return answer


def known_answer(cache: Cache, q: dns.message.Message, now: float) -> bytes | None:
    msg = q.to_wire()
    known = cache.known(msg, now)
    return None if known is None else msg[:2] + known.answer


def test_a_repeated_query_gets_what_render_gives_with_its_own_id() -> None:
    cache = Cache(policy())
    q, answer = a_answer(make_query("ExAmPlE.com.", qid=1), ttl=300)
    put_answer(cache, q, answer)
    first = serve_once(cache, q, T0)
    for now, qid in ((T0, 2), (T0 + 0.5, 3), (T0 + 7.2, 0xFFFF), (T0 + 299.9, 4)):
        again = make_query("ExAmPlE.com.", qid=qid)
        got = known_answer(cache, again, now)
        assert got is not None
        expected = cache.render(
            fetch(cache, cache_key(parsed(again)[1]), now), parsed(again)[1], now, stale=False
        )
        assert got == expected
        assert got[2:12] == first[2:12]
        m = dns.message.from_wire(got)
        assert m.id == qid
        assert ttls(m) == [300 - int(now - T0)]  # counted down like any hit
    assert cache.hits == 1 + 4 + 4  # serve_once, the four known, the four fetches


def test_only_the_same_bytes_are_known() -> None:
    cache = Cache(policy())
    q, answer = a_answer(make_query("example.com."))
    put_answer(cache, q, answer)
    serve_once(cache, q, T0)
    for other in (
        make_query("EXAMPLE.com."),  # another spelling: its own answer, the long way
        make_query("example.com.", edns=False),
        make_query("example.com.", do=True),
        make_query("example.com.", "AAAA"),
    ):
        assert known_answer(cache, other, T0) is None


@pytest.mark.parametrize("change", ["expired", "replaced", "evicted", "forgotten"])
def test_a_known_query_goes_the_long_way_once_its_entry_changes(change: str) -> None:
    cache = Cache(policy(max_entries=2, stale_ttl=3600))
    q, answer = a_answer(make_query("example.com."), ttl=60)
    put_answer(cache, q, answer)
    serve_once(cache, q, T0)
    now = T0 + 1
    if change == "expired":
        now = T0 + 60  # stale, not fresh: serve-stale is decided the long way
    elif change == "replaced":
        put_answer(cache, q, a_answer(q, ttl=30)[1], now=now)
    elif change == "evicted":
        for name in ("a.example.", "b.example."):
            other, other_answer = a_answer(make_query(name))
            put_answer(cache, other, other_answer, now=now)
    else:
        cache.forget_queries()
    hits = cache.hits
    assert known_answer(cache, q, now) is None
    assert cache.hits == hits
    if change == "replaced":  # the new entry is learned again on the long way
        serve_once(cache, q, now)
        got = known_answer(cache, q, now)
        assert got is not None and ttls(dns.message.from_wire(got)) == [30]


def test_known_queries_are_bounded_by_the_entry_bound() -> None:
    cache = Cache(policy(max_entries=5))
    queries = [make_query(f"n{i}.example.") for i in range(5)]
    for q in queries:
        put_answer(cache, q, a_answer(q)[1])
    for spelling in ("n{}.example.", "N{}.example.", "n{}.EXAMPLE."):
        for i in range(5):
            serve_once(cache, make_query(spelling.format(i)), T0)
    assert len(cache._known) <= 5
    # Whatever was forgotten is learned again; what is known is still right.
    for i in range(5):
        q = make_query(f"N{i}.example.")
        got = known_answer(cache, q, T0) or serve_once(cache, q, T0)
        assert dns.message.from_wire(got).question[0].name.to_text() == f"N{i}.example."


def test_known_queries_are_bounded_by_a_quarter_of_the_byte_bound() -> None:
    """Known queries hold answers of their own: they count against the byte bound."""
    bounded = policy(max_entries=1000, max_bytes=40 * (ENTRY_OVERHEAD + 100))
    cache = Cache(bounded)
    for i in range(200):
        q = make_query(f"n{i}.example.")
        put_answer(cache, q, a_answer(q)[1])
        serve_once(cache, q, T0)
        held = sum(
            len(rest) + len(k.answer) + 2 + ENTRY_OVERHEAD for rest, k in cache._known.items()
        )
        assert held <= bounded.max_bytes // 4
    assert 0 < len(cache._known) < 40


@pytest.mark.parametrize("change", ["replaced", "evicted", "stale-removed"])
def test_known_queries_go_with_their_entry(change: str) -> None:
    """Whatever removes an entry takes its known queries with it: none is left to hold
    an answer (or a share of the byte bound) for an entry that is gone."""
    cache = Cache(policy(max_entries=2, stale_ttl=10))
    q, answer = a_answer(make_query("example.com."), ttl=60)
    put_answer(cache, q, answer)
    serve_once(cache, q, T0)
    serve_once(cache, make_query("example.com.", qid=7, edns=False), T0)
    assert len(cache._known) == 2
    if change == "replaced":
        put_answer(cache, q, a_answer(q, ttl=30)[1], now=T0 + 1)
    elif change == "evicted":
        for name in ("a.example.", "b.example."):
            other, other_answer = a_answer(make_query(name))
            put_answer(cache, other, other_answer, now=T0 + 1)
    else:
        assert cache.get(cache_key(parsed(q)[1]), T0 + 60 + 10) is None  # past serve-stale
    assert cache._known == {}
    assert cache._known_bytes == 0


def test_a_full_known_map_keeps_what_it_knows() -> None:
    """Past the bound a new query is answered the long way and not noted; what is known
    stays known (a working set that cycles through more queries than fit keeps the
    part that fits, instead of losing everything each time the map fills)."""
    queries = [make_query(f"n{i}.example.") for i in range(8)]
    probe = Cache(policy())
    put_answer(probe, queries[0], a_answer(queries[0])[1])
    serve_once(probe, queries[0], T0)
    each = probe._known_bytes  # what one of these queries is charged: all alike
    cache = Cache(policy(max_entries=100, max_bytes=4 * (5 * each + each // 2)))
    for q in queries:
        put_answer(cache, q, a_answer(q)[1])
    assert len(cache) == 8
    for _ in range(3):  # cycle through more queries than fit, three times
        for q in queries:
            if known_answer(cache, q, T0) is None:
                serve_once(cache, q, T0)
    assert len(cache._known) == 5
    for q in queries[:5]:
        got = known_answer(cache, q, T0)
        assert got is not None
        assert dns.message.from_wire(got).question[0].name == q.question[0].name
    for q in queries[5:]:
        assert known_answer(cache, q, T0) is None
        got = serve_once(cache, q, T0)  # still answered, the long way
        assert dns.message.from_wire(got).question[0].name == q.question[0].name


def test_known_queries_per_entry_are_bounded() -> None:
    """A client that spells the name differently every time (0x20) fills no more than
    ``KNOWN_PER_ENTRY`` places per entry."""
    cache = Cache(policy(max_entries=1000))
    q, answer = a_answer(make_query("abcdefghij.example."))
    put_answer(cache, q, answer)
    name = "abcdefghij.example."
    for i in range(KNOWN_PER_ENTRY + 5):
        spelled = "".join(c.upper() if i >> n & 1 else c for n, c in enumerate(name))
        got = serve_once(cache, make_query(spelled), T0)
        assert dns.message.from_wire(got).question[0].name.to_text() == spelled
    assert len(cache._known) == KNOWN_PER_ENTRY


@pytest.mark.parametrize("edns", [True, False])
@pytest.mark.parametrize("spelling", ["example.com.", "ExAmPlE.CoM."])
def test_a_known_answer_is_rendered_again_each_second(edns: bool, spelling: str) -> None:
    """Every second of age, the known answer is what render gives at that moment."""
    cache = Cache(policy())
    q, answer = a_answer(make_query("example.com."), ttl=100)
    put_answer(cache, q, answer)
    asked = make_query(spelling, edns=edns)
    serve_once(cache, asked, T0)
    for step in range(1, 40):
        now = T0 + step * 0.37
        got = known_answer(cache, make_query(spelling, qid=step, edns=edns), now)
        entry = fetch(cache, cache_key(parsed(asked)[1]), now)
        query = parsed(make_query(spelling, qid=step, edns=edns))[1]
        assert got == cache.render(entry, query, now, stale=False)
        assert ttls(dns.message.from_wire(got)) == [100 - int(step * 0.37)]


def test_a_known_answer_with_records_after_its_opt_counts_down_in_place() -> None:
    """A record after the OPT moves when the OPT is cut for a client without EDNS: its
    TTL is still the one patched each second."""
    q = make_query("example.com.", edns=False)
    r = dns.message.make_response(q)
    r.answer.append(rrset("example.com.", 100, "A", "192.0.2.1"))
    r.additional.append(rrset("ns.example.com.", 100, "A", "192.0.2.53"))
    plain = r.to_wire()
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)  # an OPT before the additional A
    header = bytearray(plain[:12])
    header[10:12] = struct.pack("!H", 2)
    first_additional = plain.index(b"\x02ns")  # the additional record starts with its name
    answer = bytes(header) + plain[12:first_additional] + opt + plain[first_additional:]
    cache = Cache(policy())
    key, _ = put_answer(cache, q, answer)
    assert fetch(cache, key, T0).opt is not None
    serve_once(cache, q, T0)
    for step in range(1, 6):
        now = T0 + step * 1.5
        asked = make_query("example.com.", qid=step, edns=False)
        got = known_answer(cache, asked, now)
        expected = cache.render(fetch(cache, key, now), parsed(asked)[1], now, stale=False)
        assert got == expected
        assert ttls(dns.message.from_wire(got)) == [100 - int(step * 1.5)] * 2
