"""The validating stub (RFC 4035 §5, RFC 6840): an upstream's answer in, SECURE,
INSECURE or BOGUS out, sans-IO.

The upstream was asked with DO and CD, so the answer carries its RRSIGs and denial
records. A ``Validation`` works out which DS and DNSKEY RRsets it needs, from the
closest trust anchor down to the zone that signed each part of the answer, and asks
for them as events (``NeedDS``, ``NeedDNSKEY``) in the manner of h11: the I/O shell
fetches them through the same upstreams (DO and CD again) and feeds each reply back
with ``receive``. What it proves is kept in the ``Validator``'s ``KeyCache`` so later
answers from the same zones need no fetches at all. Nothing here reads a clock: the
caller passes ``now``, wall-clock seconds since the epoch, since RRSIG validity
periods are absolute times.

Each CNAME and DNAME in the answer is validated link by link (RFC 4035 §5.3.3 for
wildcard-expanded links, RFC 6672 §5.3.3 for the unsigned CNAME a DNAME implies);
where the chain ends without data, NSEC or NSEC3 records must prove NXDOMAIN or
NODATA. The result is the worst of its links: one bogus link makes the answer bogus.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import cryptography.exceptions
import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.DS import DS
from dns.rdtypes.ANY.RRSIG import RRSIG

from dns2dot.policy.dnssec.anchors import Anchor, TrustAnchors
from dns2dot.policy.dnssec.keycache import MAX_LINK_TTL, KeyCache, Link, LinkKind
from dns2dot.policy.dnssec.memo import AnswerMemo, Slot, ttl_blind
from dns2dot.policy.dnssec.proofs import (
    Cut,
    Nsec,
    Nsec3,
    Nsec3Set,
    Proof,
    nsec3_cut,
    nsec3_nodata,
    nsec3_nxdomain,
    nsec3_wildcard,
    nsec_cut,
    nsec_nodata,
    nsec_nxdomain,
    nsec_wildcard,
)
from dns2dot.policy.dnssec.signatures import (
    DEFAULT_SKEW,
    SUPPORTED_ALGORITHMS,
    SUPPORTED_DIGESTS,
    Ede,
    Verdict,
    crypto_available,
    owner_labels,
    verify_rrset,
)
from dns2dot.protocol.errors import ConfigError, Dns2DotError

MAX_CHAIN = 12  # CNAME/DNAME links followed in one answer
MAX_FETCHES = 32  # DS and DNSKEY fetches one validation may ask for
_ZONE_FLAG = 0x0100
_REVOKE_FLAG = 0x0080
_IN = dns.rdataclass.IN
_DS = int(dns.rdatatype.DS)
_DNSKEY = int(dns.rdatatype.DNSKEY)
_RRSIG = int(dns.rdatatype.RRSIG)
_CNAME = int(dns.rdatatype.CNAME)
_DNAME = int(dns.rdatatype.DNAME)
_SOA = int(dns.rdatatype.SOA)
_NSEC = int(dns.rdatatype.NSEC)
_NSEC3 = int(dns.rdatatype.NSEC3)
_ANY = int(dns.rdatatype.ANY)
# What hostile records can make dnspython or cryptography raise while we read them.
_MALFORMED = (
    dns.exception.DNSException,
    cryptography.exceptions.UnsupportedAlgorithm,
    ValueError,
    TypeError,
    IndexError,
)


class Security(enum.Enum):
    """The verdict on an answer (RFC 4035 §4.3)."""

    SECURE = "secure"  # proven from a trust anchor: the AD bit may be set
    INSECURE = "insecure"  # proven to need no signatures (or not validated): no AD
    BOGUS = "bogus"  # should have been signed and is not, or proofs fail: SERVFAIL


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one validation.

    ``reason`` is one line naming the zone and why (for the log); ``ede`` is the
    Extended DNS Error code (RFC 8914) to attach: always set when bogus, set when
    insecure only because of an unsupported algorithm or digest (EDE 1, 2).
    ``valid_until`` (secure results) is the earliest time anything the proof used runs
    out: a signature's expiration (skew included, RFC 4035 §5.3.3) or a DS, DNSKEY or
    denial record's TTL. A cache must not keep the answer as secure past it.
    """

    security: Security
    reason: str
    ede: Ede | None = None
    zone: dns.name.Name | None = None
    valid_until: float | None = None


