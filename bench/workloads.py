"""The workloads: each turns running servers into cells (one measured thing each).

A cell is failed, with the reason, whenever its server is missing, died, stopped
answering or answered nothing; it is never left out. That is what makes ``--smoke``
able to prove the harness end to end.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import dnsperf, listeners, peers
from .pki import Pki
from .probe import ProbeError, timed_query, wait_answering
from .procs import Registry, free_port, tree_fd_count, tree_rss_kib
from .zone import ZoneFiles

QUICK = ("throughput", "cache", "published", "coldstart", "idle", "listeners")
ALL = (*QUICK, "sustained", "dnssec")
SMOKE = (*QUICK, "sustained")  # dnssec starts seven servers of its own: not in --smoke
# Every dns2dot of the throughput, published, coldstart, sustained and DoH workloads has
# its cache off, so the comparisons with the cacheless peers (and unbound with its caches
# at 0) are like for like; first in its arguments, so --dns2dot-args can override it.
CACHE_OFF = ("--cache-size", "0")
THROUGHPUT_ORDER = (
    "upstream",
    "socat",
    "stubby",
    "unbound-fwd",
    "dnsdist",
    "dns2dot",
    "dns2dot-pipe",
    # the same over a DoH upstream: its ceiling, then dnsdist and dns2dot forwarding to it
    "upstream-doh",
    "dnsdist-doh",
    "dns2dot-doh",
)
FAILED_RCODES = ("SERVFAIL", "REFUSED")  # answered, but not what a user asked for
DOH_KEYS = ("upstream-doh", "dnsdist-doh", "dns2dot-doh")
# the cache-hit workload: dns2dot and unbound as a forwarder, both with their cache on
CACHE_ORDER = ("dns2dot-cache", "unbound-fwd-cache")
PUBLISHED_ORDER = ("socat", "dns2dot", "dns2dot-pipe")


@dataclass
class Settings:
    """Durations and sizes of one run; ``--smoke`` only shrinks these."""

    smoke: bool = False
    clients: int = 10
    duration: float = 10.0
    query_timeout: float = 5.0
    published_clients: int = 10
    published_qps: int = 30
    published_duration: float = 20.0
    sustained_duration: float = 60.0
    sustained_qps: int | None = None
    idle_clients: int = 10_000
    idle_udp_duration: float = 3.0
    repeat: int = 1
    # dns2dot's cache for the cache workload: at least this, more if the query file asks
    # more distinct questions (dns2dot's default, 10000, holds an eighth of the zone)
    cache_size: int = 100_000
    # bound on the cache warm-up pass (dnsperf -n 1 over the query file)
    warm_limit: float = 120.0
    # dns2dot closes idle TCP clients after 10 s by default; the measurement needs them held
    idle_dns2dot_args: list[str] = field(default_factory=lambda: ["--idle-timeout", "300"])
    dns2dot_args: list[str] = field(default_factory=list)
    # environment for every dns2dot started (``--dns2dot-env``; the rest of DNS2DOT_* is not
    # passed on), e.g. DNS2DOT_UDP_BATCH=off for the asyncio UDP path
    dns2dot_env: dict[str, str] = field(default_factory=dict)
    dns2dot_root: Path = peers.REPO


@dataclass
class Cell:
    """One measured thing; ``metrics`` holds numbers only, ``detail`` the rest."""

    workload: str
    server: str
    label: str
    transport: str
    ok: bool = False
    error: str | None = None
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    detail: dict[str, object] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.workload}/{self.transport}/{self.server}"

    def fail(self, why: str) -> Cell:
        self.ok = False
        self.error = why
        return self

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "workload": self.workload,
            "server": self.server,
            "label": self.label,
            "transport": self.transport,
            "ok": self.ok,
            "error": self.error,
            "metrics": self.metrics,
            "detail": self.detail,
        }


@dataclass
class Bench:
    """Everything the workloads share: settings, files, the running servers."""

    settings: Settings
    registry: Registry
    work: Path
    pki: Pki
    zone: ZoneFiles
    upstream: peers.Server
    servers: dict[str, peers.Server]
    cells: list[Cell] = field(default_factory=list)

    def add(self, cell: Cell) -> Cell:
        self.cells.append(cell)
        state = (
            "ok"
            if cell.ok
            else f"FAILED: {(cell.error or '').splitlines()[0] if cell.error else ''}"
        )
        print(f"bench: {cell.id:<34} {state}", flush=True)
        return cell

    def server(self, key: str) -> peers.Server:
        return self.upstream if key == "upstream" else self.servers[key]


def _ready(bench: Bench, server: peers.Server, transport: str) -> str | None:
    """Why ``server`` cannot be measured now (None if it answers a probe right now)."""
    if server.error:
        return server.error
    if server.proc is None or not server.proc.alive():
        code = server.proc.popen.returncode if server.proc else None
        tail = server.proc.log_tail() if server.proc else ""
        return f"{server.label} is not running (exit {code}):\n{tail}"
    try:
        wait_answering(
            transport,
            server.port,
            bench.zone.probe_name,
            10.0,
            ca=bench.pki.ca_pem,
            tls_name=bench.pki.name,
            alive=server.proc.alive,
        )
    except ProbeError as exc:
        return f"{server.label} stopped answering over {transport}: {exc}"
    return None


def _perf_cell(
    bench: Bench,
    cell: Cell,
    server: peers.Server,
    *,
    clients: int,
    duration: float,
    max_qps: int | None = None,
    tick: Callable[[], None] | None = None,
) -> Cell:
    """Run dnsperf against ``server`` over ``cell.transport`` and fill the cell in."""
    why = _ready(bench, server, cell.transport)
    if why:
        return cell.fail(why)
    s = bench.settings
    argv = dnsperf.argv_for(
        cell.transport,
        server.port,
        bench.zone.queries,
        clients=clients,
        duration=duration,
        max_qps=max_qps,
        query_timeout=s.query_timeout,
        doh_uri=peers.doh_url(bench.pki, server.port) if cell.transport == "doh" else None,
    )
    name = f"dnsperf-{cell.workload}-{cell.transport}-{server.key}"
    try:
        res = dnsperf.run(bench.registry, name, argv, duration, s.query_timeout, tick=tick)
    except dnsperf.DnsperfError as exc:
        return cell.fail(f"{server.label}: {exc}")
    # SERVFAIL and REFUSED are answers to dnsperf but failures to a user: they count as
    # lost, not in q/s (dns2dot answers SERVFAIL at its --timeout, before dnsperf's).
    failed = sum(res.rcodes.get(code, 0) for code in FAILED_RCODES)
    good = max(0, res.completed - failed)
    cell.metrics.update(
        qps=round(res.qps * good / res.completed, 1) if res.completed else 0.0,
        dnsperf_qps=round(res.qps, 1),
        failed=failed,
        avg_ms=round(res.avg_ms, 4),
        min_ms=round(res.min_ms, 4),
        max_ms=round(res.max_ms, 4),
        stddev_ms=round(res.stddev_ms, 4),
        sent=res.sent,
        completed=res.completed,
        lost=res.lost + failed,
        lost_pct=round(100.0 * (res.lost + failed) / res.sent, 2) if res.sent else 0.0,
    )
    cell.detail["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    cell.detail.update(
        argv=argv, rcodes=res.rcodes, reconnections=res.reconnections, run_s=res.run_s
    )
    if res.completed == 0:
        return cell.fail(
            f"{server.label} answered none of {res.sent} queries over {cell.transport}"
        )
    if server.proc is not None and not server.proc.alive():
        return cell.fail(f"{server.label} died during the run:\n{server.proc.log_tail()}")
    cell.ok = True
    return cell


def throughput(bench: Bench) -> None:
    """Maximum rate, every server, every transport it speaks (``-c 10 -l 10``)."""
    s = bench.settings
    plan = [(key, t) for key in THROUGHPUT_ORDER for t in bench.server(key).transports]
    runs: dict[tuple[str, str], list[Cell]] = {k: [] for k in plan}
    for rnd in range(s.repeat):  # rounds go over every server, so drift hits all alike
        for key, transport in plan:
            server = bench.server(key)
            cell = Cell("throughput", key, server.label, transport)
            _perf_cell(bench, cell, server, clients=s.clients, duration=s.duration)
            runs[(key, transport)].append(cell)
            if s.repeat > 1:
                state = f"{cell.metrics.get('qps', 0):,.0f} q/s" if cell.ok else "FAILED"
                print(f"bench: round {rnd + 1}/{s.repeat} {cell.id:<30} {state}", flush=True)
    for key, transport in plan:
        bench.add(_median(runs[(key, transport)]))


def _median(cells: list[Cell]) -> Cell:
    """The run with the median q/s (its own latencies with it); failed if any run failed.

    With an even number of rounds, the lower of the two middle runs: never best-of-2.
    """
    bad = [c for c in cells if not c.ok]
    if bad or len(cells) == 1:
        return bad[0] if bad else cells[0]
    ranked = sorted(cells, key=lambda c: float(c.metrics["qps"] or 0.0))
    pick = ranked[(len(ranked) - 1) // 2]
    pick.detail["rounds_qps"] = [c.metrics["qps"] for c in cells]
    return pick


def _counts(server: peers.Server) -> tuple[int, int] | None:
    """The server's cache hits and misses so far, once its counters caught up."""
    if server.counts is None:
        return None
    if server.counts_settle:
        time.sleep(server.counts_settle)
    return server.counts()


