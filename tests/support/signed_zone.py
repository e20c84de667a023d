"""Signed zones made with dnspython for the DNSSEC tests, and the answers a
recursive resolver asked with DO and CD would give from them.

``Zone`` holds records, signs them with one combined signing key (ECDSA, RSA or
EdDSA) and builds an NSEC or NSEC3 chain (dnspython signs NSEC zones but not NSEC3
ones, so both chains are made here); ``Zone.answer`` answers a question with the
RRSIGs and the denial records RFC 4035 §3.1 and RFC 5155 §7.2 call for. ``World``
routes questions to the deepest zone and follows CNAMEs across zones, which is what
the validator's DS and DNSKEY fetches get answered from.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from dns.dnssectypes import Algorithm
from dns.rdtypes.ANY.NSEC import NSEC
from dns.rdtypes.ANY.NSEC3 import NSEC3
from dns.rdtypes.util import Bitmap

from dns2dot.policy.dnssec import Done, NeedDNSKEY, NeedDS, Result, Validation

NOW = 1_800_000_000  # the time every test validates at (January 2027)
INCEPTION = NOW - 86_400
EXPIRATION = NOW + 30 * 86_400
TTL = 300

_KEYS: dict[Algorithm, object] = {}


def private_key(algorithm: Algorithm) -> object:
    """A fresh private key for ``algorithm`` (RSA keys are slow to make: one per run)."""
    if algorithm in (Algorithm.RSASHA256, Algorithm.RSASHA512):
        if algorithm not in _KEYS:
            _KEYS[algorithm] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _KEYS[algorithm]
    if algorithm == Algorithm.ECDSAP256SHA256:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == Algorithm.ECDSAP384SHA384:
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm == Algorithm.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == Algorithm.ED448:
        return ed448.Ed448PrivateKey.generate()
    raise ValueError(f"no key maker for {algorithm}")


@dataclass(frozen=True)
class Nsec3Params:
    iterations: int = 0
    salt: bytes = b""
    opt_out: bool = False


def name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def nsec3_hash(owner: dns.name.Name, params: Nsec3Params) -> bytes:
    digest = hashlib.sha1((owner.canonicalize().to_wire() or b"") + params.salt).digest()
    for _ in range(params.iterations):
        digest = hashlib.sha1(digest + params.salt).digest()
    return digest


class Zone:
    """One zone: its records, its signing key, its NSEC or NSEC3 chain."""

    def __init__(
        self,
        origin: str,
        algorithm: Algorithm = Algorithm.ECDSAP256SHA256,
        *,
        nsec3: Nsec3Params | None = None,
        signed: bool = True,
        inception: int = INCEPTION,
        expiration: int = EXPIRATION,
        split: bool = False,
    ) -> None:
        self.origin = name(origin)
        self.algorithm = algorithm
        self.nsec3 = nsec3
        self.signed = signed
        self.inception = inception
        self.expiration = expiration
        self.key = private_key(algorithm)
        self.dnskey = dns.dnssec.make_dnskey(
            self.key.public_key(),  # type: ignore[attr-defined]
            algorithm,
            flags=257,
        )
        self.rrsets: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        self.sigs: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        self.add(f"@ {TTL} IN SOA ns.{origin} hostmaster.{origin} 1 7200 900 86400 {TTL}")
        self.add(f"@ {TTL} IN NS ns.{origin}")
        # ``dnskey`` is the key-signing key the parent's DS names; with ``split`` a
        # separate zone-signing key (flags 256) signs everything but the DNSKEY RRset.
        self.zsk_key, self.zsk = self.key, self.dnskey
        if split:
            self.zsk_key = private_key(algorithm)
            self.zsk = dns.dnssec.make_dnskey(
                self.zsk_key.public_key(),  # type: ignore[attr-defined]
                algorithm,
                flags=256,
            )
        if signed:
            keys = [self.dnskey] if self.zsk is self.dnskey else [self.dnskey, self.zsk]
            self.rrsets[(self.origin, dns.rdatatype.DNSKEY)] = dns.rrset.from_rdata_list(
                self.origin, TTL, keys
            )

    # -- content ----------------------------------------------------------------------

    def add(self, line: str) -> None:
        """One record in zone-file form, relative to the origin."""
        owner_text, ttl, rdclass, rdtype, *rest = line.split(None, 4)
        owner = self.origin if owner_text == "@" else dns.name.from_text(owner_text, self.origin)
        rdata = dns.rdata.from_text(rdclass, rdtype, rest[0], origin=self.origin, relativize=False)
        key = (owner, rdata.rdtype)
        rrset = self.rrsets.get(key)
        if rrset is None:
            rrset = self.rrsets[key] = dns.rrset.RRset(owner, dns.rdataclass.IN, rdata.rdtype)
        rrset.add(rdata, int(ttl))

    def delegate(self, child: Zone | str, ds: Iterable[dns.rdata.Rdata] | None = None) -> None:
        """NS records for ``child``, and its DS when it is signed (or ``ds`` as given)."""
        origin = child.origin if isinstance(child, Zone) else name(child)
        rel = origin.relativize(self.origin)
        self.add(f"{rel} {TTL} IN NS ns.{origin}")
        if ds is None and isinstance(child, Zone) and child.signed:
            ds = [dns.dnssec.make_ds(origin, child.dnskey, "SHA256")]
        if ds:
            self.rrsets[(origin, dns.rdatatype.DS)] = dns.rrset.from_rdata_list(
                origin, TTL, list(ds)
            )

    # -- signing ------------------------------------------------------------------------

    def _cuts(self) -> set[dns.name.Name]:
        return {n for (n, t) in self.rrsets if t == dns.rdatatype.NS and n != self.origin}

    def _below_cut(self, owner: dns.name.Name, cuts: set[dns.name.Name]) -> bool:
        return any(owner.is_subdomain(c) and owner != c for c in cuts)

    def sign_rrset(
        self,
        rrset: dns.rrset.RRset,
        *,
        signer: dns.name.Name | None = None,
        inception: int | None = None,
        expiration: int | None = None,
        key: object | None = None,
        dnskey: dns.rdata.Rdata | None = None,
    ) -> dns.rrset.RRset:
        sig = dns.dnssec.sign(
            rrset,
            key or self.key,
            signer or self.origin,
            dnskey or self.dnskey,
            inception=self.inception if inception is None else inception,
            expiration=self.expiration if expiration is None else expiration,
        )
        return dns.rrset.from_rdata(rrset.name, rrset.ttl, sig)

    def sign(self) -> Zone:
        """RRSIGs for every authoritative RRset, and the NSEC or NSEC3 chain."""
        if not self.signed:
            return self
        cuts = self._cuts()
        self.rrsets = {
            k: v
            for k, v in self.rrsets.items()
            if v.rdtype not in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3)
        }
        if self.nsec3 is None:
            self._nsec_chain(cuts)
        else:
            self._nsec3_chain(cuts, self.nsec3)
        self.sigs = {}
        for (owner, rdtype), rrset in self.rrsets.items():
            if self._below_cut(owner, cuts):
                continue
            if owner in cuts and rdtype not in (dns.rdatatype.DS, dns.rdatatype.NSEC):
                continue  # delegation NS records are not signed
            if rdtype == dns.rdatatype.DNSKEY:
                self.sigs[(owner, rdtype)] = self.sign_rrset(rrset)
            else:
                self.sigs[(owner, rdtype)] = self.sign_rrset(
                    rrset, key=self.zsk_key, dnskey=self.zsk
                )
        return self

    def _types(self, owner: dns.name.Name) -> set[int]:
        return {t for (n, t) in self.rrsets if n == owner}

    def _names(self, cuts: set[dns.name.Name]) -> list[dns.name.Name]:
        owners = {n for (n, _) in self.rrsets if not self._below_cut(n, cuts)}
        return sorted(owners)

    def _nsec_chain(self, cuts: set[dns.name.Name]) -> None:
        names = self._names(cuts)
        for i, owner in enumerate(names):
            nxt = names[(i + 1) % len(names)]
            types = self._types(owner) | {dns.rdatatype.NSEC, dns.rdatatype.RRSIG}
            rd = NSEC(
                dns.rdataclass.IN,
                dns.rdatatype.NSEC,
                nxt,
                Bitmap.from_rdtypes(sorted(types)).windows,
            )
            self.rrsets[(owner, dns.rdatatype.NSEC)] = dns.rrset.from_rdata(owner, TTL, rd)

    def _nsec3_chain(self, cuts: set[dns.name.Name], params: Nsec3Params) -> None:
        owners = set(self._names(cuts))
        for owner in list(owners):  # empty non-terminals get NSEC3 records too
            parent = owner
            while parent != self.origin:
                parent = parent.parent()
                owners.add(parent)
        if params.opt_out:
            owners = {
                n for n in owners if not (n in cuts and dns.rdatatype.DS not in self._types(n))
            }
        hashed = sorted((nsec3_hash(n, params), n) for n in owners)
        for i, (digest, owner) in enumerate(hashed):
            nxt = hashed[(i + 1) % len(hashed)][0]
            types = self._types(owner)
            if types and (owner not in cuts or dns.rdatatype.DS in types):
                types.add(dns.rdatatype.RRSIG)
            rd = NSEC3(
                dns.rdataclass.IN,
                dns.rdatatype.NSEC3,
                1,
                1 if params.opt_out else 0,
                params.iterations,
                params.salt,
                nxt,
                Bitmap.from_rdtypes(sorted(types)).windows,
            )
            label = base64.b32hexencode(digest).decode().lower()
            hname = dns.name.Name((label.encode(),)).concatenate(self.origin)
            self.rrsets[(hname, dns.rdatatype.NSEC3)] = dns.rrset.from_rdata(hname, TTL, rd)

    # -- answering ----------------------------------------------------------------------

    def _with_sig(self, section: list[dns.rrset.RRset], key: tuple[dns.name.Name, int]) -> None:
        if self.rrsets[key] not in section:
            section.append(self.rrsets[key])
            sig = self.sigs.get(key)
            if sig is not None:
                section.append(sig)

    def _exists(self, owner: dns.name.Name) -> bool:
        return any(n.is_subdomain(owner) for (n, t) in self.rrsets if t != dns.rdatatype.NSEC3)

    def _nsec_for(self, target: dns.name.Name, authority: list[dns.rrset.RRset]) -> None:
        """The NSEC that matches or covers ``target``."""
        chain = sorted(n for (n, t) in self.rrsets if t == dns.rdatatype.NSEC)
        best = chain[-1]
        for owner in chain:
            if owner <= target:
                best = owner
        self._with_sig(authority, (best, dns.rdatatype.NSEC))

    def _nsec3_for(self, target: dns.name.Name, authority: list[dns.rrset.RRset]) -> None:
        """The NSEC3 that matches or covers ``target``'s hash."""
        assert self.nsec3 is not None
        digest = nsec3_hash(target, self.nsec3)
        chain = sorted(
            (base64.b32hexdecode(n[0].upper()), n)
            for (n, t) in self.rrsets
            if t == dns.rdatatype.NSEC3
        )
        best = chain[-1][1]
        for owner_hash, owner in chain:
            if owner_hash <= digest:
                best = owner
        self._with_sig(authority, (best, dns.rdatatype.NSEC3))

    def _has_nsec3(self, owner: dns.name.Name) -> bool:
        assert self.nsec3 is not None
        label = base64.b32hexencode(nsec3_hash(owner, self.nsec3)).decode().lower()
        hname = dns.name.Name((label.encode(),)).concatenate(self.origin)
        return (hname, dns.rdatatype.NSEC3) in self.rrsets

    def _encloser(self, qname: dns.name.Name) -> dns.name.Name:
        encloser = qname
        while not self._exists(encloser):
            encloser = encloser.parent()
        return encloser

    def _deny(self, qname: dns.name.Name, authority: list[dns.rrset.RRset], kind: str) -> None:
        """Denial records: ``kind`` is nodata, nxdomain, wildcard-nodata or wildcard."""
        if kind != "wildcard":
            self._with_sig(authority, (self.origin, dns.rdatatype.SOA))
        encloser = self._encloser(qname)
        wildcard = dns.name.Name((b"*",)).concatenate(encloser)
        next_closer = qname.split(len(encloser) + 1)[1] if qname != encloser else qname
        if self.nsec3 is None:
            self._nsec_for(qname, authority)
            if kind in ("nxdomain", "wildcard-nodata"):
                self._nsec_for(wildcard, authority)
            return
        if kind == "nodata" and self._has_nsec3(qname):
            self._nsec3_for(qname, authority)
            return
        if kind == "nodata":  # opt-out: prove the closest encloser instead (RFC 5155 §7.2.4)
            encloser = qname.parent()
            while not self._has_nsec3(encloser):
                encloser = encloser.parent()
            self._nsec3_for(encloser, authority)
            self._nsec3_for(qname.split(len(encloser) + 1)[1], authority)
            return
        if kind != "wildcard":
            self._nsec3_for(encloser, authority)
        self._nsec3_for(next_closer, authority)
        if kind in ("nxdomain", "wildcard-nodata"):
            self._nsec3_for(wildcard, authority)

    def answer(self, qname: dns.name.Name, qtype: int) -> tuple[dns.message.Message, list]:
        """The answer to ``qname``/``qtype`` from this zone, and a CNAME target to chase."""
        msg = dns.message.make_query(qname, qtype, want_dnssec=True)
        msg.flags |= dns.flags.CD
        resp = dns.message.make_response(msg)
        answer: list[dns.rrset.RRset] = []
        authority: list[dns.rrset.RRset] = []
        chase: list[dns.name.Name] = []
        types = self._types(qname)
        if types:
            if (qname, qtype) in self.rrsets:
                self._with_sig(answer, (qname, qtype))
            elif dns.rdatatype.CNAME in types:
                self._with_sig(answer, (qname, dns.rdatatype.CNAME))
                chase.append(self.rrsets[(qname, dns.rdatatype.CNAME)][0].target)
            elif self.signed:
                self._deny(qname, authority, "nodata")
            else:
                self._with_sig(authority, (self.origin, dns.rdatatype.SOA))
        elif self._exists(qname):  # an empty non-terminal
            if self.signed:
                self._deny(qname, authority, "nodata")
            else:
                self._with_sig(authority, (self.origin, dns.rdatatype.SOA))
        else:
            encloser = self._encloser(qname)
            wildcard = dns.name.Name((b"*",)).concatenate(encloser)
            if (wildcard, qtype) in self.rrsets:
                rrset = self.rrsets[(wildcard, qtype)]
                answer.append(dns.rrset.from_rdata_list(qname, rrset.ttl, list(rrset)))
                sig = self.sigs.get((wildcard, qtype))
                if sig is not None:
                    answer.append(dns.rrset.from_rdata_list(qname, sig.ttl, list(sig)))
                    self._deny(qname, authority, "wildcard")
            elif self._types(wildcard):
                if self.signed:
                    self._deny(qname, authority, "wildcard-nodata")
                else:
                    self._with_sig(authority, (self.origin, dns.rdatatype.SOA))
            else:
                resp.set_rcode(dns.rcode.NXDOMAIN)
                if self.signed:
                    self._deny(qname, authority, "nxdomain")
                else:
                    self._with_sig(authority, (self.origin, dns.rdatatype.SOA))
        resp.answer = answer
        resp.authority = authority
        return resp, chase