@dataclass(frozen=True, slots=True)
class NeedDS:
    """Fetch ``name`` DS (DO and CD set) and pass the reply to ``receive``."""

    name: dns.name.Name


@dataclass(frozen=True, slots=True)
class NeedDNSKEY:
    """Fetch ``zone`` DNSKEY (DO and CD set) and pass the reply to ``receive``."""

    zone: dns.name.Name


@dataclass(frozen=True, slots=True)
class Done:
    result: Result


Need = NeedDS | NeedDNSKEY
Event = NeedDS | NeedDNSKEY | Done
Reply = dns.message.Message | bytes | None
_Walk = Generator[Need, dns.message.Message | None, Result]
_Chain = Generator[Need, dns.message.Message | None, Link | Result]


class State(enum.Enum):
    RUNNING = "running"  # has work to do before its next event
    WAITING = "waiting"  # has asked for a DS or DNSKEY reply
    DONE = "done"  # has a result


_TRANSITIONS = {
    State.RUNNING: frozenset({State.WAITING, State.DONE}),
    State.WAITING: frozenset({State.RUNNING}),
    State.DONE: frozenset(),
}


def _secure(zone: dns.name.Name, reason: str) -> Result:
    return Result(Security.SECURE, reason, None, zone)


def _insecure(zone: dns.name.Name | None, reason: str, ede: Ede | None = None) -> Result:
    return Result(Security.INSECURE, reason, ede, zone)


def _bogus(zone: dns.name.Name | None, reason: str, ede: Ede = Ede.DNSSEC_BOGUS) -> Result:
    return Result(Security.BOGUS, reason, ede, zone)


def _from_verdict(zone: dns.name.Name, verdict: Verdict) -> Result:
    return _bogus(zone, verdict.why, verdict.ede or Ede.DNSSEC_BOGUS)


def _worst(results: Sequence[Result]) -> Result:
    """The verdict on a chain: its first bogus link, else its first insecure one."""
    for security in (Security.BOGUS, Security.INSECURE):
        for result in results:
            if result.security is security:
                return result
    return results[-1]


def parse_reply(reply: Reply) -> dns.message.Message | None:
    """A reply as a message, or None when it is missing or cannot be parsed."""
    if reply is None or isinstance(reply, dns.message.Message):
        return reply
    try:
        return dns.message.from_wire(reply)
    except (*_MALFORMED, UnicodeError):
        return None


def _find(
    section: Sequence[dns.rrset.RRset], name: dns.name.Name, rdtype: int
) -> dns.rrset.RRset | None:
    for rrset in section:
        if rrset.rdtype == rdtype and rrset.rdclass == _IN and rrset.name == name:
            return rrset
    return None


def _sigs(section: Sequence[dns.rrset.RRset], name: dns.name.Name, rdtype: int) -> list[RRSIG]:
    """Every RRSIG at ``name`` covering ``rdtype`` in ``section``."""
    return [
        sig
        for rrset in section
        if rrset.rdtype == _RRSIG and rrset.name == name and rrset.covers == rdtype
        for sig in rrset
        if isinstance(sig, RRSIG)
    ]


def _ds_matches(zone: dns.name.Name, key: DNSKEY, ds: DS) -> bool:
    """``ds`` is the digest of ``key`` (RFC 4034 §5.1.4)."""
    if ds.algorithm != key.algorithm or ds.key_tag != dns.dnssec.key_id(key):
        return False
    try:
        made = dns.dnssec.make_ds(zone, key, ds.digest_type, validating=True)
    except _MALFORMED:
        return False
    return bool(made.digest == ds.digest)


