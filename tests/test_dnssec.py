"""The DNSSEC validator against zones signed in the test with dnspython.

A test trust point ``test.`` (ECDSA P-256, NSEC) delegates to zones signed with
Ed25519, RSA, ECDSA P-384 and Ed448, with NSEC and NSEC3 (with and without opt-out),
to unsigned zones, and to zones whose DS the validator cannot use. Answers come from
``support.signed_zone.World`` (what a resolver asked with DO and CD would return) and
are then tampered with for the bogus cases; the validator's DS and DNSKEY needs are
answered from the same world. Everything runs at one fixed time, ``NOW``.
"""

from __future__ import annotations

from collections.abc import Callable

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from dns.dnssectypes import Algorithm
from dns.rdtypes.ANY.DS import DS
from support.signed_zone import (
    NOW,
    TTL,
    Nsec3Params,
    World,
    Zone,
    anchor_text,
    drive,
    name,
)

from dns2dot.policy.dnssec import (
    Done,
    Ede,
    NeedDNSKEY,
    NeedDS,
    Result,
    Security,
    State,
    Validator,
    parse_anchors,
)
from dns2dot.protocol.errors import ConfigError, Dns2DotError

A = int(dns.rdatatype.A)
AAAA = int(dns.rdatatype.AAAA)
TXT = int(dns.rdatatype.TXT)
DS_T = int(dns.rdatatype.DS)
DNSKEY_T = int(dns.rdatatype.DNSKEY)
RRSIG_T = int(dns.rdatatype.RRSIG)
CNAME_T = int(dns.rdatatype.CNAME)


def _zone(origin: str, algorithm: Algorithm, **kw: object) -> Zone:
    zone = Zone(origin, algorithm, **kw)  # type: ignore[arg-type]
    zone.add("www 300 IN A 192.0.2.1")
    zone.add("*.wild 300 IN A 192.0.2.2")
    zone.add("x.ent 300 IN TXT hello")
    return zone


def _build() -> World:
    root = Zone("test.")
    nsec = _zone("nsec.test.", Algorithm.ED25519)
    nsec.add("cname 300 IN CNAME www.nsec3.test.")
    nsec.add("tounsigned 300 IN CNAME www.unsigned.test.")
    nsec.add("dn 300 IN DNAME nsec3.test.")
    nsec3 = _zone("nsec3.test.", Algorithm.RSASHA256, nsec3=Nsec3Params(0, b"\xab\xcd"))
    optout = _zone("optout.test.", Algorithm.ECDSAP384SHA384, nsec3=Nsec3Params(opt_out=True))
    under_optout = _zone("child.optout.test.", Algorithm.ED25519, signed=False)
    optout.delegate(under_optout)
    costly = _zone("costly.test.", Algorithm.ED25519, nsec3=Nsec3Params(iterations=151))
    unsigned = _zone("unsigned.test.", Algorithm.ED25519, signed=False)
    rsa512 = _zone("rsa512.test.", Algorithm.RSASHA512)
    ed448 = _zone("ed448.test.", Algorithm.ED448)
    p256 = _zone("p256.test.", Algorithm.ECDSAP256SHA256, nsec3=Nsec3Params(), split=True)
    wrongds = _zone("wrongds.test.", Algorithm.ED25519)
    other = Zone("other.test.", Algorithm.ED25519)
    unsupported = _zone("unsupported.test.", Algorithm.ED25519)
    sha1 = _zone("sha1.test.", Algorithm.ED25519)
    for child in (nsec, nsec3, optout, costly, unsigned, rsa512, ed448, p256):
        root.delegate(child)
    root.delegate(wrongds, [dns.dnssec.make_ds(wrongds.origin, other.dnskey, "SHA256")])
    real = dns.dnssec.make_ds(unsupported.origin, unsupported.dnskey, "SHA256")
    fake_alg = DS(dns.rdataclass.IN, dns.rdatatype.DS, real.key_tag, 253, 2, real.digest)
    root.delegate(unsupported, [fake_alg])
    sha1_ds = dns.dnssec.make_ds(
        sha1.origin, sha1.dnskey, "SHA1", policy=dns.dnssec.allow_all_policy
    )
    root.delegate(sha1, [sha1_ds])
    gost = _zone("gost.test.", Algorithm.ED25519)
    real = dns.dnssec.make_ds(gost.origin, gost.dnskey, "SHA256")
    gost_ds = DS(dns.rdataclass.IN, dns.rdatatype.DS, real.key_tag, real.algorithm, 3, real.digest)
    root.delegate(gost, [gost_ds])
    zones = [root, nsec, nsec3, optout, under_optout, costly, unsigned, rsa512, ed448, p256]
    zones += [wrongds, unsupported, sha1, gost]
    for zone in zones:
        zone.sign()
    return World(*zones)


