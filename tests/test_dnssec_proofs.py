"""Property tests of the DNSSEC proof code and the validator's handling of hostile input.

NSEC and NSEC3 chains are built over random sets of names and checked against a
brute-force reference: canonical order as reversed lower-cased label tuples (RFC 4034
§6.1), existence as "a name of the zone or an ancestor of one" (empty non-terminals
exist), the closest encloser as the deepest existing ancestor. Then garbled answers
and garbled DS/DNSKEY replies go through the validator, which must always end in a
result and never raise.
"""

from __future__ import annotations

import hashlib

import dns.message
import dns.name
import dns.rdatatype
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.mutate import mutated
from support.signed_zone import NOW, Nsec3Params, World, Zone, anchor_text, drive, name

from dns2dot.policy.dnssec import NeedDNSKEY, NeedDS, Result, Validator, parse_anchors
from dns2dot.policy.dnssec.proofs import (
    Cut,
    Nsec,
    Nsec3,
    Nsec3Set,
    Proof,
    bitmap_types,
    nsec3_cut,
    nsec3_hash,
    nsec3_nodata,
    nsec3_nxdomain,
    nsec_cut,
    nsec_nodata,
    nsec_nxdomain,
)

ZONE = name("z.test.")
A = int(dns.rdatatype.A)
TXT = int(dns.rdatatype.TXT)
NS = int(dns.rdatatype.NS)
DS = int(dns.rdatatype.DS)
STAR = dns.name.Name((b"*",))

labels = st.text("abAB0", min_size=1, max_size=2)
relative = st.lists(labels, min_size=1, max_size=3)
qnames = relative.map(lambda ls: dns.name.from_text(".".join(ls), ZONE))
zone_names = st.tuples(st.booleans(), relative).map(
    lambda t: dns.name.from_text(".".join((["*"] if t[0] else []) + t[1]), ZONE)
)
name_sets = st.sets(zone_names, min_size=0, max_size=10)


def key(n: dns.name.Name) -> tuple[bytes, ...]:
    """Canonical order, independently of dnspython's comparison."""
    return tuple(label.lower() for label in reversed(n.labels))


def existing(names: set[dns.name.Name]) -> set[dns.name.Name]:
    out = {ZONE}
    for n in names:
        while n != ZONE:
            out.add(n)
            n = n.parent()
    return out


def encloser(qname: dns.name.Name, exists: set[dns.name.Name]) -> dns.name.Name:
    while qname not in exists:
        qname = qname.parent()
    return qname


def nsec_chain(names: set[dns.name.Name]) -> list[Nsec]:
    owners = sorted({ZONE} | names, key=key)
    types = frozenset({TXT})
    return [Nsec(o, owners[(i + 1) % len(owners)], types) for i, o in enumerate(owners)]


def nsec3_chain(names: set[dns.name.Name], salt: bytes, iterations: int) -> Nsec3Set:
    hashed = sorted((nsec3_hash(n, salt, iterations), n) for n in existing(names))
    records = []
    for i, (digest, owner) in enumerate(hashed):
        types = frozenset({TXT}) if owner in names or owner == ZONE else frozenset()
        nxt = hashed[(i + 1) % len(hashed)][0]
        records.append(Nsec3(ZONE, digest, nxt, types, False, iterations, salt))
    return Nsec3Set(ZONE, records)


def reference(names: set[dns.name.Name], qname: dns.name.Name) -> tuple[bool, bool]:
    """(NXDOMAIN provable, NODATA for A provable) from the complete chain."""
    exists = existing(names)
    if qname in exists:
        return False, True  # every name holds TXT only, ENTs hold nothing
    wildcard = STAR.concatenate(encloser(qname, exists))
    return wildcard not in names, wildcard in names


@given(name_sets, qnames)
def test_nsec_covering_agrees_with_brute_force(
    names: set[dns.name.Name], qname: dns.name.Name
) -> None:
    chain = nsec_chain(names)
    keys = [key(r.owner) for r in chain]
    if key(qname) in keys:
        expected = -1
    else:
        below = [i for i, k in enumerate(keys) if k < key(qname)]
        expected = max(below) if below else len(keys) - 1
    assert [r.covers(qname) for r in chain] == [i == expected for i in range(len(chain))]


