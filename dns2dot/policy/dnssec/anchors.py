"""Trust anchors: where a chain of trust starts, and where it is deliberately cut.

A positive anchor is a set of DS or DNSKEY records for one zone (RFC 4035 §4.3); the
built-in ones are the IANA root anchors. A negative trust anchor (RFC 7646) names a
zone whose answers are treated as insecure even though its parent says it is signed,
so an operator can ride out a broken zone without turning validation off.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.rdtypes.ANY.DS
import dns.zonefile

from dns2dot.protocol.errors import ConfigError

# The root zone's key-signing keys as DS records, from IANA's published trust anchor
# file https://data.iana.org/root-anchors/root-anchors.xml (RFC 9718 describes its
# format): KSK-2017 (key tag 20326, valid from 2017-02-02) and KSK-2024 (key tag
# 38696, valid from 2024-07-18). Both are algorithm 8 (RSASHA256), digest type 2.
ROOT_ANCHOR_TEXT = """\
. IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D
. IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16
"""


@dataclass(frozen=True, slots=True)
class Anchor:
    """The trusted records of one zone: DS records, DNSKEY records, or both."""

    zone: dns.name.Name
    ds: tuple[dns.rdtypes.ANY.DS.DS, ...] = ()
    dnskeys: tuple[dns.rdtypes.ANY.DNSKEY.DNSKEY, ...] = ()


@dataclass(frozen=True, slots=True)
class TrustAnchors:
    """Positive anchors by zone, and negative trust anchors (RFC 7646)."""

    anchors: dict[dns.name.Name, Anchor] = field(default_factory=dict)
    negative: frozenset[dns.name.Name] = frozenset()

    def closest(self, name: dns.name.Name) -> Anchor | None:
        """The anchor of the deepest anchored zone at or above ``name``, if any."""
        for depth in range(len(name), 0, -1):
            anchor = self.anchors.get(name.split(depth)[1])
            if anchor is not None:
                return anchor
        return None

    def negative_above(self, name: dns.name.Name) -> dns.name.Name | None:
        """The negative trust anchor at or above ``name``, if there is one."""
        for zone in self.negative:
            if name.is_subdomain(zone):
                return zone
        return None

    def with_negative(self, zones: Iterable[str | dns.name.Name]) -> TrustAnchors:
        """A copy with ``zones`` added as negative trust anchors (``--insecure``)."""
        names = set(self.negative)
        for zone in zones:
            names.add(_zone_name(zone, "--insecure"))
        return TrustAnchors(self.anchors, frozenset(names))


def parse_anchors(text: str, source: str = "trust anchor") -> TrustAnchors:
    """DS and DNSKEY records in zone-file format -> ``TrustAnchors``.

    Names must be absolute (or relative to the root, as in IANA's files); any other
    record type is an error, since a typo in an anchor file would otherwise silently
    leave a zone unanchored. Raises ``ConfigError`` naming ``source``.
    """
    try:
        rrsets = dns.zonefile.read_rrsets(
            text, default_ttl=0, rdclass=None, origin=dns.name.root, relativize=False
        )
    except (dns.exception.DNSException, ValueError) as exc:
        raise ConfigError(f"{source}: not a zone file of DS/DNSKEY records: {exc}") from exc
    ds: dict[dns.name.Name, list[dns.rdtypes.ANY.DS.DS]] = {}
    keys: dict[dns.name.Name, list[dns.rdtypes.ANY.DNSKEY.DNSKEY]] = {}
    for rrset in rrsets:
        name = rrset.name
        if rrset.rdclass != dns.rdataclass.IN:
            raise ConfigError(f"{source}: {name} is not class IN")
        if rrset.rdtype == dns.rdatatype.DS:
            ds.setdefault(name, []).extend(rrset)
        elif rrset.rdtype == dns.rdatatype.DNSKEY:
            keys.setdefault(name, []).extend(rrset)
        else:
            kind = dns.rdatatype.to_text(rrset.rdtype)
            raise ConfigError(f"{source}: {name} {kind}: only DS and DNSKEY are anchors")
    zones = set(ds) | set(keys)
    if not zones:
        raise ConfigError(f"{source}: no DS or DNSKEY records")
    return TrustAnchors({z: Anchor(z, tuple(ds.get(z, ())), tuple(keys.get(z, ()))) for z in zones})


def load_anchor_files(paths: Iterable[str | Path]) -> TrustAnchors:
    """The anchors of every file in ``paths`` together (``--trust-anchor``, repeatable)."""
    merged: dict[dns.name.Name, Anchor] = {}
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--trust-anchor {path}: {exc}") from exc
        for zone, anchor in parse_anchors(text, f"--trust-anchor {path}").anchors.items():
            old = merged.get(zone)
            if old is not None:
                anchor = Anchor(zone, old.ds + anchor.ds, old.dnskeys + anchor.dnskeys)
            merged[zone] = anchor
    return TrustAnchors(merged)


def root_anchors() -> TrustAnchors:
    """The built-in IANA root anchors (KSK-2017 and KSK-2024)."""
    return parse_anchors(ROOT_ANCHOR_TEXT, "built-in root anchors")


def _zone_name(zone: str | dns.name.Name, setting: str) -> dns.name.Name:
    if isinstance(zone, dns.name.Name):
        return zone
    try:
        return dns.name.from_text(zone.strip())
    except dns.exception.DNSException as exc:
        raise ConfigError(f"{setting} {zone!r}: not a domain name: {exc}") from exc
