"""The I/O shell of DNSSEC validation (``--dnssec validate``): drives the pure
:class:`~dns2dot.policy.dnssec.Validation` of each upstream answer, fetching the DS and
DNSKEY RRsets it asks for through the same upstream pool as the query.

A fetch is an internal query (DO and CD set) with the resolver's timeout; one fetch per
(pool, name, type) is in flight at a time, shared by every validation waiting on it. A
fetch that fails is reported to the validations as no reply at all. Each finished
validation is counted (secure, insecure, bogus), and a bogus one logged, at most
:data:`LOG_BURST` lines a second so that a flood cannot fill the log.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from functools import partial

import dns.exception
import dns.name
import dns.rdatatype

from dns2dot.policy.dnssec import Done, NeedDS, Result, Security, Validation, Validator
from dns2dot.policy.dnssec.signatures import Ede
from dns2dot.protocol import wire
from dns2dot.upstream.pool import UpstreamPool

log = logging.getLogger("dns2dot.dnssec")

LOG_BURST = 5  # bogus answers logged per second at most; the rest are counted
_DS = int(dns.rdatatype.DS)
_DNSKEY = int(dns.rdatatype.DNSKEY)

# (the pool's id, name in wire form, type) -> what to call with the reply or None
Fetch = Callable[[UpstreamPool, bytes, int, Callable[[bytes | None], None]], None]
OnDone = Callable[[Result], None]
_FetchKey = tuple[int, bytes, int]


class Validating:
    """Runs validations to their :class:`Result`; ``fetch(pool, name, type, reply)``
    sends an internal query and calls ``reply`` once with the answer or None."""

    def __init__(
        self, validator: Validator, fetch: Fetch, wall: Callable[[], float] = time.time
    ) -> None:
        self.validator = validator
        self._fetch = fetch
        self.wall = wall
        self._waiting: dict[_FetchKey, list[tuple[Validation, UpstreamPool, OnDone]]] = {}
        self.results: Counter[str] = Counter()
        self._log_second = 0
        self._logged = 0
        self._unlogged = 0

    def validate(
        self, qname: bytes, qtype: int, answer: bytes, pool: UpstreamPool, done: OnDone
    ) -> None:
        """Validate ``answer`` to ``qname`` (wire form) / ``qtype``; ``done`` gets the result
        (at once when the key cache already holds the chain)."""
        try:
            name = dns.name.from_wire(qname, 0)[0]
            validation = self.validator.validate(name, qtype, answer, self.wall())
        except (dns.exception.DNSException, ValueError) as exc:
            self._finish(_failed(f"unreadable answer: {exc}"), done)
            return
        self._drive(validation, pool, done)

    def _drive(self, validation: Validation, pool: UpstreamPool, done: OnDone) -> None:
        try:
            event = validation.next_event()
        except Exception as exc:  # a bug in the core must not leave the client waiting
            log.exception("validation of %s failed", validation.qname)
            self._finish(_failed(f"validation failed: {exc}"), done)
            return
        if isinstance(event, Done):
            self._finish(event.result, done)
            return
        if isinstance(event, NeedDS):
            name, rdtype = event.name.to_digestable(), _DS
        else:
            name, rdtype = event.zone.to_digestable(), _DNSKEY
        key = (id(pool), name, rdtype)
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append((validation, pool, done))
            return
        self._waiting[key] = [(validation, pool, done)]
        self._fetch(pool, name, rdtype, partial(self._fetched, key))

    def _fetched(self, key: _FetchKey, reply: bytes | None) -> None:
        """A fetch ended: every validation waiting on it gets the reply (None: failed)."""
        if reply is not None and wire.rcode_of(reply) not in (
            wire.Rcode.NOERROR,
            wire.Rcode.NXDOMAIN,
        ):
            reply = None
        now = self.wall()
        for validation, pool, done in self._waiting.pop(key, ()):
            validation.receive(reply, now)
            self._drive(validation, pool, done)

    def _finish(self, result: Result, done: OnDone) -> None:
        self.results[result.security.value] += 1
        if result.security is Security.BOGUS:
            self._log_bogus(result)
        done(result)

    def _log_bogus(self, result: Result) -> None:
        second = int(self.wall())
        if second != self._log_second:
            if self._unlogged:
                log.warning("DNSSEC: %d more bogus answers not logged", self._unlogged)
            self._log_second, self._logged, self._unlogged = second, 0, 0
        if self._logged >= LOG_BURST:
            self._unlogged += 1
            return
        self._logged += 1
        zone = result.zone.to_text() if result.zone is not None else "?"
        ede = int(result.ede) if result.ede is not None else 6
        log.warning("DNSSEC bogus in zone %s (EDE %d): %s", zone, ede, result.reason)


def _failed(reason: str) -> Result:
    """A validation that could not run: bogus, so the client is not told it is safe."""
    return Result(Security.BOGUS, reason, Ede.DNSSEC_BOGUS)
