"""The printed tables, the targets (PASS/MISS, reported never asserted) and the JSON.

Every comparison is a ratio against a peer measured in the same run on the same
machine; absolute numbers from these shared 2-core machines mean little on their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from . import dnssec
from .listeners import LISTENER_ORDER, kind_of
from .workloads import CACHE_ORDER, DOH_KEYS, Cell


@dataclass(frozen=True)
class Target:
    """One goal from the issue: the measured value, the goal, and whether it was met."""

    name: str
    value: float | None
    op: str
    goal: float
    unit: str
    result: str
    why: str = ""


def _index(cells: Iterable[Cell]) -> dict[str, Cell]:
    return {c.id: c for c in cells}


def _metric(cells: dict[str, Cell], cid: str, key: str) -> float | None:
    cell = cells.get(cid)
    if cell is None or not cell.ok:
        return None
    value = cell.metrics.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _judge(name: str, value: float | None, op: str, goal: float, unit: str, why: str) -> Target:
    if value is None:
        return Target(name, None, op, goal, unit, "MISS", why or "no data: a cell failed")
    met = {">=": value >= goal, "<=": value <= goal, "<": value < goal, "==": value == goal}[op]
    return Target(name, value, op, goal, unit, "PASS" if met else "MISS", why)


def targets(cells_list: list[Cell], workloads: Iterable[str]) -> list[Target]:
    """The issue's targets, for the workloads that ran (a failed cell is a MISS)."""
    cells = _index(cells_list)
    ran = set(workloads)
    out: list[Target] = []

    def q(cid: str) -> float | None:
        return _metric(cells, cid, "qps")

    if "throughput" in ran:
        out += [
            _judge(
                "UDP q/s, dns2dot / unbound fwd (cache off)",
                _ratio(q("throughput/udp/dns2dot"), q("throughput/udp/unbound-fwd")),
                ">=",
                1.0,
                "x",
                "",
            ),
            _judge(
                "UDP q/s, dns2dot / stubby",
                _ratio(q("throughput/udp/dns2dot"), q("throughput/udp/stubby")),
                ">=",
                1.5,
                "x",
                "",
            ),
            _judge(
                "TCP q/s, dns2dot pool / unbound fwd (cache off)",
                _ratio(q("throughput/tcp/dns2dot"), q("throughput/tcp/unbound-fwd")),
                ">=",
                1.0,
                "x",
                "",
            ),
            _judge(
                "TCP q/s, dns2dot pipe / socat",
                _ratio(q("throughput/tcp/dns2dot-pipe"), q("throughput/tcp/socat")),
                ">=",
                1.0,
                "x",
                "",
            ),
        ]
        doh = doh_ratios(cells_list)
        out += [
            _judge(
                f"DoH upstream, {t.upper()} q/s, dns2dot / dnsdist",
                doh[f"{t}_dns2dot_over_dnsdist"],
                ">=",
                1.0,
                "x",
                "",
            )
            for t in ("udp", "tcp")
        ]
    if "cache" in ran:
        cr = cache_ratios(cells_list)
        out += [
            _judge(
                f"cache hits, {t.upper()} q/s, dns2dot / unbound fwd (cache on)",
                cr[f"{t}_dns2dot_over_unbound"],
                ">=",
                1.0,
                "x",
                "",
            )
            for t in ("udp", "tcp")
        ]
    if "published" in ran:
        socat = _metric(cells, "published/tcp/socat", "avg_ms")
        for key, label in (("dns2dot", "pool"), ("dns2dot-pipe", "pipe")):
            mine = _metric(cells, f"published/tcp/{key}", "avg_ms")
            target = _judge(
                f"published avg latency, dns2dot {label} / socat",
                _ratio(mine, socat),
                "<=",
                1.0,
                "x",
                "",
            )
            lost = _metric(cells, f"published/tcp/{key}", "lost")
            if lost:  # a lost query is not in the average: a low average would hide it
                target = replace(target, result="MISS", why=f"dns2dot lost {lost:,.0f} queries")
            out.append(target)
    if "idle" in ran:
        per = _metric(cells, "idle/tcp/dns2dot", "rss_per_client_kib")
        out.append(_judge("idle TCP clients, RSS per client", per, "<", 8.0, "KiB", ""))
    if "sustained" in ran:
        out.append(
            _judge(
                "sustained, queries lost",
                _metric(cells, "sustained/udp/dns2dot", "lost"),
                "==",
                0,
                "",
                "",
            )
        )
        growth = _metric(cells, "sustained/udp/dns2dot", "rss_growth_kib")
        limit = _metric(cells, "sustained/udp/dns2dot", "rss_flat_limit_kib")
        out.append(
            _judge(
                "sustained, RSS growth (first to last third)",
                growth,
                "<=",
                limit if limit is not None else 1024.0,
                "KiB",
                "",
            )
        )
    if "listeners" in ran:
        out += listener_targets(cells)
    return out