def _warm(bench: Bench, server: peers.Server) -> tuple[dict[str, object], str | None]:
    """One pass over the query file (``dnsperf -n 1`` over UDP, the same clients) so the
    cache holds every answer the measured runs ask for; returns its detail and the error
    (None if it ran). Bounded by ``warm_limit`` seconds: an incomplete pass is recorded
    (``complete`` false) and shows as a lower hit rate, not as a failure."""
    s = bench.settings
    warm: dict[str, object] = {}
    why = _ready(bench, server, "udp")
    if why:
        return warm, why
    argv = dnsperf.argv_for(
        "udp",
        server.port,
        bench.zone.queries,
        clients=s.clients,
        duration=s.warm_limit,
        query_timeout=s.query_timeout,
        extra=("-n", "1"),
    )
    try:
        res = dnsperf.run(
            bench.registry, f"dnsperf-cache-warm-{server.key}", argv, s.warm_limit, s.query_timeout
        )
    except dnsperf.DnsperfError as exc:
        return warm, f"{server.label}: cache warm-up failed: {exc}"
    warm.update(
        argv=argv,
        sent=res.sent,
        completed=res.completed,
        lost=res.lost,
        qps=round(res.qps, 1),
        run_s=res.run_s,
        complete=res.sent >= bench.zone.queries_total,
    )
    return warm, None


