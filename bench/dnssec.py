"""The ``dnssec`` workload: validating forwarders on a signed zone, dns2dot against
unbound, answer caches off and on, in the same run.

A zone signed here with dnspython (``tests/support/signed_zone.py``: ECDSA P-256, NSEC,
signatures valid from an hour ago for 30 days) is served by unbound from ``auth-zone``
over DoT; it is its own trust point (its DS is the trust anchor file both validators
load). In front of it, each answering UDP from dnsperf:

- ``unbound-val``: unbound as a validating forwarder (``module-config: "validator
  iterator"``, ``trust-anchor-file``, ``forward-tls-upstream``) with its answer caches
  off: ``msg-cache-size: 0``, ``rrset-cache-size: 0`` (unbound then keeps the smallest
  caches it can, a few entries), ``neg-cache-size: 0`` and ``aggressive-nsec: no``.
  Its key cache stays on, as dns2dot's does: the chain of trust is not an answer.
  This unbound checks every answer's signatures again;
- ``unbound-val-rrset``: the same with its RRset cache on, where unbound keeps
  validated RRsets with their verdict: the like-for-like peer of dns2dot's memo of
  validated answers (dns2dot with ``--cache-size 0`` still has that memo);
- ``dns2dot-val``: ``--dnssec validate --trust-anchor FILE --cache-size 0``;
- ``dns2dot-plain``: ``--dnssec off`` (when the option exists) ``--cache-size 0``: what
  validation costs dns2dot;
- unbound, dns2dot validating and not with their caches on (``-cache``): unbound with the throughput
  forwarder's cache sizes, dns2dot with ``--cache-size 100000``.

The query mix asks several names (A, AAAA, TXT), NXDOMAIN and NODATA. Rounds go over
every server in turn (``--repeat``), each cell is the median round. The ratios go in the
report: dns2dot validating / unbound validating (caches off, caches on; goal >= 1.0x),
and dns2dot validating / dns2dot not validating with the cache on (the rule for the
default: validate by default if that costs at most 20%).

The dns2dot validating cells need the ``--dnssec`` options; a dns2dot without them
fails those cells, saying so, and runs the rest.
"""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

from . import peers, workloads
from .pki import Pki
from .procs import Registry, free_port
from .zone import ZoneFiles

ZONE = "dnssec.test."
NAMES = 40
NX_NAMES = 100
QUERY_LINES = 5000
SEED = 4035
DNS2DOT_CACHE = "100000"
# (key, label, validating, cache: off / rrset / on), in the order each round runs them
ORDER = (
    ("unbound-val", "unbound validating (caches off)", True, "off"),
    ("unbound-val-rrset", "unbound validating (rrset cache on)", True, "rrset"),
    ("dns2dot-val", "dns2dot validating (cache off)", True, "off"),
    ("dns2dot-plain", "dns2dot not validating (cache off)", False, "off"),
    ("unbound-val-cache", "unbound validating (caches on)", True, "on"),
    ("dns2dot-val-cache", "dns2dot validating (cache on)", True, "on"),
    ("dns2dot-plain-cache", "dns2dot not validating (cache on)", False, "on"),
)
# (name, numerator key, denominator key, goal): the report's ratios of q/s
RATIOS = (
    ("dns2dot / unbound, validating, caches off", "dns2dot-val", "unbound-val", 1.0),
    ("dns2dot / unbound, validating, rrset cache on", "dns2dot-val", "unbound-val-rrset", 0.0),
    ("dns2dot / unbound, validating, caches on", "dns2dot-val-cache", "unbound-val-cache", 1.0),
    (
        "dns2dot validating / not, cache on (default rule)",
        "dns2dot-val-cache",
        "dns2dot-plain-cache",
        0.8,
    ),
    ("dns2dot validating / not, cache off", "dns2dot-val", "dns2dot-plain", 0.0),
)


def signed_zone_support() -> ModuleType:
    """``tests/support/signed_zone.py``, the signer the tests use (imported, not copied)."""
    for path in (str(peers.REPO), str(peers.REPO / "tests")):
        if path not in sys.path:
            sys.path.insert(0, path)
    from support import signed_zone

    return signed_zone


@dataclasses.dataclass(frozen=True)
class SignedFiles:
    zone_file: Path
    anchor_file: Path
    zone: ZoneFiles  # the query file and probe name, as the workloads take them