@pytest.fixture(scope="module")
def world() -> World:
    return _build()


@pytest.fixture
def validator(world: World) -> Validator:
    return Validator(parse_anchors(anchor_text(world.zones[name("test.")])))


def check(
    validator: Validator,
    world: World,
    qname: str,
    qtype: int,
    msg: dns.message.Message | bytes | None = None,
    fetch: Callable[[NeedDS | NeedDNSKEY], dns.message.Message | bytes | None] | None = None,
) -> Result:
    if msg is None:
        msg = world.resolve(qname, qtype)
    return drive(validator.validate(qname, qtype, msg, NOW), fetch or world.fetch)


def without(
    msg: dns.message.Message, drop: Callable[[dns.rrset.RRset], bool]
) -> dns.message.Message:
    """A copy of ``msg`` without the RRsets ``drop`` picks, in every section."""
    copy = dns.message.from_wire(msg.to_wire(max_size=65535))
    copy.answer = [r for r in copy.answer if not drop(r)]
    copy.authority = [r for r in copy.authority if not drop(r)]
    return copy


def is_rrsig(rrset: dns.rrset.RRset) -> bool:
    return rrset.rdtype == RRSIG_T


def resigned(
    world: World, msg: dns.message.Message, zone: str, **how: object
) -> dns.message.Message:
    """``msg`` with its answer RRsets signed again by ``zone`` as ``how`` says."""
    z = world.zones[name(zone)]
    copy = without(msg, lambda r: r.rdtype == RRSIG_T and r in msg.answer)
    copy.answer = [r for r in copy.answer if r.rdtype != RRSIG_T]
    copy.answer += [z.sign_rrset(r, **how) for r in list(copy.answer)]  # type: ignore[arg-type]
    return copy


# -- secure answers -------------------------------------------------------------------


@pytest.mark.parametrize(
    "qname",
    [
        "www.nsec.test.",
        "www.nsec3.test.",
        "www.optout.test.",
        "www.rsa512.test.",
        "www.ed448.test.",
        "www.p256.test.",
        "test.",
    ],
)
def test_secure_positive_answer_for_every_algorithm(
    validator: Validator, world: World, qname: str
) -> None:
    qtype = DNSKEY_T if qname == "test." else A
    result = check(validator, world, qname, qtype)
    assert result.security is Security.SECURE, result
    assert result.ede is None


@pytest.mark.parametrize(
    ("qname", "expected"),
    [
        ("WWW.Nsec.TEST.", Security.SECURE),
        ("NoPe.NSEC3.test.", Security.SECURE),
        ("A.B.WILD.nsec.TEST.", Security.SECURE),
        ("www.child.OPTOUT.test.", Security.INSECURE),
    ],
)
def test_names_in_mixed_case(
    validator: Validator, world: World, qname: str, expected: Security
) -> None:
    """Clients randomise case (0x20); names compare without it (RFC 4034 §6.1)."""
    assert check(validator, world, qname, A).security is expected