def cache(bench: Bench) -> None:
    """Cache hits: dns2dot and unbound as a forwarder, both with their cache on, each
    warmed with the query file once, then UDP and TCP like the throughput cells (same
    query file, clients and duration). The hit rate of each run comes from the server's
    own counters (dns2dot's metrics, ``unbound-control stats_noreset``)."""
    s = bench.settings
    for key in CACHE_ORDER:
        server = bench.server(key)
        warm, warm_error = _warm(bench, server)
        for transport in ("udp", "tcp"):
            cell = Cell("cache", key, server.label, transport)
            cell.detail["warm"] = warm
            if warm_error:
                bench.add(cell.fail(warm_error))
                continue
            before = _counts(server)
            _perf_cell(bench, cell, server, clients=s.clients, duration=s.duration)
            after = _counts(server) if cell.ok else None
            cell.metrics["hit_pct"] = None
            if before is not None and after is not None:
                hits, misses = after[0] - before[0], after[1] - before[1]
                cell.detail.update(cache_hits=hits, cache_misses=misses)
                if hits + misses > 0:
                    cell.metrics["hit_pct"] = round(100.0 * hits / (hits + misses), 2)
            elif cell.ok:
                cell.detail["hits_error"] = f"{server.label}: its cache counters could not be read"
            bench.add(cell)