@given(name_sets, qnames)
@example({dns.name.from_text("*.a", ZONE)}, dns.name.from_text("b.a", ZONE))
@example({dns.name.from_text("x.a", ZONE)}, dns.name.from_text("a", ZONE))
def test_nsec_denials_agree_with_brute_force(
    names: set[dns.name.Name], qname: dns.name.Name
) -> None:
    chain = nsec_chain(names)
    nxdomain, nodata = reference(names, qname)
    assert (nsec_nxdomain(chain, qname) is Proof.PROVEN) == nxdomain
    assert (nsec_nodata(chain, qname, A) is Proof.PROVEN) == nodata
    # A name that exists is not a zone cut (no NS anywhere), and neither is one that does not.
    assert nsec_cut(chain, qname) is Cut.NOT_A_CUT


@given(name_sets, qnames, st.binary(max_size=4), st.integers(0, 3))
@example({dns.name.from_text("*.a", ZONE)}, dns.name.from_text("b.a", ZONE), b"", 0)
def test_nsec3_matching_and_denials_agree_with_brute_force(
    names: set[dns.name.Name], qname: dns.name.Name, salt: bytes, iterations: int
) -> None:
    chain = nsec3_chain(names, salt, iterations)
    exists = existing(names)
    assert (chain.match(qname) is not None) == (qname in exists)
    assert (chain.cover(qname) is not None) == (qname not in exists)
    proof = chain.closest_encloser(qname)
    if qname in exists:
        assert proof is None or proof[0] != qname
    else:
        assert proof is not None
        assert proof[0] == encloser(qname, exists)
    nxdomain, nodata = reference(names, qname)
    assert (nsec3_nxdomain(chain, qname) is Proof.PROVEN) == nxdomain
    assert (nsec3_nodata(chain, qname, A) is Proof.PROVEN) == nodata
    assert nsec3_cut(chain, qname) is Cut.NOT_A_CUT


@given(
    st.lists(st.binary(min_size=20, max_size=20), min_size=1, max_size=8, unique=True),
    st.binary(min_size=20, max_size=20),
)
def test_nsec3_hash_covering_agrees_with_brute_force(owners: list[bytes], digest: bytes) -> None:
    ordered = sorted(owners)
    chain = [
        Nsec3(ZONE, o, ordered[(i + 1) % len(ordered)], frozenset(), False, 0, b"")
        for i, o in enumerate(ordered)
    ]
    if digest in ordered:
        expected = -1
    else:
        below = [i for i, o in enumerate(ordered) if o < digest]
        expected = max(below) if below else len(ordered) - 1
    assert [r.covers(digest) for r in chain] == [i == expected for i in range(len(chain))]
    assert [r.matches(digest) for r in chain] == [o == digest for o in ordered]


@given(st.sets(st.integers(1, 65535), max_size=12))  # type 0 is reserved
def test_bitmap_types_round_trip(types: set[int]) -> None:
    from dns.rdtypes.util import Bitmap

    assert bitmap_types(Bitmap.from_rdtypes(sorted(types)).windows) == frozenset(types)


@given(qnames, st.binary(max_size=8), st.integers(0, 5))
def test_nsec3_hash_matches_dnspython(qname: dns.name.Name, salt: bytes, iterations: int) -> None:
    import base64

    import dns.dnssec

    ours = base64.b32hexencode(nsec3_hash(qname, salt, iterations)).decode()
    assert ours == dns.dnssec.nsec3_hash(qname, salt, iterations, 1)
    digest = hashlib.sha1((qname.canonicalize().to_wire() or b"") + salt).digest()
    assert len(digest) == len(nsec3_hash(qname, salt, iterations))


def test_delegation_records_do_not_deny_what_lies_below_them() -> None:
    """RFC 6840 §4.1, §4.4: a parent's NSEC at a cut proves nothing under the cut, and
    denies only the DS there; an opt-out span only proves insecurity."""
    cut = name("child.z.test.")
    nsec = [Nsec(cut, name("zz.z.test."), frozenset({NS, int(dns.rdatatype.NSEC)}))]
    assert not nsec[0].covers(name("www.child.z.test."))
    assert nsec_nodata(nsec, cut, DS) is Proof.PROVEN
    assert nsec_nodata(nsec, cut, A) is Proof.NOT_PROVEN
    assert nsec_cut(nsec, cut) is Cut.INSECURE_DELEGATION
    apex = [Nsec(cut, name("a.child.z.test."), frozenset({NS, int(dns.rdatatype.SOA)}))]
    assert nsec_nodata(apex, cut, DS) is Proof.NOT_PROVEN
    assert nsec_cut(apex, cut) is Cut.UNPROVEN
    # NSEC3 opt-out: the delegation has no record; the span over it proves insecurity only
    zone_hash = nsec3_hash(ZONE, b"", 0)
    records = [
        Nsec3(ZONE, zone_hash, zone_hash, frozenset({NS, int(dns.rdatatype.SOA)}), True, 0, b"")
    ]
    chain = Nsec3Set(ZONE, records)
    assert nsec3_cut(chain, cut) is Cut.INSECURE_DELEGATION
    assert nsec3_nodata(chain, cut, DS) is Proof.OPT_OUT
    assert nsec3_nxdomain(chain, name("x.z.test.")) is Proof.OPT_OUT


