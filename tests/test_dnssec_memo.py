"""The validator's answer memo: an answer seen again (other ID, TTLs counted down) is
not checked again, and nothing that changes what the signatures cover, nor time, nor
the keys, can reuse a verdict.

Zones are signed in the test (``support.signed_zone``); a validator with its memo off
and the same warm key cache is the reference every memoised verdict must match.
"""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.rrset
import pytest
from dns.dnssectypes import Algorithm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.signed_zone import (
    EXPIRATION,
    INCEPTION,
    NOW,
    Nsec3Params,
    World,
    Zone,
    anchor_text,
    drive,
    name,
)

from dns2dot.policy.dnssec import (
    Ede,
    KeyCache,
    Link,
    LinkKind,
    Result,
    Security,
    Validator,
    parse_anchors,
)
from dns2dot.policy.dnssec.memo import memo_key, ttl_blind, ttl_offsets
from dns2dot.policy.dnssec.signatures import DEFAULT_SKEW

A = int(dns.rdatatype.A)
TXT = int(dns.rdatatype.TXT)
QUESTIONS = [
    ("www.ed.test.", A),  # Ed25519, positive
    ("www.rsa.test.", A),  # RSASHA256, positive
    ("nope.ed.test.", A),  # NXDOMAIN, NSEC
    ("nope.n3.test.", A),  # NXDOMAIN, NSEC3
    ("www.n3.test.", TXT),  # NODATA, NSEC3
    ("x.wild.ed.test.", A),  # wildcard expansion
    ("www.plain.test.", A),  # insecure delegation
]


def _build() -> World:
    top = Zone("test.")
    ed = Zone("ed.test.", Algorithm.ED25519)
    rsa = Zone("rsa.test.", Algorithm.RSASHA256)
    n3 = Zone("n3.test.", nsec3=Nsec3Params(salt=b"\x01"))
    plain = Zone("plain.test.", signed=False)
    for zone in (ed, rsa, n3, plain):
        zone.add("www 300 IN A 192.0.2.1")
        zone.add("*.wild 300 IN A 192.0.2.2")
        top.delegate(zone.sign())
    top.sign()
    return World(top, ed, rsa, n3, plain)


@pytest.fixture(scope="module")
def world() -> World:
    return _build()


def _validator(world: World, memo: bool = True) -> Validator:
    anchors = parse_anchors(anchor_text(world.zones[name("test.")]))
    return Validator(anchors, memo_entries=4096 if memo else 0)


def _wire(world: World, qname: str, qtype: int, ttl: int = 300, qid: int = 1) -> bytes:
    msg = world.resolve(qname, qtype)
    msg.id = qid
    for section in (msg.answer, msg.authority):
        for rrset in section:
            rrset.ttl = ttl
    return msg.to_wire()


def _run(
    validator: Validator, world: World, qname: str, qtype: int, wire: bytes, now: float
) -> Result:
    return drive(validator.validate(qname, qtype, wire, now), world.fetch, now)


@pytest.mark.parametrize(("qname", "qtype"), QUESTIONS)
def test_an_answer_seen_again_with_other_ttls_and_id_is_a_hit(
    world: World, qname: str, qtype: int
) -> None:
    validator = _validator(world)
    first = _run(validator, world, qname, qtype, _wire(world, qname, qtype), NOW)
    assert first.security is not Security.BOGUS
    asked = len(world.asked)
    validation = validator.validate(qname, qtype, _wire(world, qname, qtype, 123, 777), NOW + 5)
    again = drive(validation, world.fetch, NOW + 5)
    assert validation.answer is None  # not even parsed
    assert validation.fetches == 0 and len(world.asked) == asked
    assert validator.memo.hits == 1
    assert again == first


def _flip(wire: bytes, old: bytes, new: bytes) -> bytes:
    assert wire.count(old) == 1
    return wire.replace(old, new)


def test_a_changed_rdata_misses_and_is_bogus(world: World) -> None:
    validator = _validator(world)
    wire = _wire(world, "www.ed.test.", A)
    assert _run(validator, world, "www.ed.test.", A, wire, NOW).security is Security.SECURE
    forged = _flip(wire, bytes([192, 0, 2, 1]), bytes([192, 0, 2, 66]))
    result = _run(validator, world, "www.ed.test.", A, forged, NOW)
    assert result.security is Security.BOGUS and result.ede is Ede.DNSSEC_BOGUS
    assert validator.memo.hits == 0


