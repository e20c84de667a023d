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
that once, when an entry is made: the answer parses to the same records with its TTL
bytes all 0x00 and all 0x7F, which no name that reads them could.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.exception
import dns.message
import dns.name

from dns2dot.policy.dnssec.keycache import KeyCache, Link

if TYPE_CHECKING:
    from dns2dot.policy.dnssec.validator import Result

_OPT = 41


def _fill_ttls(wire: bytes, fill: bytes) -> bytearray | None:
    """A copy of ``wire`` with the TTL of each record (not OPT's, which holds flags and
    the extended rcode) set to ``fill``; None if the records cannot be walked."""
    size = len(wire)
    if size < 12:
        return None
    count = ((wire[6] << 8) | wire[7]) + ((wire[8] << 8) | wire[9]) + ((wire[10] << 8) | wire[11])
    out = bytearray(wire)
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
                out[pos + 4 : pos + 8] = fill
            pos += 10 + ((wire[pos + 8] << 8) | wire[pos + 9])
    except IndexError:
        return None
    return out if pos <= size else None


def memo_key(wire: bytes) -> bytes | None:
    """``wire`` with its ID and its records' TTLs zeroed; None if it cannot be walked."""
    key = _fill_ttls(wire, b"\0\0\0\0")
    if key is None:
        return None
    key[0] = key[1] = 0
    return bytes(key)


def ttl_blind(wire: bytes, parsed: dns.message.Message) -> bool:
    """Whether ``parsed`` (``wire`` parsed) reads no TTL byte as part of a name: the
    same records come out with the TTLs all 0x00 and all 0x7F, so every answer that
    differs from ``wire`` only in its TTLs parses to these records too."""
    for fill in (b"\0\0\0\0", b"\x7f\x7f\x7f\x7f"):
        variant = _fill_ttls(wire, fill)
        if variant is None:
            return False
        try:
            if dns.message.from_wire(bytes(variant)) != parsed:
                return False
        except (dns.exception.DNSException, ValueError, TypeError, IndexError, UnicodeError):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Entry:
    """A verdict and what it rests on: usable from ``begins`` until
    ``ends`` while every link in ``links`` is still the key cache's (certainly so
    while the key cache's ``epoch`` is still ``epoch``: ``ends`` is before any of
    them expires)."""

    result: Result
    begins: float
    ends: float
    links: tuple[Link, ...]
    epoch: int


# The question's labels exactly as given (a name in other letter cases misses), its
# type, and ``memo_key`` of the answer.
MemoKey = tuple[tuple[bytes, ...], int, bytes]


class AnswerMemo:
    """Entries by ``MemoKey``, least recently used first out."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[MemoKey, Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: MemoKey, now: float, keys: KeyCache) -> Result | None:
        """The verdict kept for ``key`` if it still holds at ``now``, else None."""
        entry = self._entries.get(key)
        if entry is not None:
            if entry.begins <= now < entry.ends and (
                entry.epoch == keys.epoch
                or all(keys.get(link.name, now) is link for link in entry.links)
            ):
                self._entries.move_to_end(key)
                self.hits += 1
                return entry.result
            del self._entries[key]
        self.misses += 1
        return None

    def put(
        self,
        key: MemoKey,
        result: Result,
        begins: float,
        ends: float,
        links: Sequence[Link],
        keys: KeyCache,
    ) -> None:
        """Keep ``result``, proven with ``links``, which ``keys`` holds now."""
        if self.max_entries <= 0 or ends <= begins:
            return
        self._entries[key] = Entry(result, begins, ends, tuple(links), keys.epoch)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
