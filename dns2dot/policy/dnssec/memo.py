"""Answers already validated, by what their signatures cover, until they run out.

A forwarder sees the same signed answers again and again (an answer cache that is off
or cold, many clients asking the same names), and a recursive upstream hands each one
back with its TTLs counted down. Checking the signatures again every time is the whole
cost of validation, so the ``Validator`` keeps the verdict on each answer here, keyed
on the answer's wire form with its message ID and record TTLs zeroed: the signed data
covers neither (RFC 4034 §3.1.8.1 signs the RRSIG's original TTL), and every other
byte must match.

An entry is only used while it still holds:

- ``now`` lies inside every signature's validity period (skew included), and before
  any TTL the proof used runs out: checked on every use, against the caller's ``now``;
- every link of the chain of trust it was proven with (the DNSKEY RRsets, proven
  delegations) is still the one in the key cache: a key that expired, was evicted or
  was replaced by another makes it miss.

Zeroing TTLs is only sound if no name in the answer is read through a TTL's bytes (a
compression pointer may point anywhere earlier in the message). ``ttl_blind`` checks
that once, when an entry is made, by reading every name of the answer as dnspython
does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from dns2dot.policy.dnssec.keycache import KeyCache, Link

if TYPE_CHECKING:
    from dns2dot.policy.dnssec.validator import Result

_OPT = 41
_ZERO_TTL = b"\0\0\0\0"


def ttl_offsets(wire: bytes) -> tuple[int, ...] | None:
    """Where the TTL of each record (not OPT's, which holds flags and the extended
    rcode) starts in ``wire``; None if the records cannot be walked to the end."""
    size = len(wire)
    if size < 12:
        return None
    count = ((wire[6] << 8) | wire[7]) + ((wire[8] << 8) | wire[9]) + ((wire[10] << 8) | wire[11])
    offsets = []
    pos = 12
    try:
        for _ in range((wire[4] << 8) | wire[5]):
            length = wire[pos]
            while 0 < length < 0xC0:
                pos += length + 1
                length = wire[pos]
            pos += 6 if length else 5  # past the pointer or root, TYPE and CLASS
        for _ in range(count):
            length = wire[pos]
            while 0 < length < 0xC0:
                pos += length + 1
                length = wire[pos]
            pos += 2 if length else 1
            if wire[pos + 1] != _OPT or wire[pos]:
                offsets.append(pos + 4)
            pos += 10 + ((wire[pos + 8] << 8) | wire[pos + 9])
    except IndexError:
        return None
    return tuple(offsets) if pos <= size else None


def _filled(wire: bytes, offsets: tuple[int, ...], fill: bytes) -> bytearray:
    out = bytearray(wire)
    for at in offsets:
        out[at : at + 4] = fill
    return out


def zeroed(wire: bytes, offsets: tuple[int, ...]) -> bytes:
    """``wire`` with its ID and the four bytes at each of ``offsets`` zeroed."""
    out = _filled(wire, offsets, _ZERO_TTL)
    out[0] = out[1] = 0
    return bytes(out)


def memo_key(wire: bytes) -> bytes | None:
    """``wire`` with its ID and its records' TTLs zeroed; None if it cannot be walked."""
    offsets = ttl_offsets(wire)
    return None if offsets is None else zeroed(wire, offsets)


# Types whose data dnspython reads without names (or does not know, and so keeps as
# opaque bytes), and where the names sit in the others this memo accepts: the offset of
# the first name in the data, and whether a second one follows it. An answer with any
# other type is validated every time.
_NO_NAMES = frozenset(
    {1, 13, 16, 28, 29, 37, 41, 43, 44, 48, 49, 50, 51, 52, 53, 59, 60, 61, 62, 63, 99, 256, 257}
)
_NAMES = {
    2: (0, False),  # NS
    5: (0, False),  # CNAME
    6: (0, True),  # SOA: MNAME, RNAME
    12: (0, False),  # PTR
    14: (0, True),  # MINFO
    15: (2, False),  # MX
    17: (0, True),  # RP
    18: (2, False),  # AFSDB
    21: (2, False),  # RT
    26: (2, True),  # PX
    33: (6, False),  # SRV
    36: (2, False),  # KX
    39: (0, False),  # DNAME
    46: (18, False),  # RRSIG: the signer
    47: (0, False),  # NSEC: the next owner name
    64: (2, False),  # SVCB
    65: (2, False),  # HTTPS
}
_KNOWN: dict[int, bool] = {}  # type -> dnspython reads names in its data


def _opaque(rdtype: int) -> bool:
    """dnspython keeps data of ``rdtype`` as bytes: a type it does not implement."""
    known = _KNOWN.get(rdtype)
    if known is None:
        rdtype_ = dns.rdatatype.RdataType.make(rdtype)
        cls = dns.rdata.get_rdata_class(dns.rdataclass.IN, rdtype_)  # type: ignore[no-untyped-call]
        known = _KNOWN[rdtype] = cls is not dns.rdata.GenericRdata
    return not known


def _name_end(wire: bytes, pos: int, ttl: bytearray) -> int | None:
    """Read the name at ``pos`` as dnspython does (pointers only to before where the
    name, or the last pointer, led): where it ends in place, or None if it is not a
    name or any byte it reads lies in a TTL (``ttl`` marks them)."""
    biggest = pos
    end = -1
    while True:
        count = wire[pos]
        if count == 0:
            if ttl[pos]:
                return None
            return pos + 1 if end < 0 else end
        if count < 64:
            if any(ttl[pos : pos + count + 1]):
                return None
            pos += count + 1
        elif count >= 192:
            if ttl[pos] or ttl[pos + 1]:
                return None
            target = ((count & 0x3F) << 8) | wire[pos + 1]
            if end < 0:
                end = pos + 2
            if target >= biggest:
                return None
            biggest = pos = target
        else:
            return None


