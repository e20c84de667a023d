"""RRSIG checks (RFC 4035 §5.3): which signatures may vouch for an RRset, and whether
one of them does.

The checks dnspython leaves to its caller are made here, before its cryptography:
the signer is the zone whose keys we hold and an ancestor of the owner, the label
count is not larger than the owner's (a smaller one marks a wildcard expansion), the
algorithm is one we implement, and the validity period holds within a small clock
skew allowance. Failures are sorted into the Extended DNS Error codes of RFC 8914.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import cryptography.exceptions
import dns.dnssec
import dns.exception
import dns.name
import dns.rdataset
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.RRSIG import RRSIG

# Signature algorithms we validate: RSASHA256/512, ECDSAP256/384, ED25519/ED448. The
# SHA-1 algorithms (5, 7), which RFC 9905 deprecates, are not among them: a zone that
# uses only algorithms outside this set is insecure rather than bogus (RFC 6840 §5.2,
# RFC 4035 §5.2).
SUPPORTED_ALGORITHMS = frozenset({8, 10, 13, 14, 15, 16})
# DS digest types: SHA-1 (validation still required, RFC 8624 §3.3), SHA-256, SHA-384.
SUPPORTED_DIGESTS = frozenset({1, 2, 4})
DEFAULT_SKEW = 300  # seconds either side of a signature's validity period


class Ede(enum.IntEnum):
    """Extended DNS Error codes (RFC 8914 §4) a validation can end in."""

    UNSUPPORTED_DNSKEY_ALGORITHM = 1
    UNSUPPORTED_DS_DIGEST = 2
    DNSSEC_BOGUS = 6
    SIGNATURE_EXPIRED = 7
    SIGNATURE_NOT_YET_VALID = 8
    DNSKEY_MISSING = 9
    RRSIGS_MISSING = 10
    NO_REACHABLE_AUTHORITY = 22


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking one RRset's signatures.

    ``labels`` is the label count of the signature that verified: smaller than the
    owner's means the RRset was synthesised from a wildcard (RFC 4035 §5.3.4).
    ``expires`` is when the verified signature stops vouching (its expiration), and
    ``begins`` when it started (its inception), both with the skew allowance, so
    callers can bound when what it proved holds.
    """

    ok: bool
    ede: Ede | None = None
    why: str = ""
    labels: int = 0
    expires: float = 0.0
    begins: float = 0.0


def crypto_available() -> bool:
    """Whether dnspython's signature checks are enabled: dnspython 2.9 switches
    ``dns.dnssec`` off (its functions raise ImportError) unless cryptography>=50 is
    installed, which would otherwise surface only at the first answer."""
    try:
        dns.dnssec.validate_rrsig(None, None, {})  # type: ignore[arg-type]
    except ImportError:
        return False
    except Exception:  # any other complaint about the dummy arguments: it is enabled
        return True
    return True


def owner_labels(name: dns.name.Name) -> int:
    """The RRSIG label count of an owner name: no root label, no leading ``*``."""
    count = len(name) - 1
    return count - 1 if name.is_wild() else count


def verify_rrset(
    rrset: dns.rrset.RRset,
    rrsigs: Sequence[RRSIG],
    zone: dns.name.Name,
    keys: dns.rdataset.Rdataset,
    now: float,
    skew: float = DEFAULT_SKEW,
) -> Verdict:
    """Does one of ``rrsigs``, made by ``zone`` with one of ``keys``, vouch for ``rrset``?

    Succeeds on the first signature that verifies (RFC 6840 §5.11: any one valid path
    is enough). Otherwise the most telling failure wins: expired or not yet valid
    signatures say so (EDE 7, 8), anything else is DNSSEC Bogus (EDE 6), and no
    signature at all is RRSIGs Missing (EDE 10).
    """
    what = f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}"
    if not rrsigs:
        return Verdict(False, Ede.RRSIGS_MISSING, f"no RRSIG for {what}")
    labels = owner_labels(rrset.name)
    expired = future = False
    why = f"no valid RRSIG by {zone} for {what}"
    for sig in rrsigs:
        if sig.signer != zone or not rrset.name.is_subdomain(sig.signer):
            why = f"RRSIG for {what} is signed by {sig.signer}, not by its zone {zone}"
            continue
        if sig.labels > labels or sig.algorithm not in SUPPORTED_ALGORITHMS:
            continue
        if now > sig.expiration + skew:
            expired = True
            continue
        if now < sig.inception - skew:
            future = True
            continue
        # The period was checked above with the skew allowance; dnspython checks it
        # without one, so it is given a time inside the period.
        inside = min(max(now, sig.inception), sig.expiration)
        try:
            dns.dnssec.validate_rrsig(rrset, sig, {zone: keys}, now=inside)
        except (
            dns.exception.DNSException,
            cryptography.exceptions.UnsupportedAlgorithm,
            ValueError,
            TypeError,
            IndexError,
        ):
            continue
        return Verdict(
            True,
            labels=sig.labels,
            expires=float(sig.expiration) + skew,
            begins=float(sig.inception) - skew,
        )
    if expired:
        return Verdict(False, Ede.SIGNATURE_EXPIRED, f"RRSIG for {what} has expired")
    if future:
        return Verdict(False, Ede.SIGNATURE_NOT_YET_VALID, f"RRSIG for {what} is not yet valid")
    return Verdict(False, Ede.DNSSEC_BOGUS, why)
