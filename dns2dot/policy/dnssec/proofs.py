"""Authenticated denial of existence: what NSEC (RFC 4035 §5.4) and NSEC3 (RFC 5155 §8)
records prove about a name.

Pure functions over records whose signatures the caller has already checked: they
decide whether a name does not exist (NXDOMAIN), has no records of a type (NODATA),
was answered from a wildcard legitimately, or sits below an insecure delegation. The
rules that keep a lying upstream from reusing a proof out of context are here too: a
delegation's NSEC cannot deny names below it (RFC 6840 §4.1), a child's apex NSEC
cannot deny its DS and a parent's delegation NSEC cannot deny anything else
(RFC 6840 §4.4), and an NSEC3 span with the opt-out flag proves only insecurity
(RFC 5155 §6, §8.6).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.name
import dns.rdatatype
import dns.rrset

NSEC3_MAX_ITERATIONS = 150  # above this the zone is treated as insecure (RFC 9276 §3.2)
NSEC3_SHA1 = 1  # the one NSEC3 hash algorithm (RFC 5155 §11)
NSEC3_OPT_OUT = 0x01

_NS = int(dns.rdatatype.NS)
_SOA = int(dns.rdatatype.SOA)
_DS = int(dns.rdatatype.DS)
_CNAME = int(dns.rdatatype.CNAME)
_DNAME = int(dns.rdatatype.DNAME)
_WILD = dns.name.Name((b"*",))


class Proof(enum.Enum):
    """What a set of denial records proves about one question."""

    PROVEN = "proven"
    OPT_OUT = "opt-out"  # covered by an opt-out span: the answer is insecure, not bogus
    NOT_PROVEN = "not proven"


class Cut(enum.Enum):
    """What a denial of a DS record says about the name (RFC 4035 §5.2, RFC 5155 §8.6)."""

    INSECURE_DELEGATION = "insecure delegation"  # a zone cut without DS: unsigned below
    NOT_A_CUT = "not a cut"  # the name is inside the parent zone (or does not exist)
    UNPROVEN = "unproven"


def bitmap_types(windows: Iterable[tuple[int, bytes]]) -> frozenset[int]:
    """The record types of an NSEC/NSEC3 type bitmap (RFC 4034 §4.1.2)."""
    types: set[int] = set()
    for window, bitmap in windows:
        for index, octet in enumerate(bitmap):
            for bit in range(8):
                if octet & (0x80 >> bit):
                    types.add(window * 256 + index * 8 + bit)
    return frozenset(types)


def _common_ancestor(a: dns.name.Name, b: dns.name.Name) -> dns.name.Name:
    _, _, depth = a.fullcompare(b)
    return a.split(depth)[1] if depth else dns.name.root


def _is_delegation(types: frozenset[int]) -> bool:
    """An NSEC owner that is a zone cut seen from the parent, or a DNAME: nothing below
    it belongs to this zone (RFC 6840 §4.1)."""
    return (_NS in types and _SOA not in types) or _DNAME in types


def _denies_type(types: frozenset[int], qtype: int) -> bool:
    """The bitmap of an existing name proves ``qtype`` absent there (RFC 6840 §4.4)."""
    if qtype in types or _CNAME in types:
        return False
    if qtype == _DS:
        return _SOA not in types  # a child's apex NSEC cannot deny the parent's DS
    return not (_NS in types and _SOA not in types)  # nor a parent's delegation NSEC


@dataclass(frozen=True, slots=True)
class Nsec:
    """One NSEC record: ``owner`` exists, nothing exists strictly between it and ``next``."""

    owner: dns.name.Name
    next: dns.name.Name
    types: frozenset[int]

    @classmethod
    def from_rrset(cls, rrset: dns.rrset.RRset) -> list[Nsec]:
        return [cls(rrset.name, rd.next, bitmap_types(rd.windows)) for rd in rrset]

    def covers(self, name: dns.name.Name) -> bool:
        """``name`` falls strictly between owner and next (canonical order, RFC 4034
        §6.1), and not below a delegation or DNAME at the owner."""
        if name.is_subdomain(self.owner) and _is_delegation(self.types):
            return False
        if self.owner < self.next:
            return bool(self.owner < name < self.next)
        return bool(name > self.owner or name < self.next)  # the last NSEC of the zone wraps

    def closest_encloser(self, name: dns.name.Name) -> dns.name.Name:
        """The deepest existing ancestor of a name this record covers."""
        a = _common_ancestor(name, self.owner)
        b = _common_ancestor(name, self.next)
        return a if len(a) >= len(b) else b


def _nsec_match(records: Sequence[Nsec], name: dns.name.Name) -> Nsec | None:
    for rec in records:
        if rec.owner == name:
            return rec
    return None


def _nsec_cover(records: Sequence[Nsec], name: dns.name.Name) -> Nsec | None:
    for rec in records:
        if rec.covers(name):
            return rec
    return None


def nsec_nxdomain(records: Sequence[Nsec], qname: dns.name.Name) -> Proof:
    """NXDOMAIN: ``qname`` is covered, and so is the wildcard at its closest encloser
    (RFC 4035 §5.4)."""
    if _nsec_match(records, qname) is not None:
        return Proof.NOT_PROVEN
    cover = _nsec_cover(records, qname)
    if cover is None or cover.next.is_subdomain(qname):
        return Proof.NOT_PROVEN  # not covered, or an empty non-terminal: it exists
    wildcard = _WILD.concatenate(cover.closest_encloser(qname))
    if _nsec_match(records, wildcard) is not None or _nsec_cover(records, wildcard) is None:
        return Proof.NOT_PROVEN
    return Proof.PROVEN


def nsec_nodata(records: Sequence[Nsec], qname: dns.name.Name, qtype: int) -> Proof:
    """NODATA: ``qname`` exists without ``qtype`` (or is an empty non-terminal), or a
    wildcard that would match it exists without ``qtype`` (RFC 4035 §3.1.3)."""
    match = _nsec_match(records, qname)
    if match is not None:
        return Proof.PROVEN if _denies_type(match.types, qtype) else Proof.NOT_PROVEN
    cover = _nsec_cover(records, qname)
    if cover is None:
        return Proof.NOT_PROVEN
    if cover.next.is_subdomain(qname) and cover.next != qname:
        return Proof.PROVEN  # qname is an empty non-terminal
    wildcard = _WILD.concatenate(cover.closest_encloser(qname))
    wild = _nsec_match(records, wildcard)
    if wild is not None and _denies_type(wild.types, qtype):
        return Proof.PROVEN
    return Proof.NOT_PROVEN


def nsec_wildcard(records: Sequence[Nsec], qname: dns.name.Name, encloser: dns.name.Name) -> Proof:
    """A wildcard answer: no name closer to ``qname`` than ``encloser`` exists
    (RFC 4035 §5.3.4)."""
    if _nsec_match(records, qname) is not None:
        return Proof.NOT_PROVEN
    cover = _nsec_cover(records, qname)
    if cover is None or cover.closest_encloser(qname) != encloser:
        return Proof.NOT_PROVEN
    return Proof.PROVEN


def nsec_cut(records: Sequence[Nsec], name: dns.name.Name) -> Cut:
    """What the denial of ``name``'s DS says: an unsigned delegation, or no cut at all."""
    match = _nsec_match(records, name)
    if match is not None:
        if _SOA in match.types or _DS in match.types:
            return Cut.UNPROVEN  # the child's side of the cut, or a DS after all
        return Cut.INSECURE_DELEGATION if _NS in match.types else Cut.NOT_A_CUT
    if _nsec_cover(records, name) is not None:
        return Cut.NOT_A_CUT
    return Cut.UNPROVEN