def test_nsec3_records_of_another_shape_are_ignored() -> None:
    rrset = dns.rrset.from_text(
        "not-base32-!.z.test.", 300, "IN", "NSEC3", "1 0 0 - 0123456789ABCDEFGHIJKLMNOPQRSTUV A"
    )
    assert Nsec3.from_rrset(rrset) == []
    other_alg = dns.rrset.from_text(
        "0123456789ABCDEFGHIJKLMNOPQRSTUV.z.test.", 300, "IN", "NSEC3",
        "2 0 0 - 0123456789ABCDEFGHIJKLMNOPQRSTUV A",
    )  # fmt: skip
    assert Nsec3.from_rrset(other_alg) == []
    good = dns.rrset.from_text(
        "0123456789abcdefghijklmnopqrstuv.z.test.", 300, "IN", "NSEC3",
        "1 1 151 ab 0123456789ABCDEFGHIJKLMNOPQRSTUV A",
    )  # fmt: skip
    records = Nsec3.from_rrset(good)
    assert len(records) == 1 and records[0].opt_out
    assert Nsec3Set(ZONE, records).too_costly


# -- hostile input through the validator ------------------------------------------------

_WORLD: list[World] = []
QUESTIONS = [
    ("www.signed.test.", A),
    ("nope.signed.test.", A),
    ("a.wild.signed.test.", A),
    ("www.signed.test.", TXT),
    ("nope.hashed.test.", A),
    ("a.wild.hashed.test.", A),
    ("www.hashed.test.", TXT),
]


def world() -> World:
    """One small signed world for every example (signing is the slow part)."""
    if not _WORLD:
        root = Zone("test.")
        signed = Zone("signed.test.")
        hashed = Zone("hashed.test.", nsec3=Nsec3Params(1, b"\x01"))
        for zone in (signed, hashed):
            zone.add("www 300 IN A 192.0.2.1")
            zone.add("*.wild 300 IN A 192.0.2.2")
            root.delegate(zone)
        _WORLD.append(World(root.sign(), signed.sign(), hashed.sign()))
    return _WORLD[0]


def seeds() -> st.SearchStrategy[bytes]:
    w = world()
    return st.sampled_from([w.resolve(q, t).to_wire(max_size=65535) for q, t in QUESTIONS])


def anchors_of(w: World) -> Validator:
    return Validator(parse_anchors(anchor_text(w.zones[name("test.")])))


HOSTILE = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HOSTILE
@given(st.data())
def test_garbled_answers_end_in_a_result(data: st.DataObject) -> None:
    w = world()
    qname, qtype = data.draw(st.sampled_from(QUESTIONS))
    wire = data.draw(mutated(seeds()))
    result = drive(anchors_of(w).validate(qname, qtype, wire, NOW), w.fetch)
    assert isinstance(result, Result)


@HOSTILE
@given(st.data())
def test_garbled_ds_and_dnskey_replies_end_in_a_result(data: st.DataObject) -> None:
    w = world()
    qname, qtype = data.draw(st.sampled_from(QUESTIONS))

    def fetch(need: NeedDS | NeedDNSKEY) -> bytes | dns.message.Message:
        reply = w.fetch(need).to_wire(max_size=65535)
        if data.draw(st.booleans()):
            return data.draw(mutated(st.just(reply)))
        return reply

    result = drive(anchors_of(w).validate(qname, qtype, w.resolve(qname, qtype), NOW), fetch)
    assert isinstance(result, Result)


@HOSTILE
@given(st.data())
def test_records_moved_between_answers_never_raise(data: st.DataObject) -> None:
    """Whole RRsets spliced from one answer into another: structurally valid lies."""
    w = world()
    qname, qtype = data.draw(st.sampled_from(QUESTIONS))
    msg = w.resolve(qname, qtype)
    donor = w.resolve(*data.draw(st.sampled_from(QUESTIONS)))
    pool = donor.answer + donor.authority
    for section in (msg.answer, msg.authority):
        if section and data.draw(st.booleans()):
            del section[data.draw(st.integers(0, len(section) - 1))]
        if pool and data.draw(st.booleans()):
            section.append(data.draw(st.sampled_from(pool)))
    result = drive(anchors_of(w).validate(qname, qtype, msg, NOW), w.fetch)
    assert isinstance(result, Result)