def write_signed_zone(work: Path, *, now: float | None = None) -> SignedFiles:
    """Sign the zone (valid from an hour before ``now`` for 30 days), write it, its
    trust anchor and the query file."""
    sz = signed_zone_support()
    from dns.dnssectypes import Algorithm

    now = time.time() if now is None else now
    rng = random.Random(SEED)
    zone = sz.Zone(
        ZONE,
        Algorithm.ECDSAP256SHA256,
        inception=int(now) - 3600,
        expiration=int(now) + 30 * 86400,
    )
    questions: list[str] = []
    for i in range(NAMES):
        label = f"h{i}"
        for k in range(1 + i % 3):
            zone.add(f"{label} 300 IN A 192.0.2.{(i * 3 + k) % 250 + 1}")
        questions.append(f"{label}.{ZONE} A")
        if i % 2 == 0:
            zone.add(f"{label} 300 IN AAAA 2001:db8::{i + 1:x}")
            questions.append(f"{label}.{ZONE} AAAA")
        if i % 4 == 0:
            zone.add(f'{label} 300 IN TXT "signed answer {i}"')
            questions.append(f"{label}.{ZONE} TXT")
    zone.sign()
    positive = questions
    nodata = [f"h{i}.{ZONE} MX" for i in range(NAMES)]
    nxdomain = [f"nx{i}.{ZONE} A" for i in range(NX_NAMES)]
    lines = []
    mix = {"positive": 0, "nodata": 0, "nxdomain": 0}
    for _ in range(QUERY_LINES):
        roll = rng.random()
        kind = "positive" if roll < 0.7 else "nodata" if roll < 0.85 else "nxdomain"
        pool = {"positive": positive, "nodata": nodata, "nxdomain": nxdomain}[kind]
        lines.append(rng.choice(pool))
        mix[kind] += 1
    zone_file = work / "dnssec-zone.txt"
    zone_file.write_text(sz.zone_text(zone))
    anchor_file = work / "dnssec-anchor.txt"
    anchor_file.write_text(sz.anchor_text(zone))
    queries = work / "dnssec-queries.txt"
    queries.write_text("\n".join(lines) + "\n")
    files = ZoneFiles(
        local_data=zone_file,
        queries=queries,
        names=NAMES,
        records=len(zone.rrsets),
        queries_total=len(lines),
        mix=mix,
        probe_name=f"h0.{ZONE}",
        unique_questions=len(set(lines)),
    )
    return SignedFiles(zone_file, anchor_file, files)


def upstream_conf(work: Path, pki: Pki, files: SignedFiles, port: int) -> str:
    """unbound serving the signed zone from ``auth-zone`` over DoT, RRSIGs for DO."""
    return f"""server:
    username: ""
    chroot: ""
    directory: "{work}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    num-threads: 1
    interface: 127.0.0.1@{port}
    tls-port: {port}
    tls-service-key: "{pki.key_pem}"
    tls-service-pem: "{pki.cert_pem}"
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    incoming-num-tcp: 1000
    num-queries-per-thread: 4096
    module-config: "iterator"
    # loopback only: all but the signed zone is refused, nothing is looked up
    local-zone: "." refuse
    local-zone: "{ZONE}" transparent
auth-zone:
    name: "{ZONE}"
    zonefile: "{files.zone_file}"
    for-downstream: yes
    for-upstream: no
remote-control:
    control-enable: no
"""


def start_upstream(registry: Registry, work: Path, pki: Pki, files: SignedFiles) -> peers.Server:
    port = free_port()
    conf = work / "dnssec-upstream.conf"
    conf.write_text(upstream_conf(work, pki, files, port))
    server = peers.Server("dnssec-upstream", "unbound auth-zone (signed, DoT)", ("dot",), port)
    argv = ["unbound", "-d", "-c", str(conf)]
    return peers._launch(registry, server, argv, files.zone.probe_name, pki)