def published(bench: Bench) -> None:
    """The seed's published comparison: ``dnsperf -m tcp -c 10 -Q 30 -l 20``; latency counts."""
    s = bench.settings
    for key in PUBLISHED_ORDER:
        server = bench.server(key)
        cell = Cell("published", key, server.label, "tcp")
        bench.add(
            _perf_cell(
                bench,
                cell,
                server,
                clients=s.published_clients,
                duration=s.published_duration,
                max_qps=s.published_qps,
            )
        )


def _answer_metrics(cell: Cell, prefix: str, transport: str, port: int, name: str) -> str | None:
    """One timed query into ``cell``; returns the error if no answer came back."""
    ans = timed_query(transport, port, name)
    cell.metrics[f"{prefix}_ms"] = None if ans.ms is None else round(ans.ms, 3)
    cell.detail[f"{prefix}_rcode"] = ans.rcode
    if ans.error:
        cell.detail[f"{prefix}_error"] = ans.error
        return f"{prefix}: no answer ({ans.error})"
    return None


def coldstart(bench: Bench) -> None:
    """First-query latency: through a fresh dns2dot, and after its upstream was dropped.

    A second unbound serves this workload alone, so restarting it disturbs no other
    server. Also times the first query of a new TCP connection through socat and
    dns2dot --mode pipe, where every connection pays its own TLS handshake.
    """
    name = bench.zone.probe_name
    # 1. dns2dot pool over UDP: fresh process, first query, upstream restart, next query
    cell = Cell("coldstart", "dns2dot", "dns2dot", "udp")
    cold_dir = bench.work / "cold"
    cold_dir.mkdir(parents=True, exist_ok=True)
    up = peers.start_upstream(bench.registry, cold_dir, bench.pki, bench.zone, key="upstream-cold")
    if not up.ok:
        bench.add(cell.fail(f"second upstream did not start: {up.error}"))
    else:
        d2d = peers.start_dns2dot(
            bench.registry,
            bench.pki,
            up.port,
            name,
            mode="pool",
            extra_args=[*CACHE_OFF, *bench.settings.dns2dot_args],
            key="dns2dot-cold",
            root=bench.settings.dns2dot_root,
            env=bench.settings.dns2dot_env,
            probe=False,
        )
        if not d2d.ok or d2d.proc is None:
            bench.add(cell.fail(d2d.error or "dns2dot-cold did not start"))
        else:
            errors = [
                _answer_metrics(cell, "first", "udp", d2d.port, name),
                _answer_metrics(cell, "warm", "udp", d2d.port, name),
            ]
            assert up.proc is not None
            bench.registry.stop(up.proc)
            up2 = peers.start_upstream(
                bench.registry, cold_dir, bench.pki, bench.zone, port=up.port, key="upstream-cold"
            )
            if not up2.ok:
                errors.append(f"upstream restart failed: {up2.error}")
            else:
                cell.detail["upstream_restarted"] = True
                errors += [
                    _answer_metrics(cell, "after_drop", "udp", d2d.port, name),
                    _answer_metrics(cell, "after_drop_warm", "udp", d2d.port, name),
                ]
                if up2.proc is not None:
                    bench.registry.stop(up2.proc)
            cell.detail["startup_s"] = d2d.ready_s
            bench.registry.stop(d2d.proc)
            real = [e for e in errors if e]
            bench.add(cell.fail("; ".join(real)) if real else _ok(cell))
    # 2. a new TCP connection through socat and through dns2dot pipe (already warm servers)
    for key in ("socat", "dns2dot-pipe"):
        server = bench.server(key)
        cell = Cell("coldstart", key, server.label, "tcp")
        why = _ready(bench, server, "tcp")
        if why:
            bench.add(cell.fail(why))
            continue
        errors = [_answer_metrics(cell, "first", "tcp", server.port, name)]
        errors.append(_answer_metrics(cell, "warm", "tcp", server.port, name))
        real = [e for e in errors if e]
        cell.detail["note"] = (
            "each query opens a new TCP connection: 'first' and 'warm' both pay a TLS handshake"
        )
        bench.add(cell.fail("; ".join(real)) if real else _ok(cell))