class World:
    """Zones by origin: answers as a recursive resolver with CD would give them."""

    def __init__(self, *zones: Zone) -> None:
        self.zones = {z.origin: z for z in zones}
        self.asked: list[tuple[dns.name.Name, int]] = []

    def zone_for(self, qname: dns.name.Name, qtype: int) -> Zone:
        owner = qname.parent() if qtype == dns.rdatatype.DS and qname != dns.name.root else qname
        for depth in range(len(owner), 0, -1):
            zone = self.zones.get(owner.split(depth)[1])
            if zone is not None:
                return zone
        raise KeyError(f"no zone for {qname}")

    def resolve(self, qname: dns.name.Name | str, qtype: int) -> dns.message.Message:
        """The full answer, CNAMEs followed across zones, as wire-parsed message."""
        if isinstance(qname, str):
            qname = name(qname)
        resp, chase = self.zone_for(qname, qtype).answer(qname, qtype)
        for _ in range(8):
            if not chase:
                break
            more, chase = self.zone_for(chase[0], qtype).answer(chase[0], qtype)
            resp.answer.extend(more.answer)
            resp.authority = more.authority
            resp.set_rcode(more.rcode())
        return dns.message.from_wire(resp.to_wire(max_size=65535))

    def fetch(self, need: NeedDS | NeedDNSKEY) -> dns.message.Message:
        if isinstance(need, NeedDS):
            self.asked.append((need.name, dns.rdatatype.DS))
            return self.resolve(need.name, dns.rdatatype.DS)
        self.asked.append((need.zone, dns.rdatatype.DNSKEY))
        return self.resolve(need.zone, dns.rdatatype.DNSKEY)


