"""Running dnsperf and reading its statistics block.

Only the first "Statistics:" block is read; with TCP and DoT dnsperf 2.10 prints a
second "Average Latency" under "Connection Statistics" (connection set-up time) that
must not be mistaken for query latency. Max latency comes from the "(min .., max ..)"
that dnsperf 2.10 prints beside the average, so no histogram option is needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .procs import Registry

HOST = "127.0.0.1"


class DnsperfError(RuntimeError):
    """dnsperf failed or printed no statistics; the message carries its output's tail."""


@dataclass
class PerfResult:
    """The numbers of one dnsperf run (latencies in milliseconds)."""

    sent: int
    completed: int
    lost: int
    lost_pct: float
    qps: float
    avg_ms: float
    min_ms: float
    max_ms: float
    stddev_ms: float
    run_s: float
    rcodes: dict[str, int] = field(default_factory=dict)
    reconnections: int | None = None
    argv: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _num(pattern: str, text: str, cast: type = float) -> float | int:
    m = re.search(pattern, text, re.MULTILINE)
    if not m:
        raise DnsperfError(f"dnsperf output lacks {pattern!r}")
    return cast(m.group(1))  # type: ignore[no-any-return]


def parse(output: str) -> PerfResult:
    """Parse dnsperf 2.x output; raise ``DnsperfError`` if the statistics are missing."""
    start = output.find("Statistics:")
    if start < 0:
        tail = "\n".join(output.strip().splitlines()[-12:])
        raise DnsperfError(f"no statistics in dnsperf output:\n{tail}")
    conn = output.find("Connection Statistics:", start)
    stats = output[start : conn if conn >= 0 else len(output)]
    lat = re.search(
        r"Average Latency \(s\):\s+([\d.]+)\s+\(min\s+([\d.]+),\s+max\s+([\d.]+)\)", stats
    )
    if not lat:
        raise DnsperfError("dnsperf output lacks the Average Latency line")
    rcodes: dict[str, int] = {}
    m = re.search(r"Response codes:\s+(.*)", stats)
    if m:
        for code, count in re.findall(r"([A-Z]+)\s+(\d+)", m.group(1)):
            rcodes[code] = int(count)
    reconn = None
    if conn >= 0:
        r = re.search(r"Reconnections:\s+(\d+)", output[conn:])
        reconn = int(r.group(1)) if r else None
    return PerfResult(
        sent=int(_num(r"Queries sent:\s+(\d+)", stats, int)),
        completed=int(_num(r"Queries completed:\s+(\d+)", stats, int)),
        lost=int(_num(r"Queries lost:\s+(\d+)", stats, int)),
        lost_pct=float(_num(r"Queries lost:\s+\d+\s+\(([\d.]+)%\)", stats)),
        qps=float(_num(r"Queries per second:\s+([\d.]+)", stats)),
        avg_ms=float(lat.group(1)) * 1000.0,
        min_ms=float(lat.group(2)) * 1000.0,
        max_ms=float(lat.group(3)) * 1000.0,
        stddev_ms=float(_num(r"Latency StdDev \(s\):\s+([\d.]+)", stats)) * 1000.0,
        run_s=float(_num(r"Run time \(s\):\s+([\d.]+)", stats)),
        rcodes=rcodes,
        reconnections=reconn,
    )


def argv_for(
    mode: str,
    port: int,
    queries: Path,
    *,
    clients: int,
    duration: float,
    max_qps: int | None = None,
    query_timeout: float = 5.0,
    doh_uri: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The dnsperf command line; every cell of a workload differs only in mode and port.

    ``-m doh`` needs ``doh_uri`` (the name the certificate carries, the port, the path).
    dnsperf's default method, GET, is kept: dnsperf 2.10's POST runs at a tenth of the
    rate against the same unbound (about 40 ms per query per client), which would
    measure dnsperf, not the upstream.
    """
    argv = [
        "dnsperf",
        "-m",
        mode,
        "-s",
        HOST,
        "-p",
        str(port),
        "-d",
        str(queries),
        "-c",
        str(clients),
        "-l",
        f"{duration:g}",
        "-t",
        f"{query_timeout:g}",
    ]
    if max_qps:
        argv += ["-Q", str(int(max_qps))]
    if mode == "doh":
        if not doh_uri:
            raise ValueError("dnsperf -m doh needs the upstream's URI")
        argv += ["-O", f"doh-uri={doh_uri}"]
    return argv + list(extra)


def run(
    registry: Registry,
    name: str,
    argv: list[str],
    duration: float,
    query_timeout: float,
    tick: Callable[[], None] | None = None,
) -> PerfResult:
    """Run dnsperf under the registry (so an interrupt stops it) and parse the result."""
    rc, output = registry.run(name, argv, timeout=duration + query_timeout + 30.0, tick=tick)
    if rc != 0:
        tail = "\n".join(output.strip().splitlines()[-12:])
        raise DnsperfError(f"dnsperf exited {rc}:\n{tail}")
    result = parse(output)
    result.argv = argv
    return result