def test_a_changed_rrsig_misses_and_is_bogus(world: World) -> None:
    validator = _validator(world)
    msg = world.resolve("www.rsa.test.", A)
    wire = msg.to_wire()
    assert _run(validator, world, "www.rsa.test.", A, wire, NOW).security is Security.SECURE
    signature = next(r for r in msg.answer if r.rdtype == dns.rdatatype.RRSIG)[0].signature
    tampered = bytes([signature[10] ^ 1])
    forged = _flip(wire, signature, signature[:10] + tampered + signature[11:])
    result = _run(validator, world, "www.rsa.test.", A, forged, NOW)
    assert result.security is Security.BOGUS
    assert validator.memo.hits == 0


@pytest.mark.parametrize(
    ("when", "ede"),
    [
        (EXPIRATION + DEFAULT_SKEW + 1, Ede.SIGNATURE_EXPIRED),
        (INCEPTION - DEFAULT_SKEW - 1, Ede.SIGNATURE_NOT_YET_VALID),
    ],
)
def test_the_validity_period_is_checked_on_every_use(world: World, when: int, ede: Ede) -> None:
    validator = _validator(world)
    wire = _wire(world, "www.ed.test.", A)
    assert _run(validator, world, "www.ed.test.", A, wire, NOW).security is Security.SECURE
    validation = validator.validate("www.ed.test.", A, wire, when)
    result = drive(validation, world.fetch, when)
    assert validator.memo.hits == 0
    assert result.security is Security.BOGUS and result.ede is ede


def test_a_ttl_the_proof_used_bounds_the_entry(world: World) -> None:
    """The key cache's links last their TTL (300 s): past it the answer is validated
    again, with fresh DNSKEY and DS fetches."""
    validator = _validator(world)
    wire = _wire(world, "nope.n3.test.", A)
    first = _run(validator, world, "nope.n3.test.", A, wire, NOW)
    assert first.valid_until is not None and first.valid_until <= NOW + 300
    asked = len(world.asked)
    later = first.valid_until + 1
    assert _run(validator, world, "nope.n3.test.", A, wire, later).security is Security.SECURE
    assert validator.memo.hits == 0 and len(world.asked) > asked


def test_a_different_key_in_the_key_cache_misses(world: World) -> None:
    validator = _validator(world)
    wire = _wire(world, "www.ed.test.", A)
    assert _run(validator, world, "www.ed.test.", A, wire, NOW).security is Security.SECURE
    other = Zone("ed.test.", Algorithm.ED25519)  # same zone, another key
    keys = dns.rrset.from_rdata_list(other.origin, 300, [other.dnskey])
    validator.keys.put(Link(LinkKind.SECURE, other.origin, NOW + 300, keys), NOW)
    result = _run(validator, world, "www.ed.test.", A, wire, NOW)
    assert validator.memo.hits == 0
    assert result.security is Security.BOGUS


def test_a_key_cache_that_forgot_the_chain_misses(world: World) -> None:
    validator = _validator(world)
    wire = _wire(world, "www.ed.test.", A)
    assert _run(validator, world, "www.ed.test.", A, wire, NOW).security is Security.SECURE
    validator.keys.clear()
    asked = len(world.asked)
    assert _run(validator, world, "www.ed.test.", A, wire, NOW).security is Security.SECURE
    assert validator.memo.hits == 0 and len(world.asked) > asked


def test_bogus_verdicts_are_not_kept(world: World) -> None:
    validator = _validator(world)
    wire = _flip(_wire(world, "www.ed.test.", A), bytes([192, 0, 2, 1]), bytes([192, 0, 2, 9]))
    for _ in range(2):
        assert _run(validator, world, "www.ed.test.", A, wire, NOW).security is Security.BOGUS
    assert validator.memo.hits == 0 and len(validator.memo) == 0


def test_another_question_misses(world: World) -> None:
    validator = _validator(world)
    wire = _wire(world, "www.ed.test.", A)
    _run(validator, world, "www.ed.test.", A, wire, NOW)
    result = _run(validator, world, "mail.ed.test.", A, wire, NOW)
    assert validator.memo.hits == 0
    assert result.security is Security.BOGUS  # no data and no denial for mail.ed.test.


def test_the_memo_is_bounded(world: World) -> None:
    anchors = parse_anchors(anchor_text(world.zones[name("test.")]))
    validator = Validator(anchors, memo_entries=2)
    for qname, qtype in QUESTIONS:
        _run(validator, world, qname, qtype, _wire(world, qname, qtype), NOW)
    assert len(validator.memo) == 2


