"""Running dnsperf against dns2dot and reading its statistics.

Why: dnsperf is the load generator operators and the bench use; tests use it for
bursts and sustained load and compare its counts with dns2dot's own metrics. Every
run is bounded by ``-l`` (and ``-n``) and by a subprocess timeout.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .net import LOOPBACK
from .proc import require_tool


@dataclass
class PerfResult:
    """The first statistics block of one dnsperf run."""

    sent: int
    completed: int
    lost: int
    rcodes: dict[str, int]
    raw: str


def parse_dnsperf(out: str) -> PerfResult:
    """Parse dnsperf 2.x output (the first ``Statistics:`` block)."""
    start = out.find("Statistics:")
    assert start >= 0, f"no statistics in dnsperf output:\n{out[-2000:]}"
    stats = out[start:]

    def num(label: str) -> int:
        m = re.search(rf"{label}:\s+(\d+)", stats)
        assert m, f"no '{label}' in dnsperf output:\n{out[-2000:]}"
        return int(m.group(1))

    rcodes: dict[str, int] = {}
    m = re.search(r"Response codes:\s+(.*)", stats)
    if m:
        rcodes = {k: int(v) for k, v in re.findall(r"([A-Z]+) (\d+) \(", m.group(1))}
    return PerfResult(
        sent=num("Queries sent"),
        completed=num("Queries completed"),
        lost=num("Queries lost"),
        rcodes=rcodes,
        raw=out,
    )


def dnsperf_argv(
    port: int,
    datafile: Path,
    *,
    tcp: bool = False,
    runs: int | None = 1,
    seconds: float = 20,
    clients: int = 4,
    max_qps: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The dnsperf command line (``runs=None``: no ``-n``, ``seconds`` alone bounds it)."""
    argv = [
        require_tool("dnsperf"),
        "-s",
        LOOPBACK,
        "-p",
        str(port),
        "-d",
        str(datafile),
        "-l",
        str(seconds),
        "-c",
        str(clients),
        "-t",
        "5",
    ]
    if runs is not None:
        argv += ["-n", str(runs)]
    if tcp:
        argv += ["-m", "tcp"]
    if max_qps is not None:
        argv += ["-Q", str(max_qps)]
    return argv + list(extra)


def run_dnsperf(port: int, datafile: Path, **kw: object) -> PerfResult:
    """Run dnsperf to completion (see :func:`dnsperf_argv`) and parse what it printed."""
    argv = dnsperf_argv(port, datafile, **kw)  # type: ignore[arg-type]
    seconds = float(kw.get("seconds", 20))  # type: ignore[arg-type]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"dnsperf exited {proc.returncode}:\n{out[-2000:]}"
    return parse_dnsperf(out)
