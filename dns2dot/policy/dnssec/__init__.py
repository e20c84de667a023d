"""DNSSEC validation as a validating stub does it (RFC 4033-4035, 5155, 6840, 9276), pure.

- ``anchors``: trust anchors (the IANA root built in, files, negative anchors);
- ``signatures``: RRSIG checks and the Extended DNS Error codes they end in;
- ``proofs``: what NSEC and NSEC3 records prove;
- ``keycache``: the validated chain of trust, by name, with expiry;
- ``memo``: verdicts on answers already validated, so an answer seen again (another
  ID, TTLs counted down) costs a walk of its bytes, not its signature checks;
- ``validator``: one answer's validation, asking for DS and DNSKEY RRsets as events.

The I/O shell drives it like this (``now`` is wall-clock time: RRSIG periods are
absolute; every fetch goes to the same upstreams with DO and CD set)::

    validator = Validator(root_anchors().with_negative(insecure_zones))
    validation = validator.validate(qname, qtype, upstream_answer, time.time())
    while not isinstance(event := validation.next_event(), Done):
        qname_, qtype_ = (event.name, DS) if isinstance(event, NeedDS) else (event.zone, DNSKEY)
        validation.receive(await fetch(qname_, qtype_), time.time())  # None if it failed
    event.result  # Security.SECURE / INSECURE / BOGUS, with ede, reason, valid_until

Pass the upstream's answer as its wire bytes: an answer validated before (secure or
insecure; another ID, TTLs counted down) then comes back ``Done`` at once from the
validator's memo, for about 11-15 us instead of a millisecond or more.
"""

from dns2dot.policy.dnssec.anchors import (
    ROOT_ANCHOR_TEXT,
    Anchor,
    TrustAnchors,
    load_anchor_files,
    parse_anchors,
    root_anchors,
)
from dns2dot.policy.dnssec.keycache import KeyCache, Link, LinkKind
from dns2dot.policy.dnssec.signatures import Ede
from dns2dot.policy.dnssec.validator import (
    Done,
    Event,
    NeedDNSKEY,
    NeedDS,
    Result,
    Security,
    State,
    Validation,
    Validator,
)

__all__ = [
    "ROOT_ANCHOR_TEXT",
    "Anchor",
    "Done",
    "Ede",
    "Event",
    "KeyCache",
    "Link",
    "LinkKind",
    "NeedDNSKEY",
    "NeedDS",
    "Result",
    "Security",
    "State",
    "TrustAnchors",
    "Validation",
    "Validator",
    "load_anchor_files",
    "parse_anchors",
    "root_anchors",
]
