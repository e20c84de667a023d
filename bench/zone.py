"""The synthetic zone the upstream serves and the dnsperf query file over it.

Sizes are mixed on purpose (one to four A records, AAAA on some names, TXT from a few
bytes to over 512 so plain UDP answers sometimes truncate), and the query mix has hits,
NODATA and about 10% NXDOMAIN, so no proxy is measured on one easy answer shape only.
A fixed seed keeps the files identical from run to run.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from pathlib import Path

ZONE = "bench.test."
TTL = 300
# The zone's SOA: unbound puts it in the authority section of NXDOMAIN and NODATA
# answers, so negative answers are cacheable (RFC 2308 §5: for min(TTL, MINIMUM)) by
# every cache in front of the upstream, as they would be for any real zone.
SOA = f"{ZONE} {TTL} IN SOA ns.{ZONE} hostmaster.{ZONE} 1 3600 600 86400 {TTL}"
_ALNUM = string.ascii_letters + string.digits


@dataclass
class Name:
    """One owner name and the record data it carries."""

    label: str
    a: list[str]
    aaaa: list[str] = field(default_factory=list)
    txt: list[str] = field(default_factory=list)  # character-strings, each <= 255 bytes

    @property
    def fqdn(self) -> str:
        return f"{self.label}.{ZONE}"


@dataclass(frozen=True)
class ZoneFiles:
    """What ``write_zone`` produced, with the counts the report quotes."""

    local_data: Path
    queries: Path
    names: int
    records: int
    queries_total: int
    mix: dict[str, int]
    probe_name: str
    unique_questions: int = 0  # distinct lines of the query file: what a cache must hold


def _txt_strings(rng: random.Random) -> list[str]:
    """TXT payload: mostly small, some medium, a few that do not fit 512 bytes."""
    roll = rng.random()
    if roll < 0.60:
        size = rng.randint(8, 60)
    elif roll < 0.90:
        size = rng.randint(100, 250)
    elif roll < 0.98:
        size = rng.randint(300, 450)
    else:
        size = rng.randint(600, 1200)
    text = "".join(rng.choices(_ALNUM, k=size))
    return [text[i : i + 255] for i in range(0, len(text), 255)]


def make_names(count: int, seed: int = 853) -> list[Name]:
    """``count`` names h1..hN: all with A, 60% with AAAA, 40% with TXT."""
    rng = random.Random(seed)
    names: list[Name] = []
    for i in range(1, count + 1):
        n_a = 1 if rng.random() < 0.9 else rng.randint(2, 4)
        a = [f"10.{(i >> 8) & 255}.{i & 255}.{k + 1}" for k in range(n_a)]
        name = Name(label=f"h{i}", a=a)
        if rng.random() < 0.6:
            name.aaaa = [f"fd00::{i >> 16:x}:{i & 0xFFFF:x}"]
        if rng.random() < 0.4:
            name.txt = _txt_strings(rng)
        names.append(name)
    return names


def local_data_lines(names: list[Name]) -> list[str]:
    """unbound ``local-data`` lines, the SOA first; the zone itself must be declared
    static elsewhere."""
    lines: list[str] = [f'    local-data: "{SOA}"']
    for n in names:
        for a in n.a:
            lines.append(f'    local-data: "{n.fqdn} {TTL} IN A {a}"')
        for a6 in n.aaaa:
            lines.append(f'    local-data: "{n.fqdn} {TTL} IN AAAA {a6}"')
        if n.txt:
            quoted = " ".join(f'"{s}"' for s in n.txt)
            lines.append(f"    local-data: '{n.fqdn} {TTL} IN TXT {quoted}'")
    return lines


def make_queries(
    names: list[Name], total: int, seed: int = 7858
) -> tuple[list[str], dict[str, int]]:
    """dnsperf lines ``NAME TYPE``: ~75% hits, ~15% NODATA, ~10% NXDOMAIN, shuffled."""
    rng = random.Random(seed)
    with_aaaa = [n for n in names if n.aaaa]
    without_aaaa = [n for n in names if not n.aaaa]
    with_txt = [n for n in names if n.txt]
    without_txt = [n for n in names if not n.txt]
    mix = {"hit": 0, "nodata": 0, "nxdomain": 0}
    out: list[str] = []
    for _ in range(total):
        roll = rng.random()
        if roll < 0.10:
            out.append(f"nx{rng.randrange(10**9)}.{ZONE} A")
            mix["nxdomain"] += 1
        elif roll < 0.25:
            pick = rng.random()
            if pick < 0.4 and without_aaaa:
                out.append(f"{rng.choice(without_aaaa).fqdn} AAAA")
            elif pick < 0.8 and without_txt:
                out.append(f"{rng.choice(without_txt).fqdn} TXT")
            else:
                out.append(f"{rng.choice(names).fqdn} MX")
            mix["nodata"] += 1
        else:
            pick = rng.random()
            if pick < 0.6:
                out.append(f"{rng.choice(names).fqdn} A")
            elif pick < 0.8 and with_aaaa:
                out.append(f"{rng.choice(with_aaaa).fqdn} AAAA")
            elif with_txt:
                out.append(f"{rng.choice(with_txt).fqdn} TXT")
            else:
                out.append(f"{rng.choice(names).fqdn} A")
            mix["hit"] += 1
    return out, mix


def write_zone(
    directory: Path, names_count: int = 20_000, queries_count: int = 200_000
) -> ZoneFiles:
    """Write ``zone.conf`` (unbound include) and ``queries.txt`` (dnsperf input)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = make_names(names_count)
    lines = local_data_lines(names)
    local_data = directory / "zone.conf"
    local_data.write_text(
        f'server:\n    local-zone: "{ZONE}" static\n' + "\n".join(lines) + "\n",
        encoding="ascii",
    )
    queries, mix = make_queries(names, queries_count)
    qfile = directory / "queries.txt"
    qfile.write_text("\n".join(queries) + "\n", encoding="ascii")
    return ZoneFiles(
        local_data=local_data,
        queries=qfile,
        names=len(names),
        records=len(lines),
        queries_total=len(queries),
        mix=mix,
        probe_name=names[0].fqdn,
        unique_questions=len(set(queries)),
    )