def _ok(cell: Cell) -> Cell:
    cell.ok = True
    return cell


def _open_idle_clients(
    pid: int, port: int, count: int, deadline: float
) -> tuple[list[socket.socket], int, int]:
    """Connect ``count`` TCP clients that send nothing; return them, fds before, fds after.

    Connects in batches and waits for dns2dot to accept each batch (its descriptor
    count), so a small listen backlog does not turn into SYN retries and lost clients.
    """
    fd_before = tree_fd_count(pid)
    clients: list[socket.socket] = []
    batch = 200
    try:
        while len(clients) < count and time.monotonic() < deadline:
            for _ in range(min(batch, count - len(clients))):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(5.0)
                try:
                    s.connect(("127.0.0.1", port))
                except OSError:
                    s.close()
                    raise
                clients.append(s)
            target = fd_before + len(clients)
            settle = min(deadline, time.monotonic() + 10.0)
            while tree_fd_count(pid) < target - 50 and time.monotonic() < settle:
                time.sleep(0.02)
    except OSError:
        pass  # recorded as fewer clients than asked for
    settle = min(deadline, time.monotonic() + 10.0)
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < settle:
        now = tree_fd_count(pid)
        if now >= fd_before + len(clients):
            break
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since > 2.0:
            break  # it stopped accepting (a connection limit?): measure what it holds
        time.sleep(0.05)
    return clients, fd_before, tree_fd_count(pid)