Fetch = Callable[[NeedDS | NeedDNSKEY], "dns.message.Message | bytes | None"]


def drive(validation: Validation, fetch: Fetch, now: float = NOW, limit: int = 64) -> Result:
    """Answer a validation's needs with ``fetch`` until it is done (bounded)."""
    for _ in range(limit):
        event = validation.next_event()
        if isinstance(event, Done):
            return event.result
        validation.receive(fetch(event), now)
    raise AssertionError(f"validation not done after {limit} events")


def anchor_text(zone: Zone) -> str:
    """``zone``'s DS in zone-file form, for ``parse_anchors``."""
    ds = dns.dnssec.make_ds(zone.origin, zone.dnskey, "SHA256")
    return f"{zone.origin} 3600 IN DS {ds.to_text()}\n"


def signed_zone_file(
    origin: str, records: Iterable[str], tamper: dict[str, str] | None = None
) -> tuple[str, str]:
    """A zone signed now (wall clock, NSEC, Ed25519) by dnspython, as zone-file text for
    a real server, and its DS as a trust anchor file. ``tamper`` maps a relative owner to
    the A address it gets *after* signing: its RRSIG then no longer matches."""
    import time

    import dns.zone

    key = ed25519.Ed25519PrivateKey.generate()
    dnskey = dns.dnssec.make_dnskey(key.public_key(), Algorithm.ED25519, flags=257)
    text = "\n".join(
        [
            f"$ORIGIN {origin}",
            f"@ {TTL} IN SOA ns.{origin} hostmaster.{origin} 1 7200 900 86400 {TTL}",
            f"@ {TTL} IN NS ns.{origin}",
            *records,
        ]
    )
    zone = dns.zone.from_text(text, origin=origin, relativize=False)
    now = int(time.time())
    dns.dnssec.sign_zone(
        zone, keys=[(key, dnskey)], inception=now - 3600, expiration=now + 7 * 86_400
    )
    with zone.writer() as txn:
        for owner, address in (tamper or {}).items():
            owner_name = dns.name.from_text(owner, zone.origin)
            rdataset = txn.get(owner_name, dns.rdatatype.A)
            changed = dns.rdataset.from_text("IN", "A", rdataset.ttl, address)
            txn.replace(owner_name, changed)
    ds = dns.dnssec.make_ds(origin, dnskey, "SHA256")
    return zone.to_text(relativize=False), f"{origin} 3600 IN DS {ds.to_text()}\n"


def zone_text(zone: Zone) -> str:
    """``zone`` signed, in zone-file form (every RRset, then its RRSIGs), for a real
    server to load (unbound's ``auth-zone``)."""
    lines = [f"$ORIGIN {zone.origin}"]
    for key, rrset in zone.rrsets.items():
        lines.append(rrset.to_text(origin=None, relativize=False))
        sig = zone.sigs.get(key)
        if sig is not None:
            lines.append(sig.to_text(origin=None, relativize=False))
    return "\n".join(lines) + "\n"