def test_ksk_and_zsk_split(validator: Validator, world: World) -> None:
    """The DS names the KSK, which signs only the DNSKEY RRset; the ZSK signs the data."""
    zone = world.zones[name("p256.test.")]
    assert zone.zsk is not zone.dnskey
    assert check(validator, world, "www.p256.test.", A).security is Security.SECURE
    assert check(validator, world, "nope.p256.test.", A).security is Security.SECURE
    ksk_signed = resigned(world, world.resolve("www.p256.test.", A), "p256.test.")
    assert check(validator, world, "www.p256.test.", A, ksk_signed).security is Security.SECURE
    no_zsk = dns.message.from_wire(world.resolve("www.p256.test.", A).to_wire())
    result = check(
        Validator(validator.anchors), world, "www.p256.test.", A, no_zsk,
        fetch=lambda need: _drop_zsk(world, need),
    )  # fmt: skip
    assert result.security is Security.BOGUS
    assert result.ede is Ede.DNSKEY_MISSING or result.ede is Ede.DNSSEC_BOGUS


def _drop_zsk(world: World, need: NeedDS | NeedDNSKEY) -> dns.message.Message:
    """DNSKEY replies for p256.test. without its ZSK (the KSK signature then fails)."""
    reply = world.fetch(need)
    if isinstance(need, NeedDNSKEY) and need.zone == name("p256.test."):
        zone = world.zones[name("p256.test.")]
        for rrset in reply.answer:
            if rrset.rdtype == DNSKEY_T:
                rrset.discard(zone.zsk)
    return reply


@pytest.mark.parametrize("zone", ["nsec.test.", "nsec3.test.", "optout.test."])
def test_secure_nxdomain(validator: Validator, world: World, zone: str) -> None:
    msg = world.resolve(f"nope.{zone}", A)
    assert msg.rcode() == dns.rcode.NXDOMAIN
    result = check(validator, world, f"nope.{zone}", A, msg)
    if zone == "optout.test.":  # the name falls in an opt-out span: unprovable
        assert result.security is Security.INSECURE, result
        assert "opt-out" in result.reason
    else:
        assert result.security is Security.SECURE, result


@pytest.mark.parametrize("zone", ["nsec.test.", "nsec3.test.", "optout.test."])
@pytest.mark.parametrize("qname", ["www", "ent"])
def test_secure_nodata_and_empty_non_terminal(
    validator: Validator, world: World, zone: str, qname: str
) -> None:
    result = check(validator, world, f"{qname}.{zone}", AAAA)
    assert result.security is Security.SECURE, result
    assert "NODATA" in result.reason


@pytest.mark.parametrize("zone", ["nsec.test.", "nsec3.test."])
def test_wildcard_expansion_with_its_proof(validator: Validator, world: World, zone: str) -> None:
    result = check(validator, world, f"a.b.wild.{zone}", A)
    assert result.security is Security.SECURE, result
    assert "wildcard" in result.reason


@pytest.mark.parametrize("zone", ["nsec.test.", "nsec3.test."])
def test_wildcard_nodata(validator: Validator, world: World, zone: str) -> None:
    result = check(validator, world, f"a.wild.{zone}", TXT)
    assert result.security is Security.SECURE, result


@pytest.mark.parametrize("zone", ["nsec.test.", "nsec3.test."])
def test_wildcard_expansion_without_its_proof_is_bogus(
    validator: Validator, world: World, zone: str
) -> None:
    msg = world.resolve(f"a.wild.{zone}", A)
    stripped = dns.message.from_wire(msg.to_wire(max_size=65535))
    stripped.authority = []
    result = check(validator, world, f"a.wild.{zone}", A, stripped)
    assert result.security is Security.BOGUS, result
    assert result.ede is Ede.DNSSEC_BOGUS
    assert zone in result.reason


def test_wildcard_answer_for_a_name_that_exists_is_bogus(
    validator: Validator, world: World
) -> None:
    """The proof that came with ``a.wild`` does not deny ``www.wild``: reusing it fails."""
    zone = world.zones[name("nsec.test.")]
    zone.add("www.wild 300 IN A 192.0.2.7")
    try:
        zone.sign()
        forged = world.resolve("a.wild.nsec.test.", A)
        for rrset in forged.answer:
            rrset.name = name("www.wild.nsec.test.")
        result = check(validator, world, "www.wild.nsec.test.", A, forged)
    finally:
        del zone.rrsets[(name("www.wild.nsec.test."), A)]
        zone.sign()
    assert result.security is Security.BOGUS, result


# -- chains ---------------------------------------------------------------------------