def dns2dot_has_dnssec(root: Path) -> str | None:
    """None if the dns2dot at ``root`` takes ``--dnssec``, else why not."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dns2dot", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=root,
            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"dns2dot --help failed: {exc}"
    if "--dnssec" not in done.stdout + done.stderr:
        return (
            f"the dns2dot at {root} has no --dnssec option (not merged yet?): "
            "the validating cells need --dnssec validate --trust-anchor FILE"
        )
    return None


def validates(server: peers.Server, names: tuple[str, ...]) -> str | None:
    """None if ``server`` answers each of ``names`` (A) with the AD bit, asked with AD
    (RFC 6840 §5.7), else why not: a validating cell must measure validation."""
    import dns.flags
    import dns.message
    import dns.query

    for name in names:
        query = dns.message.make_query(name, "A")
        query.flags |= dns.flags.AD
        try:
            answer = dns.query.udp(query, "127.0.0.1", timeout=5, port=server.port)
        except Exception as exc:  # any failure to ask is a reason not to measure
            return f"{server.label}: {name} A: {exc!r}"
        if not answer.flags & dns.flags.AD:
            return f"{server.label} does not validate: no AD on {name} A ({answer.rcode()})"
    return None


def start_servers(
    registry: Registry,
    work: Path,
    pki: Pki,
    files: SignedFiles,
    upstream: peers.Server,
    dns2dot_args: list[str],
    root: Path,
) -> dict[str, peers.Server]:
    """Every server of ``ORDER``; failures are recorded in the servers, never raised."""
    no_dnssec = dns2dot_has_dnssec(root)
    servers: dict[str, peers.Server] = {}
    for key, label, validating, cached in ORDER:
        if not upstream.ok:
            servers[key] = peers.Server(
                key, label, ("udp",), 0, error=f"signed upstream failed: {upstream.error}"
            )
            continue
        if key.startswith("unbound"):
            port = free_port()
            conf = work / f"{key}.conf"
            conf.write_text(
                peers.validating_forwarder_conf(
                    work, pki, port, upstream.port, files.anchor_file, cache=cached
                )
            )
            server = peers.Server(key, label, ("udp",), port)
            argv = ["unbound", "-d", "-c", str(conf)]
            servers[key] = peers._launch(registry, server, argv, files.zone.probe_name, pki)
            _check_validates(servers[key])
            continue
        if validating and no_dnssec:
            servers[key] = peers.Server(key, label, ("udp",), 0, error=no_dnssec)
            continue
        args = ["--cache-size", DNS2DOT_CACHE if cached == "on" else "0"]
        if validating:
            args += ["--dnssec", "validate", "--trust-anchor", str(files.anchor_file)]
        elif not no_dnssec:
            args += ["--dnssec", "off"]
        servers[key] = peers.start_dns2dot(
            registry,
            pki,
            upstream.port,
            files.zone.probe_name,
            mode="pool",
            extra_args=[*args, *dns2dot_args],
            key=key,
            root=root,
            label=label,
        )
        if validating:
            _check_validates(servers[key])
    return servers


def _check_validates(server: peers.Server) -> None:
    if server.ok:
        server.error = validates(server, (f"h0.{ZONE}", f"nx0.{ZONE}"))


def run(bench: workloads.Bench) -> None:
    """The workload: files, servers, rounds (each over every server), median cells."""
    s = bench.settings
    files = write_signed_zone(bench.work)
    upstream = start_upstream(bench.registry, bench.work, bench.pki, files)
    workloads.say_started(upstream)
    servers = start_servers(
        bench.registry,
        bench.work,
        bench.pki,
        files,
        upstream,
        s.dns2dot_args,
        s.dns2dot_root,
    )
    for srv in servers.values():
        workloads.say_started(srv)
    # the shared cells list, this workload's query file and probe name
    mine = dataclasses.replace(bench, zone=files.zone, upstream=upstream, servers=servers)
    runs: dict[str, list[workloads.Cell]] = {key: [] for key, *_ in ORDER}
    try:
        for rnd in range(s.repeat):
            for key, *_ in ORDER:
                server = servers[key]
                cell = workloads.Cell("dnssec", key, server.label, "udp")
                cell.detail["mix"] = files.zone.mix
                workloads._perf_cell(mine, cell, server, clients=s.clients, duration=s.duration)
                runs[key].append(cell)
                if s.repeat > 1:
                    state = f"{cell.metrics.get('qps', 0):,.0f} q/s" if cell.ok else "FAILED"
                    print(f"bench: round {rnd + 1}/{s.repeat} {cell.id:<30} {state}", flush=True)
    finally:
        for srv in [*servers.values(), upstream]:
            if srv.proc is not None:
                bench.registry.stop(srv.proc)
    cells = {key: workloads._median(runs[key]) for key, *_ in ORDER}
    for _name, top, bottom, _goal in RATIOS:
        a, b = cells[top], cells[bottom]
        if a.ok and b.ok and b.metrics.get("qps"):
            a.metrics[f"ratio_vs_{bottom}"] = round(
                float(a.metrics["qps"] or 0) / float(b.metrics["qps"] or 1), 3
            )
    for key, *_ in ORDER:
        bench.add(cells[key])


def report_lines(cells: list[workloads.Cell]) -> list[str]:
    """The report's section: q/s, lost and latency per server, then the ratios."""
    mine = {c.server: c for c in cells if c.workload == "dnssec"}
    if not mine:
        return []
    out = [
        f"== dnssec: validating forwarders on a signed zone ({ZONE} ECDSA P-256, NSEC, "
        "served by unbound auth-zone over DoT), dnsperf over UDP (q/s: higher is better)"
    ]
    for key, label, *_ in ORDER:
        cell = mine.get(key)
        if cell is None:
            continue
        m = cell.metrics
        if cell.ok:
            out.append(
                f"   {label:<38} {float(m.get('qps') or 0):>10,.0f} q/s  "
                f"avg {float(m.get('avg_ms') or 0):.3f} ms  lost {m.get('lost')}"
            )
        else:
            first = (cell.error or "failed").splitlines()[0]
            out.append(f"   {label:<38} FAILED: {first}")
    for name, top, bottom, goal in RATIOS:
        a, b = mine.get(top), mine.get(bottom)
        if a is None or b is None or not (a.ok and b.ok) or not b.metrics.get("qps"):
            out.append(f"   {name}: -")
            continue
        ratio = float(a.metrics.get("qps") or 0) / float(b.metrics.get("qps") or 1)
        judged = (
            "" if not goal else f" (goal >= {goal:.2f}x: {'met' if ratio >= goal else 'MISSED'})"
        )
        out.append(f"   {name}: {ratio:.3f}x{judged}")
    out.append("")
    return out
