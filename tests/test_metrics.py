"""Unit tests for :mod:`dns2dot.metrics`: counters, snapshots, their sum, the exposition.

The rendered text is parsed with ``prometheus_client``'s own parser. The HTTP server is
started on a free loopback port and asked with urllib (no proxy).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from dns2dot import metrics
from dns2dot.metrics import BUCKETS, MetricsServer, Snapshot, Stats, merge, render

# --------------------------------------------------------------------------- helpers

Labels = tuple[tuple[str, str], ...]


def scrape(snap: Snapshot) -> dict[str, dict[tuple[str, Labels], float]]:
    """family name -> {(sample name, sorted labels): value}, via prometheus_client's parser."""
    text = render(lambda: snap).decode("utf-8")
    families: dict[str, dict[tuple[str, Labels], float]] = {}
    for family in text_string_to_metric_families(text):
        samples: dict[tuple[str, Labels], float] = {}
        for sample in family.samples:
            assert isinstance(sample, Sample)
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        families[family.name] = samples
    return families


def family_types(snap: Snapshot) -> dict[str, str]:
    text = render(lambda: snap).decode("utf-8")
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def value(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def upstream(
    up: int = 1, srtt: float = 0.02, failures: dict[str, int] | None = None, **handshakes: int
) -> dict[str, Any]:
    return {"up": up, "srtt": srtt, "failures": failures or {}, "handshakes": handshakes}


def full_snapshot() -> Snapshot:
    stats = Stats()
    stats.answered("udp", 1, 0, 0.0003)  # A NOERROR
    stats.answered("udp", 1, 0, 0.001)  # exactly on a bound: counted in that bucket
    stats.answered("udp", 28, 3, 0.02)  # AAAA NXDOMAIN
    stats.answered("tcp", 0, 1, 0.0)  # FORMERR for a query with no readable type
    stats.answered("tcp", 15, 2, 7.5)  # MX SERVFAIL, beyond the last bound
    stats.answered("tcp", 65280, 16, 0.3)  # a private type, BADVERS
    stats.answered("tcp", 1, 12, 0.3)  # an rcode dnspython has no name for
    stats.dropped["malformed"] += 3
    stats.dropped["ratelimit"] += 1
    stats.refused["acl"] += 2
    return stats.snapshot(
        cache={"hits": 10, "misses": 4, "entries": 7},
        inflight=3,
        tcp_clients=2,
        upstreams={
            "1.1.1.1:853#cloudflare-dns.com": upstream(
                1, 0.015, {"timeout": 2, "tls": 1}, false=3, true=5
            ),
            "1.0.0.1:853#cloudflare-dns.com": upstream(0, 0.0),
        },
        rules={"hosts": 1, "block": 5, "forward": 0},
        ready=True,
    )


# --------------------------------------------------------------------------- Stats


def test_answered_counts_and_histogram() -> None:
    stats = Stats()
    stats.answered("udp", 1, 0, 0.0003)
    stats.answered("udp", 1, 0, 0.0005)
    stats.answered("udp", 1, 3, 6.0)
    assert stats.queries == {("udp", 1, 0): 2, ("udp", 1, 3): 1}
    buckets = stats.latency["udp"]
    assert len(buckets) == len(BUCKETS) + 3  # the bounds, +Inf, sum, count
    assert buckets[0] == 2  # 0.0003 and 0.0005 (le is inclusive)
    assert buckets[len(BUCKETS)] == 1  # +Inf
    assert buckets[-2] == pytest.approx(6.0008)
    assert buckets[-1] == 3


def test_snapshot_is_json_and_holds_gauges() -> None:
    snap = full_snapshot()
    again = json.loads(json.dumps(snap))
    assert again == snap
    assert sorted(map(tuple, snap["queries"])) == sorted(
        [
            ("udp", 1, 0, 2),
            ("udp", 28, 3, 1),
            ("tcp", 0, 1, 1),
            ("tcp", 15, 2, 1),
            ("tcp", 65280, 16, 1),
            ("tcp", 1, 12, 1),
        ]
    )
    assert snap["dropped"] == {"malformed": 3, "ratelimit": 1}
    assert snap["refused"] == {"acl": 2}
    assert snap["inflight"] == 3
    assert snap["ready"] is True


def test_snapshot_is_a_copy() -> None:
    stats = Stats()
    stats.answered("udp", 1, 0, 0.01)
    snap = stats.snapshot()
    stats.answered("udp", 1, 0, 0.01)
    stats.dropped["x"] += 1
    assert snap["queries"] == [["udp", 1, 0, 1]]
    assert snap["latency"]["udp"][-1] == 1
    assert snap["dropped"] == {}


# --------------------------------------------------------------------------- merge


def test_merge_sums_counters_and_takes_max_of_up_and_srtt() -> None:
    one = Stats()
    one.answered("udp", 1, 0, 0.001)
    one.answered("tcp", 28, 0, 0.2)
    one.dropped["malformed"] += 1
    two = Stats()
    two.answered("udp", 1, 0, 0.003)
    two.answered("udp", 1, 2, 3.0)
    two.refused["acl"] += 4
    two.dropped["malformed"] += 2
    name = "192.0.2.1:853#dns.test"
    snaps = [
        one.snapshot(
            cache={"hits": 1, "misses": 2, "entries": 3},
            inflight=1,
            tcp_clients=5,
            upstreams={name: upstream(0, 0.05, {"timeout": 1}, true=1)},
            rules={"block": 1},
            ready=False,
        ),
        two.snapshot(
            cache={"hits": 10, "misses": 20, "entries": 30},
            inflight=2,
            tcp_clients=6,
            upstreams={name: upstream(1, 0.01, {"timeout": 2, "tls": 1}, true=2, false=1)},
            rules={"block": 2, "hosts": 7},
            ready=True,
        ),
        {},  # a worker that has not reported anything yet
    ]
    total = merge(snaps)
    assert sorted(map(tuple, total["queries"])) == [
        ("tcp", 28, 0, 1),
        ("udp", 1, 0, 2),
        ("udp", 1, 2, 1),
    ]
    assert total["latency"]["udp"][-1] == 3
    assert total["latency"]["udp"][-2] == pytest.approx(3.004)
    assert total["latency"]["tcp"][-1] == 1
    assert total["cache"] == {"hits": 11, "misses": 22, "entries": 33}
    assert total["dropped"] == {"malformed": 3}
    assert total["refused"] == {"acl": 4}
    assert total["rules"] == {"block": 3, "hosts": 7}
    assert total["inflight"] == 3
    assert total["tcp_clients"] == 11
    up = total["upstreams"][name]
    assert up["up"] == 1
    assert up["srtt"] == 0.05
    assert up["failures"] == {"timeout": 3, "tls": 1}
    assert up["handshakes"] == {"true": 3, "false": 1}
    assert total["ready"] is True
    json.dumps(total)  # still a snapshot: it can be written and read back


@pytest.mark.parametrize(
    ("readies", "expected"),
    [([False, False], False), ([False, True], True), ([True, True], True), ([], False)],
)
def test_merge_ready_is_any(readies: list[bool], expected: bool) -> None:
    assert merge([{"ready": r} for r in readies])["ready"] is expected


def test_merge_of_one_renders_like_the_snapshot() -> None:
    snap = full_snapshot()
    assert scrape(merge([snap])) == scrape(snap)


def test_merge_of_two_doubles_counters() -> None:
    snap = full_snapshot()
    one = scrape(snap)
    two = scrape(merge([snap, json.loads(json.dumps(snap))]))
    queries = (
        "dns2dot_queries_total",
        (("qtype", "A"), ("rcode", "NOERROR"), ("transport", "udp")),
    )
    assert two["dns2dot_queries"][queries] == 2 * one["dns2dot_queries"][queries]
    assert two["dns2dot_cache_hits"][("dns2dot_cache_hits_total", ())] == 20
    assert two["dns2dot_upstream_rtt_seconds"] == one["dns2dot_upstream_rtt_seconds"]
    assert two["dns2dot_upstream_up"] == one["dns2dot_upstream_up"]


# --------------------------------------------------------------------------- exposition


def test_render_family_names_and_types() -> None:
    assert family_types(full_snapshot()) == {
        "dns2dot_queries": "counter",
        "dns2dot_query_duration_seconds": "histogram",
        "dns2dot_cache_hits": "counter",
        "dns2dot_cache_misses": "counter",
        "dns2dot_cache_entries": "gauge",
        "dns2dot_inflight_queries": "gauge",
        "dns2dot_tcp_clients": "gauge",
        "dns2dot_upstream_up": "gauge",
        "dns2dot_upstream_rtt_seconds": "gauge",
        "dns2dot_upstream_failures": "counter",
        "dns2dot_tls_handshakes": "counter",
        "dns2dot_rule_hits": "counter",
        "dns2dot_dropped": "counter",
        "dns2dot_refused": "counter",
        "dns2dot_dnssec_answers": "counter",
    }


def test_render_queries_total_with_text_labels() -> None:
    q = scrape(full_snapshot())["dns2dot_queries"]
    name = "dns2dot_queries_total"
    assert value(q, name, transport="udp", qtype="A", rcode="NOERROR") == 2
    assert value(q, name, transport="udp", qtype="AAAA", rcode="NXDOMAIN") == 1
    assert value(q, name, transport="tcp", qtype="NONE", rcode="FORMERR") == 1
    assert value(q, name, transport="tcp", qtype="MX", rcode="SERVFAIL") == 1
    assert value(q, name, transport="tcp", qtype="TYPE65280", rcode="BADVERS") == 1
    assert value(q, name, transport="tcp", qtype="A", rcode="12") == 1
    assert len(q) == 6


def test_render_histogram_buckets_cumulative_and_count() -> None:
    snap = full_snapshot()
    h = scrape(snap)["dns2dot_query_duration_seconds"]
    per_transport: dict[str, int] = {}
    for transport, _, _, count in snap["queries"]:
        per_transport[transport] = per_transport.get(transport, 0) + count
    for transport, total in per_transport.items():
        bounds = [*(repr(b) for b in BUCKETS), "+Inf"]
        counts = [
            value(h, "dns2dot_query_duration_seconds_bucket", transport=transport, le=le)
            for le in bounds
        ]
        assert counts == sorted(counts)  # cumulative: never decreasing
        assert counts[-1] == total
        assert value(h, "dns2dot_query_duration_seconds_count", transport=transport) == total
    udp = {
        le: value(h, "dns2dot_query_duration_seconds_bucket", transport="udp", le=le)
        for le in ("0.0005", "0.001", "0.01", "0.025", "+Inf")
    }
    assert udp == {"0.0005": 1, "0.001": 2, "0.01": 2, "0.025": 3, "+Inf": 3}
    tcp_inf = value(h, "dns2dot_query_duration_seconds_bucket", transport="tcp", le="+Inf")
    tcp_5 = value(h, "dns2dot_query_duration_seconds_bucket", transport="tcp", le="5.0")
    assert (tcp_5, tcp_inf) == (3, 4)  # the 7.5 s answer is only in +Inf
    tcp_sum = value(h, "dns2dot_query_duration_seconds_sum", transport="tcp")
    assert math.isclose(tcp_sum, 0.0 + 7.5 + 0.3 + 0.3)


def test_render_cache_gauges_and_reasons() -> None:
    f = scrape(full_snapshot())
    assert f["dns2dot_cache_hits"] == {("dns2dot_cache_hits_total", ()): 10}
    assert f["dns2dot_cache_misses"] == {("dns2dot_cache_misses_total", ()): 4}
    assert f["dns2dot_cache_entries"] == {("dns2dot_cache_entries", ()): 7}
    assert f["dns2dot_inflight_queries"] == {("dns2dot_inflight_queries", ()): 3}
    assert f["dns2dot_tcp_clients"] == {("dns2dot_tcp_clients", ()): 2}
    rule = f["dns2dot_rule_hits"]
    assert value(rule, "dns2dot_rule_hits_total", rule="block") == 5
    assert value(rule, "dns2dot_rule_hits_total", rule="hosts") == 1
    assert value(rule, "dns2dot_rule_hits_total", rule="forward") == 0
    assert value(f["dns2dot_dropped"], "dns2dot_dropped_total", reason="malformed") == 3
    assert value(f["dns2dot_dropped"], "dns2dot_dropped_total", reason="ratelimit") == 1
    assert value(f["dns2dot_refused"], "dns2dot_refused_total", reason="acl") == 2


def test_render_upstreams() -> None:
    f = scrape(full_snapshot())
    cf1 = "1.1.1.1:853#cloudflare-dns.com"
    cf2 = "1.0.0.1:853#cloudflare-dns.com"
    assert value(f["dns2dot_upstream_up"], "dns2dot_upstream_up", upstream=cf1) == 1
    assert value(f["dns2dot_upstream_up"], "dns2dot_upstream_up", upstream=cf2) == 0
    rtt = f["dns2dot_upstream_rtt_seconds"]
    assert value(rtt, "dns2dot_upstream_rtt_seconds", upstream=cf1) == 0.015
    fail = f["dns2dot_upstream_failures"]
    assert value(fail, "dns2dot_upstream_failures_total", upstream=cf1, kind="timeout") == 2
    assert value(fail, "dns2dot_upstream_failures_total", upstream=cf1, kind="tls") == 1
    assert len(fail) == 2
    hs = f["dns2dot_tls_handshakes"]
    assert value(hs, "dns2dot_tls_handshakes_total", upstream=cf1, resumed="true") == 5
    assert value(hs, "dns2dot_tls_handshakes_total", upstream=cf1, resumed="false") == 3


def test_render_empty_snapshot() -> None:
    f = scrape({})
    assert f["dns2dot_queries"] == {}
    assert f["dns2dot_cache_hits"] == {("dns2dot_cache_hits_total", ()): 0}
    assert f["dns2dot_upstream_up"] == {}


def test_label_values_are_escaped() -> None:
    snap = {"dropped": {'odd "reason"\\\n': 1}, "upstreams": {'x"y': upstream()}}
    f = scrape(snap)
    assert value(f["dns2dot_dropped"], "dns2dot_dropped_total", reason='odd "reason"\\\n') == 1
    assert value(f["dns2dot_upstream_up"], "dns2dot_upstream_up", upstream='x"y') == 1


# --------------------------------------------------------------------------- snapshot files


def test_write_and_read_snapshots(tmp_path: Path) -> None:
    snap = full_snapshot()
    metrics.write_snapshot(str(tmp_path), "worker-1", snap)
    metrics.write_snapshot(str(tmp_path), "worker-2", {"ready": False})
    metrics.write_snapshot(str(tmp_path), "worker-1", {**snap, "inflight": 9})  # replaced
    (tmp_path / ".worker-3.json").write_text(json.dumps({"ready": True}))  # a dotfile
    (tmp_path / ".worker-4.tmpabc").write_text("{half")  # a temporary left behind
    (tmp_path / "notes.txt").write_text("not a snapshot")
    (tmp_path / "broken.json").write_text("{not json")
    read = metrics.read_snapshots(str(tmp_path))
    assert read == [{**snap, "inflight": 9}, {"ready": False}]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".worker-1")) == []
    assert merge(read)["ready"] is True


