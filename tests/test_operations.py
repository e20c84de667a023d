"""Running dns2dot in production: metrics and health endpoints, logs, signals (SIGHUP
reload, SIGTERM drain), several workers, and ``dns2dot check``.

Why: operators see dns2dot through these, and a reload or a stop must not cost a
single query. Every test drives a real process; metrics are compared with what the
clients themselves counted (dnsperf's statistics), never with timings.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.rcode
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support.dnsperf import PerfResult, dnsperf_argv, parse_dnsperf, run_dnsperf
from support.fake_upstream import DEFAULT_A, FakeUpstream, fake_address
from support.net import (
    LOOPBACK,
    TcpClient,
    a_addresses,
    free_port,
    make_query,
    rcode_text,
    tcp_query,
    udp_many,
    udp_query,
)
from support.pki import TLS_NAME, Pki
from support.proc import JSON_STARTUP_MARK, Dns2Dot, run_dns2dot
from support.scrape import Metrics, http_get, wait_for, wait_for_metrics
from support.unbound import N_NAMES, UnboundUpstream

pytestmark = pytest.mark.integration

Factory = Callable[..., Dns2Dot]
FakeFactory = Callable[..., FakeUpstream]


# -- helpers ---------------------------------------------------------------------------


def dead_spec() -> str:
    """A DoT spec on a loopback port where nothing listens (connection refused)."""
    return f"{LOOPBACK}:{free_port()}#{TLS_NAME}"


def with_metrics(
    dns2dot: Factory, extra: list[str] | None = None, **kw: object
) -> tuple[Dns2Dot, int]:
    mport = free_port()
    d = dns2dot(extra=[*(extra or []), "--metrics", f"{LOOPBACK}:{mport}"], **kw)
    return d, mport


def write_yaml(path: Path, document: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def log_count(d: Dns2Dot, text: str) -> int:
    return d.stderr().count(text)


def wait_log(d: Dns2Dot, text: str, count: int = 1, timeout: float = 10.0) -> None:
    """Wait (bounded) until ``text`` has been logged ``count`` times."""
    seen = wait_for(lambda: log_count(d, text), lambda n: n >= count, timeout)
    assert seen >= count, f"{text!r} logged {seen} times, wanted {count}:\n{d.stderr()[-3000:]}"


def sighup_and_wait(d: Dns2Dot, outcome: str = "reloaded the configuration") -> None:
    """SIGHUP, then wait for one more ``outcome`` line in the log."""
    before = log_count(d, outcome)
    d.proc.send_signal(signal.SIGHUP)
    wait_log(d, outcome, before + 1)


def queries_by_transport(m: Metrics) -> dict[str, float]:
    return m.by("dns2dot_queries_total", "transport")


def perf_data(tmp_path: Path) -> Path:
    """A dnsperf input file: unbound's 1000 ``n<i>`` names, type A."""
    p = tmp_path / "queries.txt"
    p.write_text("".join(f"n{i}.example.test A\n" for i in range(N_NAMES)))
    return p


