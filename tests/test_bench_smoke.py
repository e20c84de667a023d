"""The benchmark harness works end to end: ``python -m bench --smoke`` starts the upstream,
every peer and dns2dot (DoT, and the DoH row: unbound serving DoH, dnsdist and dns2dot
forwarding to it; dns2dot and unbound with their caches on for the cache-hit cells), runs
every workload briefly, stops everything and writes a results.json in which every cell
has numbers. No timing is asserted: benchmarks are not
tests (docs/ARCHITECTURE.md, "How performance is measured").
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# every cell the smoke run must produce, and the numbers each one must carry
PERF = ("qps", "avg_ms", "max_ms", "lost")
EXPECTED: dict[str, tuple[str, ...]] = {
    "throughput/dot/upstream": PERF,
    "throughput/tcp/socat": PERF,
    "throughput/udp/stubby": PERF,
    "throughput/tcp/stubby": PERF,
    "throughput/udp/unbound-fwd": PERF,
    "throughput/tcp/unbound-fwd": PERF,
    "throughput/udp/dnsdist": PERF,
    "throughput/tcp/dnsdist": PERF,
    "throughput/udp/dns2dot": PERF,
    "throughput/tcp/dns2dot": PERF,
    "throughput/tcp/dns2dot-pipe": PERF,
    # the DoH row: the ceiling straight at unbound's DoH, then dnsdist and dns2dot to it
    "throughput/doh/upstream-doh": PERF,
    "throughput/udp/dnsdist-doh": PERF,
    "throughput/tcp/dnsdist-doh": PERF,
    "throughput/udp/dns2dot-doh": PERF,
    "throughput/tcp/dns2dot-doh": PERF,
    # cache hits: both caches on and warmed; the hit rate comes from each server's counters
    "cache/udp/dns2dot-cache": (*PERF, "hit_pct"),
    "cache/tcp/dns2dot-cache": (*PERF, "hit_pct"),
    "cache/udp/unbound-fwd-cache": (*PERF, "hit_pct"),
    "cache/tcp/unbound-fwd-cache": (*PERF, "hit_pct"),
    "published/tcp/socat": PERF,
    "published/tcp/dns2dot": PERF,
    "published/tcp/dns2dot-pipe": PERF,
    "coldstart/udp/dns2dot": ("first_ms", "warm_ms", "after_drop_ms", "after_drop_warm_ms"),
    "coldstart/tcp/socat": ("first_ms", "warm_ms"),
    "coldstart/tcp/dns2dot-pipe": ("first_ms", "warm_ms"),
    "idle/tcp/dns2dot": ("clients_open", "rss_per_client_kib", "udp_qps", "udp_lost"),
    "sustained/udp/dns2dot": (*PERF, "rss_first_kib", "rss_last_kib", "rss_growth_kib"),
    # encrypted listeners: dnsdist's frontends, unbound's service and dns2dot's, to clients
    "listeners/dot/dnsdist-dot-frontend": PERF,
    "listeners/dot/unbound-dot-service": PERF,
    "listeners/dot/dns2dot-dot-listener": PERF,
    "listeners/doh/dnsdist-doh-frontend": PERF,
    "listeners/doh/unbound-doh-service": PERF,
    "listeners/doh/dns2dot-doh-listener": PERF,
}


@pytest.mark.integration
def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    argv = [sys.executable, "-m", "bench", "--smoke", "--out", str(out)]
    have_chart = importlib.util.find_spec("matplotlib") is not None
    if not have_chart:
        argv.append("--no-chart")
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"bench --smoke exited {proc.returncode}:\n{output[-6000:]}"

    results = json.loads((out / "results.json").read_text())
    cells = {c["id"]: c for c in results["cells"]}
    missing = sorted(set(EXPECTED) - set(cells))
    assert not missing, f"cells missing from results.json: {missing}"
    for cid, keys in EXPECTED.items():
        cell = cells[cid]
        assert cell["ok"], f"{cid} failed: {cell['error']}"
        for key in keys:
            value = cell["metrics"].get(key)
            assert isinstance(value, (int, float)), f"{cid}: {key} is {value!r}"
    assert all(s["error"] is None for s in results["servers"]), results["servers"]
    assert results["targets"], "no targets reported"
    assert {t["result"] for t in results["targets"]} <= {"PASS", "MISS"}
    doh_targets = [t for t in results["targets"] if t["name"].startswith("DoH upstream")]
    assert len(doh_targets) == 2 and all(t["value"] is not None for t in doh_targets)
    ratios = results["doh_ratios"]
    for t in ("udp", "tcp"):
        for key in (f"{t}_dns2dot_over_dnsdist", f"{t}_dns2dot_over_ceiling"):
            assert isinstance(ratios.get(key), (int, float)), f"doh_ratios[{key}]: {ratios}"
    cache_targets = [t for t in results["targets"] if t["name"].startswith("cache hits")]
    assert len(cache_targets) == 2 and all(t["value"] is not None for t in cache_targets)
    for key in ("udp_dns2dot_over_unbound", "tcp_dns2dot_over_unbound"):
        value = results["cache_ratios"].get(key)
        assert isinstance(value, (int, float)), f"cache_ratios[{key}]: {results['cache_ratios']}"
    # every dns2dot started runs with its cache off, but the cache workload's (and idle's)
    started = [p for p in results["processes"] if p["name"].startswith("dns2dot")]
    assert {p["name"] for p in started} >= {"dns2dot", "dns2dot-pipe", "dns2dot-cold"}
    for proc in started:
        if proc["name"] not in ("dns2dot-cache", "dns2dot-idle"):
            argv = proc["argv"]
            assert argv[argv.index("--cache-size") + 1] == "0", f"{proc['name']}: {argv}"
    report = (out / "report.txt").read_text()
    assert "== throughput over a DoH upstream" in report and "dns2dot / dnsdist UDP" in report
    assert "== cache hits" in report and "dns2dot / unbound fwd (cache on) UDP" in report
    if have_chart:
        assert (out / "results.png").stat().st_size > 0


def test_hotpath_measures_the_udp_path() -> None:
    """``python -m bench.hotpath`` runs the real UDP path against its in-process upstream
    and prints a figure; it exits non-zero if any query failed. No timing is asserted."""
    argv = [sys.executable, "-m", "bench.hotpath", "--queries", "600", "--rounds", "2"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"dns2dot CPU per query: min [\d.]+ us", proc.stdout), proc.stdout