class Validator:
    """Trust anchors and the key cache shared by every validation.

    ``validate`` starts the validation of one answer; the object it returns is driven
    with ``next_event`` and ``receive`` until it is ``Done``. An answer given as wire
    bytes that was validated before (secure or insecure; its TTLs and ID may differ)
    comes back already ``Done`` from ``memo`` while what proved it still holds.
    """

    def __init__(
        self,
        anchors: TrustAnchors,
        *,
        skew: float = DEFAULT_SKEW,
        cache_entries: int = 10_000,
        max_fetches: int = MAX_FETCHES,
        memo_entries: int = 4096,
    ) -> None:
        if not crypto_available():
            raise ConfigError("--dnssec validate: dnspython's DNSSEC needs cryptography>=50")
        self.anchors = anchors
        self.skew = skew
        self.max_fetches = max_fetches
        self.keys = KeyCache(cache_entries)
        self.memo = AnswerMemo(memo_entries)

    def validate(
        self, qname: dns.name.Name | str, qtype: int, answer: Reply, now: float
    ) -> Validation:
        """The validation of ``answer`` to the client's question ``qname``/``qtype``."""
        if isinstance(qname, str):
            qname = dns.name.from_text(qname)
        qtype = int(qtype)
        if isinstance(answer, bytes) and self.memo.max_entries > 0:
            found = self.memo.find(qname, qtype, answer, now, self.keys, self.anchors)
            if isinstance(found, Result):
                return Validation(self, qname, qtype, None, now, found)
            if found is not None:
                validation = Validation(self, qname, qtype, parse_reply(answer), now)
                validation.memo = found
                return validation
        return Validation(self, qname, qtype, parse_reply(answer), now)