def test_cname_across_zones_is_validated_link_by_link(validator: Validator, world: World) -> None:
    msg = world.resolve("cname.nsec.test.", A)
    assert [r.rdtype for r in msg.answer if r.rdtype != RRSIG_T] == [CNAME_T, A]
    assert check(validator, world, "cname.nsec.test.", A, msg).security is Security.SECURE
    broken = without(msg, lambda r: r.rdtype == RRSIG_T and r.covers == A)
    result = check(validator, world, "cname.nsec.test.", A, broken)
    assert result.security is Security.BOGUS
    assert result.ede is Ede.RRSIGS_MISSING
    assert "nsec3.test." in result.reason


def test_cname_into_an_unsigned_zone_is_insecure(validator: Validator, world: World) -> None:
    result = check(validator, world, "tounsigned.nsec.test.", A)
    assert result.security is Security.INSECURE, result


def test_cname_to_a_name_that_does_not_exist(validator: Validator, world: World) -> None:
    zone = world.zones[name("nsec.test.")]
    zone.add("dangling 300 IN CNAME nope.nsec3.test.")
    try:
        zone.sign()
        msg = world.resolve("dangling.nsec.test.", A)
        assert msg.rcode() == dns.rcode.NXDOMAIN
        result = check(validator, world, "dangling.nsec.test.", A, msg)
    finally:
        del zone.rrsets[(name("dangling.nsec.test."), CNAME_T)]
        zone.sign()
    assert result.security is Security.SECURE, result


def _dname_answer(world: World, cname_target: str = "www.nsec3.test.") -> dns.message.Message:
    nsec = world.zones[name("nsec.test.")]
    dname_key = (name("dn.nsec.test."), int(dns.rdatatype.DNAME))
    target = world.resolve("www.nsec3.test.", A)
    msg = dns.message.from_wire(target.to_wire(max_size=65535))
    cname = dns.rrset.from_text("www.dn.nsec.test.", TTL, "IN", "CNAME", cname_target)
    msg.answer = [nsec.rrsets[dname_key], nsec.sigs[dname_key], cname, *target.answer]
    return msg


def test_dname_and_its_unsigned_cname(validator: Validator, world: World) -> None:
    result = check(validator, world, "www.dn.nsec.test.", A, _dname_answer(world))
    assert result.security is Security.SECURE, result
    forged = _dname_answer(world, "evil.nsec3.test.")
    result = check(validator, world, "www.dn.nsec.test.", A, forged)
    assert result.security is Security.BOGUS, result


# -- insecure -------------------------------------------------------------------------


@pytest.mark.parametrize("qname", ["www.unsigned.test.", "nope.unsigned.test."])
def test_insecure_delegation_nsec(validator: Validator, world: World, qname: str) -> None:
    result = check(validator, world, qname, A)
    assert result.security is Security.INSECURE, result
    assert "unsigned.test." in result.reason


@pytest.mark.parametrize("qname", ["www.child.optout.test.", "nope.child.optout.test."])
def test_insecure_delegation_nsec3_opt_out(validator: Validator, world: World, qname: str) -> None:
    result = check(validator, world, qname, A)
    assert result.security is Security.INSECURE, result
    assert "child.optout.test." in result.reason


def test_insecure_delegation_ds_denial_itself_is_secure(validator: Validator, world: World) -> None:
    """The parent's proof that an unsigned child has no DS is itself a secure answer."""
    result = check(validator, world, "unsigned.test.", DS_T)
    assert result.security is Security.SECURE, result


def test_unsupported_algorithm_is_insecure(validator: Validator, world: World) -> None:
    result = check(validator, world, "www.unsupported.test.", A)
    assert result.security is Security.INSECURE, result
    assert result.ede is Ede.UNSUPPORTED_DNSKEY_ALGORITHM
    assert "unsupported.test." in result.reason


def test_sha1_ds_is_still_validated(validator: Validator, world: World) -> None:
    """RFC 8624 §3.3: SHA-1 DS records must not be made but must still be validated."""
    assert check(validator, world, "www.sha1.test.", A).security is Security.SECURE


