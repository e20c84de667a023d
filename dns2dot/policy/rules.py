"""Local rules, applied before the cache: hosts entries, blocklists, conditional forwarding.

Names are kept in lower-case wire form, so matching a query is a handful of set or
dict lookups on slices of its wire-form name, one per label: constant time per label,
however large the lists. Matching is pure; loading reads files.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from dns2dot.protocol import wire
from dns2dot.protocol.errors import ConfigError

LOCAL_TTL = 60  # seconds, for answers made from hosts files and blocklists
_TYPE_PTR = 12
_ANY = 255


def name_to_wire(name: str) -> bytes:
    """``example.com`` -> lower-case wire form; raises ValueError for a bad name.

    Only a single trailing dot is allowed; an empty label (``a..b``, ``.a``) is an error,
    so a typo in a list is reported rather than quietly meaning another name.
    """
    text = name.strip().lower()
    if text in (".", ""):
        return b"\x00"
    labels = (text[:-1] if text.endswith(".") else text).split(".")
    if "" in labels:
        raise ValueError(f"empty label in {name!r}")
    encoded = b""
    for label in labels:
        raw = label.encode("idna") if not label.isascii() else label.encode("ascii")
        if not 0 < len(raw) <= wire.MAX_LABEL_LEN:
            raise ValueError(f"bad label in {name!r}")
        encoded += bytes((len(raw),)) + raw
    encoded += b"\x00"
    if len(encoded) > wire.MAX_NAME_LEN:
        raise ValueError(f"name too long: {name!r}")
    return encoded


def suffixes(qname: bytes) -> Iterator[bytes]:
    """The name and each of its parents, in wire form, longest first (root excluded)."""
    pos = 0
    while pos < len(qname) and qname[pos]:
        yield qname[pos:]
        pos += qname[pos] + 1


def reverse_name(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return name_to_wire(address.reverse_pointer)


@dataclass
class RuleSet:
    """Everything local: hosts records, blocked names, forwarded zones."""

    hosts: dict[bytes, list[tuple[int, bytes]]] = field(default_factory=dict)
    blocked: set[bytes] = field(default_factory=set)
    block_address: tuple[bytes, bytes] | None = None  # (A rdata or b"", AAAA rdata or b"")
    forward: dict[bytes, int] = field(default_factory=dict)  # zone -> index in zones
    zones: list[str] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=lambda: {"hosts": 0, "block": 0, "forward": 0})

    @property
    def empty(self) -> bool:
        return not (self.hosts or self.blocked or self.forward)

    def match(self, query: wire.Query, msg: bytes) -> bytes | int | None:
        """What a rule says about this query: a local answer (bytes), the index of the
        forwarded zone whose upstreams take it (int), or None: no rule applies.
        """
        qname = query.qname.lower()
        if self.hosts:
            records = self.hosts.get(qname)
            if records is not None and query.qclass == 1:
                self.hits["hosts"] += 1
                wanted = [r for r in records if r[0] == query.qtype or query.qtype == _ANY]
                return local_answer(msg, query, wanted)
        if self.blocked:
            for suffix in suffixes(qname):
                if suffix in self.blocked:
                    self.hits["block"] += 1
                    return self._blocked_answer(msg, query)
        if self.forward:
            for suffix in suffixes(qname):
                index = self.forward.get(suffix)
                if index is not None:
                    self.hits["forward"] += 1
                    return index
        return None

    def _blocked_answer(self, msg: bytes, query: wire.Query) -> bytes:
        if self.block_address is None:
            return wire.error_response(msg, wire.Rcode.NXDOMAIN, query)
        a, aaaa = self.block_address
        records = []
        if a and query.qtype in (wire.RdataType.A, _ANY):
            records.append((int(wire.RdataType.A), a))
        if aaaa and query.qtype in (wire.RdataType.AAAA, _ANY):
            records.append((int(wire.RdataType.AAAA), aaaa))
        return local_answer(msg, query, records)


def local_answer(msg: bytes, query: wire.Query, records: list[tuple[int, bytes]]) -> bytes:
    """An authoritative answer made here: the question, then ``records`` owned by it.

    No records means NODATA (NOERROR, empty answer section), as for a name that
    exists with other types.
    """
    flags = wire.QR | wire.AA | wire.RA | (query.flags & (wire.RD | wire.CD))
    header = wire.HEADER.pack(query.id, flags, 1, len(records), 0, 0)
    body = b"".join(
        b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, LOCAL_TTL, len(rdata)) + rdata
        for rtype, rdata in records
    )
    answer = header + msg[wire.HEADER_LEN : query.question_end] + body
    if query.edns is not None:
        arcount = struct.pack("!H", 1)
        answer = answer[:10] + arcount + answer[12:] + wire.opt_record(do=query.edns.do)
    return answer


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, content) of each line that is not blank or a comment."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, raw in enumerate(handle, 1):
                line = raw.split("#", 1)[0].strip()
                if line:
                    yield number, line
    except OSError as exc:
        raise ConfigError(f"rules: {path}: {exc.strerror}") from None


def load_hosts(paths: Iterable[str], into: dict[bytes, list[tuple[int, bytes]]]) -> None:
    """hosts(5) files: ``ADDRESS NAME [ALIAS...]``; adds A/AAAA and the matching PTR."""
    for path in paths:
        for number, line in _lines(path):
            fields = line.split()
            if len(fields) < 2:
                raise ConfigError(f"rules: {path}:{number}: expected 'ADDRESS NAME...'")
            try:
                address = ipaddress.ip_address(fields[0].partition("%")[0])
                names = [name_to_wire(name) for name in fields[1:]]
            except ValueError as exc:
                raise ConfigError(f"rules: {path}:{number}: {exc}") from None
            rtype = int(wire.RdataType.A if address.version == 4 else wire.RdataType.AAAA)
            for name in names:
                entry = (rtype, address.packed)
                if entry not in into.setdefault(name, []):
                    into[name].append(entry)
            ptr = reverse_name(address)
            if not into.get(ptr):
                into[ptr] = [(_TYPE_PTR, names[0])]


def load_blocklist(paths: Iterable[str], into: set[bytes]) -> None:
    """One domain a line, or hosts format (``0.0.0.0 ads.example``); subdomains included."""
    for path in paths:
        for number, line in _lines(path):
            fields = line.split()
            names = fields[1:] if len(fields) > 1 else fields  # hosts format: all names
            for name in names:
                if name in ("localhost", "localhost.localdomain", "local", "broadcasthost"):
                    continue
                try:
                    into.add(name_to_wire(name))
                except ValueError as exc:
                    raise ConfigError(f"rules: {path}:{number}: {exc}") from None


def parse_block_address(texts: Iterable[str]) -> tuple[bytes, bytes] | None:
    """``nxdomain`` (None) or addresses to answer blocked names with (A and/or AAAA)."""
    a = aaaa = b""
    for text in texts:
        if text.lower() == "nxdomain":
            return None
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise ConfigError(f"--block-answer: '{text}' is neither nxdomain nor an IP") from None
        if address.version == 4:
            a = address.packed
        else:
            aaaa = address.packed
    return (a, aaaa) if a or aaaa else None


def build_rules(
    *,
    hosts: Iterable[str] = (),
    blocklists: Iterable[str] = (),
    block_answer: Iterable[str] = (),
    forward_zones: Iterable[str] = (),
) -> RuleSet:
    """Load the files; ``forward_zones`` are numbered in order (see :meth:`RuleSet.match`)."""
    rules = RuleSet()
    load_hosts(hosts, rules.hosts)
    load_blocklist(blocklists, rules.blocked)
    rules.block_address = parse_block_address(block_answer)
    for zone in forward_zones:
        try:
            key = name_to_wire(zone)
        except ValueError as exc:
            raise ConfigError(f"rules: forward: {exc}") from None
        rules.forward[key] = len(rules.zones)
        rules.zones.append(zone)
    return rules
