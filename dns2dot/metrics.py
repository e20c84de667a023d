"""Counters on the hot path, Prometheus exposition off it; ``/healthz`` and ``/readyz``.

The query path only bumps plain integers in dicts (a ``prometheus_client`` counter
with labels costs a lock and a label lookup per increment, more than the rest of a
cache hit). Twice a second the serving loop takes a :meth:`Stats.snapshot`, a plain
dict; the HTTP endpoint renders snapshots with ``prometheus_client``'s metric
families. With ``--workers`` every worker writes its snapshot to a shared directory
and the supervisor's endpoint adds them up, so one scrape shows all processes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dns.rcode
import dns.rdatatype
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from dns2dot.serve.stats import BUCKETS as BUCKETS
from dns2dot.serve.stats import Snapshot as Snapshot
from dns2dot.serve.stats import Stats as Stats

log = logging.getLogger("dns2dot.metrics")

SNAPSHOT_INTERVAL = 0.5  # seconds


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Add up the snapshots of several workers (gauges too: each counts its own share)."""
    queries: Counter[tuple[str, int, int]] = Counter()
    latency: dict[str, list[float]] = {}
    sums: dict[str, Counter[str]] = {
        key: Counter() for key in ("dropped", "refused", "cache", "rules", "dnssec")
    }
    scalars: Counter[str] = Counter()
    upstreams: dict[str, dict[str, Any]] = {}
    ready = False
    for snap in snapshots:
        for transport, qtype, rcode, count in snap.get("queries", []):
            queries[(transport, qtype, rcode)] += count
        for transport, buckets in snap.get("latency", {}).items():
            total = latency.setdefault(transport, [0.0] * len(buckets))
            for i, value in enumerate(buckets):
                total[i] += value
        for key, counter in sums.items():
            counter.update(snap.get(key, {}))
        for key in ("inflight", "tcp_clients"):
            scalars[key] += snap.get(key, 0)
        for name, up in snap.get("upstreams", {}).items():
            into = upstreams.setdefault(
                name, {"up": 0, "srtt": 0.0, "failures": Counter(), "handshakes": Counter()}
            )
            into["up"] = max(into["up"], up.get("up", 0))
            into["srtt"] = max(into["srtt"], up.get("srtt", 0.0))
            into["failures"].update(up.get("failures", {}))
            into["handshakes"].update(up.get("handshakes", {}))
        ready = ready or bool(snap.get("ready"))
    return {
        "queries": [[t, q, r, n] for (t, q, r), n in queries.items()],
        "latency": latency,
        **{key: dict(counter) for key, counter in sums.items()},
        **scalars,
        "upstreams": upstreams,
        "ready": ready,
    }