def test_unsupported_digest_is_insecure(validator: Validator, world: World) -> None:
    result = check(validator, world, "www.gost.test.", A)
    assert result.security is Security.INSECURE, result
    assert result.ede is Ede.UNSUPPORTED_DS_DIGEST


def test_nsec3_above_150_iterations_is_insecure(validator: Validator, world: World) -> None:
    result = check(validator, world, "nope.costly.test.", A)
    assert result.security is Security.INSECURE, result
    assert "151 iterations" in result.reason
    positive = check(validator, world, "www.costly.test.", A)
    assert positive.security is Security.SECURE  # signatures still count


def test_negative_trust_anchor(world: World) -> None:
    anchors = parse_anchors(anchor_text(world.zones[name("test.")])).with_negative(["nsec.test"])
    v = Validator(anchors)
    result = check(v, world, "www.nsec.test.", A)
    assert result.security is Security.INSECURE
    assert "negative trust anchor" in result.reason
    assert check(v, world, "www.nsec3.test.", A).security is Security.SECURE


def test_no_trust_anchor_above_the_name(validator: Validator, world: World) -> None:
    msg = dns.message.make_response(dns.message.make_query("example.org.", A))
    msg.answer = [dns.rrset.from_text("example.org.", 300, "IN", "A", "192.0.2.9")]
    result = check(validator, world, "example.org.", A, msg)
    assert result.security is Security.INSECURE
    assert world.asked == [] or all(n.is_subdomain(name("test.")) for n, _ in world.asked)


def test_any_query_validates_every_rrset_at_the_name(validator: Validator, world: World) -> None:
    zone = world.zones[name("nsec.test.")]
    www = name("www.nsec.test.")
    nsec_t = int(dns.rdatatype.NSEC)
    msg = dns.message.make_response(dns.message.make_query(www, "ANY"))
    msg.answer = [zone.rrsets[(www, A)], zone.sigs[(www, A)]]
    msg.answer += [zone.rrsets[(www, nsec_t)], zone.sigs[(www, nsec_t)]]
    any_t = int(dns.rdatatype.ANY)
    assert check(validator, world, "www.nsec.test.", any_t, msg).security is Security.SECURE
    msg.answer.pop()  # the NSEC's RRSIG
    result = check(validator, world, "www.nsec.test.", any_t, msg)
    assert result.security is Security.BOGUS
    assert result.ede is Ede.RRSIGS_MISSING


def test_answers_without_data_to_validate(validator: Validator, world: World) -> None:
    msg = dns.message.make_response(dns.message.make_query("www.nsec.test.", A))
    msg.set_rcode(dns.rcode.SERVFAIL)
    assert check(validator, world, "www.nsec.test.", A, msg).security is Security.INSECURE


# -- bogus ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qname", "qtype"),
    [
        ("www.nsec.test.", A),
        ("nope.nsec.test.", A),
        ("www.nsec3.test.", AAAA),
        ("nope.nsec3.test.", A),
        ("www.nsec.test.", DS_T),
    ],
)
def test_stripped_rrsigs_are_bogus(
    validator: Validator, world: World, qname: str, qtype: int
) -> None:
    msg = without(world.resolve(qname, qtype), is_rrsig)
    result = check(validator, world, qname, qtype, msg)
    assert result.security is Security.BOGUS, result
    assert result.ede is Ede.RRSIGS_MISSING
    assert "test." in result.reason


def test_expired_signature(validator: Validator, world: World) -> None:
    msg = resigned(
        world, world.resolve("www.nsec.test.", A), "nsec.test.",
        inception=NOW - 10 * 86400, expiration=NOW - 3600,
    )  # fmt: skip
    result = check(validator, world, "www.nsec.test.", A, msg)
    assert result.security is Security.BOGUS
    assert result.ede is Ede.SIGNATURE_EXPIRED
    assert "www.nsec.test." in result.reason


def test_future_signature(validator: Validator, world: World) -> None:
    msg = resigned(
        world, world.resolve("www.nsec.test.", A), "nsec.test.",
        inception=NOW + 3600, expiration=NOW + 10 * 86400,
    )  # fmt: skip
    result = check(validator, world, "www.nsec.test.", A, msg)
    assert result.security is Security.BOGUS
    assert result.ede is Ede.SIGNATURE_NOT_YET_VALID