def spki_pin(cert_pem: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the first certificate in ``cert_pem``."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


# -- metrics and health ------------------------------------------------------------------


def test_metrics_match_dnsperf_counts(
    dns2dot: Factory, unbound: UnboundUpstream, tmp_path: Path
) -> None:
    """After dnsperf over UDP then TCP, the per-transport query counters equal what
    dnsperf completed; cache hits and misses add up to every query; the TCP client
    gauge goes back to 0 once the clients leave."""
    d, mport = with_metrics(dns2dot, upstreams=[unbound.spec])
    data = perf_data(tmp_path)
    udp = run_dnsperf(d.port, data, runs=1, seconds=20, clients=4)
    tcp = run_dnsperf(d.port, data, tcp=True, runs=2, seconds=20, clients=4)
    for res in (udp, tcp):
        assert res.lost == 0 and res.completed == res.sent, res.raw
    total = udp.completed + tcp.completed
    m = wait_for_metrics(mport, lambda m: m.sum("dns2dot_queries_total") >= total)
    assert queries_by_transport(m) == {"udp": udp.completed, "tcp": tcp.completed}, m.text
    assert m.sum("dns2dot_queries_total", qtype="A", rcode="NOERROR") == total
    durations = m.by("dns2dot_query_duration_seconds_count", "transport")
    assert durations == {"udp": udp.completed, "tcp": tcp.completed}, m.text
    hits, misses = m.sum("dns2dot_cache_hits_total"), m.sum("dns2dot_cache_misses_total")
    assert hits + misses == total, m.text
    assert misses == N_NAMES, m.text  # each name missed once, by the UDP run
    assert m.sum("dns2dot_cache_entries") == N_NAMES, m.text
    assert m.sum("dns2dot_upstream_up", upstream=unbound.spec) == 1, m.text
    assert m.sum("dns2dot_inflight_queries") == 0, m.text
    assert m.sum("dns2dot_upstream_rtt_seconds", upstream=unbound.spec) > 0, m.text
    assert m.sum("dns2dot_tls_handshakes_total", upstream=unbound.spec) >= 1, m.text
    m = wait_for_metrics(mport, lambda m: m.sum("dns2dot_tcp_clients") == 0)
    assert m.sum("dns2dot_tcp_clients") == 0, "dnsperf's TCP clients are still counted"

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x12\x34\x00\x00\x01", (LOOPBACK, d.port))  # shorter than a header
    m = wait_for_metrics(mport, lambda m: m.sum("dns2dot_dropped_total") >= 1)
    assert m.sum("dns2dot_dropped_total", reason="malformed") == 1, m.text
    assert m.sum("dns2dot_queries_total") == total, "a dropped datagram was counted as a query"

    clients = [TcpClient(d.port) for _ in range(3)]
    try:
        for c in clients:
            c.send_query(make_query("n1.example.test."))
            assert c.recv_message() is not None
        m = wait_for_metrics(mport, lambda m: m.sum("dns2dot_tcp_clients") == 3)
        assert m.sum("dns2dot_tcp_clients") == 3, m.text
    finally:
        for c in clients:
            c.close()
    m = wait_for_metrics(mport, lambda m: m.sum("dns2dot_tcp_clients") == 0)
    assert m.sum("dns2dot_tcp_clients") == 0, m.text


def test_healthz_and_readyz_follow_the_upstream(
    dns2dot: Factory, fake_upstream: FakeFactory
) -> None:
    """/healthz is 200 while alive; /readyz is 200 with a usable upstream, 503 once it
    has failed, and 200 again (probes) within a bounded wait after it returns."""
    fake = fake_upstream()
    port = fake.port
    d, mport = with_metrics(dns2dot, upstreams=[fake.spec], extra=["--timeout", "2"])
    assert http_get(mport, "/healthz") == (200, "ok\n")
    assert a_addresses(udp_query(d.port, make_query("up.example.test."))) == {DEFAULT_A}
    assert http_get(mport, "/readyz")[0] == 200
    assert http_get(mport, "/nothing-here")[0] == 404

    fake.stop()
    r = udp_query(d.port, make_query("down.example.test.", edns=0))
    assert rcode_text(r) == "SERVFAIL", r
    status = wait_for(lambda: http_get(mport, "/readyz")[0], lambda s: s == 503, 5)
    assert status == 503
    assert http_get(mport, "/healthz")[0] == 200  # alive, just not ready
    m = wait_for_metrics(mport, lambda m: m.sum("dns2dot_upstream_up") == 0)
    assert m.sum("dns2dot_upstream_up", upstream=fake.spec) == 0, m.text
    assert m.sum("dns2dot_upstream_failures_total", upstream=fake.spec) >= 1, m.text

    back = fake_upstream(port=port)
    status = wait_for(lambda: http_get(mport, "/readyz")[0], lambda s: s == 200, 15)
    assert status == 200, "not ready again within 15 s of the upstream's return"
    assert a_addresses(udp_query(d.port, make_query("again.example.test."))) == {DEFAULT_A}
    assert "again.example.test." in back.query_names()
    m = wait_for_metrics(mport, lambda m: m.sum("dns2dot_upstream_up") == 1)
    assert m.sum("dns2dot_upstream_up", upstream=fake.spec) == 1, m.text
    assert m.sum("dns2dot_tls_handshakes_total", upstream=fake.spec) >= 2, m.text


def test_workers_metrics_are_summed(dns2dot: Factory, fake_upstream: FakeFactory) -> None:
    """With ``--workers 2`` one scrape shows the queries of both workers: 200 UDP
    queries from 200 source ports (spread by SO_REUSEPORT) sum to 200."""
    fake = fake_upstream()
    d, mport = with_metrics(dns2dot, upstreams=[fake.spec], extra=["--workers", "2"])
    for i in range(200):
        r = udp_query(d.port, make_query(f"q{i}.workers.example.test."))  # a new socket each
        assert a_addresses(r) == {fake_address(f"q{i}")}, r
    m = wait_for_metrics(mport, lambda m: m.sum("dns2dot_queries_total") >= 200, timeout=10)
    assert m.sum("dns2dot_queries_total", transport="udp") == 200, m.text
    assert m.sum("dns2dot_queries_total") == 200, m.text
    assert m.sum("dns2dot_cache_misses_total") == 200, m.text
    # Each worker has upstream connections of its own: both served some queries.
    assert fake.connections >= 2, f"one worker took all 200 queries ({fake.connections} conn)"
    assert http_get(mport, "/readyz")[0] == 200
    assert d.stop() == 0, d.stderr()


def test_workers_reload_on_sighup(
    dns2dot: Factory, fake_upstream: FakeFactory, tmp_path: Path
) -> None:
    """SIGHUP to the supervisor of ``--workers 2`` reloads every worker: queries from
    many source ports (both workers) all see the new hosts entry."""
    fake = fake_upstream()
    hosts = tmp_path / "hosts"
    hosts.write_text("203.0.113.77 reloaded.lan\n")
    conf = write_yaml(tmp_path / "dns2dot.yml", {"upstreams": [fake.spec], "workers": 2})
    d = dns2dot(extra=["-c", str(conf)])
    for i in range(40):
        assert rcode_text(udp_query(d.port, make_query(f"q{i}.before.example.test."))) == "NOERROR"
    assert fake.connections >= 2, "one worker took every query"
    write_yaml(conf, {"upstreams": [fake.spec], "workers": 2, "rules": {"hosts": [str(hosts)]}})
    d.proc.send_signal(signal.SIGHUP)
    wait_log(d, "reloaded the configuration", 2)
    fake.reset_records()
    for _ in range(100):
        r = udp_query(d.port, make_query("reloaded.lan."))
        assert a_addresses(r) == {"203.0.113.77"}, r
    assert fake.query_names() == []
    assert d.alive and d.stop() == 0, d.stderr()


def test_refused_clients_counted(dns2dot: Factory, fake_upstream: FakeFactory) -> None:
    """A client outside ``--allow`` is answered REFUSED and counted by reason."""
    fake = fake_upstream()
    d, mport = with_metrics(dns2dot, upstreams=[fake.spec], extra=["--allow", "10.0.0.0/8"])
    assert rcode_text(udp_query(d.port, make_query("www.example.test."))) == "REFUSED"
    assert rcode_text(tcp_query(d.port, make_query("www.example.test."))) == "REFUSED"
    m = wait_for_metrics(mport, lambda m: m.sum("dns2dot_refused_total") >= 2)
    assert m.sum("dns2dot_refused_total", reason="acl") == 2, m.text
    assert fake.received == []


# -- logs -------------------------------------------------------------------------------------


def _exercise(d: Dns2Dot, names: list[str]) -> None:
    """Queries that make dns2dot log: answers, an upstream failure, malformed input."""
    for n, name in enumerate(names):
        send = udp_query if n % 2 == 0 else tcp_query
        send(d.port, make_query(name))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x12\x34 not dns at all", (LOOPBACK, d.port))
    with TcpClient(d.port) as c:
        c.send(b"\x00\x05hello")
        c.wait_closed(timeout=5)


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_json_logs_without_query_names(
    dns2dot: Factory, fake_upstream: FakeFactory, verbose: bool
) -> None:
    """``--log-format json``: every line is one JSON object; without ``--log-queries``
    no query name appears anywhere in the log (names are private), even with -v."""
    fake = fake_upstream()
    secret = "privacyprobe7f3a"
    extra = ["--log-format", "json"] + (["-v"] if verbose else [])
    d = dns2dot(upstreams=[dead_spec(), fake.spec], extra=extra, startup_mark=JSON_STARTUP_MARK)
    names = [f"{secret}.example.test.", f"www.{secret}.test.", f"nx{secret}.example.test."]
    _exercise(d, names)
    code = d.stop()
    assert code == 0
    lines = d.stderr().splitlines()
    assert len(lines) >= 3, lines  # startup, the dead upstream's warning, stopping
    for line in lines:
        entry = json.loads(line)  # raises on any line that is not JSON
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= set(entry), line
    assert any(json.loads(ln)["level"] == "warning" for ln in lines), lines
    if verbose:
        assert any(json.loads(ln)["level"] == "debug" for ln in lines), lines
    assert secret not in d.stderr(), f"a query name was logged without --log-queries:\n{lines}"


def test_log_queries_logs_names(dns2dot: Factory, fake_upstream: FakeFactory) -> None:
    """``--log-queries``: each query's name, type and outcome is logged (JSON too)."""
    fake = fake_upstream()
    d = dns2dot(
        upstreams=[fake.spec],
        extra=["--log-format", "json", "--log-queries"],
        startup_mark=JSON_STARTUP_MARK,
    )
    udp_query(d.port, make_query("logged-one.example.test.", "AAAA"))
    tcp_query(d.port, make_query("nxlogged-two.example.test."))
    udp_query(d.port, make_query("logged-one.example.test.", "AAAA"))  # cache hit
    wait_log(d, "logged-one.example.test", 2)
    wait_log(d, "nxlogged-two.example.test", 1)
    messages = [json.loads(line)["message"] for line in d.stderr().splitlines()]
    one = [msg for msg in messages if "logged-one.example.test" in msg]
    two = [msg for msg in messages if "nxlogged-two.example.test" in msg]
    assert len(one) == 2 and all("AAAA" in msg and "NOERROR" in msg for msg in one), one
    assert len(two) == 1 and "NXDOMAIN" in two[0] and "tcp" in two[0], two


def test_plain_text_logs_have_no_names_by_default(
    dns2dot: Factory, fake_upstream: FakeFactory
) -> None:
    """The default (text, no -v, no --log-queries) never shows a query name."""
    fake = fake_upstream()
    d = dns2dot(upstreams=[dead_spec(), fake.spec])
    secret = "quietprobe91c2"
    _exercise(d, [f"{secret}.example.test.", f"nx.{secret}.test."])
    d.stop()
    assert secret not in d.stderr(), d.stderr()


@pytest.mark.parametrize("fault", ["unreachable", "garbage_raw"])
def test_repeated_warnings_are_rate_limited(
    dns2dot: Factory, fake_upstream: FakeFactory, fault: str
) -> None:
    """50 queries against a failing upstream (nothing listening, or one that answers
    every connection with junk framing) log its failure a bounded number of times,
    not once per query or per reconnection."""
    fake = fake_upstream(mode="garbage_raw") if fault == "garbage_raw" else None
    spec = dead_spec() if fake is None else fake.spec
    d = dns2dot(upstreams=[spec], extra=["--timeout", "1"])
    for burst in range(5):  # 5 bursts of 10, all answered SERVFAIL
        queries = [
            make_query(f"q{burst}-{i}.flood.example.test.", qid=burst * 10 + i) for i in range(10)
        ]
        got = udp_many(d.port, queries, timeout=10)
        assert all(len(v) == 1 for v in got.values()), got
        rcodes = {dns.message.from_wire(v[0]).rcode() for v in got.values()}
        assert rcodes == {dns.rcode.SERVFAIL}, rcodes
    d.stop()
    lines = [ln for ln in d.stderr().splitlines() if spec in ln and "udp+tcp" not in ln]
    assert 1 <= len(lines) <= 5, "\n".join(lines)
    if fake is not None:  # the failure really repeated: a fresh connection each time
        assert fake.connections >= 5, fake.connections


# -- SIGHUP ---------------------------------------------------------------------------------


def test_sighup_reload_keeps_connections_and_cache(
    dns2dot: Factory, fake_upstream: FakeFactory, tmp_path: Path
) -> None:
    """SIGHUP applies the changed YAML (new upstream, a hosts file); a TCP client
    connected before keeps its connection and is served; cached answers survive,
    even once the upstream is changed to a dead one; a broken YAML is reported and
    the running configuration kept."""
    first = fake_upstream()
    second = fake_upstream(a_default="198.51.100.2")
    hosts = tmp_path / "hosts"
    hosts.write_text("203.0.113.50 reloaded.lan\n")
    conf = write_yaml(tmp_path / "dns2dot.yml", {"upstreams": [first.spec]})
    d = dns2dot(extra=["-c", str(conf), "--idle-timeout", "60"])

    def ask(c: TcpClient, name: str) -> dns.message.Message:
        c.send_query(make_query(name))
        r = c.recv_message(timeout=8)
        assert r is not None, f"no answer for {name} on the kept connection"
        return r

    with TcpClient(d.port) as c:
        assert a_addresses(ask(c, "kept.example.test.")) == {DEFAULT_A}
        assert rcode_text(ask(c, "reloaded.lan.")) == "NOERROR"  # upstream's answer

        write_yaml(conf, {"upstreams": [second.spec], "rules": {"hosts": [str(hosts)]}})
        sighup_and_wait(d)
        assert a_addresses(ask(c, "reloaded.lan.")) == {"203.0.113.50"}
        assert a_addresses(ask(c, "new.example.test.")) == {"198.51.100.2"}
        assert a_addresses(ask(c, "kept.example.test.")) == {DEFAULT_A}  # from the cache
        assert second.query_names() == ["new.example.test."]

        write_yaml(conf, {"upstreams": [dead_spec()], "rules": {"hosts": [str(hosts)]}})
        sighup_and_wait(d)
        assert a_addresses(ask(c, "kept.example.test.")) == {DEFAULT_A}  # still cached
        assert rcode_text(ask(c, "fresh.example.test.")) == "SERVFAIL"

        write_yaml(conf, {"upstreams": [second.spec]})
        conf.write_text(conf.read_text() + "rules: [unclosed\n")
        sighup_and_wait(d, "reload failed")
        write_yaml(conf, {"upstreams": [f"plain://{LOOPBACK}:53"]})
        sighup_and_wait(d, "reload failed")
        assert d.alive
        # the last good configuration (dead upstream, hosts file) is still the one used
        assert a_addresses(ask(c, "reloaded.lan.")) == {"203.0.113.50"}
        assert rcode_text(ask(c, "fresh2.example.test.")) == "SERVFAIL"
        assert "fresh2.example.test." not in second.query_names()
        assert not c.closed_by_peer
    assert log_count(d, "reloaded the configuration") == 2
    assert d.stop() == 0


def test_reload_under_load_loses_nothing(
    dns2dot: Factory, unbound: UnboundUpstream, tmp_path: Path
) -> None:
    """dnsperf over UDP for 4 s while SIGHUP arrives twice: not one query lost."""
    conf = write_yaml(tmp_path / "dns2dot.yml", {"upstreams": [unbound.spec]})
    d = dns2dot(extra=["-c", str(conf)])
    argv = dnsperf_argv(d.port, perf_data(tmp_path), runs=None, seconds=4, max_qps=3000)
    out: list[str] = []

    def run() -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=40, check=False)
        out.append(proc.stdout + proc.stderr)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(1.0)
    sighup_and_wait(d)
    time.sleep(1.0)
    sighup_and_wait(d)
    t.join(45)
    assert out, "dnsperf did not finish"
    res: PerfResult = parse_dnsperf(out[0])
    assert res.sent > 0 and res.lost == 0 and res.completed == res.sent, res.raw
    assert res.rcodes == {"NOERROR": res.sent}, res.raw
    assert log_count(d, "reloaded the configuration") == 2