def test_read_snapshots_empty_dir(tmp_path: Path) -> None:
    assert metrics.read_snapshots(str(tmp_path)) == []
    assert merge([])["ready"] is False


# --------------------------------------------------------------------------- HTTP


class Source:
    """A snapshot the test can change while the server runs."""

    def __init__(self) -> None:
        self.snap: Snapshot = full_snapshot()

    def __call__(self) -> Snapshot:
        return self.snap


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[MetricsServer, Source]]:
    """One server for the module: stopping one waits for its poll interval (0.5 s)."""
    source = Source()
    srv = MetricsServer("127.0.0.1", 0, source).start()
    try:
        yield srv, source
    finally:
        srv.stop()


@pytest.fixture
def server(running: tuple[MetricsServer, Source]) -> tuple[MetricsServer, Source]:
    running[1].snap = full_snapshot()
    return running


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(srv: MetricsServer, path: str) -> tuple[int, str, bytes]:
    try:
        with _opener.open(f"http://127.0.0.1:{srv.port}{path}", timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read()


def test_http_metrics(server: tuple[MetricsServer, Source]) -> None:
    srv, source = server
    assert srv.port > 0
    status, content_type, body = get(srv, "/metrics")
    assert status == 200
    assert content_type == CONTENT_TYPE_LATEST
    assert content_type.startswith("text/plain")
    assert body == render(source)
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "dns2dot_queries" in names
    assert get(srv, "/metrics?name[]=x")[0] == 200


def test_http_healthz(server: tuple[MetricsServer, Source]) -> None:
    srv, source = server
    source.snap = {"ready": False}
    assert get(srv, "/healthz")[:2] == (200, "text/plain; charset=utf-8")


def test_http_readyz_follows_snapshot(server: tuple[MetricsServer, Source]) -> None:
    srv, source = server
    assert get(srv, "/readyz")[0] == 200
    source.snap = {**source.snap, "ready": False}
    assert get(srv, "/readyz")[0] == 503
    source.snap = {}
    assert get(srv, "/readyz")[0] == 503
    source.snap = merge([{"ready": False}, {"ready": True}])
    assert get(srv, "/readyz")[0] == 200


@pytest.mark.parametrize("path", ["/", "/metric", "/metrics/", "/healthz/x", "/favicon.ico"])
def test_http_other_paths_404(server: tuple[MetricsServer, Source], path: str) -> None:
    assert get(server[0], path)[0] == 404


def test_dnssec_answers_by_result_and_merged() -> None:
    snap = {"dnssec": {"secure": 3, "insecure": 2, "bogus": 1}}
    families = scrape(merge([snap, snap]))["dns2dot_dnssec_answers"]
    name = "dns2dot_dnssec_answers_total"
    assert value(families, name, result="secure") == 6
    assert value(families, name, result="insecure") == 4
    assert value(families, name, result="bogus") == 2