def test_clock_skew_allowance(validator: Validator, world: World) -> None:
    """A signature that expired a minute ago still counts (default skew 300 s)."""
    msg = resigned(
        world, world.resolve("www.nsec.test.", A), "nsec.test.",
        inception=NOW - 86400, expiration=NOW - 60,
    )  # fmt: skip
    assert check(validator, world, "www.nsec.test.", A, msg).security is Security.SECURE
    strict = Validator(validator.anchors, skew=0)
    assert check(strict, world, "www.nsec.test.", A, msg).ede is Ede.SIGNATURE_EXPIRED


def test_valid_until_bounds_how_long_a_secure_answer_holds(
    validator: Validator, world: World
) -> None:
    """The earliest of the signature expirations (plus skew) and the chain's TTLs."""
    first = check(validator, world, "www.nsec.test.", A)
    again = check(validator, world, "www.nsec.test.", A)  # from the key cache
    assert first.valid_until == again.valid_until == NOW + TTL
    msg = resigned(
        world, world.resolve("www.nsec.test.", A), "nsec.test.",
        inception=NOW - 86400, expiration=NOW - 100,
    )  # fmt: skip
    assert check(validator, world, "www.nsec.test.", A, msg).valid_until == NOW + 200
    assert check(validator, world, "nope.nsec.test.", A).valid_until == NOW + TTL
    assert check(validator, world, "www.unsigned.test.", A).valid_until is None


def test_ds_that_matches_no_key(validator: Validator, world: World) -> None:
    result = check(validator, world, "www.wrongds.test.", A)
    assert result.security is Security.BOGUS
    assert result.ede is Ede.DNSKEY_MISSING
    assert "wrongds.test." in result.reason


@pytest.mark.parametrize("signer", ["other.test.", "test.", "www.nsec.test.", "nsec3.test."])
def test_wrong_signer_name(validator: Validator, world: World, signer: str) -> None:
    msg = resigned(world, world.resolve("www.nsec.test.", A), "nsec.test.", signer=name(signer))
    result = check(validator, world, "www.nsec.test.", A, msg)
    assert result.security is Security.BOGUS, result


def test_ds_signed_by_the_child_itself_is_bogus(validator: Validator, world: World) -> None:
    msg = resigned(world, world.resolve("nsec.test.", DS_T), "nsec.test.")
    result = check(validator, world, "nsec.test.", DS_T, msg)
    assert result.security is Security.BOGUS, result


def test_signature_by_a_key_outside_the_chain(validator: Validator, world: World) -> None:
    """A well-formed RRSIG by a key the zone never published is bogus."""
    impostor = Zone("nsec.test.", Algorithm.ED25519)
    msg = world.resolve("www.nsec.test.", A)
    copy = without(msg, is_rrsig)
    copy.answer += [impostor.sign_rrset(r) for r in list(copy.answer)]
    result = check(validator, world, "www.nsec.test.", A, copy)
    assert result.security is Security.BOGUS
    assert result.ede is Ede.DNSSEC_BOGUS


def test_forged_nxdomain_for_an_existing_name(validator: Validator, world: World) -> None:
    for zone in ("nsec.test.", "nsec3.test."):
        msg = world.resolve(f"nope.{zone}", A)
        result = check(validator, world, f"www.{zone}", A, msg)
        assert result.security is Security.BOGUS, result


def test_forged_nodata_for_an_existing_type(validator: Validator, world: World) -> None:
    for zone in ("nsec.test.", "nsec3.test."):
        msg = world.resolve(f"www.{zone}", AAAA)
        result = check(validator, world, f"www.{zone}", A, msg)
        assert result.security is Security.BOGUS, result