_DNS2DOT = {"dot": "dns2dot-dot-listener", "doh": "dns2dot-doh-listener"}
_NAME = {"dot": "DoT", "doh": "DoH"}


def listener_targets(cells: dict[str, Cell]) -> list[Target]:
    """The encrypted listeners' targets (issue 15): DoT at least as fast as dnsdist's and
    unbound's, DoH at least as fast as unbound's, nothing lost by dns2dot."""

    def q(key: str) -> float | None:
        return _metric(cells, f"listeners/{kind_of(key)}/{key}", "qps")

    out = [
        _judge(
            f"{_NAME[kind_of(mine)]} listener q/s, dns2dot / {peer.split('-')[0]}",
            _ratio(q(mine), q(peer)),
            ">=",
            1.0,
            "x",
            "",
        )
        for mine, peer in (
            ("dns2dot-dot-listener", "dnsdist-dot-frontend"),
            ("dns2dot-dot-listener", "unbound-dot-service"),
            ("dns2dot-doh-listener", "unbound-doh-service"),
        )
    ]
    for key in ("dns2dot-dot-listener", "dns2dot-doh-listener"):
        lost = _metric(cells, f"listeners/{kind_of(key)}/{key}", "lost")
        out.append(_judge(f"{_NAME[kind_of(key)]} listener, queries lost", lost, "<=", 0, "", ""))
    return out


def doh_ratios(cells_list: list[Cell]) -> dict[str, float | None]:
    """The DoH row's ratios: dns2dot over dnsdist (both forwarding to the same unbound
    DoH upstream), and dns2dot over the DoH ceiling (dnsperf -m doh straight at it)."""
    cells = _index(cells_list)
    ceiling = _metric(cells, "throughput/doh/upstream-doh", "qps")
    out: dict[str, float | None] = {}
    for t in ("udp", "tcp"):
        mine = _metric(cells, f"throughput/{t}/dns2dot-doh", "qps")
        peer = _metric(cells, f"throughput/{t}/dnsdist-doh", "qps")
        for key, value in (
            (f"{t}_dns2dot_over_dnsdist", _ratio(mine, peer)),
            (f"{t}_dns2dot_over_ceiling", _ratio(mine, ceiling)),
        ):
            out[key] = None if value is None else round(value, 3)
    return out


def doh_summary(cells_list: list[Cell]) -> str | None:
    """One line with the DoH ratios (for the report and the chart); None without DoH cells."""
    if not any(c.workload == "throughput" and c.server in DOH_KEYS for c in cells_list):
        return None
    r = doh_ratios(cells_list)
    return (
        f"DoH upstream: dns2dot / dnsdist UDP {_x(r['udp_dns2dot_over_dnsdist'])}, "
        f"TCP {_x(r['tcp_dns2dot_over_dnsdist'])}; dns2dot / DoH ceiling "
        f"UDP {_x(r['udp_dns2dot_over_ceiling'])}, TCP {_x(r['tcp_dns2dot_over_ceiling'])}"
    )


def cache_ratios(cells_list: list[Cell]) -> dict[str, float | None]:
    """The cache workload's ratios: dns2dot's q/s over unbound's, both forwarders with
    their cache on and warmed, same client transport."""
    cells = _index(cells_list)
    out: dict[str, float | None] = {}
    for t in ("udp", "tcp"):
        value = _ratio(
            _metric(cells, f"cache/{t}/dns2dot-cache", "qps"),
            _metric(cells, f"cache/{t}/unbound-fwd-cache", "qps"),
        )
        out[f"{t}_dns2dot_over_unbound"] = None if value is None else round(value, 3)
    return out


def cache_summary(cells_list: list[Cell]) -> str | None:
    """One line with the cache ratios (for the report and the chart); None without them."""
    if not any(c.workload == "cache" for c in cells_list):
        return None
    r = cache_ratios(cells_list)
    return (
        f"cache hits: dns2dot / unbound fwd (cache on) UDP {_x(r['udp_dns2dot_over_unbound'])}, "
        f"TCP {_x(r['tcp_dns2dot_over_unbound'])}"
    )


# ---------------------------------------------------------------- formatting