# -- SIGTERM ------------------------------------------------------------------------------


def test_sigterm_drains_queries_in_flight(dns2dot: Factory, fake_upstream: FakeFactory) -> None:
    """SIGTERM with queries waiting on a slow upstream: those clients still get their
    answers, new UDP queries during the drain are REFUSED, and the exit code is 0."""
    fake = fake_upstream(mode="slow", delay=1.0)
    d = dns2dot(upstreams=[fake.spec], extra=["--grace-period", "3", "--timeout", "5"])
    socks = []
    for i in range(5):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(6)
        s.sendto(
            make_query(f"q{i}.drain.example.test.", qid=1000 + i).to_wire(), (LOOPBACK, d.port)
        )
        socks.append(s)
    tcp = TcpClient(d.port)
    try:
        tcp.send_query(make_query("q9.drain.example.test.", qid=2000))
        assert fake.wait_for_queries(6), fake.query_names()
        d.proc.send_signal(signal.SIGTERM)
        wait_log(d, "stopping")

        late = udp_query(d.port, make_query("late.drain.example.test.", edns=0), timeout=3)
        assert rcode_text(late) == "REFUSED", late

        for i, s in enumerate(socks):
            r = dns.message.from_wire(s.recvfrom(65535)[0])
            assert r.id == 1000 + i and a_addresses(r) == {fake_address(f"q{i}")}, r
        r = tcp.recv_message(timeout=6)
        assert r is not None and r.id == 2000, r
        assert a_addresses(r) == {fake_address("q9")}, r
    finally:
        for s in socks:
            s.close()
        tcp.close()
    d.proc.wait(timeout=10)
    assert d.proc.returncode == 0, d.stderr()
    assert "late.drain.example.test." not in fake.query_names()
    assert "Traceback" not in d.stderr(), d.stderr()