@pytest.mark.parametrize("zone", ["nsec.test.", "nsec3.test."])
def test_nxdomain_missing_any_part_of_its_proof(
    validator: Validator, world: World, zone: str
) -> None:
    """Each denial record of an NXDOMAIN proof is needed: without any one it is bogus."""
    msg = world.resolve(f"zzz.{zone}", A)
    nsec_types = (int(dns.rdatatype.NSEC), int(dns.rdatatype.NSEC3))
    owners = [r.name for r in msg.authority if r.rdtype in nsec_types]
    assert len(owners) >= 2
    for owner in owners:
        partial = without(msg, lambda r, owner=owner: r.name == owner)
        result = check(validator, world, f"zzz.{zone}", A, partial)
        assert result.security is Security.BOGUS, (owner, result)


def test_tampered_record_data(validator: Validator, world: World) -> None:
    msg = world.resolve("www.nsec.test.", A)
    forged = dns.message.from_wire(msg.to_wire(max_size=65535))
    forged.answer[0] = dns.rrset.from_text("www.nsec.test.", TTL, "IN", "A", "203.0.113.66")
    forged.answer[1] = msg.answer[1]
    result = check(validator, world, "www.nsec.test.", A, forged)
    assert result.security is Security.BOGUS
    assert result.ede is Ede.DNSSEC_BOGUS


def test_dnskey_reply_without_signatures(validator: Validator, world: World) -> None:
    def fetch(need: NeedDS | NeedDNSKEY) -> dns.message.Message:
        reply = world.fetch(need)
        return without(reply, is_rrsig) if isinstance(need, NeedDNSKEY) else reply

    result = check(validator, world, "www.nsec.test.", A, fetch=fetch)
    assert result.security is Security.BOGUS
    assert result.ede is Ede.RRSIGS_MISSING


def test_failed_fetches(validator: Validator, world: World) -> None:
    ds = check(
        validator, world, "www.nsec.test.", A,
        fetch=lambda need: None if isinstance(need, NeedDS) else world.fetch(need),
    )  # fmt: skip
    assert ds.security is Security.BOGUS
    assert ds.ede is Ede.NO_REACHABLE_AUTHORITY
    keys = check(Validator(validator.anchors), world, "www.nsec.test.", A, fetch=lambda n: None)
    assert keys.security is Security.BOGUS
    assert keys.ede is Ede.DNSKEY_MISSING
    garbage = check(Validator(validator.anchors), world, "www.nsec.test.", A, fetch=lambda n: b"x")
    assert garbage.security is Security.BOGUS


def test_unparsable_answer(validator: Validator, world: World) -> None:
    result = check(validator, world, "www.nsec.test.", A, b"\x00\x01junk")
    assert result.security is Security.BOGUS


def test_answer_as_wire_bytes(validator: Validator, world: World) -> None:
    wire = world.resolve("www.nsec3.test.", A).to_wire()
    assert check(validator, world, "www.nsec3.test.", A, wire).security is Security.SECURE


# -- anchors, cache and the event protocol ---------------------------------------------


def test_dnskey_trust_anchor(world: World) -> None:
    root = world.zones[name("test.")]
    v = Validator(parse_anchors(f"test. 3600 IN DNSKEY {root.dnskey.to_text()}\n"))
    assert check(v, world, "www.nsec.test.", A).security is Security.SECURE
    other = Zone("test.", Algorithm.ED25519)
    wrong = Validator(parse_anchors(f"test. 3600 IN DNSKEY {other.dnskey.to_text()}\n"))
    result = check(wrong, world, "www.nsec.test.", A)
    assert result.security is Security.BOGUS
    assert result.ede is Ede.DNSKEY_MISSING


def test_trust_point_below_the_anchor_zone(world: World) -> None:
    """An anchor for a zone deeper down starts the chain there, nothing above is asked."""
    v = Validator(parse_anchors(anchor_text(world.zones[name("nsec3.test.")])))
    world.asked.clear()
    assert check(v, world, "www.nsec3.test.", A).security is Security.SECURE
    assert world.asked == [(name("nsec3.test."), DNSKEY_T)]


def test_key_cache_saves_fetches_until_the_ttl_runs_out(validator: Validator, world: World) -> None:
    world.asked.clear()
    assert check(validator, world, "www.nsec.test.", A).security is Security.SECURE
    first = list(world.asked)
    assert first == [
        (name("test."), DNSKEY_T),
        (name("nsec.test."), DS_T),
        (name("nsec.test."), DNSKEY_T),
    ]
    world.asked.clear()
    assert check(validator, world, "nope.nsec.test.", A).security is Security.SECURE
    assert world.asked == []
    assert len(validator.keys) >= 2
    later = validator.validate("www.nsec.test.", A, world.resolve("www.nsec.test.", A), NOW + TTL)
    assert drive(later, world.fetch, NOW + TTL).security is Security.SECURE
    assert world.asked == first


