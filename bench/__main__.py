"""``python -m bench``: dns2dot against socat, stubby, unbound and dnsdist, on loopback.

Start-up order: files (CA, zone, queries) -> DoT upstream -> peers and dns2dot (and the
DoH upstream with dnsdist and dns2dot forwarding to it, for throughput; dns2dot and
unbound with their caches on, for the cache workload) -> the
selected workloads -> stop everything (``finally``, also on SIGINT/SIGTERM/SIGHUP) ->
report, results.json and results.png. Exit 0 only if every server started and every
cell produced numbers; 1 if anything failed; 2 for a missing tool; 130 if interrupted.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import chart, peers, report, workloads
from .pki import make_pki
from .procs import Interrupted, Registry, raise_nofile, shielded, signals_raise
from .workloads import ALL, QUICK, SMOKE, Bench, Cell, Settings
from .zone import write_zone

REQUIRED_TOOLS = ("unbound", "dnsperf", "dig", "kdig")
PEER_TOOLS = ("socat", "stubby", "dnsdist")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark dns2dot against its peers over a local DoT upstream "
        "(loopback only).",
        epilog="Pass dns2dot options with '=' so they are not read as bench's: "
        "--dns2dot-args='--workers 2'.",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="every workload but dnssec, a second or two per cell (CI: proves the harness "
        "end to end)",
    )
    p.add_argument(
        "--workloads",
        default=None,
        help=f"comma-separated from {','.join(ALL)}; 'quick' (the default: {','.join(QUICK)}); "
        "'all'",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for results.json, results.png, report.txt, logs/ and work/ "
        "(default bench/results/<timestamp>)",
    )
    p.add_argument("--dns2dot-args", default="", help="extra arguments for every dns2dot started")
    p.add_argument(
        "--dns2dot-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for every dns2dot started, repeatable (the caller's "
        "DNS2DOT_* are not passed on), e.g. --dns2dot-env DNS2DOT_UDP_BATCH=off",
    )
    p.add_argument(
        "--dns2dot-root",
        type=Path,
        default=peers.REPO,
        help="directory to run 'python -m dns2dot' from (default: this checkout; "
        "e.g. a worktree of another commit to compare)",
    )
    p.add_argument(
        "--clients", type=int, default=None, help="dnsperf -c for throughput (default 10)"
    )
    p.add_argument(
        "--duration", type=float, default=None, help="dnsperf -l for throughput cells (default 10)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="throughput rounds (each over every server); the median q/s run is reported",
    )
    p.add_argument("--published-duration", type=float, default=None, help="default 20")
    p.add_argument("--sustained-duration", type=float, default=None, help="default 60")
    p.add_argument(
        "--sustained-qps",
        type=int,
        default=None,
        help="dnsperf -Q for sustained (default: half of dns2dot's measured UDP max)",
    )
    p.add_argument("--idle-clients", type=int, default=None, help="default 10000 (smoke 1000)")
    p.add_argument(
        "--idle-dns2dot-args",
        default="--idle-timeout 300",
        help="extra dns2dot arguments for the idle workload only (default: %(default)s, "
        "so the idle clients are not closed before they are measured)",
    )
    p.add_argument("--names", type=int, default=20_000, help="names in the synthetic zone")
    p.add_argument("--queries", type=int, default=200_000, help="lines in the dnsperf query file")
    p.add_argument(
        "--no-chart", action="store_true", help="skip results.png (no matplotlib needed)"
    )
    return p.parse_args(argv)


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``--dns2dot-env KEY=VALUE`` pairs; a pair without ``=`` or a key is an error."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise SystemExit(f"bench: --dns2dot-env wants KEY=VALUE, not {pair!r}")
        env[key.strip()] = value
    return env


def make_settings(args: argparse.Namespace) -> Settings:
    s = Settings(
        smoke=args.smoke,
        dns2dot_args=shlex.split(args.dns2dot_args),
        idle_dns2dot_args=shlex.split(args.idle_dns2dot_args),
        dns2dot_env=parse_env(args.dns2dot_env),
        dns2dot_root=args.dns2dot_root.resolve(),
    )
    if args.smoke:
        s.duration, s.published_duration, s.sustained_duration = 1.5, 2.0, 3.0
        s.idle_clients, s.idle_udp_duration, s.query_timeout = 1000, 1.0, 2.0
    for name in (
        "clients",
        "duration",
        "published_duration",
        "sustained_duration",
        "sustained_qps",
        "idle_clients",
        "repeat",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(s, name, value)
    return s


def pick_workloads(spec: str | None, smoke: bool) -> list[str]:
    if spec is None:
        return list(SMOKE if smoke else QUICK)
    if spec == "all":
        return list(ALL)
    if spec == "quick":
        return list(QUICK)
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in ALL]
    if unknown:
        raise SystemExit(
            f"bench: unknown workload(s) {', '.join(unknown)}; choose from {', '.join(ALL)}"
        )
    return [w for w in ALL if w in wanted]


def preflight(args: argparse.Namespace) -> None:
    """Fail at once, with the fix, on what would otherwise fail after minutes."""
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        raise SystemExit(
            f"bench: missing tool(s): {', '.join(missing)} (apt-get install unbound dnsperf "
            "bind9-dnsutils knot-dnsutils)"
        )
    for t in PEER_TOOLS:
        if shutil.which(t) is None:
            print(f"bench: WARNING: {t} is not installed; its cells will fail", file=sys.stderr)
    if not args.no_chart:
        why = chart.missing()
        if why:
            raise SystemExit(f"bench: {why}")


@dataclass
class Run:
    """What one run gathered; filled in as it goes, reported even if it was cut short."""

    args: argparse.Namespace
    settings: Settings
    chosen: list[str]
    out: Path
    registry: Registry
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    t0: float = field(default_factory=time.monotonic)
    load_start: tuple[float, float, float] = field(default_factory=os.getloadavg)
    cells: list[Cell] = field(default_factory=list)
    servers: dict[str, peers.Server] = field(default_factory=dict)
    upstream: peers.Server | None = None
    zone_info: dict[str, object] = field(default_factory=dict)
    interrupted: str | None = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = make_settings(args)
    chosen = pick_workloads(args.workloads, args.smoke)
    preflight(args)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = (args.out or Path(__file__).resolve().parent / "results" / stamp).resolve()
    (out / "work").mkdir(parents=True, exist_ok=True)
    soft, hard = raise_nofile(settings.idle_clients + 2048)
    print(
        f"bench: {os.cpu_count()} cores, nothing pinned; RLIMIT_NOFILE {soft}/{hard}; "
        f"workloads {','.join(chosen)}{' (smoke)' if args.smoke else ''}; out {out}",
        flush=True,
    )
    run = Run(args, settings, chosen, out, Registry(out / "logs"))
    if run.load_start[0] > 0.5 * (os.cpu_count() or 1):
        print(
            f"bench: WARNING: load average {run.load_start[0]:.2f} before start: something "
            "else is running, the figures will be noisy (ratios from one run still compare)",
            file=sys.stderr,
            flush=True,
        )
    with signals_raise():
        try:
            measure(run)
        except (KeyboardInterrupt, Interrupted) as exc:
            run.interrupted = str(exc) or "SIGINT"
            print(
                f"\nbench: interrupted ({run.interrupted}); stopping everything",
                file=sys.stderr,
                flush=True,
            )
        finally:
            with shielded():
                run.registry.stop_all()
    return finish(run)


def measure(run: Run) -> None:
    """Files, upstream, servers, then each chosen workload; a crash is a failed cell."""
    work = run.out / "work"
    pki = make_pki(work)
    zone = write_zone(work, run.args.names, run.args.queries)
    run.zone_info = {
        "names": zone.names,
        "records": zone.records,
        "queries": zone.queries_total,
        "unique_questions": zone.unique_questions,
        "mix": zone.mix,
        "query_file": str(zone.queries),
    }
    run.upstream = peers.start_upstream(run.registry, work, pki, zone)
    workloads.say_started(run.upstream)
    run.servers = workloads.start_servers(
        run.registry, work, pki, zone, run.upstream, run.settings, run.chosen
    )
    bench = Bench(run.settings, run.registry, work, pki, zone, run.upstream, run.servers, run.cells)
    for name in run.chosen:
        try:
            workloads.RUNNERS[name](bench)
        except Exception:  # a harness bug becomes a loud failed cell
            crash = Cell(name, "harness", "harness", "-")
            bench.add(crash.fail(f"workload crashed:\n{traceback.format_exc()}"))


def finish(run: Run) -> int:
    """Report, JSON, chart, exit code: done after every process was stopped."""
    elapsed = time.monotonic() - run.t0
    settings, cells, out = run.settings, run.cells, run.out
    all_servers = ([run.upstream] if run.upstream else []) + list(run.servers.values())
    failed_servers = [
        f"{s.label}: {(s.error or '').splitlines()[0]}" for s in all_servers if s.error
    ]
    tgts = report.targets(cells, run.chosen)
    sdict = {k: getattr(settings, k) for k in settings.__dataclass_fields__}
    text = report.render(cells, tgts, sdict, failed_servers)
    print("\n" + text)
    payload: dict[str, object] = {
        "meta": {
            "started": run.started,
            "elapsed_s": round(elapsed, 1),
            "argv": sys.argv,
            "smoke": settings.smoke,
            "workloads": run.chosen,
            "interrupted": run.interrupted,
            "cores": os.cpu_count(),
            "pinned": False,
            "loadavg_start": run.load_start,
            "loadavg_end": os.getloadavg(),
            "note": "nothing pinned: dnsperf, the upstream and the server share the cores",
            "versions": peers.tool_versions(),
            "zone": run.zone_info,
        },
        "settings": sdict,
        "servers": [s.summary() for s in all_servers],
        "cells": [c.as_dict() for c in cells],
        "targets": tgts,
        "doh_ratios": report.doh_ratios(cells),
        "cache_ratios": report.cache_ratios(cells),
        "processes": run.registry.history,
    }
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "results.json", payload)
    (out / "report.txt").write_text(text + "\n")
    print(f"bench: wrote {out / 'results.json'} and {out / 'report.txt'}")
    if not run.args.no_chart and cells:
        try:
            doh_line = report.doh_summary(cells)
            chart.draw(
                [c.as_dict() for c in cells],
                out / "results.png",
                f"dns2dot bench {run.started}{' (smoke)' if settings.smoke else ''}",
                notes=[doh_line] if doh_line else None,
                cache_note=report.cache_summary(cells),
            )
            print(f"bench: wrote {out / 'results.png'}")
        except Exception as exc:  # the numbers are written already; say why, fail loudly
            print(f"bench: chart failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    if run.interrupted:
        return 130
    bad = [c for c in cells if not c.ok]
    if bad or failed_servers or not cells:
        print(
            f"bench: FAILED: {len(bad)} cell(s) and {len(failed_servers)} server(s) failed "
            f"(logs in {out / 'logs'})",
            file=sys.stderr,
        )
        return 1
    print(f"bench: all {len(cells)} cells produced numbers in {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