def _still_open(clients: list[socket.socket]) -> int:
    """How many client sockets the server has not closed (peek; never reads data)."""
    n = 0
    for s in clients:
        try:
            s.setblocking(False)
            data = s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
            n += 1 if data else 0
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def idle(bench: Bench) -> None:
    """N idle TCP clients on a fresh dns2dot: RSS per client, and UDP still served."""
    s = bench.settings
    cell = Cell("idle", "dns2dot", "dns2dot", "tcp")
    cell.detail["clients_requested"] = s.idle_clients
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cell.detail["rlimit_nofile"] = soft
    if soft != resource.RLIM_INFINITY and soft < s.idle_clients + 200:
        bench.add(
            cell.fail(
                f"RLIMIT_NOFILE is {soft}, {s.idle_clients} idle clients need about "
                f"{s.idle_clients + 200}: raise the hard limit (ulimit -Hn) or pass --idle-clients"
            )
        )
        return
    d2d = peers.start_dns2dot(
        bench.registry,
        bench.pki,
        bench.upstream.port,
        bench.zone.probe_name,
        mode="pool",
        extra_args=[*s.dns2dot_args, *s.idle_dns2dot_args],
        key="dns2dot-idle",
        root=s.dns2dot_root,
        env=s.dns2dot_env,
    )
    if not d2d.ok or d2d.proc is None:
        bench.add(cell.fail(d2d.error or "dns2dot-idle did not start"))
        return
    pid = d2d.proc.pid
    clients: list[socket.socket] = []
    try:
        time.sleep(0.5)
        rss_before = tree_rss_kib(pid)
        t0 = time.monotonic()
        clients, fd_before, fd_after = _open_idle_clients(pid, d2d.port, s.idle_clients, t0 + 120.0)
        connect_s = time.monotonic() - t0
        time.sleep(1.0)
        rss_after = tree_rss_kib(pid)
        held = _still_open(clients)
        accepted = max(0, fd_after - fd_before)
        cell.detail["dns2dot_args"] = d2d.argv[d2d.argv.index("--mode") + 2 :]
        cell.metrics.update(
            clients_connected=len(clients),
            clients_accepted=accepted,
            clients_open=held,
            rss_before_kib=rss_before,
            rss_after_kib=rss_after,
            connect_s=round(connect_s, 3),
        )
        if rss_before is None or rss_after is None:
            bench.add(cell.fail(f"dns2dot-idle died:\n{d2d.proc.log_tail()}"))
            return
        if held == 0:
            bench.add(cell.fail(f"dns2dot holds none of the {len(clients)} idle clients"))
            return
        # Divided by the clients dns2dot really accepted: one still in the listen queue
        # is held open by the kernel and costs dns2dot nothing yet.
        per_client = (rss_after - rss_before) * 1024.0 / max(1, min(held, accepted))
        cell.metrics["rss_per_client_bytes"] = round(per_client, 1)
        cell.metrics["rss_per_client_kib"] = round(per_client / 1024.0, 3)
        # UDP while they sit there: one timed query, then a short dnsperf run
        err = _answer_metrics(cell, "udp_query", "udp", d2d.port, bench.zone.probe_name)
        udp = Cell("idle", "dns2dot-idle", "dns2dot", "udp")
        _perf_cell(bench, udp, d2d, clients=s.clients, duration=s.idle_udp_duration)
        for k in ("qps", "avg_ms", "max_ms", "lost", "lost_pct"):
            cell.metrics[f"udp_{k}"] = udp.metrics.get(k)
        cell.metrics["clients_open_after_udp"] = _still_open(clients)
        problems = [e for e in (err, udp.error) if e]
        if len(clients) < s.idle_clients:
            problems.append(f"only {len(clients)} of {s.idle_clients} clients could connect")
        if held < len(clients) * 0.95:
            problems.append(
                f"dns2dot holds {held} of {len(clients)} clients (closed the rest: idle timeout "
                "or client limit? see --idle-dns2dot-args)"
            )
        if problems:
            cell.fail("; ".join(problems))
            cell.metrics.setdefault("qps", None)
            bench.add(cell)
        else:
            bench.add(_ok(cell))
    finally:
        for c in clients:
            with contextlib.suppress(OSError):
                c.close()
        if d2d.proc is not None:
            bench.registry.stop(d2d.proc)