def _f(value: object, spec: str = ",.0f", empty: str = "-") -> str:
    if isinstance(value, (int, float)):
        return format(value, spec)
    return empty


def _ms(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _pct(value: object) -> str:
    return f"{value:.1f}%" if isinstance(value, (int, float)) else "-"


def _row(cols: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.ljust(w) if i < 2 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cols, widths, strict=True))
    ).rstrip()


def _perf_table(
    cells: list[Cell], ratio_of: dict[str, dict[str, float | None]], ratio_head: tuple[str, str]
) -> list[str]:
    head = ["server", "proto", "q/s", "avg ms", "max ms", "lost", ratio_head[0], ratio_head[1]]
    widths = [26, 5, 9, 8, 8, 7, 10, 10]
    lines = [_row(head, widths)]
    for c in cells:
        m = c.metrics
        r = ratio_of.get(c.id, {})
        if c.ok:
            cols = [
                c.label,
                c.transport,
                _f(m.get("qps")),
                _ms(m.get("avg_ms")),
                _ms(m.get("max_ms")),
                _f(m.get("lost"), ",d" if isinstance(m.get("lost"), int) else ",.0f"),
                _x(r.get("pool")),
                _x(r.get("pipe")) if ratio_head[1] else "",
            ]
        else:
            cols = [c.label, c.transport, "FAILED", "", "", "", "", ""]
        lines.append(_row(cols, widths))
    return lines


def _cold_ms(cell: Cell, key: str) -> str:
    value = cell.metrics.get(f"{key}_ms")
    rcode = cell.detail.get(f"{key}_rcode")
    if value is None:
        return "no answer" if f"{key}_error" in cell.detail else "-"
    return _ms(value) + ("" if rcode in (None, "NOERROR") else f" {rcode}")


def _cache_section(
    cells: dict[str, Cell], cache_cells: list[Cell], settings: dict[str, object]
) -> list[str]:
    """The cache workload's table: q/s, latency, lost, hit rate, dns2dot / unbound."""
    out = [
        "== cache hits: dns2dot and unbound fwd, caches on, each warmed by one pass over the "
        "query file",
        f"   (dnsperf -n 1, UDP), then dnsperf -c {settings['clients']} "
        f"-l {settings['duration']:g} like throughput (q/s: higher is better)",
        "   ratio column: dns2dot q/s / unbound's, same transport (>1 = dns2dot faster); "
        "hits: answers from",
        "   the cache during the run, by the server's own counters",
    ]
    head = ["server", "proto", "q/s", "avg ms", "max ms", "lost", "hits", "d2d/unbound"]
    widths = [26, 5, 9, 8, 8, 7, 7, 11]
    out.append(_row(head, widths))
    for c in cache_cells:
        m = c.metrics
        if c.ok:
            ratio = (
                _ratio(
                    _metric(cells, f"cache/{c.transport}/dns2dot-cache", "qps"),
                    _metric(cells, c.id, "qps"),
                )
                if c.server == "unbound-fwd-cache"
                else None
            )
            cols = [
                c.label,
                c.transport,
                _f(m.get("qps")),
                _ms(m.get("avg_ms")),
                _ms(m.get("max_ms")),
                _f(m.get("lost"), ",d" if isinstance(m.get("lost"), int) else ",.0f"),
                _pct(m.get("hit_pct")),
                _x(ratio),
            ]
        else:
            cols = [c.label, c.transport, "FAILED", "", "", "", "", ""]
        out.append(_row(cols, widths))
    warmed: list[str] = []
    for key in CACHE_ORDER:
        cell = next((c for c in cache_cells if c.server == key), None)
        warm = cell.detail.get("warm") if cell is not None else None
        if cell is None or not isinstance(warm, dict) or not warm:
            continue
        note = "" if warm.get("complete") else " (INCOMPLETE: cut at the time limit)"
        warmed.append(
            f"{cell.label} {_f(warm.get('completed'))} answers in {_f(warm.get('run_s'), '.1f')} s"
            f"{note}"
        )
    if warmed:
        out.append("   warm-up (UDP): " + "; ".join(warmed))
    return out