def test_queries_still_waiting_when_grace_ends_get_servfail(
    dns2dot: Factory, fake_upstream: FakeFactory
) -> None:
    """Queries still waiting when the grace period runs out are answered SERVFAIL
    before dns2dot exits ("every query gets one answer": never silence), so their
    clients move on at once instead of timing out."""
    fake = fake_upstream(mode="slow", delay=8.0)
    d = dns2dot(upstreams=[fake.spec], extra=["--grace-period", "1", "--timeout", "20"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, TcpClient(d.port) as tcp:
        s.settimeout(5)
        s.sendto(make_query("q1.late.example.test.", qid=71).to_wire(), (LOOPBACK, d.port))
        tcp.send_query(make_query("q2.late.example.test.", qid=72))
        assert fake.wait_for_queries(2)
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=10) == 0, d.stderr()
        try:
            udp_answer: dns.message.Message | None = dns.message.from_wire(s.recvfrom(65535)[0])
        except TimeoutError:
            udp_answer = None
        tcp_answer = tcp.recv_message(timeout=2)
    problems = []
    if udp_answer is None or udp_answer.id != 71 or rcode_text(udp_answer) != "SERVFAIL":
        problems.append(f"UDP client: wanted SERVFAIL for ID 71, got {udp_answer}")
    if tcp_answer is None or tcp_answer.id != 72 or rcode_text(tcp_answer) != "SERVFAIL":
        problems.append(f"TCP client: wanted SERVFAIL for ID 72, got {tcp_answer}")
    if "Traceback" in d.stderr():
        problems.append("a traceback was logged while stopping")
    assert not problems, "\n".join(problems) + "\n--- log ---\n" + d.stderr()


# -- dns2dot check --------------------------------------------------------------------------


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return run_dns2dot(["check", *args], timeout=30)


def test_check_healthy_upstream(unbound: UnboundUpstream, pki: Pki) -> None:
    """A healthy upstream: exit 0, status ok, its pin shown; pinning that pin still ok."""
    pin = spki_pin(pki.good.cert)
    res = check("-u", unbound.spec, "--cafile", str(pki.ca), "--name", "example.test")
    assert res.returncode == 0, res
    rows = [ln.split() for ln in res.stdout.splitlines() if ln.startswith(unbound.spec)]
    assert rows and rows[0][1] == "ok", res.stdout
    assert f"pin-sha256: {pin}" in res.stdout, res.stdout
    assert "NOERROR" in res.stdout, res.stdout
    res = check("-u", unbound.spec, "--cafile", str(pki.ca), "--pin", pin)
    assert res.returncode == 0, res
    assert "matches a configured pin" in res.stdout, res.stdout


def test_check_expired_certificate(fake_upstream: FakeFactory, pki: Pki) -> None:
    """An upstream presenting an expired certificate: exit 1, the error says expired."""
    fake = fake_upstream(cert="expired")
    res = check("-u", fake.spec, "--cafile", str(pki.ca))
    assert res.returncode == 1, res
    assert "FAIL" in res.stdout, res.stdout
    assert "expired" in res.stdout.lower(), res.stdout
    assert spki_pin(pki.expired.cert) in res.stdout  # shown anyway, to help the operator
    assert fake.received == []  # nothing is sent over an unverified connection


def test_check_wrong_pin(unbound: UnboundUpstream, pki: Pki) -> None:
    """A valid certificate whose key is not the pinned one: exit 1, says pin."""
    bogus = base64.b64encode(b"\x42" * 32).decode()
    res = check("-u", unbound.spec, "--cafile", str(pki.ca), "--pin", bogus)
    assert res.returncode == 1, res
    assert "FAIL" in res.stdout, res.stdout
    assert "pin" in res.stdout.split("error:", 1)[-1], res.stdout


def test_check_json(unbound: UnboundUpstream, fake_upstream: FakeFactory, pki: Pki) -> None:
    """``--json``: a list with one object per upstream; exit 1 when any one fails."""
    bad = fake_upstream(cert="expired")
    res = check("--json", "-u", unbound.spec, "-u", bad.spec, "--cafile", str(pki.ca))
    assert res.returncode == 1, res
    results = json.loads(res.stdout)
    assert isinstance(results, list) and len(results) == 2, results
    good, failed = results
    assert good["upstream"] == unbound.spec and good["ok"] is True, good
    assert good["pin"] == spki_pin(pki.good.cert) and good["verified"] is True, good
    assert failed["upstream"] == bad.spec and failed["ok"] is False, failed
    assert "expired" in str(failed["error"]).lower(), failed
    res = check("--json", "-u", unbound.spec, "--cafile", str(pki.ca), "--name", "example.test")
    assert res.returncode == 0, res
    assert [r["ok"] for r in json.loads(res.stdout)] == [True]
    assert dns.rcode.from_text(json.loads(res.stdout)[0]["rcode"]) == dns.rcode.NOERROR