def test_warm_and_cold_key_caches_agree(world: World, validator: Validator) -> None:
    """What was learnt for one answer never changes the verdict on another."""
    questions = [
        (f"{label}.{zone}", qtype)
        for zone in ("nsec.test.", "nsec3.test.", "optout.test.", "unsigned.test.")
        for label in ("www", "nope", "a.wild", "ent", "www.child")
        for qtype in (A, AAAA)
    ] + [("www.wrongds.test.", A), ("www.gost.test.", A), ("nope.costly.test.", A)]
    warm = Validator(validator.anchors)
    for qname, qtype in questions:
        msg = world.resolve(qname, qtype)
        cold = check(Validator(validator.anchors), world, qname, qtype, msg)
        hot = check(warm, world, qname, qtype, msg)
        assert (hot.security, hot.ede) == (cold.security, cold.ede), (qname, qtype)


def test_insecure_delegations_are_cached_too(validator: Validator, world: World) -> None:
    check(validator, world, "www.unsigned.test.", A)
    world.asked.clear()
    assert check(validator, world, "www.unsigned.test.", A).security is Security.INSECURE
    assert world.asked == []


def test_validator_refuses_to_start_without_dnspythons_crypto(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def disabled(*args: object, **kwargs: object) -> None:
        raise ImportError("DNSSEC validation requires python cryptography")

    monkeypatch.setattr(dns.dnssec, "validate_rrsig", disabled)
    with pytest.raises(ConfigError, match="cryptography"):
        Validator(parse_anchors(". 0 IN DS 1 8 2 " + "AB" * 32))


def test_event_protocol(validator: Validator, world: World) -> None:
    msg = world.resolve("www.nsec.test.", A)
    validation = validator.validate("www.nsec.test.", A, msg, NOW)
    assert validation.state is State.RUNNING
    with pytest.raises(Dns2DotError):
        validation.receive(None, NOW)
    first = validation.next_event()
    assert first == NeedDNSKEY(name("test."))
    assert validation.state is State.WAITING
    assert validation.next_event() == first  # repeated while waiting
    validation.receive(world.fetch(first).to_wire(), NOW)  # wire form is accepted
    assert validation.next_event() == NeedDS(name("nsec.test."))
    validation.receive(world.fetch(NeedDS(name("nsec.test."))), NOW)
    assert validation.next_event() == NeedDNSKEY(name("nsec.test."))
    validation.receive(world.fetch(NeedDNSKEY(name("nsec.test."))), NOW)
    done = validation.next_event()
    assert isinstance(done, Done)
    assert done.result.security is Security.SECURE
    assert validation.state is State.DONE
    assert validation.next_event() == done
    assert validation.result == done.result
    with pytest.raises(Dns2DotError):
        validation.receive(None, NOW)


def test_fetches_are_bounded(world: World, validator: Validator) -> None:
    tight = Validator(validator.anchors, max_fetches=2)
    result = check(tight, world, "www.nsec.test.", A)
    assert result.security is Security.BOGUS
    assert "fetches" in result.reason


def test_cname_loops_are_bounded(validator: Validator, world: World) -> None:
    zone = world.zones[name("nsec.test.")]
    zone.add("loop 300 IN CNAME loop.nsec.test.")
    try:
        zone.sign()
        key = (name("loop.nsec.test."), CNAME_T)
        msg = dns.message.make_response(dns.message.make_query("loop.nsec.test.", A))
        msg.answer = [zone.rrsets[key], zone.sigs[key]]
        result = check(validator, world, "loop.nsec.test.", A, msg)
    finally:
        del zone.rrsets[(name("loop.nsec.test."), CNAME_T)]
        zone.sign()
    assert result.security is Security.BOGUS
    assert "chain" in result.reason
