"""What the validator has learnt about the chain of trust, by name, until it expires.

Each entry is one ``Link``: the validated DNSKEY RRset of a secure zone, a proven
insecure delegation, or a proven absence of a zone cut. Validations share them, so a
warm validator checks an answer against cached keys with no further fetches (RFC 4035
§4.5: validated keys may be kept for their TTL). Pure: the time is passed in.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

import dns.name
import dns.rdataset

from dns2dot.policy.dnssec.signatures import Ede

MAX_LINK_TTL = 86400  # seconds: the longest any link is kept, whatever its TTL says


class LinkKind(enum.Enum):
    SECURE = "secure zone"  # ``keys`` holds the zone's validated DNSKEY RRset
    INSECURE = "insecure"  # a proven unsigned delegation, or only unsupported algorithms
    NOT_A_CUT = "not a cut"  # proven to be inside its parent's zone


@dataclass(frozen=True, slots=True)
class Link:
    """One step of a chain of trust, at ``name``."""

    kind: LinkKind
    name: dns.name.Name
    expires: float
    keys: dns.rdataset.Rdataset | None = None
    reason: str = ""
    ede: Ede | None = None


class KeyCache:
    """Links by name, least recently used first out when ``max_entries`` is reached.

    ``epoch`` counts the links that left (expired, evicted, replaced, cleared): while it
    is unchanged, every link once handed out and not yet expired is still the one held.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._links: OrderedDict[dns.name.Name, Link] = OrderedDict()
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._links)

    def get(self, name: dns.name.Name, now: float) -> Link | None:
        link = self._links.get(name)
        if link is None:
            return None
        if now >= link.expires:
            del self._links[name]
            self.epoch += 1
            return None
        self._links.move_to_end(name)
        return link

    def put(self, link: Link, now: float) -> None:
        """Keep ``link`` (if it has not already expired), evicting the oldest entries."""
        if now >= link.expires or self.max_entries <= 0:
            return
        held = self._links.get(link.name)
        if held is not None and held is not link:
            self.epoch += 1
        self._links[link.name] = link
        self._links.move_to_end(link.name)
        while len(self._links) > self.max_entries:
            self._links.popitem(last=False)
            self.epoch += 1

    def clear(self) -> None:
        self._links.clear()
        self.epoch += 1
