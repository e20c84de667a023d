"""The answer cache, with serve-stale (RFC 8767): pure, the clock is passed in.

Entries are upstream answers in wire form, kept with the offsets of their TTL fields,
so a hit costs one copy and a few ``struct`` writes instead of a parse and a render:
the client's ID and spelling of the name (0x20 case) go in, and every TTL is counted
down by the entry's age. Lifetimes follow the RFCs:

- positive answers: the smallest TTL among their records (RFC 2181 §5.2);
- NXDOMAIN and NODATA: min(SOA TTL, SOA MINIMUM) from the authority section
  (RFC 2308 §5), and not cached at all without an SOA;
- SERVFAIL from an upstream: a few seconds (RFC 9520 §3.2);
- truncated, REFUSED, FORMERR, NOTIMP: never.

Expired entries are kept for ``stale_ttl`` more seconds so they can be served when
the upstreams fail (TTL 30, RFC 8767 §4), and the least recently used entry goes
first when the entry or byte bound is reached.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

from dns2dot.protocol import wire
from dns2dot.protocol.errors import ProtocolError

_TTL = struct.Struct("!I")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_TYPE_SOA = 6
STALE_ANSWER_TTL = 30  # RFC 8767 §4: the TTL of a stale answer
ENTRY_OVERHEAD = 200  # bytes charged per entry beyond its answer, for the byte bound
KNOWN_PER_ENTRY = 8  # known queries (spellings, flags, EDNS options) noted per entry
BOGUS_TTL = 60  # RFC 4035 §4.7: a bogus answer is kept briefly, then asked again


class Trust(Enum):
    """What DNSSEC validation made of a cached answer (``--dnssec validate``)."""

    SECURE = "secure"
    INSECURE = "insecure"
    BOGUS = "bogus"


SECURE = Trust.SECURE
BOGUS = Trust.BOGUS


@dataclass(frozen=True, slots=True)
class Validated:
    """A validation's verdict as the cache keeps it: its trust, its Extended DNS Error
    (a bogus answer is refused with it; an insecure one carries it, RFC 8914 §4.2,
    4.3), and until when (in the cache's clock) it holds."""

    trust: Trust
    ede: int | None = None
    until: float | None = None


@dataclass(slots=True)
class DnssecViews:
    """A validated entry's two views: ``full`` for clients that set DO, ``stripped``
    (no RRSIG, NSEC, NSEC3 it did not ask for) for the rest, both made at store time."""

    verdict: Validated
    full: CacheEntry
    stripped: CacheEntry


@dataclass(slots=True)
class CacheEntry:
    answer: bytes  # ID zeroed, padding removed
    ttl_offsets: tuple[int, ...]
    ttls: tuple[int, ...]
    stored: float
    expires: float
    stale_until: float
    qname_len: int
    size: int  # bytes charged against the cache's byte bound
    opt: tuple[int, int] | None = None  # (start, end) of the OPT record in ``answer``
    clamped: bool = False  # a TTL was changed by the clamps: serve through render()
    hits: int = 0
    refreshing: bool = False
    # The answer as served at ``*_age`` seconds old, with and without its OPT: a hot
    # entry is rendered once a second, and each hit only writes in an ID and a name.
    edns_age: int = -1
    view_edns: bytes = b""
    plain_age: int = -1
    view_plain: bytes = b""
    dnssec: DnssecViews | None = None  # set on validated entries (--dnssec validate)

    def fresh(self, now: float) -> bool:
        return now < self.expires


@dataclass(slots=True)
class KnownQuery:
    """A query answered from the cache before, by its exact bytes after the ID.

    The known queries of one entry are chained through ``next`` from the cache's index
    by entry key, so they go when their entry goes (replaced, evicted, expired).
    """

    key: bytes
    entry: CacheEntry
    query: wire.Query
    until: float  # when the entry's age in whole seconds changes: ``answer`` is then old
    answer: bytearray  # the answer this query gets, from the byte after the ID
    rest: bytes = b""  # the query from the byte after the ID: its key in the known map
    size: int = 0  # bytes charged against the known queries' share of the byte bound
    next: KnownQuery | None = None  # the entry's next known query
    counted: tuple[str, list[int]] | None = None  # the resolver's counter, by transport
    prefetch_at: float = 0.0  # when the entry enters the last tenth of its life
    offsets: tuple[int, ...] = ()  # of the view's TTL fields in ``answer``, in order
    ttls: tuple[int, ...] = ()  # the view's TTLs as stored (a validated entry has two views)


@dataclass(frozen=True)
class CachePolicy:
    """The cache's bounds and clamps. Those that are options come from ``Config``
    (``--cache-size``, ``--cache-min-ttl``, ``--cache-max-ttl``, ``--serve-stale``)
    and have no default here."""

    max_entries: int
    min_ttl: int
    max_ttl: int
    stale_ttl: int  # how long past expiry an entry may still be served stale
    max_bytes: int = 64 << 20
    servfail_ttl: int = 2  # RFC 9520 §3.2: a few seconds


def cache_key(query: wire.Query) -> bytes:
    """Name (case-folded), type, class, and the DO and CD bits: what changes the answer."""
    do = 1 if query.edns is not None and query.edns.do else 0
    cd = 2 if query.flags & wire.CD else 0
    return query.key + bytes((do | cd,))


def _walk_ttls(answer: bytes) -> tuple[list[int], list[int], int | None, tuple[int, int] | None]:
    """TTL field offsets and values of every record but OPT, the negative TTL, the OPT.

    The negative TTL is min(SOA TTL, SOA MINIMUM) of the first SOA in the authority
    section, or None when there is none; the OPT is its (start, end), or None. Names
    are validated: a broken answer raises a ``FormError`` and is not kept.
    """
    _, _, qdcount, ancount, nscount, arcount = wire.HEADER.unpack_from(answer)
    offset = wire.HEADER_LEN
    for _ in range(qdcount):
        offset = wire.skip_name(answer, offset) + 4
    offsets: list[int] = []
    ttls: list[int] = []
    negative: int | None = None
    opt: tuple[int, int] | None = None
    first_additional = ancount + nscount
    records = wire.walk_records(answer, offset, first_additional + arcount)
    for index, (start, fields, end) in enumerate(records):
        rtype, _, ttl, rdlen = _RR_FIXED.unpack_from(answer, fields)
        if rtype != wire.RdataType.OPT:
            offsets.append(fields + 4)
            ttls.append(ttl)
            in_authority = ancount <= index < first_additional
            if rtype == _TYPE_SOA and in_authority and negative is None and rdlen >= 20:
                (minimum,) = _TTL.unpack_from(answer, end - 4)
                negative = min(ttl, minimum)
        elif index >= first_additional and opt is None:
            opt = (start, end)  # the first, as wire.client_view finds it
    return offsets, ttls, negative, opt


class Cache:
    """An LRU map from :func:`cache_key` to :class:`CacheEntry`, bounded in entries and bytes."""

    def __init__(self, policy: CachePolicy) -> None:
        self.policy = policy
        self._entries: OrderedDict[bytes, CacheEntry] = OrderedDict()
        # Stubs ask the same questions in the same bytes over and over; a repeat is
        # answered without a parse or a render (see :meth:`known`). Bounded by the
        # entry bound and a quarter of the byte bound, on top of the entries.
        self._known: dict[bytes, KnownQuery] = {}
        self._known_of: dict[bytes, KnownQuery] = {}  # entry key -> its chain
        self._known_bytes = 0
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> CacheEntry | None:
        """The entry for ``key``, fresh or stale-but-servable, else None."""
        entry = self._entries.get(key)
        if entry is None or now >= entry.stale_until:
            if entry is not None:
                self._remove(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        if entry.fresh(now):
            self.hits += 1
            entry.hits += 1
        else:
            self.misses += 1
        return entry

    def known(self, msg: bytes, now: float) -> KnownQuery | None:
        """A fresh hit for a query whose bytes, all but the ID, were answered before.

        Identical bytes validate alike and ask the same question in the same spelling,
        so the answer :meth:`remember` kept (rendered again when the entry's age in
        whole seconds changes, as TTLs count down) is theirs too, without a parse.
        Counted as a hit; None sends the caller the long way (:meth:`get` and
        :meth:`render`), which also decides what an expired entry gets.
        """
        known = self._known.get(msg[2:])
        if known is None:
            return None
        entry = known.entry
        if now >= entry.expires:
            return None
        if now >= known.until:  # a new whole second of age: TTLs one lower
            if self._entries.get(known.key) is not entry:
                return None
            self._entries.move_to_end(known.key)  # recency kept to the second
            age = int(now - entry.stored)
            known.until = entry.stored + age + 1
            answer = known.answer  # only copied out (the caller prepends the ID): patched
            pack = _TTL.pack_into
            for offset, ttl in zip(known.offsets, known.ttls, strict=True):
                pack(answer, offset, ttl - age if ttl > age else 0)
        self.hits += 1
        entry.hits += 1
        return known

    def remember(
        self,
        msg: bytes,
        key: bytes,
        query: wire.Query,
        entry: CacheEntry,
        answer: bytes,
        now: float,
    ) -> None:
        """Note that ``msg`` got ``answer`` from the fresh ``entry`` (see :meth:`known`).

        Known queries are bounded by the entry bound, by a quarter of the byte bound
        and by ``KNOWN_PER_ENTRY`` per entry; past a bound a query is not noted (it is
        still answered, the long way). They are forgotten with their entry, so a full
        map only holds queries whose entries live: no sweep or reset is needed, and a
        working set that cycles through more queries than fit keeps what fits.
        """
        rest = msg[2:]
        if rest in self._known or self._entries.get(key) is not entry:
            return
        size = len(rest) + len(answer) + ENTRY_OVERHEAD
        policy = self.policy
        if (
            len(self._known) >= policy.max_entries
            or self._known_bytes + size > policy.max_bytes // 4
        ):
            return
        first = self._known_of.get(key)
        chained = 0
        link = first
        while link is not None:
            chained += 1
            link = link.next
        if chained >= KNOWN_PER_ENTRY:
            return
        view = entry
        views = entry.dnssec
        if views is not None:
            if views.verdict.trust is BOGUS and not query.flags & wire.CD:
                return  # SERVFAIL made for each client: the long way
            view = views.full if query.edns is not None and query.edns.do else views.stripped
        until = entry.stored + int(now - entry.stored) + 1
        known = KnownQuery(key, entry, query, until, bytearray(answer[2:]), rest, size)
        known.offsets = _tail_offsets(view, query)
        known.ttls = view.ttls
        known.prefetch_at = entry.expires - (entry.expires - entry.stored) / 10
        known.next = first
        self._known_of[key] = known
        self._known[rest] = known
        self._known_bytes += size

    def _forget_entry_queries(self, key: bytes) -> None:
        """Forget the known queries of the entry under ``key`` (it is going)."""
        known = self._known_of.pop(key, None)
        while known is not None:
            if self._known.get(known.rest) is known:
                del self._known[known.rest]
                self._known_bytes -= known.size
            known = known.next

    def forget_queries(self) -> None:
        """Forget every :class:`KnownQuery`: what decides an answer (the rules) changed."""
        self._known.clear()
        self._known_of.clear()
        self._known_bytes = 0

    def peek(self, key: bytes) -> CacheEntry | None:
        """The entry for ``key`` as it is, without counting a hit or a miss."""
        return self._entries.get(key)

    def lifetime(
        self, answer: bytes
    ) -> tuple[int, list[int], list[int], tuple[int, int] | None] | None:
        """How long an upstream answer may be cached, its TTL offsets and values, and
        where its OPT record is; None: never cached."""
        if len(answer) < wire.HEADER_LEN or answer[2] & (wire.TC >> 8):
            return None
        try:
            if wire.answer_key(answer) is None:
                return None  # no question to serve it for
            offsets, ttls, negative, opt = _walk_ttls(answer)
        except ProtocolError:
            return None
        rcode = wire.rcode_of(answer)
        policy = self.policy
        if rcode == wire.Rcode.SERVFAIL:
            return min(policy.servfail_ttl, policy.max_ttl), offsets, ttls, opt
        ancount = (answer[6] << 8) | answer[7]
        if rcode == wire.Rcode.NOERROR and ancount:
            ttl = min(ttl for ttl in ttls[:ancount]) if ttls else 0
        elif rcode in (wire.Rcode.NOERROR, wire.Rcode.NXDOMAIN):
            if negative is None:
                return None  # RFC 2308 §5: no SOA, no negative caching
            ttl = negative
        else:
            return None
        ttl = max(policy.min_ttl, min(policy.max_ttl, ttl))
        # Records are served with TTLs no larger than the clamp, so stubs agree with us.
        ttls = [max(policy.min_ttl, min(policy.max_ttl, t)) for t in ttls]
        if rcode != wire.Rcode.NOERROR or not ancount:
            ttls = [min(t, ttl) for t in ttls]
        return ttl, offsets, ttls, opt

    def put(
        self,
        key: bytes,
        answer: bytes,
        now: float,
        verdict: Validated | None = None,
        qtype: int = 0,
    ) -> bool:
        """Store an upstream answer, padding removed; False if not cacheable.

        A validated answer (``verdict``) keeps both client views (:class:`DnssecViews`);
        a bogus one is kept :data:`BOGUS_TTL` seconds at most and never served stale,
        and none outlives its verdict's ``until``.
        """
        if verdict is None:
            entry = self._entry(answer, now, None)
        else:
            entry = self._validated(answer, now, verdict, qtype)
        if entry is None:
            return False
        if key in self._entries:
            self._remove(key)
        self._entries[key] = entry
        self.bytes += entry.size
        while self._entries and (
            len(self._entries) > self.policy.max_entries or self.bytes > self.policy.max_bytes
        ):
            oldest = next(iter(self._entries))
            self._remove(oldest)
        return True

    def _entry(self, answer: bytes, now: float, cap: float | None) -> CacheEntry | None:
        """A new entry for an upstream answer (padding removed), its lifetime at most
        ``cap`` seconds; None if not cacheable."""
        found = self.lifetime(answer)
        if found is None:
            return None
        ttl, offsets, ttls, opt = found
        if cap is not None and cap < ttl:
            ttl = max(int(cap), 0)
            ttls = [min(t, ttl) for t in ttls]
        if ttl <= 0:
            return None
        if opt is not None:
            stripped = wire.strip_padding(answer, *opt)
            if stripped is not answer:
                if opt[1] != len(answer):  # OPT not last: offsets after it moved
                    return self._entry(stripped, now, cap)
                answer = stripped
                opt = (opt[0], len(answer))
        qname_len = wire.skip_name(answer, wire.HEADER_LEN) - wire.HEADER_LEN
        return CacheEntry(
            answer=b"\x00\x00" + answer[2:],
            ttl_offsets=tuple(offsets),
            ttls=tuple(ttls),
            stored=now,
            expires=now + ttl,
            stale_until=now + ttl + self.policy.stale_ttl,
            qname_len=qname_len,
            size=len(answer) + ENTRY_OVERHEAD,
            opt=opt,
            clamped=any(
                _TTL.unpack_from(answer, offset)[0] != value
                for offset, value in zip(offsets, ttls, strict=True)
            ),
        )

    def _validated(
        self, answer: bytes, now: float, verdict: Validated, qtype: int
    ) -> CacheEntry | None:
        """The entry of a validated answer, with its two views (see :meth:`put`)."""
        cap = None if verdict.until is None else verdict.until - now
        if verdict.ede is not None and verdict.trust is not BOGUS:
            # Insecure for want of an algorithm or digest (EDE 1, 2): said, not refused.
            answer = wire.with_ede(answer, verdict.ede, wire.EDE_TEXT.get(verdict.ede, ""))
        if verdict.trust is BOGUS:
            cap = BOGUS_TTL if cap is None else min(cap, BOGUS_TTL)
        full = self._entry(answer, now, cap)
        if full is None:
            return None
        try:
            stripped = self._entry(wire.without_dnssec(answer, qtype), now, cap)
        except ProtocolError:
            return None
        if stripped is None:
            return None
        stripped.expires = full.expires
        stripped.stale_until = full.stale_until
        if verdict.trust is BOGUS:
            full.stale_until = stripped.stale_until = full.expires  # never served stale
        views = DnssecViews(verdict, full, stripped)
        return replace(full, size=full.size + stripped.size, dnssec=views)

    def _render_dnssec(
        self, views: DnssecViews, query: wire.Query, now: float, *, stale: bool
    ) -> bytes:
        """A validated entry as this client gets it: the DO or the DO-less view, AD for
        a client that set DO or AD when secure, SERVFAIL for a bogus one unless it set
        CD (RFC 4035 §3.2.2, §4.7; RFC 6840 §5.7)."""
        cd = bool(query.flags & wire.CD)
        verdict = views.verdict
        do = query.edns is not None and query.edns.do
        if verdict.trust is BOGUS and not cd:
            return bogus_answer(views.full, query, verdict.ede)
        answer = self.render(views.full if do else views.stripped, query, now, stale=stale)
        ad = verdict.trust is SECURE and not cd and (do or bool(query.flags & wire.AD))
        return wire.with_ad_cd(answer, ad, cd)

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        if key in self._known_of:
            self._forget_entry_queries(key)

    def render(self, entry: CacheEntry, query: wire.Query, now: float, *, stale: bool) -> bytes:
        """The cached answer for this client: its ID, its spelling, TTLs counted down.

        A stale answer carries TTL 30 and, for a client with EDNS, Extended DNS Error 3
        "Stale Answer" (RFC 8914 §5.4); otherwise the answer keeps its OPT for a client
        with EDNS and loses it for one without (see :func:`wire.client_view`).
        """
        views = entry.dnssec
        if views is not None:
            return self._render_dnssec(views, query, now, stale=stale)
        if stale:
            return self._render_stale(entry, query)
        age = int(now - entry.stored)
        if query.edns is not None:
            if entry.edns_age != age:
                entry.view_edns = _with_ttls(entry, _counted_down(entry, age), keep_opt=True)
                entry.edns_age = age
            return _personal(entry.view_edns, entry, query)
        if entry.plain_age != age:
            entry.view_plain = _with_ttls(entry, _counted_down(entry, age), keep_opt=False)
            entry.plain_age = age
        return _personal(entry.view_plain, entry, query)

    def _render_stale(self, entry: CacheEntry, query: wire.Query) -> bytes:
        stale_ttls = [STALE_ANSWER_TTL] * len(entry.ttls)
        answer = _with_ttls(entry, stale_ttls, keep_opt=False)
        if query.edns is not None:
            arcount = (answer[10] << 8) | answer[11]
            answer = (
                answer[:10]
                + struct.pack("!H", arcount + 1)
                + answer[12:]
                + wire.opt_record(do=query.edns.do, options=wire.ede_option(3, "Stale Answer"))
            )
        return _personal(answer, entry, query)


def _tail_offsets(entry: CacheEntry, query: wire.Query) -> tuple[int, ...]:
    """Where the entry's TTL fields are in what :meth:`Cache.render` gives ``query``,
    from the byte after the ID (the OPT record is cut for a client without EDNS)."""
    cut_at, cut = len(entry.answer), 0
    if query.edns is None and entry.opt is not None:
        cut_at, cut = entry.opt[0], entry.opt[1] - entry.opt[0]
    return tuple(o - 2 - (cut if o > cut_at else 0) for o in entry.ttl_offsets)


def _counted_down(entry: CacheEntry, age: int) -> list[int]:
    """The entry's TTLs ``age`` seconds after it was stored, none below zero."""
    return [ttl - age if ttl > age else 0 for ttl in entry.ttls]


def _with_ttls(entry: CacheEntry, ttls: Sequence[int], *, keep_opt: bool) -> bytes:
    """The stored answer with each record's TTL replaced by the one in ``ttls``, and
    without its OPT record for a client that sent none (RFC 6891 §7, as
    :func:`wire.client_view` would cut it)."""
    buf = bytearray(entry.answer)
    pack = _TTL.pack_into
    for offset, ttl in zip(entry.ttl_offsets, ttls, strict=True):
        pack(buf, offset, ttl)
    if not keep_opt and entry.opt is not None:
        start, end = entry.opt
        del buf[start:end]
        arcount = ((buf[10] << 8) | buf[11]) - 1
        buf[10:12] = arcount.to_bytes(2, "big")
    return bytes(buf)


def _personal(view: bytes, entry: CacheEntry, query: wire.Query) -> bytes:
    """``view`` with the client's ID and its spelling of the name (0x20 case)."""
    qid = query.id.to_bytes(2, "big")
    end = wire.HEADER_LEN + entry.qname_len
    if len(query.qname) == entry.qname_len:
        return qid + view[2 : wire.HEADER_LEN] + query.qname + view[end:]
    return qid + view[2:]


def bogus_answer(entry: CacheEntry, query: wire.Query, ede: int | None) -> bytes:
    """SERVFAIL with the Extended DNS Error of a bogus answer (RFC 8914), for ``query``."""
    end = wire.HEADER_LEN + entry.qname_len
    question = query.qname + entry.answer[end : end + 4]
    head = wire.HEADER.pack(query.id, query.flags, 1, 0, 0, 0)
    code = 6 if ede is None else ede
    return wire.error_response(
        head + question, wire.Rcode.SERVFAIL, query, ede=code, ede_text=wire.EDE_TEXT.get(code, "")
    )