def render(
    cells_list: list[Cell],
    tgts: list[Target],
    settings: dict[str, object],
    failed_servers: list[str],
) -> str:
    """The human report: one section per workload, then targets, then failures."""
    cells = _index(cells_list)
    out: list[str] = []

    def by(workload: str) -> list[Cell]:
        return [c for c in cells_list if c.workload == workload]

    tp_all = by("throughput")
    tp = [c for c in tp_all if c.server not in DOH_KEYS]
    tp_doh = [c for c in tp_all if c.server in DOH_KEYS]
    if tp:
        ratios: dict[str, dict[str, float | None]] = {}
        for c in tp:
            if c.server.startswith("dns2dot") or c.transport == "dot":
                continue
            mine = _metric(cells, c.id, "qps")
            ratios[c.id] = {
                "pool": _ratio(_metric(cells, f"throughput/{c.transport}/dns2dot", "qps"), mine),
                "pipe": _ratio(_metric(cells, "throughput/tcp/dns2dot-pipe", "qps"), mine)
                if c.transport == "tcp"
                else None,
            }
        out.append(
            f"== throughput: dnsperf -c {settings['clients']} -l {settings['duration']:g}, "
            "same query file for all (q/s: higher is better)"
        )
        out.append(
            "   ratio columns: dns2dot q/s / that peer's q/s, same transport (>1 = dns2dot faster)"
        )
        out += _perf_table(tp, ratios, ("pool/peer", "pipe/peer"))
        dot = _metric(cells, "throughput/dot/upstream", "qps")
        parts = [
            f"{name} {_x(_ratio(_metric(cells, cid, 'qps'), dot))}"
            for name, cid in (
                ("UDP", "throughput/udp/dns2dot"),
                ("TCP pool", "throughput/tcp/dns2dot"),
                ("TCP pipe", "throughput/tcp/dns2dot-pipe"),
            )
        ]
        out.append(
            "   dns2dot vs the ceiling (dnsperf -m dot straight at the upstream): "
            + ", ".join(parts)
        )
        out.append("")
    if tp_doh:
        doh_r: dict[str, dict[str, float | None]] = {
            c.id: {
                "pool": _ratio(
                    _metric(cells, f"throughput/{c.transport}/dns2dot-doh", "qps"),
                    _metric(cells, c.id, "qps"),
                )
            }
            for c in tp_doh
            if c.server == "dnsdist-doh"
        }
        out.append(
            "== throughput over a DoH upstream (unbound https-port, same zone): dnsdist "
            "(dohPath) and dns2dot (-u https://...) forward to it"
        )
        out.append(
            "   ratio column: dns2dot q/s / dnsdist's, same transport (>1 = dns2dot faster); "
            "the doh row is dnsperf -m doh (GET) straight at the upstream, the ceiling"
        )
        out += _perf_table(tp_doh, doh_r, ("d2d/peer", ""))
        summary = doh_summary(cells_list)
        if summary:
            out.append(f"   {summary}")
        out.append("")
    listener_cells = sorted(by("listeners"), key=lambda c: LISTENER_ORDER.index(c.server))
    if listener_cells:
        ratio: dict[str, dict[str, float | None]] = {
            c.id: {
                "pool": _ratio(
                    _metric(
                        cells, f"listeners/{c.transport}/dns2dot-{c.transport}-listener", "qps"
                    ),
                    _metric(cells, c.id, "qps"),
                )
            }
            for c in listener_cells
            if not c.server.startswith("dns2dot")
        }
        out.append(
            "== encrypted listeners: DoT (dnsperf -m dot) and DoH (-m doh, GET) served to "
            "clients, each server forwarding to the DoT upstream, cache off"
        )
        out.append(
            "   ratio column: dns2dot q/s / that peer's, same protocol (>1 = dns2dot faster)"
        )
        out += _perf_table(listener_cells, ratio, ("d2d/peer", ""))
        out.append("")
    cache_cells = sorted(by("cache"), key=lambda c: CACHE_ORDER.index(c.server))
    if cache_cells:
        out += _cache_section(cells, cache_cells, settings)
        summary = cache_summary(cells_list)
        if summary:
            out.append(f"   {summary}")
        out.append("")
    pub = by("published")
    if pub:
        socat_avg = _metric(cells, "published/tcp/socat", "avg_ms")
        socat_max = _metric(cells, "published/tcp/socat", "max_ms")
        pr = {
            c.id: {
                "pool": _ratio(_metric(cells, c.id, "avg_ms"), socat_avg),
                "pipe": _ratio(_metric(cells, c.id, "max_ms"), socat_max),
            }
            for c in pub
            if c.server != "socat"
        }
        out.append(
            f"== published: dnsperf -m tcp -c {settings['published_clients']} "
            f"-Q {settings['published_qps']} "
            f"-l {settings['published_duration']:g} (latency: lower is better)"
        )
        out.append(
            "   ratio columns: this row's avg (and max) latency / socat's (<1 = dns2dot faster)"
        )
        out += _perf_table(pub, pr, ("avg/socat", "max/socat"))
        out.append("")
    cold = by("coldstart")
    if cold:
        out.append("== coldstart: single timed queries (ms)")
        widths = [26, 5, 10, 10, 12, 12]
        out.append(_row(["server", "proto", "first", "warm", "after drop", "then warm"], widths))
        for c in cold:
            out.append(
                _row(
                    [
                        c.label,
                        c.transport,
                        *(
                            _cold_ms(c, k)
                            for k in ("first", "warm", "after_drop", "after_drop_warm")
                        ),
                    ],
                    widths,
                )
            )
        out.append(
            "   dns2dot/udp: fresh process (first = upstream TLS handshake), then the upstream is"
        )
        out.append("   restarted (after drop); tcp rows: every query opens a new client connection")
        out.append("")
    idle_c = cells.get("idle/tcp/dns2dot")
    if idle_c is not None:
        m = idle_c.metrics
        out.append(
            f"== idle: {idle_c.detail.get('clients_requested')} idle TCP clients on a fresh dns2dot"
        )
        out.append(
            f"   connected {_f(m.get('clients_connected'))}, "
            f"accepted {_f(m.get('clients_accepted'))}, "
            f"still open {_f(m.get('clients_open'))} "
            f"(after the UDP run {_f(m.get('clients_open_after_udp'))})"
        )
        out.append(
            f"   RSS {_f(m.get('rss_before_kib'))} KiB -> {_f(m.get('rss_after_kib'))} KiB: "
            f"{_f(m.get('rss_per_client_bytes'), ',.0f')} bytes per client"
        )
        out.append(
            f"   UDP meanwhile: {_f(m.get('udp_qps'))} q/s, avg {_ms(m.get('udp_avg_ms'))} ms, "
            f"lost {_f(m.get('udp_lost'))}; single query {_ms(m.get('udp_query_ms'))} ms"
        )
        if not idle_c.ok:
            out.append(f"   FAILED: {idle_c.error}")
        out.append("")
    sus = cells.get("sustained/udp/dns2dot")
    if sus is not None:
        m = sus.metrics
        out.append(
            f"== sustained: dns2dot UDP at {_f(sus.detail.get('target_qps'))} q/s (-Q) "
            f"for {settings['sustained_duration']:g} s"
        )
        out.append(
            f"   {_f(m.get('qps'))} q/s, avg {_ms(m.get('avg_ms'))} ms, "
            f"max {_ms(m.get('max_ms'))} ms, "
            f"lost {_f(m.get('lost'))} of {_f(m.get('sent'))}"
        )
        out.append(
            f"   RSS {_f(m.get('rss_first_kib'))} -> {_f(m.get('rss_last_kib'))} KiB "
            f"(max {_f(m.get('rss_max_kib'))}, growth {_f(m.get('rss_growth_kib'), ',.0f')} KiB, "
            f"{'flat' if m.get('rss_flat') else 'NOT flat' if 'rss_flat' in m else '?'})"
        )
        if not sus.ok:
            out.append(f"   FAILED: {sus.error}")
        out.append("")
    out += dnssec.report_lines(by("dnssec"))
    if tgts:
        out.append("== targets (reported, never asserted)")
        widths = [max([50, *(len(t.name) for t in tgts)]), 10, 10, 6]
        out.append(_row(["target", "measured", "goal", "result"], widths))
        for t in tgts:
            goal = f"{t.op} {t.goal:,.4g}{t.unit}"
            spec = ",.0f" if t.unit == "" else ",.3f"  # 0.996x must not read as 1.00x
            val = "-" if t.value is None else f"{t.value:{spec}}{t.unit}"
            out.append(_row([t.name, val, goal, t.result], widths))
            if t.why:
                out.append(f"   {t.why}")
        out.append("")
    failed = [c for c in cells_list if not c.ok]
    if failed or failed_servers:
        out.append(f"== FAILED: {len(failed)} cell(s), {len(failed_servers)} server(s)")
        for s in failed_servers:
            out.append(f"   server {s}")
        for c in failed:
            lines = (c.error or "unknown").strip().splitlines() or ["unknown"]
            out.append(f"   {c.id}: {lines[0]}")
            if len(lines) > 1:  # the end of a log tail: usually the actual exception
                out.append(f"      ... {lines[-1].strip()}")
        out.append("")
    return "\n".join(out)


def write_json(path: Path, payload: dict[str, object]) -> None:
    """results.json: cells with metrics, targets, servers, settings, versions."""
    path.write_text(json.dumps(payload, indent=2, default=_default) + "\n")


def _default(obj: object) -> object:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Target):
        return asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