def nsec3_hash(name: dns.name.Name, salt: bytes, iterations: int) -> bytes:
    """The NSEC3 SHA-1 hash of ``name`` (RFC 5155 §5)."""
    wire = name.canonicalize().to_wire() or b""
    digest = hashlib.sha1(wire + salt).digest()
    for _ in range(iterations):
        digest = hashlib.sha1(digest + salt).digest()
    return digest


@dataclass(frozen=True, slots=True)
class Nsec3:
    """One NSEC3 record: hashes strictly between ``owner`` and ``next`` do not exist."""

    zone: dns.name.Name
    owner: bytes
    next: bytes
    types: frozenset[int]
    opt_out: bool
    iterations: int
    salt: bytes

    @classmethod
    def from_rrset(cls, rrset: dns.rrset.RRset) -> list[Nsec3]:
        """The usable records of ``rrset``: SHA-1, with an owner that is one base32hex
        label over the zone. Others are ignored (RFC 5155 §8.1)."""
        name = rrset.name
        if len(name) < 2:
            return []
        try:
            owner = base64.b32hexdecode(name[0].upper())
        except (binascii.Error, ValueError):
            return []
        return [
            cls(
                name.parent(),
                owner,
                rd.next,
                bitmap_types(rd.windows),
                bool(rd.flags & NSEC3_OPT_OUT),
                rd.iterations,
                rd.salt,
            )
            for rd in rrset
            if rd.algorithm == NSEC3_SHA1 and len(rd.next) == len(owner)
        ]

    def matches(self, digest: bytes) -> bool:
        return digest == self.owner

    def covers(self, digest: bytes) -> bool:
        if self.owner < self.next:
            return self.owner < digest < self.next
        return digest > self.owner or digest < self.next  # the last record wraps


