"""Is a server answering? dig/kdig probes (kdig for DoT and DoH) before measuring, timed
single queries after.

A peer that does not answer a probe is a failed cell, never a silently skipped one.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


class ProbeError(RuntimeError):
    """The server did not give a good answer in time; the message holds the last try."""


@dataclass(frozen=True)
class Answer:
    """One timed query: its latency and rcode (or the error that replaced it)."""

    ms: float | None
    rcode: str | None
    error: str | None = None


def _dig_argv(
    transport: str, port: int, name: str, ca: Path | None, tls_name: str | None
) -> list[str]:
    if transport in ("dot", "doh"):
        if ca is None or tls_name is None:
            raise ValueError(f"a {transport} probe needs the CA and the TLS name")
        return [
            "kdig",
            "+tls" if transport == "dot" else "+https=/dns-query",
            f"+tls-ca={ca}",
            f"+tls-hostname={tls_name}",
            "+retry=0",
            "+time=2",
            f"@{HOST}",
            "-p",
            str(port),
            name,
            "A",
        ]
    argv = ["dig", "+tries=1", "+time=2", f"@{HOST}", "-p", str(port), name, "A"]
    if transport == "tcp":
        argv.insert(1, "+tcp")
    return argv


def wait_answering(
    transport: str,
    port: int,
    name: str,
    timeout: float,
    *,
    ca: Path | None = None,
    tls_name: str | None = None,
    alive: Callable[[], bool] | None = None,
) -> float:
    """Probe until a NOERROR answer with records comes back; return seconds waited.

    ``alive`` is an optional callable saying whether the server process still runs, so
    a crashed server fails the probe at once instead of at the deadline.
    """
    argv = _dig_argv(transport, port, name, ca, tls_name)
    start = time.monotonic()
    deadline = start + timeout
    last = "no attempt"
    while True:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
            text = out.stdout + out.stderr
            # the header line's status (kdig +https prints an HTTP "(status: 200)" first)
            status = re.search(r"->>HEADER<<- opcode: \w+[,;] status: (\w+)", text)
            answers = re.search(r"ANSWER: (\d+)", text)
            if status and status.group(1) == "NOERROR" and answers and int(answers.group(1)) > 0:
                return time.monotonic() - start
            if status:
                last = f"status {status.group(1)}, {answers.group(1) if answers else '?'} answers"
            else:
                last = (text.strip().splitlines() or ["no output"])[-1]
        except subprocess.TimeoutExpired:
            last = "probe timed out"
        if alive is not None and not alive():
            raise ProbeError(f"process exited; last probe: {last}")
        if time.monotonic() >= deadline:
            raise ProbeError(
                f"no good {transport} answer on {HOST}:{port} for {name} "
                f"in {timeout:.0f}s; last: {last}"
            )
        time.sleep(0.2)


def timed_query(transport: str, port: int, name: str, timeout: float = 10.0) -> Answer:
    """Send one query with dnspython and time it (the cold-start workload's instrument)."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    query = dns.message.make_query(name, "A")
    t0 = time.perf_counter()
    try:
        if transport == "udp":
            resp = dns.query.udp(query, HOST, port=port, timeout=timeout)
        else:
            resp = dns.query.tcp(query, HOST, port=port, timeout=timeout)
    except (dns.exception.DNSException, OSError) as exc:
        return Answer(ms=None, rcode=None, error=f"{type(exc).__name__}: {exc}")
    ms = (time.perf_counter() - t0) * 1000.0
    return Answer(ms=ms, rcode=dns.rcode.to_text(resp.rcode()))