def _pointer_into_ttl() -> bytes:
    """An answer whose second owner name is read through the first record's TTL: the
    TTL bytes spell the label ``y`` and a pointer to the question name."""
    query = dns.message.make_query("x.example.", "A")
    query.id = 9
    head = bytearray(query.to_wire())
    head[2] |= 0x80  # QR
    head[6:8] = struct.pack("!H", 2)  # ANCOUNT
    first_ttl_at = len(head) + 2 + 4
    first = b"\xc0\x0c" + struct.pack("!HH", A, 1) + b"\x01y\xc0\x0c" + b"\x00\x04\xc0\x00\x02\x01"
    second = struct.pack("!H", 0xC000 | first_ttl_at) + struct.pack("!HHIH", A, 1, 60, 4)
    return bytes(head) + first + second + b"\xc0\x00\x02\x02"


def test_an_answer_that_reads_names_through_ttls_is_not_ttl_blind() -> None:
    wire = _pointer_into_ttl()
    parsed = dns.message.from_wire(wire)
    assert parsed.answer[1].name == dns.name.from_text("y.x.example.")
    assert not ttl_blind(wire)
    plain = dns.message.make_response(dns.message.make_query("x.example.", "A"))
    plain.answer.append(dns.rrset.from_text("x.example.", 60, "IN", "A", "192.0.2.1"))
    assert ttl_blind(plain.to_wire())


def test_memo_key_ignores_id_and_ttls_only(world: World) -> None:
    one = _wire(world, "nope.n3.test.", A, 300, 1)
    other = _wire(world, "nope.n3.test.", A, 17, 4242)
    assert one != other and memo_key(one) == memo_key(other)
    flags = bytearray(one)
    flags[2] ^= dns.flags.AA >> 8
    assert memo_key(bytes(flags)) != memo_key(one)
    assert memo_key(one[:-1]) is None
    assert memo_key(b"\x00" * 5) is None


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(QUESTIONS),
    st.integers(0, 2**16 - 1),
    st.data(),
)
def test_a_memoised_verdict_is_the_verdict_without_memo(
    world: World, question: tuple[str, int], position: int, data: st.DataObject
) -> None:
    """Any one byte changed in a validated answer (its ID and TTLs aside) gets the
    verdict a validator without memo gives it."""
    qname, qtype = question
    with_memo, without_memo = _validator(world), _validator(world, memo=False)
    wire = _wire(world, qname, qtype)
    for validator in (with_memo, without_memo):
        _run(validator, world, qname, qtype, wire, NOW)
    position %= len(wire)
    value = data.draw(st.integers(0, 255))
    mutated = bytearray(wire)
    mutated[position] = value
    got = _run(with_memo, world, qname, qtype, bytes(mutated), NOW)
    want = _run(without_memo, world, qname, qtype, bytes(mutated), NOW)
    assert (got.security, got.ede) == (want.security, want.ede)
    if memo_key(bytes(mutated)) != memo_key(wire):  # more than the ID or a TTL changed
        assert with_memo.memo.hits == 0


def test_other_trust_anchors_or_another_key_cache_miss(world: World) -> None:
    """A validator whose anchors (a reload with other --insecure zones, say) or key
    cache were replaced does not reuse verdicts proven with the old ones."""
    validator = _validator(world)
    wire = _wire(world, "www.ed.test.", A)
    assert _run(validator, world, "www.ed.test.", A, wire, NOW).security is Security.SECURE
    validator.anchors = validator.anchors.with_negative([name("ed.test.")])
    result = _run(validator, world, "www.ed.test.", A, wire, NOW)
    assert result.security is Security.INSECURE and validator.memo.hits == 0
    validator.keys = KeyCache()
    asked = len(world.asked)
    assert _run(validator, world, "www.ed.test.", A, wire, NOW).security is Security.INSECURE
    assert validator.memo.hits == 0
    validator.anchors = parse_anchors(anchor_text(world.zones[name("test.")]))
    assert _run(validator, world, "www.ed.test.", A, wire, NOW).security is Security.SECURE
    assert validator.memo.hits == 0 and len(world.asked) > asked  # the chain fetched again
    assert _run(validator, world, "www.ed.test.", A, wire, NOW).security is Security.SECURE
    assert validator.memo.hits == 1