class SnapshotCollector(Collector):
    """Renders a merged snapshot as the metric families the README and dashboard name."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        snap = self._source()
        queries = CounterMetricFamily(
            "dns2dot_queries", "Queries answered", labels=["transport", "qtype", "rcode"]
        )
        for transport, qtype, rcode, count in snap.get("queries", []):
            queries.add_metric([transport, _qtype(qtype), _rcode(rcode)], count)
        yield queries
        duration = HistogramMetricFamily(
            "dns2dot_query_duration_seconds",
            "Time from a query's arrival to its answer",
            labels=["transport"],
        )
        for transport, buckets in snap.get("latency", {}).items():
            cumulative = 0.0
            points = []
            for bound, count in zip((*BUCKETS, float("inf")), buckets, strict=False):
                cumulative += count
                points.append((_bound(bound), cumulative))
            duration.add_metric([transport], points, sum_value=buckets[-2])
        yield duration
        cache = snap.get("cache", {})
        yield CounterMetricFamily(
            "dns2dot_cache_hits", "Answers served from the cache", value=cache.get("hits", 0)
        )
        yield CounterMetricFamily(
            "dns2dot_cache_misses",
            "Cache lookups that found nothing fresh",
            value=cache.get("misses", 0),
        )
        yield GaugeMetricFamily(
            "dns2dot_cache_entries", "Answers in the cache", value=cache.get("entries", 0)
        )
        yield GaugeMetricFamily(
            "dns2dot_inflight_queries",
            "Queries waiting for an upstream",
            value=snap.get("inflight", 0),
        )
        yield GaugeMetricFamily(
            "dns2dot_tcp_clients", "TCP clients connected", value=snap.get("tcp_clients", 0)
        )
        up = GaugeMetricFamily("dns2dot_upstream_up", "1 if usable", labels=["upstream"])
        rtt = GaugeMetricFamily(
            "dns2dot_upstream_rtt_seconds", "Smoothed round-trip time", labels=["upstream"]
        )
        failures = CounterMetricFamily(
            "dns2dot_upstream_failures", "Upstream failures", labels=["upstream", "kind"]
        )
        handshakes = CounterMetricFamily(
            "dns2dot_tls_handshakes", "TLS handshakes completed", labels=["upstream", "resumed"]
        )
        for name, state in snap.get("upstreams", {}).items():
            up.add_metric([name], state.get("up", 0))
            rtt.add_metric([name], state.get("srtt", 0.0))
            for kind, count in state.get("failures", {}).items():
                failures.add_metric([name, kind], count)
            for resumed, count in state.get("handshakes", {}).items():
                handshakes.add_metric([name, resumed], count)
        yield from (up, rtt, failures, handshakes)
        for family, label, key, text in (
            ("dns2dot_rule_hits", "rule", "rules", "Queries answered or routed by a rule"),
            ("dns2dot_dropped", "reason", "dropped", "Input dropped or connections closed"),
            ("dns2dot_refused", "reason", "refused", "Queries answered REFUSED"),
            ("dns2dot_dnssec_answers", "result", "dnssec", "Upstream answers DNSSEC-validated"),
        ):
            metric = CounterMetricFamily(family, text, labels=[label])
            for reason, count in snap.get(key, {}).items():
                metric.add_metric([reason], count)
            yield metric


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _qtype(qtype: int) -> str:
    return "NONE" if qtype == 0 else dns.rdatatype.to_text(dns.rdatatype.RdataType(qtype))


def _rcode(rcode: int) -> str:
    try:
        return dns.rcode.to_text(dns.rcode.Rcode(rcode))
    except ValueError:
        return str(rcode)


def render(source: Callable[[], Snapshot]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(source))
    return generate_latest(registry)


class MetricsServer:
    """``/metrics``, ``/healthz`` (alive) and ``/readyz`` (an upstream is usable), in a thread.

    A thread, not the serving loop: it only ever reads snapshots, and the supervisor of
    ``--workers`` has no loop at all.
    """

    def __init__(self, host: str, port: int, source: Callable[[], Snapshot]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    outer._send(self, 200, render(source), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    outer._send(self, 200, b"ok\n")
                elif path == "/readyz":
                    ready = bool(source().get("ready"))
                    outer._send(
                        self, 200 if ready else 503, b"ready\n" if ready else b"no upstream\n"
                    )
                else:
                    outer._send(self, 404, b"not found\n")

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), format % args)

        family = ThreadingHTTPServer.address_family
        if ":" in host:
            import socket

            family = socket.AF_INET6
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family})
        self.httpd = server_class((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="dns2dot-metrics", daemon=True
        )

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def write_snapshot(directory: str, name: str, snap: Snapshot) -> None:
    """Atomically replace ``directory/name.json`` (a worker's share of the metrics)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(snap, handle)
    os.replace(tmp, os.path.join(directory, f"{name}.json"))


def read_snapshots(directory: str) -> list[Snapshot]:
    snaps = []
    for entry in sorted(os.listdir(directory)):
        if entry.endswith(".json") and not entry.startswith("."):
            try:
                with open(os.path.join(directory, entry)) as handle:
                    snaps.append(json.load(handle))
            except (OSError, ValueError):
                continue
    return snaps