def _growth(samples: list[int]) -> tuple[float, float]:
    """RSS growth (KiB) from the first third of the samples to the last third, and the
    most that still counts as flat (1 MiB or 2%, whichever is larger)."""
    third = max(1, len(samples) // 3)
    first = statistics.mean(samples[:third])
    last = statistics.mean(samples[-third:])
    return last - first, max(1024.0, 0.02 * first)


def sustained(bench: Bench) -> None:
    """About half of dns2dot's max UDP rate for a minute: nothing lost, RSS flat."""
    s = bench.settings
    server = bench.server("dns2dot")
    cell = Cell("sustained", "dns2dot", server.label, "udp")
    rate = s.sustained_qps
    if rate is None:
        best = next((c for c in bench.cells if c.id == "throughput/udp/dns2dot" and c.ok), None)
        if best is None:  # throughput not run (or failed): measure the max briefly
            cal = Cell("calibrate", "dns2dot", server.label, "udp")
            _perf_cell(bench, cal, server, clients=s.clients, duration=min(3.0, s.duration))
            best = cal if cal.ok else None
        if best is None or not best.metrics.get("qps"):
            bench.add(cell.fail("no dns2dot UDP maximum to take half of (dns2dot failed?)"))
            return
        rate = max(1, int(float(best.metrics["qps"] or 0) / 2))
    cell.detail["target_qps"] = rate
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()

    def sample() -> None:
        if server.proc is not None:
            kib = tree_rss_kib(server.proc.pid)
            if kib is not None:
                samples.append((round(time.monotonic() - t0, 2), kib))

    sample()
    _perf_cell(
        bench,
        cell,
        server,
        clients=s.clients,
        duration=s.sustained_duration,
        max_qps=rate,
        tick=sample,
    )
    sample()
    cell.detail["rss_samples"] = samples
    kib = [k for _, k in samples]
    if kib:
        growth, limit = _growth(kib)
        cell.metrics.update(
            rss_first_kib=kib[0],
            rss_last_kib=kib[-1],
            rss_max_kib=max(kib),
            rss_growth_kib=round(growth, 1),
            rss_flat_limit_kib=round(limit, 1),
            rss_flat=int(growth <= limit),
        )
    bench.add(cell)


def listener_cells(bench: Bench) -> None:
    """DoT and DoH served to clients: dns2dot's listeners against dnsdist's frontends and
    unbound's service, each forwarding to the DoT upstream, cache off (``-c 10 -l 10``,
    median of ``--repeat`` rounds, as throughput)."""
    s = bench.settings
    plan = [key for key in listeners.LISTENER_ORDER if key in bench.servers]
    runs: dict[str, list[Cell]] = {key: [] for key in plan}
    for rnd in range(s.repeat):
        for key in plan:
            server = bench.servers[key]
            cell = Cell("listeners", key, server.label, listeners.kind_of(key))
            _perf_cell(bench, cell, server, clients=s.clients, duration=s.duration)
            runs[key].append(cell)
            if s.repeat > 1:
                state = f"{cell.metrics.get('qps', 0):,.0f} q/s" if cell.ok else "FAILED"
                print(f"bench: round {rnd + 1}/{s.repeat} {cell.id:<30} {state}", flush=True)
    for key in plan:
        bench.add(_median(runs[key]))


def dnssec_cells(bench: Bench) -> None:
    """The dnssec workload (bench/dnssec.py), with servers of its own."""
    from . import dnssec

    dnssec.run(bench)


RUNNERS = {
    "throughput": throughput,
    "cache": cache,
    "published": published,
    "coldstart": coldstart,
    "idle": idle,
    "sustained": sustained,
    "listeners": listener_cells,
    "dnssec": dnssec_cells,
}


NEEDS: dict[str, tuple[str, ...]] = {
    "throughput": THROUGHPUT_ORDER,
    "published": PUBLISHED_ORDER,
    "coldstart": ("socat", "dns2dot-pipe"),  # plus servers of its own
    "cache": CACHE_ORDER,
    "idle": (),  # a dns2dot of its own
    "dnssec": (),  # servers of its own
    "sustained": ("dns2dot",),
    "listeners": listeners.LISTENER_ORDER,
}
_PEER_STARTERS = {
    "socat": peers.start_socat,
    "stubby": peers.start_stubby,
    "unbound-fwd": peers.start_unbound_forwarder,
    "unbound-fwd-cache": peers.start_unbound_forwarder_cached,
    "dnsdist": peers.start_dnsdist,
}
_DNS2DOT_MODES = {"dns2dot": "pool", "dns2dot-pipe": "pipe"}


def start_servers(
    registry: Registry,
    work: Path,
    pki: Pki,
    zone: ZoneFiles,
    upstream: peers.Server,
    settings: Settings,
    chosen: list[str],
) -> dict[str, peers.Server]:
    """Start the peers and dns2dot modes the chosen workloads use; failures are recorded
    in the returned servers (and so in their cells), never raised."""
    needed = {key for w in chosen for key in NEEDS[w]} - {"upstream"}
    servers: dict[str, peers.Server] = {}
    for key in [
        k for k in (*THROUGHPUT_ORDER, *CACHE_ORDER, *listeners.LISTENER_ORDER) if k in needed
    ]:
        if key in listeners.LISTENER_KEYS and upstream.ok:
            srv = listeners.start_listener(
                registry,
                work,
                pki,
                upstream.port,
                zone.probe_name,
                key,
                dns2dot_args=[*CACHE_OFF, *settings.dns2dot_args],
                root=settings.dns2dot_root,
            )
        elif key in DOH_KEYS:
            srv = _start_doh_server(registry, work, pki, zone, settings, servers, key)
        elif not upstream.ok:
            srv = peers.Server(
                key, key, ("udp", "tcp"), 0, error=f"upstream failed: {upstream.error}"
            )
        elif key in _PEER_STARTERS:
            srv = _PEER_STARTERS[key](registry, work, pki, upstream.port, zone.probe_name)
        elif key == "dns2dot-cache":
            srv = _start_dns2dot_cached(registry, pki, zone, upstream, settings)
        else:
            srv = peers.start_dns2dot(
                registry,
                pki,
                upstream.port,
                zone.probe_name,
                mode=_DNS2DOT_MODES[key],
                extra_args=[*CACHE_OFF, *settings.dns2dot_args],
                key=key,
                root=settings.dns2dot_root,
                env=settings.dns2dot_env,
            )
        servers[key] = srv
        say_started(srv)
    return servers


def _start_doh_server(
    registry: Registry,
    work: Path,
    pki: Pki,
    zone: ZoneFiles,
    settings: Settings,
    servers: dict[str, peers.Server],
    key: str,
) -> peers.Server:
    """The DoH row: unbound serving DoH (started first), then dnsdist and dns2dot to it."""
    if key == "upstream-doh":
        return peers.start_upstream(registry, work, pki, zone, key="upstream-doh", https=True)
    doh = servers.get("upstream-doh")
    if doh is None or not doh.ok:
        why = doh.error if doh is not None else "not started"
        return peers.Server(key, key, ("udp", "tcp"), 0, error=f"DoH upstream failed: {why}")
    if key == "dnsdist-doh":
        return peers.start_dnsdist(
            registry,
            work,
            pki,
            doh.port,
            zone.probe_name,
            doh_path=peers.DOH_PATH,
            key=key,
            label="dnsdist -> DoH",
        )
    return peers.start_dns2dot(
        registry,
        pki,
        doh.port,
        zone.probe_name,
        mode="pool",
        extra_args=[*CACHE_OFF, *settings.dns2dot_args],
        key=key,
        root=settings.dns2dot_root,
        env=settings.dns2dot_env,
        upstream=f"https://127.0.0.1:{doh.port}{peers.DOH_PATH}#{pki.name}",
        label="dns2dot -> DoH",
    )


def _start_dns2dot_cached(
    registry: Registry,
    pki: Pki,
    zone: ZoneFiles,
    upstream: peers.Server,
    settings: Settings,
) -> peers.Server:
    """dns2dot with its cache on, sized to hold every answer the query file asks for, and
    its metrics endpoint on (where the cache hit counters are read)."""
    size = max(settings.cache_size, zone.unique_questions)
    mport = free_port()
    srv = peers.start_dns2dot(
        registry,
        pki,
        upstream.port,
        zone.probe_name,
        mode="pool",
        extra_args=[
            "--cache-size",
            str(size),
            "--metrics",
            f"127.0.0.1:{mport}",
            *settings.dns2dot_args,
        ],
        key="dns2dot-cache",
        root=settings.dns2dot_root,
        env=settings.dns2dot_env,
        label="dns2dot (cache on)",
    )
    srv.counts = lambda: peers.dns2dot_cache_counts(mport)
    srv.counts_settle = 1.0  # dns2dot refreshes its metrics every 0.5 s
    return srv


def say_started(srv: peers.Server) -> None:
    if srv.ok:
        print(
            f"bench: started {srv.label:<24} 127.0.0.1:{srv.port} "
            f"pid {srv.proc.pid if srv.proc else '?'}",
            flush=True,
        )
    else:
        first = (srv.error or "unknown error").splitlines()[0]
        print(f"bench: FAILED to start {srv.label}: {first}", flush=True)