def _through_ttl(rdtype: int, rdata_head: bytes, rdata_tail: bytes = b"") -> tuple[bytes, bytes]:
    """An answer whose second record has a name in its data read through the first
    record's TTL (which spells ``y`` and a pointer to the question), and the same
    answer with that name pointing at the question instead."""
    query = dns.message.make_query("x.example.", "A")
    head = bytearray(query.to_wire())
    head[2] |= 0x80
    head[6:8] = struct.pack("!H", 2)
    ttl_at = len(head) + 2 + 4
    first = b"\xc0\x0c" + struct.pack("!HH", A, 1) + b"\x01y\xc0\x0c" + b"\x00\x04\xc0\x00\x02\x01"
    out = []
    for target in (ttl_at, 12):
        data = rdata_head + struct.pack("!H", 0xC000 | target) + rdata_tail
        second = b"\xc0\x0c" + struct.pack("!HHIH", rdtype, 1, 60, len(data)) + data
        out.append(bytes(head) + first + second)
    return out[0], out[1]


SOA_T = int(dns.rdatatype.SOA)
# Types whose names dnspython refuses to read through a pointer (RFC 3597 §4, RFC 4034
# §3.1.7, §4.1.1, RFC 9460 §2.2): the memo follows pointers there too.
NO_COMPRESSION = {int(dns.rdatatype.RRSIG), int(dns.rdatatype.NSEC), int(dns.rdatatype.HTTPS)}
_RRSIG_HEAD = struct.pack("!HBBIIIH", A, 13, 2, 60, 2_000_000_000, 1_000_000_000, 1)


@pytest.mark.parametrize(
    ("rdtype", "head", "tail"),
    [
        (int(dns.rdatatype.CNAME), b"", b""),
        (int(dns.rdatatype.MX), b"\x00\x0a", b""),
        (int(dns.rdatatype.SRV), b"\x00\x01\x00\x01\x00\x35", b""),
        (SOA_T, b"\x02ns\xc0\x0c", struct.pack("!5I", 1, 2, 3, 4, 5)),  # RNAME through it
        (int(dns.rdatatype.RRSIG), _RRSIG_HEAD, b"\x01" * 64),
        (int(dns.rdatatype.NSEC), b"", b"\x00\x01\x40"),
        (int(dns.rdatatype.HTTPS), b"\x00\x01", b""),
    ],
)
def test_a_name_in_record_data_read_through_a_ttl_is_seen(
    rdtype: int, head: bytes, tail: bytes
) -> None:
    bad, good = _through_ttl(rdtype, head, tail)
    if rdtype not in NO_COMPRESSION:  # dnspython reads it: the TTL is part of a name
        assert dns.message.from_wire(bad).answer[1].rdtype == rdtype
    assert not ttl_blind(bad)
    assert ttl_blind(good)


def test_a_type_with_names_the_memo_does_not_map_is_never_kept() -> None:
    _, good = _through_ttl(int(dns.rdatatype.NAPTR), b"\x00\x01\x00\x01\x00\x00\x00", b"")
    dns.message.from_wire(good)
    assert not ttl_blind(good)


_TEMPLATE: list[bytes] = []


def _template() -> bytes:
    """A signed answer with names in record data (CNAME, MX, SOA, RRSIG, NSEC)."""
    if not _TEMPLATE:
        zone = Zone("t.test.", Algorithm.ED25519)
        zone.add("www 300 IN CNAME mail.t.test.")
        zone.add("mail 300 IN MX 10 mx.t.test.")
        zone.sign()
        reply = World(zone).resolve("www.t.test.", int(dns.rdatatype.MX))
        soa = next(r for (n, t), r in zone.rrsets.items() if t == SOA_T)
        reply.authority.append(soa)
        _TEMPLATE.append(reply.to_wire())
    return _TEMPLATE[0]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2**16 - 1), st.integers(0, 255)), min_size=1, max_size=3),
    st.binary(min_size=4, max_size=4),
)
def test_ttl_blind_answers_parse_the_same_whatever_their_ttls(
    changes: list[tuple[int, int]], fill: bytes
) -> None:
    """The property the memo rests on: if ``ttl_blind`` accepts an answer (bytes changed
    at random, compression pointers included), any TTLs give the same records."""
    wire = bytearray(_template())
    for position, value in changes:
        wire[12 + position % (len(wire) - 12)] = value
    try:
        before = dns.message.from_wire(bytes(wire))
    except Exception:
        return  # unparsable: validated as bogus, never kept
    if not ttl_blind(bytes(wire)):
        return
    offsets = ttl_offsets(bytes(wire))
    assert offsets is not None
    for at in offsets:
        wire[at : at + 4] = fill
    assert dns.message.from_wire(bytes(wire)) == before