class Validation:
    """One answer's validation: ``next_event()`` until ``Done``, answering each
    ``NeedDS``/``NeedDNSKEY`` with ``receive(reply, now)``.

    ``memo`` is where the verdict will be kept in the validator's memo, if anywhere.
    Given a ``known`` verdict (from that memo), it is born done with it, its answer
    not even parsed.
    """

    def __init__(
        self,
        validator: Validator,
        qname: dns.name.Name,
        qtype: int,
        answer: dns.message.Message | None,
        now: float,
        known: Result | None = None,
    ) -> None:
        self.validator = validator
        self.qname = qname
        self.qtype = qtype
        self.answer = answer
        self.now = now
        self.state = State.RUNNING if known is None else State.DONE
        self.fetches = 0
        self._local: dict[dns.name.Name, Link] = {}
        self._steps = self._run()
        self._inbox: dns.message.Message | None = None
        self._pending: Need | None = None
        self._result: Result | None = known
        self._valid_until = math.inf
        self._valid_from = -math.inf
        self._links: list[Link] = []
        self.memo: Slot | None = None

    def next_event(self) -> Event:
        """The next thing the caller must do: fetch a DS or DNSKEY, or take the result.

        Repeats the pending need while waiting, and the result once done.
        """
        if self.state is State.RUNNING:
            self._advance()
        if self.state is State.WAITING:
            assert self._pending is not None
            return self._pending
        assert self._result is not None
        return Done(self._result)

    def receive(self, reply: Reply, now: float | None = None) -> None:
        """The reply to the pending need: a message, its wire form, or None if the
        fetch failed. ``now`` updates the time for what follows."""
        if self.state is not State.WAITING:
            raise Dns2DotError(f"receive() while {self.state.value}: nothing was asked")
        if now is not None:
            self.now = now
        self._inbox = parse_reply(reply)
        self._to(State.RUNNING)

    @property
    def result(self) -> Result | None:
        return self._result

    def _to(self, state: State) -> None:
        """The one place the state changes."""
        assert state in _TRANSITIONS[self.state], (self.state, state)
        self.state = state

    def _advance(self) -> None:
        """Run until the next need or the result."""
        inbox, self._inbox = self._inbox, None
        try:
            need = next(self._steps) if self._pending is None else self._steps.send(inbox)
        except StopIteration as stop:
            self._finish(stop.value)
            return
        except _MALFORMED as exc:
            self._finish(_bogus(None, f"malformed records for {self.qname}: {exc}"))
            return
        self.fetches += 1
        if self.fetches > self.validator.max_fetches:
            self._steps.close()
            self._finish(_bogus(None, f"{self.qname}: more than {self.fetches - 1} fetches"))
            return
        self._pending = need
        self._to(State.WAITING)

    def _finish(self, result: Result) -> None:
        if result.security is Security.SECURE:
            result = dataclasses.replace(result, valid_until=self._valid_until)
        self._pending = None
        self._result = result
        self._to(State.DONE)
        if self.memo is not None and result.security is not Security.BOGUS:
            self._keep(result)

    def _keep(self, result: Result) -> None:
        """Put the verdict in the validator's memo, if its answer allows it."""
        slot = self.memo
        assert slot is not None and self.answer is not None
        if ttl_blind(slot.wire):
            ends = min(self._valid_until, self.now + MAX_LINK_TTL)
            keys = self.validator.keys
            if all(keys.get(link.name, self.now) is link for link in self._links):
                self.validator.memo.put(
                    slot, result, self._valid_from, ends, self._links, keys, self.validator.anchors
                )

    def _verify(
        self,
        rrset: dns.rrset.RRset,
        sigs: Sequence[RRSIG],
        zone: dns.name.Name,
        keys: dns.rdataset.Rdataset,
    ) -> Verdict:
        """``verify_rrset``, remembering how long what it proved holds."""
        verdict = verify_rrset(rrset, sigs, zone, keys, self.now, self.validator.skew)
        if verdict.ok:
            self._valid_until = min(self._valid_until, verdict.expires)
            self._valid_from = max(self._valid_from, verdict.begins)
        return verdict

    # -- the answer -----------------------------------------------------------------

    def _run(self) -> _Walk:
        msg = self.answer
        if msg is None:
            return _bogus(None, f"unparsable answer for {self.qname}")
        rcode = msg.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return _insecure(None, f"rcode {dns.rcode.to_text(rcode)}: nothing to validate")
        results: list[Result] = []
        sname = self.qname
        for _ in range(MAX_CHAIN):
            if self.qtype == _ANY:
                found = [r for r in msg.answer if r.name == sname and r.rdtype != _RRSIG]
            else:
                one = _find(msg.answer, sname, self.qtype)
                found = [one] if one is not None else []
            if found:
                for rrset in found:
                    results.append((yield from self._rrset(msg, rrset)))
                return _worst(results)
            dname = self._dname_above(msg, sname)
            cname = _find(msg.answer, sname, _CNAME)
            if dname is not None:
                results.append((yield from self._rrset(msg, dname)))
                target = sname.relativize(dname.name).concatenate(dname[0].target)
                if cname is not None and cname[0].target != target:
                    return _bogus(
                        dname.name, f"CNAME at {sname} does not follow DNAME {dname.name}"
                    )
                sname = target
                continue
            if cname is not None:
                results.append((yield from self._rrset(msg, cname)))
                sname = cname[0].target
                continue
            results.append((yield from self._negative(msg, sname, rcode == dns.rcode.NXDOMAIN)))
            return _worst(results)
        return _bogus(None, f"{self.qname}: CNAME/DNAME chain longer than {MAX_CHAIN}")

    @staticmethod
    def _dname_above(msg: dns.message.Message, sname: dns.name.Name) -> dns.rrset.RRset | None:
        for rrset in msg.answer:
            if (
                rrset.rdtype == _DNAME
                and rrset.rdclass == _IN
                and sname.is_subdomain(rrset.name)
                and sname != rrset.name
            ):
                return rrset
        return None

    def _rrset(self, msg: dns.message.Message, rrset: dns.rrset.RRset) -> _Walk:
        """One RRset of the answer: signed by its zone, or inside an insecure zone."""
        name, rdtype = rrset.name, rrset.rdtype
        what = f"{name} {dns.rdatatype.to_text(rdtype)}"
        sigs = _sigs(msg.answer, name, rdtype)
        if not sigs:
            # DS lives in the parent zone: walk to the parent (RFC 4035 §5.2)
            owner_zone = name.parent() if rdtype == _DS and name != dns.name.root else name
            link = yield from self._walk(owner_zone, exact=False)
            if isinstance(link, Result):
                return link
            return _bogus(
                link.name, f"no RRSIG for {what} in signed zone {link.name}", Ede.RRSIGS_MISSING
            )
        # The zone above the owner signs it; a DS is signed by the parent (RFC 4035 §5.2).
        signers = [
            s.signer
            for s in sigs
            if name.is_subdomain(s.signer) and not (rdtype == _DS and s.signer == name)
        ]
        if not signers:
            return _bogus(
                None, f"RRSIG for {what} names signer {sigs[0].signer}, not a zone above it"
            )
        signer = signers[0]
        link = yield from self._walk(signer, exact=True)
        if isinstance(link, Result):
            return link
        assert link.keys is not None
        verdict = self._verify(rrset, sigs, signer, link.keys)
        if not verdict.ok:
            return _from_verdict(signer, verdict)
        if verdict.labels < owner_labels(name):
            return self._wildcard(msg, name, verdict.labels, link)
        return _secure(signer, f"{what} signed by {signer}")

    def _wildcard(
        self, msg: dns.message.Message, name: dns.name.Name, labels: int, link: Link
    ) -> Result:
        """A wildcard expansion needs proof that ``name`` itself does not exist
        (RFC 4035 §5.3.4, RFC 5155 §8.8)."""
        encloser = name.split(labels + 1)[1]
        denial = self._denial(msg.authority, link)
        if isinstance(denial, Result):
            if denial.ede is Ede.RRSIGS_MISSING:
                return _bogus(link.name, f"wildcard answer for {name} without its denial proof")
            return denial
        nsecs, nsec3, expires = denial
        self._valid_until = min(self._valid_until, expires)
        if nsecs:
            proof = nsec_wildcard(nsecs, name, encloser)
        elif nsec3.too_costly:
            return _insecure(link.name, f"NSEC3 of {link.name}: {nsec3.iterations} iterations")
        else:
            proof = nsec3_wildcard(nsec3, name, encloser)
        return self._judge(proof, link.name, f"wildcard answer for {name}")

    def _negative(self, msg: dns.message.Message, sname: dns.name.Name, nxdomain: bool) -> _Walk:
        """The chain ended without data: NSEC/NSEC3 must prove NXDOMAIN or NODATA."""
        what = f"{'NXDOMAIN' if nxdomain else 'NODATA'} for {sname}"
        signer = None
        for rrset in msg.authority:
            if rrset.rdtype == _RRSIG and rrset.covers in (_SOA, _NSEC, _NSEC3):
                for sig in rrset:
                    if isinstance(sig, RRSIG) and sname.is_subdomain(sig.signer):
                        signer = sig.signer
                        break
            if signer is not None:
                break
        if signer is None:
            owner = sname.parent() if self.qtype == _DS and sname != dns.name.root else sname
            link = yield from self._walk(owner, exact=False)
            if isinstance(link, Result):
                return link
            return _bogus(
                link.name, f"unsigned {what} from signed zone {link.name}", Ede.RRSIGS_MISSING
            )
        link = yield from self._walk(signer, exact=True)
        if isinstance(link, Result):
            return link
        assert link.keys is not None
        soa = _find(msg.authority, signer, _SOA)
        if soa is not None:
            verdict = self._verify(soa, _sigs(msg.authority, signer, _SOA), signer, link.keys)
            if not verdict.ok:
                return _from_verdict(signer, verdict)
        denial = self._denial(msg.authority, link)
        if isinstance(denial, Result):
            return denial
        nsecs, nsec3, expires = denial
        self._valid_until = min(self._valid_until, expires)
        if nsecs:
            proof = (
                nsec_nxdomain(nsecs, sname) if nxdomain else nsec_nodata(nsecs, sname, self.qtype)
            )
        elif nsec3.too_costly:
            return _insecure(signer, f"NSEC3 of {signer}: {nsec3.iterations} iterations (RFC 9276)")
        elif nxdomain:
            proof = nsec3_nxdomain(nsec3, sname)
        else:
            proof = nsec3_nodata(nsec3, sname, self.qtype)
        return self._judge(proof, signer, what)

    @staticmethod
    def _judge(proof: Proof, zone: dns.name.Name, what: str) -> Result:
        if proof is Proof.PROVEN:
            return _secure(zone, f"{what} proven by {zone}")
        if proof is Proof.OPT_OUT:
            return _insecure(zone, f"{what}: inside an NSEC3 opt-out span of {zone}")
        return _bogus(zone, f"{what}: not proven by the NSEC/NSEC3 records of {zone}")

    def _denial(
        self, section: Sequence[dns.rrset.RRset], link: Link
    ) -> tuple[list[Nsec], Nsec3Set, float] | Result:
        """The NSEC and NSEC3 records of ``link``'s zone in ``section``, each verified,
        and until when they all hold (their TTLs and signature expirations)."""
        zone = link.name
        assert link.keys is not None
        nsecs: list[Nsec] = []
        nsec3s: list[Nsec3] = []
        expires = self.now + MAX_LINK_TTL
        for rrset in section:
            if rrset.rdtype not in (_NSEC, _NSEC3) or not rrset.name.is_subdomain(zone):
                continue
            sigs = _sigs(section, rrset.name, rrset.rdtype)
            verdict = verify_rrset(rrset, sigs, zone, link.keys, self.now, self.validator.skew)
            if not verdict.ok:
                return _from_verdict(zone, verdict)
            expires = min(expires, self._expiry(rrset.ttl, verdict))
            self._valid_from = max(self._valid_from, verdict.begins)
            if verdict.labels < owner_labels(rrset.name):
                continue  # NSEC records are never wildcard expansions
            if rrset.rdtype == _NSEC:
                nsecs.extend(Nsec.from_rrset(rrset))
            else:
                nsec3s.extend(Nsec3.from_rrset(rrset))
        if not nsecs and not nsec3s:
            return _bogus(zone, f"no signed NSEC or NSEC3 records from {zone}", Ede.RRSIGS_MISSING)
        return nsecs, Nsec3Set(zone, nsec3s), expires

    # -- the chain of trust ---------------------------------------------------------

    def _cached(self, name: dns.name.Name) -> Link | None:
        link = self._local.get(name)
        if link is None:
            link = self.validator.keys.get(name, self.now)
        return link

    def _remember(self, link: Link) -> Link:
        self._local[link.name] = link
        self.validator.keys.put(link, self.now)
        return link

    def _expiry(self, ttl: int, *verdicts: Verdict) -> float:
        expires = self.now + min(ttl, MAX_LINK_TTL)
        for verdict in verdicts:
            expires = min(expires, verdict.expires)
        return expires

    def _walk(self, target: dns.name.Name, *, exact: bool) -> _Chain:
        """From the closest trust anchor down to ``target``: the keys of the deepest
        secure zone at or above it, or why there are none (insecure or bogus).

        With ``exact``, ``target`` must itself be a secure zone (it signed something).
        """
        negative = self.validator.anchors.negative_above(target)
        if negative is not None:
            return _insecure(negative, f"{negative} is a negative trust anchor")
        anchor = self.validator.anchors.closest(target)
        if anchor is None:
            return _insecure(None, f"no trust anchor above {target}")
        found: Link | Result | None = self._cached(anchor.zone)
        if found is None:
            found = yield from self._anchor_keys(anchor)
        if isinstance(found, Result):
            return found
        self._links.append(found)
        self._valid_until = min(self._valid_until, found.expires)
        if found.kind is LinkKind.INSECURE:
            return _insecure(found.name, found.reason, found.ede)
        link = found
        for depth in range(len(anchor.zone) + 1, len(target) + 1):
            name = target.split(depth)[1]
            step: Link | Result | None = self._cached(name)
            if step is None:
                step = yield from self._probe(link, name)
            if isinstance(step, Result):
                return step
            self._links.append(step)
            self._valid_until = min(self._valid_until, step.expires)
            if step.kind is LinkKind.INSECURE:
                return _insecure(step.name, step.reason, step.ede)
            if step.kind is LinkKind.SECURE:
                link = step
        if exact and link.name != target:
            return _bogus(
                target, f"{target} signs records but is not a signed zone under {link.name}"
            )
        return link

    def _anchor_keys(self, anchor: Anchor) -> _Chain:
        usable = [d for d in anchor.ds if self._usable_ds(d)]
        if anchor.ds and not usable and not anchor.dnskeys:
            return self._unsupported(anchor.zone, anchor.ds, self.now + MAX_LINK_TTL)
        return (yield from self._zone_keys(anchor.zone, usable, anchor.dnskeys))

    @staticmethod
    def _usable_ds(ds: DS) -> bool:
        return ds.algorithm in SUPPORTED_ALGORITHMS and ds.digest_type in SUPPORTED_DIGESTS

    def _unsupported(self, name: dns.name.Name, ds: Sequence[DS], expires: float) -> Link:
        """Only unknown algorithms or digests: insecure, not bogus (RFC 6840 §5.2)."""
        if any(d.algorithm in SUPPORTED_ALGORITHMS for d in ds):
            ede, what = Ede.UNSUPPORTED_DS_DIGEST, "DS digest types"
        else:
            ede, what = Ede.UNSUPPORTED_DNSKEY_ALGORITHM, "DNSKEY algorithms"
        reason = f"the DS records of {name} use only unsupported {what}"
        return self._remember(Link(LinkKind.INSECURE, name, expires, None, reason, ede))

    def _probe(self, parent: Link, name: dns.name.Name) -> _Chain:
        """Is ``name`` a zone cut below ``parent``, and is it signed? Asks for its DS."""
        assert parent.keys is not None
        reply = yield NeedDS(name)
        if reply is None or reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return _bogus(name, f"no usable answer to {name} DS", Ede.NO_REACHABLE_AUTHORITY)
        skew = self.validator.skew
        ds = _find(reply.answer, name, _DS)
        if ds is not None:
            verdict = verify_rrset(
                ds, _sigs(reply.answer, name, _DS), parent.name, parent.keys, self.now, skew
            )
            if not verdict.ok:
                return _from_verdict(parent.name, verdict)
            records = [d for d in ds if isinstance(d, DS)]
            usable = [d for d in records if self._usable_ds(d)]
            if not usable:
                return self._unsupported(name, records, self._expiry(ds.ttl, verdict))
            return (yield from self._zone_keys(name, usable, ()))
        cname = _find(reply.answer, name, _CNAME)
        if cname is not None:
            verdict = verify_rrset(
                cname, _sigs(reply.answer, name, _CNAME), parent.name, parent.keys, self.now, skew
            )
            if not verdict.ok:
                return _from_verdict(parent.name, verdict)
            return self._remember(Link(LinkKind.NOT_A_CUT, name, self._expiry(cname.ttl, verdict)))
        denial = self._denial(reply.authority, parent)
        if isinstance(denial, Result):
            return denial
        nsecs, nsec3, expires = denial
        if nsecs:
            cut = nsec_cut(nsecs, name)
        elif nsec3.too_costly:
            reason = f"NSEC3 of {parent.name}: {nsec3.iterations} iterations (RFC 9276)"
            return self._remember(Link(LinkKind.INSECURE, name, expires, None, reason))
        else:
            cut = nsec3_cut(nsec3, name)
        if cut is Cut.INSECURE_DELEGATION:
            reason = f"{name} is an unsigned delegation from {parent.name}"
            return self._remember(Link(LinkKind.INSECURE, name, expires, None, reason))
        if cut is Cut.NOT_A_CUT:
            return self._remember(Link(LinkKind.NOT_A_CUT, name, expires))
        return _bogus(parent.name, f"{parent.name} does not prove {name} has no DS")

    def _zone_keys(
        self, zone: dns.name.Name, ds: Sequence[DS], trusted: Sequence[DNSKEY]
    ) -> _Chain:
        """Fetch ``zone``'s DNSKEY RRset and accept it if a key that one of ``ds`` (or
        ``trusted``) vouches for signs it (RFC 4035 §5.2)."""
        reply = yield NeedDNSKEY(zone)
        if reply is None:
            return _bogus(zone, f"no answer to {zone} DNSKEY", Ede.DNSKEY_MISSING)
        rrset = _find(reply.answer, zone, _DNSKEY)
        if rrset is None:
            return _bogus(zone, f"{zone} has no DNSKEY records", Ede.DNSKEY_MISSING)
        entry = [
            key
            for key in rrset
            if isinstance(key, DNSKEY)
            and key.flags & _ZONE_FLAG
            and not key.flags & _REVOKE_FLAG
            and (
                any(_ds_matches(zone, key, d) for d in ds)
                or any((key.algorithm, key.key) == (t.algorithm, t.key) for t in trusted)
            )
        ]
        if not entry:
            return _bogus(zone, f"no DNSKEY of {zone} matches its DS", Ede.DNSKEY_MISSING)
        keys = dns.rdataset.from_rdata_list(rrset.ttl, entry)
        sigs = _sigs(reply.answer, zone, _DNSKEY)
        verdict = verify_rrset(rrset, sigs, zone, keys, self.now, self.validator.skew)
        if not verdict.ok:
            return _from_verdict(zone, verdict)
        return self._remember(Link(LinkKind.SECURE, zone, self._expiry(rrset.ttl, verdict), rrset))