def ttl_blind(wire: bytes) -> bool:
    """Whether no name in ``wire`` reads a byte of any TTL, so every answer that differs
    from ``wire`` only in its TTLs (and ID) has the very same records.

    A compression pointer may point anywhere before the name it is in, a TTL's bytes
    included. Every name dnspython would read is read here (the question's, every
    owner's, and those in the data of the types in ``_NAMES``); an answer with a type
    whose names are not mapped here is never kept.
    """
    offsets = ttl_offsets(wire)
    if offsets is None:
        return False
    ttl = bytearray(len(wire))
    for at in offsets:
        ttl[at : at + 4] = b"\x01\x01\x01\x01"
    count = ((wire[6] << 8) | wire[7]) + ((wire[8] << 8) | wire[9]) + ((wire[10] << 8) | wire[11])
    pos = 12
    try:
        for _ in range((wire[4] << 8) | wire[5]):
            end = _name_end(wire, pos, ttl)
            if end is None:
                return False
            pos = end + 4
        for _ in range(count):
            end = _name_end(wire, pos, ttl)
            if end is None:
                return False
            rdtype = (wire[end] << 8) | wire[end + 1]
            start = end + 10
            pos = start + ((wire[end + 8] << 8) | wire[end + 9])
            if rdtype in _NO_NAMES or _opaque(rdtype):
                continue
            layout = _NAMES.get(rdtype)
            if layout is None:
                return False
            first, second = layout
            name_end = _name_end(wire, start + first, ttl)
            if name_end is None or name_end > pos:
                return False
            if second:
                if name_end >= pos:
                    return False
                second_end = _name_end(wire, name_end, ttl)
                if second_end is None or second_end > pos:
                    return False
    except IndexError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Entry:
    """A verdict and what it rests on: usable from ``begins`` until ``ends`` while
    every link in ``links`` is still the key cache's (certainly so while the key
    cache's ``epoch`` is still ``epoch``: ``ends`` is before any of them expires).
    ``offsets`` are the answer's TTLs, zeroed in its key; ``keys`` and ``anchors`` the
    key cache and trust anchors it was proven with: a validator given others misses."""

    result: Result
    begins: float
    ends: float
    links: tuple[Link, ...]
    epoch: int
    offsets: tuple[int, ...]
    keys: KeyCache
    anchors: object


# The question's labels exactly as given (a name in other letter cases misses), its
# type, and the answer with its ID and TTLs zeroed.
MemoKey = tuple[tuple[bytes, ...], int, bytes]
# Where an answer's TTLs were last found, by question and answer length.
Shape = tuple[tuple[bytes, ...], int, int]


@dataclass(frozen=True, slots=True)
class Slot:
    """Where a verdict on an answer not yet kept will go: ``memo.put(slot, ...)``."""

    key: MemoKey
    offsets: tuple[int, ...]
    shape: Shape
    wire: bytes


class AnswerMemo:
    """Entries by ``MemoKey``, least recently used first out.

    ``find`` first tries the TTL offsets the last answer of the same question and
    length had, which spares walking the records: a key made with another answer's
    offsets only matches an entry made with those same offsets, and then the two
    answers differ in nothing but those bytes and their IDs, so the records sit at the
    same places in both and the offsets are this answer's too.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[MemoKey, Entry] = OrderedDict()
        self._shapes: dict[Shape, tuple[int, ...]] = {}
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def find(
        self,
        qname: dns.name.Name,
        qtype: int,
        wire: bytes,
        now: float,
        keys: KeyCache,
        anchors: object,
    ) -> Result | Slot | None:
        """The verdict kept for ``wire`` if it still holds at ``now`` with ``keys`` and
        ``anchors``; else where to keep the verdict once it is known, or None if
        ``wire`` cannot be walked."""
        labels = qname.labels
        shape = (labels, qtype, len(wire))
        offsets = self._shapes.get(shape)
        if offsets is not None:
            key = (labels, qtype, zeroed(wire, offsets))
            known = self._get(key, offsets, now, keys, anchors)
            if known is not None:
                return known
        walked = ttl_offsets(wire)
        if walked is None:
            return None
        if walked != offsets:
            key = (labels, qtype, zeroed(wire, walked))
            known = self._get(key, walked, now, keys, anchors)
            if known is not None:
                self._shapes[shape] = walked
                return known
        return Slot(key, walked, shape, wire)

    def _get(
        self, key: MemoKey, offsets: tuple[int, ...], now: float, keys: KeyCache, anchors: object
    ) -> Result | None:
        entry = self._entries.get(key)
        if entry is None or entry.offsets != offsets:
            return None
        if entry.keys is not keys or entry.anchors is not anchors:
            del self._entries[key]
            return None
        if entry.begins <= now < entry.ends and (
            entry.epoch == keys.epoch
            or all(keys.get(link.name, now) is link for link in entry.links)
        ):
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.result
        del self._entries[key]
        return None

    def put(
        self,
        slot: Slot,
        result: Result,
        begins: float,
        ends: float,
        links: Sequence[Link],
        keys: KeyCache,
        anchors: object,
    ) -> None:
        """Keep ``result``, proven from ``anchors`` with ``links``, which ``keys`` holds
        now."""
        if self.max_entries <= 0 or ends <= begins:
            return
        entry = Entry(result, begins, ends, tuple(links), keys.epoch, slot.offsets, keys, anchors)
        self._entries[slot.key] = entry
        self._entries.move_to_end(slot.key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        if len(self._shapes) >= self.max_entries:
            self._shapes.clear()
        self._shapes[slot.shape] = slot.offsets

    def clear(self) -> None:
        self._entries.clear()
        self._shapes.clear()