class Nsec3Set:
    """The NSEC3 records of one zone that share its parameters, with hashes memoised."""

    def __init__(self, zone: dns.name.Name, records: Iterable[Nsec3]) -> None:
        self.zone = zone
        usable = [r for r in records if r.zone == zone]
        first = usable[0] if usable else None
        self.iterations = first.iterations if first else 0
        self.salt = first.salt if first else b""
        self.records = [r for r in usable if (r.iterations, r.salt) == (self.iterations, self.salt)]
        self._hashes: dict[dns.name.Name, bytes] = {}

    @property
    def too_costly(self) -> bool:
        """More iterations than a validator should spend (RFC 9276 §3.2)."""
        return self.iterations > NSEC3_MAX_ITERATIONS

    def digest(self, name: dns.name.Name) -> bytes:
        digest = self._hashes.get(name)
        if digest is None:
            digest = self._hashes[name] = nsec3_hash(name, self.salt, self.iterations)
        return digest

    def match(self, name: dns.name.Name) -> Nsec3 | None:
        digest = self.digest(name)
        for rec in self.records:
            if rec.matches(digest):
                return rec
        return None

    def cover(self, name: dns.name.Name) -> Nsec3 | None:
        digest = self.digest(name)
        for rec in self.records:
            if rec.covers(digest):
                return rec
        return None

    def closest_encloser(self, qname: dns.name.Name) -> tuple[dns.name.Name, Nsec3] | None:
        """The closest encloser proof (RFC 5155 §8.3): the deepest ancestor of ``qname``
        that matches, and the record covering the next closer name."""
        if not qname.is_subdomain(self.zone) or qname == self.zone:
            return None
        for depth in range(len(qname) - 1, len(self.zone) - 1, -1):
            encloser = qname.split(depth)[1]
            match = self.match(encloser)
            if match is None:
                continue
            if _is_delegation(match.types) and encloser != self.zone:
                return None  # a delegation or DNAME cannot be a closest encloser here
            cover = self.cover(qname.split(depth + 1)[1])
            return (encloser, cover) if cover is not None else None
        return None


def nsec3_nxdomain(records: Nsec3Set, qname: dns.name.Name) -> Proof:
    """NXDOMAIN: closest encloser proof and a covered wildcard (RFC 5155 §8.4)."""
    if records.match(qname) is not None:
        return Proof.NOT_PROVEN
    proof = records.closest_encloser(qname)
    if proof is None:
        return Proof.NOT_PROVEN
    encloser, next_closer = proof
    wildcard = _WILD.concatenate(encloser)
    if records.match(wildcard) is not None or records.cover(wildcard) is None:
        return Proof.NOT_PROVEN
    return Proof.OPT_OUT if next_closer.opt_out else Proof.PROVEN


def nsec3_nodata(records: Nsec3Set, qname: dns.name.Name, qtype: int) -> Proof:
    """NODATA: a matching record without ``qtype`` (RFC 5155 §8.5), a DS denied by an
    opt-out span (§8.6), or a wildcard without ``qtype`` (§8.7)."""
    match = records.match(qname)
    if match is not None:
        return Proof.PROVEN if _denies_type(match.types, qtype) else Proof.NOT_PROVEN
    proof = records.closest_encloser(qname)
    if proof is None:
        return Proof.NOT_PROVEN
    encloser, next_closer = proof
    if qtype == _DS:
        return Proof.OPT_OUT if next_closer.opt_out else Proof.NOT_PROVEN
    wild = records.match(_WILD.concatenate(encloser))
    if wild is not None and _denies_type(wild.types, qtype):
        return Proof.OPT_OUT if next_closer.opt_out else Proof.PROVEN
    return Proof.NOT_PROVEN


def nsec3_wildcard(records: Nsec3Set, qname: dns.name.Name, encloser: dns.name.Name) -> Proof:
    """A wildcard answer: the next closer name below ``encloser`` is covered (RFC 5155
    §8.8)."""
    if not qname.is_subdomain(encloser) or len(qname) <= len(encloser):
        return Proof.NOT_PROVEN
    cover = records.cover(qname.split(len(encloser) + 1)[1])
    if cover is None:
        return Proof.NOT_PROVEN
    return Proof.OPT_OUT if cover.opt_out else Proof.PROVEN


def nsec3_cut(records: Nsec3Set, name: dns.name.Name) -> Cut:
    """What the denial of ``name``'s DS says, from NSEC3 records (RFC 5155 §8.5, §8.6)."""
    match = records.match(name)
    if match is not None:
        if _SOA in match.types or _DS in match.types:
            return Cut.UNPROVEN
        return Cut.INSECURE_DELEGATION if _NS in match.types else Cut.NOT_A_CUT
    proof = records.closest_encloser(name)
    if proof is None:
        return Cut.UNPROVEN
    return Cut.INSECURE_DELEGATION if proof[1].opt_out else Cut.NOT_A_CUT
