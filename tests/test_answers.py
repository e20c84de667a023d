"""What dns2dot does to answers besides forwarding them: the cache (TTLs counted down,
negative caching, DO kept apart, serve-stale), RFC 7830/8467 padding and ECS removal
on the encrypted hop, and local rules (conditional forwarding, hosts files, blocklists).

Why: these decide what every client sees and what leaves the host. Each test runs a
real dns2dot process; the fake upstream records exactly what reached it, so "the
upstream saw one query" and "the upstream saw nothing" are observed, not inferred.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest
import yaml
from support.dnsperf import run_dnsperf
from support.fake_upstream import DEFAULT_A, FakeUpstream, fake_address
from support.net import (
    LOOPBACK,
    TcpClient,
    a_addresses,
    free_port,
    make_query,
    rcode_text,
    tcp_query,
    udp_query,
)
from support.pki import TLS_NAME, Pki
from support.proc import Dns2Dot, require_tool, run_dns2dot
from support.scrape import wait_for, wait_for_metrics
from support.unbound import UnboundUpstream

pytestmark = pytest.mark.integration

Factory = Callable[..., Dns2Dot]
FakeFactory = Callable[..., FakeUpstream]

OPT_PADDING = 12
OPT_ECS = 8
OPT_EDE = 15


# -- helpers ---------------------------------------------------------------------------


def dig(port: int, *args: str, timeout: float = 20.0) -> str:
    """``dig @127.0.0.1 -p PORT +tries=1 +time=3 ARGS``: its whole output."""
    argv = [require_tool("dig"), f"@{LOOPBACK}", "-p", str(port), "+tries=1", "+time=3", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    return proc.stdout + proc.stderr


def dig_status(out: str) -> str:
    m = re.search(r"status: (\w+)", out)
    assert m, f"no status in dig output:\n{out}"
    return m.group(1)


def dig_answers(out: str) -> list[tuple[str, int, str, str]]:
    """(owner, ttl, type, rdata) of every record in dig's ANSWER SECTION."""
    records: list[tuple[str, int, str, str]] = []
    section = False
    for line in out.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            section = True
            continue
        if section:
            if not line.strip() or line.startswith(";;"):
                break
            parts = line.split(None, 4)
            if len(parts) == 5:
                records.append((parts[0], int(parts[1]), parts[3], parts[4]))
    return records


def ttls(msg: dns.message.Message) -> list[int]:
    """TTL of every RRset in the answer section."""
    return [rrset.ttl for rrset in msg.answer]


def option_codes(msg: dns.message.Message | None) -> list[int]:
    """EDNS option codes of a parsed message (empty without OPT)."""
    if msg is None or msg.edns < 0:
        return []
    return [int(o.otype) for o in msg.options]


def names_seen(fake: FakeUpstream, name: str) -> int:
    """How many queries for ``name`` (any case) reached the fake."""
    want = name.lower().rstrip(".") + "."
    return sum(1 for n in fake.query_names() if n.lower() == want)


def question_wire(wire: bytes) -> bytes:
    """The question name of a DNS message as it is on the wire (case kept)."""
    end = 12
    while wire[end]:
        end += wire[end] + 1
    return wire[12 : end + 1]


def ede_codes(msg: dns.message.Message) -> list[int]:
    return [int(o.code) for o in msg.options if int(o.otype) == OPT_EDE]  # type: ignore[attr-defined]


def tls_query(fake: FakeUpstream, pki: Pki) -> dns.message.Message:
    """Ask the fake directly over TLS with EDNS, bypassing dns2dot."""
    q = dns.message.make_query("direct.example.test.", "A", use_edns=0)
    return dns.query.tls(
        q,
        LOOPBACK,
        port=fake.port,
        timeout=5,
        ssl_context=pki.client_context(),
        server_hostname=TLS_NAME,
    )


def start_with_metrics(
    dns2dot: Factory, extra: Sequence[str] = (), **kw: object
) -> tuple[Dns2Dot, int]:
    mport = free_port()
    d = dns2dot(extra=[*extra, "--metrics", f"{LOOPBACK}:{mport}"], **kw)
    return d, mport


def write_yaml(path: Path, document: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def reload_and_wait(d: Dns2Dot, timeout: float = 10.0) -> None:
    """SIGHUP, then wait (bounded) for the log line saying the reload was applied."""
    before = d.stderr().count("reloaded the configuration")
    d.proc.send_signal(signal.SIGHUP)
    seen = wait_for(
        lambda: d.stderr().count("reloaded the configuration"), lambda n: n > before, timeout
    )
    assert seen > before, f"no reload logged within {timeout}s:\n{d.stderr()[-3000:]}"


# -- the cache ---------------------------------------------------------------------------


def test_repeat_served_from_cache_ttl_falls_client_id_and_spelling_kept(
    dns2dot: Factory, fake_upstream: FakeFactory
) -> None:
    """The second query is answered from the cache: the upstream sees one query; the
    answer carries the second client's ID and 0x20 spelling and a TTL counted down."""
    fake = fake_upstream()
    d = dns2dot(upstreams=[fake.spec])
    first = make_query("CaChEd.ExAmPlE.TeSt.", qid=0x1111)
    r1 = udp_query(d.port, first)
    assert rcode_text(r1) == "NOERROR" and a_addresses(r1) == {DEFAULT_A}, r1
    assert ttls(r1) == [60], r1
    assert fake.wait_for_queries(1)

    time.sleep(1.3)
    second = make_query("cAcHeD.eXaMpLe.tEsT.", qid=0x2222)
    with TcpClient(d.port) as c:  # the cache is shared by both transports
        c.send_query(second)
        wire2 = c.recv_frame(timeout=5)
    assert wire2 is not None, "no answer over TCP"
    r2 = dns.message.from_wire(wire2)
    assert r2.id == 0x2222
    assert question_wire(wire2) == question_wire(second.to_wire()), (
        "the client's spelling of the name is not kept"
    )
    assert rcode_text(r2) == "NOERROR" and a_addresses(r2) == {DEFAULT_A}, r2
    assert r2.answer[0].ttl <= 59, f"TTL not counted down: {r2}"
    assert r2.answer[0].ttl >= 30, r2

    third = make_query("CACHED.EXAMPLE.TEST.", qid=0x3333)
    r3_wire = udp_query(d.port, third).to_wire()
    assert question_wire(r3_wire) == question_wire(third.to_wire())
    assert names_seen(fake, "cached.example.test") == 1, fake.query_names()


def test_ttl_keeps_falling_with_dig(dns2dot: Factory, fake_upstream: FakeFactory) -> None:
    """dig sees the TTL fall between two cache hits (and +qr shows its own ID echoed)."""
    fake = fake_upstream()
    d = dns2dot(upstreams=[fake.spec])
    out1 = dig(d.port, "falling.example.test", "A")
    assert dig_status(out1) == "NOERROR", out1
    time.sleep(1.2)
    out2 = dig(d.port, "FaLLiNg.example.test", "A", "+qr")
    time.sleep(1.2)
    out3 = dig(d.port, "falling.example.test", "A")
    t1, t2, t3 = (dig_answers(o)[0][1] for o in (out1, out2, out3))
    assert t2 <= t1 - 1 and t3 <= t2 - 1, (t1, t2, t3)
    ids = re.findall(r"id: (\d+)", out2)
    assert len(ids) == 2 and ids[0] == ids[1], out2  # query and response printed by +qr
    assert "FaLLiNg.example.test." in dig_answers(out2)[0][0], out2
    assert names_seen(fake, "falling.example.test") == 1, fake.query_names()


def test_negative_answers_cached_only_with_soa(
    dns2dot: Factory, fake_upstream: FakeFactory
) -> None:
    """NXDOMAIN and NODATA with an SOA in authority are cached (RFC 2308 §5); without
    one they are not: every repeat goes upstream again."""
    fake = fake_upstream(soa=False)
    d = dns2dot(upstreams=[fake.spec])
    for _ in range(2):
        r = udp_query(d.port, make_query("nx-nosoa.example.test."))
        assert rcode_text(r) == "NXDOMAIN" and not r.authority, r
        r = udp_query(d.port, make_query("nodata-nosoa.example.test.", "MX"))
        assert rcode_text(r) == "NOERROR" and not r.answer and not r.authority, r
    assert names_seen(fake, "nx-nosoa.example.test") == 2, fake.query_names()
    assert names_seen(fake, "nodata-nosoa.example.test") == 2, fake.query_names()

    fake.configure(soa=True)
    answers = []
    for _ in range(2):
        nx = udp_query(d.port, make_query("nx-soa.example.test."))
        nodata = tcp_query(d.port, make_query("nodata-soa.example.test.", "MX"))
        answers.append((nx, nodata))
        time.sleep(1.1)
    for nx, nodata in answers:
        assert rcode_text(nx) == "NXDOMAIN", nx
        assert rcode_text(nodata) == "NOERROR" and not nodata.answer, nodata
        for msg in (nx, nodata):
            assert [rr.rdtype for rr in msg.authority] == [dns.rdatatype.SOA], msg
    assert answers[1][0].authority[0].ttl < answers[0][0].authority[0].ttl, answers
    assert names_seen(fake, "nx-soa.example.test") == 1, fake.query_names()
    assert names_seen(fake, "nodata-soa.example.test") == 1, fake.query_names()


def test_unbound_nxdomain_cached_by_its_soa(dns2dot: Factory, unbound: UnboundUpstream) -> None:
    """A real upstream's NXDOMAIN (unbound puts the zone's SOA in authority) is cached:
    the repeat is a cache hit."""
    d, mport = start_with_metrics(dns2dot, upstreams=[unbound.spec])
    r1 = udp_query(d.port, make_query("missing-name.example.test."))
    assert rcode_text(r1) == "NXDOMAIN", r1
    assert any(rr.rdtype == dns.rdatatype.SOA for rr in r1.authority), r1
    before = wait_for_metrics(mport, lambda m: m.sum("dns2dot_queries_total") >= 1)
    r2 = udp_query(d.port, make_query("missing-name.example.test."))
    assert rcode_text(r2) == "NXDOMAIN", r2
    after = wait_for_metrics(mport, lambda m: m.sum("dns2dot_queries_total") >= 2)
    assert after.sum("dns2dot_cache_hits_total") == before.sum("dns2dot_cache_hits_total") + 1
    assert after.sum("dns2dot_cache_misses_total") == before.sum("dns2dot_cache_misses_total")


def test_do_bit_queries_cached_separately(dns2dot: Factory, fake_upstream: FakeFactory) -> None:
    """An answer fetched with DO=1 is not served to a DO=0 query, nor the reverse;
    each is then served from its own entry."""
    fake = fake_upstream()
    d = dns2dot(upstreams=[fake.spec])
    for _ in range(2):
        plain = dns.message.make_query("dnssec.example.test.", "A", use_edns=0)
        with_do = dns.message.make_query("dnssec.example.test.", "A", want_dnssec=True)
        r_plain = udp_query(d.port, plain)
        r_do = udp_query(d.port, with_do)
        assert a_addresses(r_plain) == a_addresses(r_do) == {DEFAULT_A}
    got = [r for r in fake.received if r.qname == "dnssec.example.test."]
    assert len(got) == 2, [(r.qname, r.msg) for r in got]
    do_bits = sorted(bool(r.msg is not None and r.msg.ednsflags & dns.flags.DO) for r in got)
    assert do_bits == [False, True]
    # CD (checking disabled) changes the answer too: its own entry as well
    for _ in range(2):
        cd = dns.message.make_query("dnssec.example.test.", "A", use_edns=0)
        cd.flags |= dns.flags.CD
        assert a_addresses(udp_query(d.port, cd)) == {DEFAULT_A}
    assert len([r for r in fake.received if r.qname == "dnssec.example.test."]) == 3


def test_cache_ttl_clamps(dns2dot: Factory, fake_upstream: FakeFactory) -> None:
    """``--cache-min-ttl`` keeps short-lived answers longer and serves them with the
    raised TTL; ``--cache-max-ttl`` serves long ones with the lowered TTL and fetches
    them again once it has passed."""
    short = fake_upstream(ttl=1)
    d = dns2dot(upstreams=[short.spec], extra=["--cache-min-ttl", "30"])
    udp_query(d.port, make_query("short.example.test."))
    time.sleep(1.5)  # past the upstream's own TTL, within the clamp
    r = udp_query(d.port, make_query("short.example.test."))
    assert 25 <= ttls(r)[0] <= 29, r
    assert names_seen(short, "short.example.test") == 1

    long_ = fake_upstream(ttl=3600)
    d = dns2dot(upstreams=[long_.spec], extra=["--cache-max-ttl", "1", "--serve-stale", "0"])
    udp_query(d.port, make_query("long.example.test."))
    r = udp_query(d.port, make_query("long.example.test."))
    assert ttls(r)[0] <= 1 and names_seen(long_, "long.example.test") == 1, r
    time.sleep(1.5)
    udp_query(d.port, make_query("long.example.test."))
    assert names_seen(long_, "long.example.test") == 2


def test_cache_size_zero_turns_the_cache_off(dns2dot: Factory, fake_upstream: FakeFactory) -> None:
    """``--cache-size 0``: every query goes upstream, TTLs are the upstream's."""
    fake = fake_upstream()
    d = dns2dot(upstreams=[fake.spec], extra=["--cache-size", "0"])
    for _ in range(3):
        r = udp_query(d.port, make_query("uncached.example.test."))
        assert ttls(r) == [60], r
    assert names_seen(fake, "uncached.example.test") == 3


def test_cached_large_answer_still_truncated_for_udp(
    dns2dot: Factory, unbound: UnboundUpstream
) -> None:
    """A large answer cached from a TCP query is sent to a plain UDP client with TC=1
    (512 bytes at most), and whole again over TCP."""
    d = dns2dot(upstreams=[unbound.spec])
    big = tcp_query(d.port, make_query("big.example.test.", "TXT", edns=0))
    assert len(big.answer[0]) == 40, big
    wire = dns.query.udp(make_query("big.example.test.", "TXT"), LOOPBACK, port=d.port, timeout=5)
    assert wire.flags & dns.flags.TC, wire
    assert len(wire.to_wire()) <= 512
    again = tcp_query(d.port, make_query("big.example.test.", "TXT"))
    assert len(again.answer[0]) == 40 and again.edns < 0, again


# -- serve-stale -----------------------------------------------------------------------------


def test_serve_stale_after_upstream_stops(dns2dot: Factory, fake_upstream: FakeFactory) -> None:
    """An expired entry is served (TTL 30, EDE 3 "Stale Answer") when the upstream is
    gone (RFC 8767)."""
    fake = fake_upstream(ttl=1)
    d = dns2dot(upstreams=[fake.spec], extra=["--timeout", "2"])
    out = dig(d.port, "stale.example.test", "A")
    assert dig_status(out) == "NOERROR" and dig_answers(out)[0][1] == 1, out
    plain = udp_query(d.port, make_query("stale-plain.example.test."))
    assert ttls(plain) == [1], plain
    fake.stop()
    time.sleep(1.6)  # past the 1 s TTL

    out = dig(d.port, "stale.example.test", "A")
    assert dig_status(out) == "NOERROR", out
    records = dig_answers(out)
    assert records and records[0][1] == 30 and records[0][3] == DEFAULT_A, out
    assert "EDE: 3" in out, out

    r = udp_query(d.port, make_query("stale.example.test.", edns=0))
    assert ttls(r) == [30] and ede_codes(r) == [3], r
    # A client without EDNS gets the stale answer without any OPT (RFC 6891 §7).
    r = udp_query(d.port, make_query("stale-plain.example.test."))
    assert rcode_text(r) == "NOERROR" and ttls(r) == [30] and r.edns < 0, r


def test_serve_stale_while_upstream_is_silent(dns2dot: Factory, fake_upstream: FakeFactory) -> None:
    """An upstream that takes the query but never answers: the client gets the stale
    answer (EDE 3) instead of waiting for the SERVFAIL at ``--timeout``."""
    fake = fake_upstream(ttl=1)
    d = dns2dot(upstreams=[fake.spec], extra=["--timeout", "4"])
    r = udp_query(d.port, make_query("hush.example.test.", edns=0))
    assert ttls(r) == [1], r
    fake.configure(mode="silent")
    time.sleep(1.6)
    r = udp_query(d.port, make_query("hush.example.test.", edns=0), timeout=10)
    assert rcode_text(r) == "NOERROR" and ttls(r) == [30], r
    assert ede_codes(r) == [3], r
    assert names_seen(fake, "hush.example.test") == 2  # it did ask again


def test_serve_stale_zero_gives_servfail(dns2dot: Factory, fake_upstream: FakeFactory) -> None:
    """With ``--serve-stale 0`` an expired entry is never served: SERVFAIL."""
    fake = fake_upstream(ttl=1)
    d = dns2dot(upstreams=[fake.spec], extra=["--serve-stale", "0", "--timeout", "2"])
    r = udp_query(d.port, make_query("stale.example.test.", edns=0))
    assert ttls(r) == [1], r
    fake.stop()
    time.sleep(1.6)
    r = udp_query(d.port, make_query("stale.example.test.", edns=0))
    assert rcode_text(r) == "SERVFAIL", r
    assert 3 not in ede_codes(r), r


# -- padding and client subnet ---------------------------------------------------------------


def _assorted_queries() -> list[dns.message.Message]:
    """Names of many lengths, with and without EDNS, DO and ECS."""
    out: list[dns.message.Message] = []
    for i, label in enumerate(["a", "bb", "ccccc", "d" * 17, "e" * 40, "f" * 63]):
        name = f"{label}.pad{i}.example.test."
        out.append(make_query(name))
        out.append(make_query(name, "AAAA", edns=0))
        out.append(dns.message.make_query(name, "TXT", want_dnssec=True))
        out.append(
            dns.message.make_query(
                "x." + name, "A", use_edns=0, options=[dns.edns.ECSOption("192.0.2.0", 24)]
            )
        )
    return out


def _send_all(port: int, queries: Sequence[dns.message.Message]) -> None:
    for n, q in enumerate(queries):
        send = udp_query if n % 2 == 0 else tcp_query
        r = send(port, q)
        assert rcode_text(r) == "NOERROR", r


def test_queries_padded_upstream_to_128(dns2dot: Factory, fake_upstream: FakeFactory) -> None:
    """Every query that reaches the upstream is a multiple of 128 bytes (RFC 8467 §4.1),
    with a padding option, whatever the client sent."""
    fake = fake_upstream()
    d = dns2dot(upstreams=[fake.spec])
    queries = _assorted_queries()
    _send_all(d.port, queries)
    got = fake.received
    assert len(got) == len(queries)
    lengths = [len(r.wire) for r in got]
    assert all(n % 128 == 0 for n in lengths), lengths
    assert all(OPT_PADDING in option_codes(r.msg) for r in got)


def test_no_padding_flag(dns2dot: Factory, fake_upstream: FakeFactory) -> None:
    """``--no-padding``: queries go upstream unpadded (lengths vary, no padding option)."""
    fake = fake_upstream()
    d = dns2dot(upstreams=[fake.spec], extra=["--no-padding"])
    queries = _assorted_queries()
    _send_all(d.port, queries)
    got = fake.received
    assert len(got) == len(queries)
    lengths = [len(r.wire) for r in got]
    assert not all(n % 128 == 0 for n in lengths), lengths
    assert not any(OPT_PADDING in option_codes(r.msg) for r in got)
    # A client without EDNS is forwarded without an OPT record.
    assert any(r.msg is not None and r.msg.edns < 0 for r in got)


@pytest.mark.parametrize("padding", [True, False], ids=["padding", "no-padding"])
def test_clients_never_see_padding_or_unasked_opt(
    dns2dot: Factory, fake_upstream: FakeFactory, pki: Pki, padding: bool
) -> None:
    """The fake pads every answer (and adds an OPT even when asked without one);
    clients never see the padding, and clients without EDNS see no OPT at all."""
    fake = fake_upstream(pad_answers=128)
    direct = tls_query(fake, pki)
    assert OPT_PADDING in option_codes(direct), "the fake does not pad: test is void"
    fake.reset_records()
    d = dns2dot(upstreams=[fake.spec], extra=[] if padding else ["--no-padding"])
    for round_ in range(2):  # the second round is served from the cache
        for send in (udp_query, tcp_query):
            name = f"{send.__name__[:3]}.padded.example.test."
            r = send(d.port, make_query(name))
            assert a_addresses(r) == {DEFAULT_A}, r
            assert r.edns < 0, f"round {round_}: OPT sent to a client without EDNS: {r}"
            r = send(d.port, make_query(name, "AAAA", edns=0))
            assert r.edns == 0, r
            assert OPT_PADDING not in option_codes(r), f"round {round_}: padding reached {r}"
    assert len(fake.received) == 4  # 2 names x 2 types, the rest from the cache


@pytest.mark.parametrize("keep", [False, True], ids=["removed", "kept"])
def test_client_subnet_removed_unless_kept(
    dns2dot: Factory, fake_upstream: FakeFactory, keep: bool
) -> None:
    """The client's EDNS Client Subnet option does not reach the upstream, unless
    ``--keep-client-subnet``."""
    fake = fake_upstream()
    d = dns2dot(upstreams=[fake.spec], extra=["--keep-client-subnet"] if keep else [])
    q = dns.message.make_query(
        "ecs.example.test.", "A", use_edns=0, options=[dns.edns.ECSOption("198.51.100.0", 24)]
    )
    r = udp_query(d.port, q)
    assert a_addresses(r) == {DEFAULT_A}, r
    q2 = dns.message.make_query(
        "ecs2.example.test.",
        "A",
        use_edns=0,
        options=[dns.edns.ECSOption("2001:db8::", 56), dns.edns.GenericOption(65001, b"keep")],
    )
    tcp_query(d.port, q2)
    got = fake.received
    assert len(got) == 2
    for rec in got:
        codes = option_codes(rec.msg)
        assert (OPT_ECS in codes) is keep, (keep, codes)
    assert 65001 in option_codes(got[1].msg), "other options must be forwarded"
    if keep:
        ecs = [o for o in got[0].msg.options if int(o.otype) == OPT_ECS]  # type: ignore[union-attr]
        assert ecs[0].address == "198.51.100.0" and ecs[0].srclen == 24  # type: ignore[attr-defined]


# -- rules -----------------------------------------------------------------------------------


def test_forward_zones_to_their_own_upstreams(dns2dot: Factory, fake_upstream: FakeFactory) -> None:
    """``--forward ZONE=DoT`` and ``--forward ZONE=plain://`` send the zone (and names
    below it) to their upstream; everything else goes to the main upstream."""
    main = fake_upstream()
    corp = fake_upstream(a_default="198.51.100.7")
    lan = fake_upstream(a_default="198.51.100.8", tls=False)
    d, mport = start_with_metrics(
        dns2dot,
        upstreams=[main.spec],
        extra=[
            "--forward",
            f"corp.test={corp.spec}",
            "--forward",
            f"lan.test=plain://{LOOPBACK}:{lan.port}",
        ],
    )
    cases = {
        "www.corp.test.": "198.51.100.7",
        "deep.sub.CORP.test.": "198.51.100.7",
        "corp.test.": "198.51.100.7",
        "printer.lan.test.": "198.51.100.8",
        "www.example.test.": DEFAULT_A,
        "notcorp.test.": DEFAULT_A,
        "corp.test.example.": DEFAULT_A,
    }
    for n, (name, address) in enumerate(cases.items()):
        send = udp_query if n % 2 else tcp_query
        r = send(d.port, make_query(name))
        assert a_addresses(r) == {address}, (name, r)
    assert sorted(n.lower() for n in corp.query_names()) == [
        "corp.test.",
        "deep.sub.corp.test.",
        "www.corp.test.",
    ]
    assert lan.query_names() == ["printer.lan.test."]
    assert sorted(main.query_names()) == [
        "corp.test.example.",
        "notcorp.test.",
        "www.example.test.",
    ]
    assert corp.handshakes_ok >= 1 and lan.handshakes_ok == 0
    m = wait_for_metrics(mport, lambda m: m.sum("dns2dot_rule_hits_total", rule="forward") >= 4)
    assert m.sum("dns2dot_rule_hits_total", rule="forward") == 4, m.text


def test_forward_zone_from_yaml_rules(
    dns2dot: Factory, fake_upstream: FakeFactory, tmp_path: Path
) -> None:
    """The YAML ``rules: forward:`` list does what ``--forward`` does."""
    main = fake_upstream()
    corp = fake_upstream(a_default="198.51.100.7")
    lan = fake_upstream(a_default="198.51.100.8", tls=False)
    conf = write_yaml(
        tmp_path / "dns2dot.yml",
        {
            "upstreams": [main.spec],
            "rules": {
                "forward": [
                    {"zone": "corp.test", "upstreams": [corp.spec]},
                    {"zone": "lan.test.", "upstreams": [f"plain://{LOOPBACK}:{lan.port}"]},
                ]
            },
        },
    )
    d = dns2dot(extra=["-c", str(conf)])
    assert a_addresses(udp_query(d.port, make_query("a.corp.test."))) == {"198.51.100.7"}
    assert a_addresses(udp_query(d.port, make_query("b.lan.test."))) == {"198.51.100.8"}
    assert a_addresses(udp_query(d.port, make_query("c.example.test."))) == {DEFAULT_A}
    assert corp.query_names() == ["a.corp.test."]
    assert lan.query_names() == ["b.lan.test."]
    assert main.query_names() == ["c.example.test."]


def test_plain_upstream_rejected(tmp_path: Path) -> None:
    """A cleartext upstream is accepted only in a forwarding rule: ``--upstream plain://``
    (flag or YAML) stops dns2dot with exit code 2 and a line naming the setting."""
    port = free_port()
    res = run_dns2dot(["-l", f"{LOOPBACK}:{port}", "-u", f"plain://{LOOPBACK}:53"])
    assert res.returncode == 2, res
    assert "--upstream" in res.stderr and "plain://" in res.stderr, res.stderr
    conf = write_yaml(tmp_path / "bad.yml", {"upstreams": [f"plain://{LOOPBACK}:53"]})
    res = run_dns2dot(["-l", f"{LOOPBACK}:{port}", "-c", str(conf)])
    assert res.returncode == 2, res
    assert "plain://" in res.stderr, res.stderr


def test_hosts_file_answered_locally(
    dns2dot: Factory, fake_upstream: FakeFactory, tmp_path: Path
) -> None:
    """Hosts entries answer A, AAAA and PTR (dig -x) locally; other types of those
    names are NODATA; the upstream sees nothing."""
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "# local names\n"
        "192.0.2.99   myhost.lan alias.lan  # trailing comment\n"
        "2001:db8::99 myhost.lan\n"
        "198.51.100.5 other.lan\n"
    )
    fake = fake_upstream()
    d, mport = start_with_metrics(dns2dot, upstreams=[fake.spec], extra=["--hosts", str(hosts)])
    out = dig(d.port, "MyHost.lan", "A")
    assert dig_status(out) == "NOERROR" and " aa" in out.split("flags:")[1].split(";")[0], out
    assert [(r[2], r[3]) for r in dig_answers(out)] == [("A", "192.0.2.99")], out
    out = dig(d.port, "myhost.lan", "AAAA", "+tcp")
    assert [(r[2], r[3]) for r in dig_answers(out)] == [("AAAA", "2001:db8::99")], out
    out = dig(d.port, "alias.lan", "A", "+noedns")
    assert [(r[2], r[3]) for r in dig_answers(out)] == [("A", "192.0.2.99")], out
    out = dig(d.port, "-x", "192.0.2.99")
    assert [(r[2], r[3]) for r in dig_answers(out)] == [("PTR", "myhost.lan.")], out
    out = dig(d.port, "-x", "2001:db8::99")
    assert [(r[2], r[3]) for r in dig_answers(out)] == [("PTR", "myhost.lan.")], out
    out = dig(d.port, "-x", "198.51.100.5")
    assert [(r[2], r[3]) for r in dig_answers(out)] == [("PTR", "other.lan.")], out
    r = udp_query(d.port, make_query("myhost.lan.", "MX"))
    assert rcode_text(r) == "NOERROR" and not r.answer, r
    assert fake.query_names() == [], fake.query_names()
    m = wait_for_metrics(mport, lambda m: m.sum("dns2dot_rule_hits_total", rule="hosts") >= 7)
    assert m.sum("dns2dot_rule_hits_total", rule="hosts") == 7, m.text
    # a name not in the file still goes upstream
    assert a_addresses(udp_query(d.port, make_query("elsewhere.lan."))) == {DEFAULT_A}
    assert fake.query_names() == ["elsewhere.lan."]


def test_blocklist_nxdomain_with_subdomains(
    dns2dot: Factory, fake_upstream: FakeFactory, tmp_path: Path
) -> None:
    """Blocked names and every name below them are NXDOMAIN, both file formats;
    a name that merely ends with the same letters is not blocked."""
    blocklist = tmp_path / "blocklist"
    blocklist.write_text("# ads\nads.test\n0.0.0.0 tracker.test\n127.0.0.1 localhost\n")
    fake = fake_upstream()
    d, mport = start_with_metrics(
        dns2dot, upstreams=[fake.spec], extra=["--blocklist", str(blocklist)]
    )
    for name in ("ads.test.", "x.ads.test.", "a.b.c.ADS.test.", "tracker.test.", "t.tracker.test."):
        for send in (udp_query, tcp_query):
            r = send(d.port, make_query(name))
            assert rcode_text(r) == "NXDOMAIN", (name, r)
    out = dig(d.port, "sub.ads.test", "AAAA")
    assert dig_status(out) == "NXDOMAIN", out
    assert a_addresses(udp_query(d.port, make_query("badads.test."))) == {DEFAULT_A}
    assert fake.query_names() == ["badads.test."]
    m = wait_for_metrics(mport, lambda m: m.sum("dns2dot_rule_hits_total", rule="block") >= 11)
    assert m.sum("dns2dot_rule_hits_total", rule="block") == 11, m.text


def test_block_answer_address(dns2dot: Factory, fake_upstream: FakeFactory, tmp_path: Path) -> None:
    """``--block-answer 0.0.0.0``: blocked names answer A 0.0.0.0 (NODATA for AAAA)."""
    blocklist = tmp_path / "blocklist"
    blocklist.write_text("ads.test\n")
    fake = fake_upstream()
    d = dns2dot(
        upstreams=[fake.spec], extra=["--blocklist", str(blocklist), "--block-answer", "0.0.0.0"]
    )
    out = dig(d.port, "www.ads.test", "A")
    assert dig_status(out) == "NOERROR", out
    assert [(r[2], r[3]) for r in dig_answers(out)] == [("A", "0.0.0.0")], out
    r = tcp_query(d.port, make_query("ads.test.", "AAAA", edns=0))
    assert rcode_text(r) == "NOERROR" and not r.answer, r
    assert fake.query_names() == []


def test_rules_apply_before_the_cache(
    dns2dot: Factory, fake_upstream: FakeFactory, tmp_path: Path
) -> None:
    """A name already cached is answered by a rule added later (SIGHUP), not by the
    cache: blocklists and hosts entries win over cached answers, also for queries the
    cache knows by their bytes (asked three times: the third is such a repeat)."""
    fake = fake_upstream()
    blocklist = tmp_path / "blocklist"
    blocklist.write_text("victim.example.test\n")
    hosts = tmp_path / "hosts"
    hosts.write_text("203.0.113.9 pinned.example.test\n")
    conf = write_yaml(tmp_path / "dns2dot.yml", {"upstreams": [fake.spec]})
    d = dns2dot(extra=["-c", str(conf)])
    for _ in range(3):
        assert a_addresses(udp_query(d.port, make_query("victim.example.test."))) == {DEFAULT_A}
        assert a_addresses(udp_query(d.port, make_query("pinned.example.test."))) == {DEFAULT_A}
    assert len(fake.received) == 2  # both cached
    write_yaml(
        conf,
        {
            "upstreams": [fake.spec],
            "rules": {"blocklists": [str(blocklist)], "hosts": [str(hosts)]},
        },
    )
    reload_and_wait(d)
    r = udp_query(d.port, make_query("victim.example.test."))
    assert rcode_text(r) == "NXDOMAIN", r
    r = tcp_query(d.port, make_query("pinned.example.test."))
    assert a_addresses(r) == {"203.0.113.9"}, r
    assert len(fake.received) == 2


# -- cache-hit throughput ------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dnsperf_cache_hits_lose_nothing(
    dns2dot: Factory, fake_upstream: FakeFactory, tmp_path: Path, transport: str
) -> None:
    """dnsperf over names already cached: every query answered, none lost, and none
    reaches the upstream (no timing asserted)."""
    fake = fake_upstream()
    d, mport = start_with_metrics(dns2dot, upstreams=[fake.spec])
    names = [f"q{i}.perf.example.test." for i in range(50)]
    for name in names:
        r = udp_query(d.port, make_query(name))
        assert a_addresses(r) == {fake_address(name)}, r
    primed = len(fake.received)
    assert primed == len(names)
    data = tmp_path / "perf.txt"
    data.write_text("".join(f"{n} A\n" for n in names))
    res = run_dnsperf(d.port, data, tcp=transport == "tcp", runs=100, seconds=30, clients=4)
    assert res.sent == 100 * len(names), res.raw
    assert res.lost == 0 and res.completed == res.sent, res.raw
    assert res.rcodes == {"NOERROR": res.sent}, res.raw
    assert len(fake.received) == primed, "cached names went upstream again"
    m = wait_for_metrics(mport, lambda m: m.sum("dns2dot_cache_hits_total") >= res.sent)
    assert m.sum("dns2dot_cache_hits_total") == res.sent, m.text


# -- TTL clamps on answers straight from the upstream ------------------------------------------


@pytest.mark.parametrize(
    ("upstream_ttl", "flag", "clamped"),
    [(3600, "--cache-max-ttl", 5), (1, "--cache-min-ttl", 30)],
    ids=["max", "min"],
)
def test_first_answer_ttl_follows_the_clamp(
    dns2dot: Factory, fake_upstream: FakeFactory, upstream_ttl: int, flag: str, clamped: int
) -> None:
    """The client whose query fills the cache gets the clamped TTL too, like every
    client after it: a stub must not keep an answer for an hour that dns2dot itself
    keeps for 5 seconds (cache.py: "Records are served with TTLs no larger than the
    clamp, so stubs agree with us")."""
    fake = fake_upstream(ttl=upstream_ttl)
    d = dns2dot(upstreams=[fake.spec], extra=[flag, str(clamped)])
    first = udp_query(d.port, make_query("clamp.example.test."))
    second = udp_query(d.port, make_query("clamp.example.test."))
    assert names_seen(fake, "clamp.example.test") == 1
    assert clamped - 1 <= ttls(second)[0] <= clamped, second  # the cache hit is clamped
    assert ttls(first) == [clamped], (
        f"first answer (cache miss) carries the upstream's TTL {ttls(first)}, "
        f"the cache hit right after it {ttls(second)}"
    )


# -- conditional forwarding added by a reload ---------------------------------------------


def test_forward_rule_added_by_reload_wins_over_cached_answer(
    dns2dot: Factory, fake_upstream: FakeFactory, tmp_path: Path
) -> None:
    """A zone forwarded by a rule added at reload is answered by the zone's upstream,
    not by what the main upstream said for it before (split horizon)."""
    main = fake_upstream()
    corp = fake_upstream(a_default="198.51.100.7")
    conf = write_yaml(tmp_path / "dns2dot.yml", {"upstreams": [main.spec]})
    d = dns2dot(extra=["-c", str(conf)])
    for _ in range(3):  # a miss, a hit, a hit on a query known by its bytes
        assert a_addresses(udp_query(d.port, make_query("intranet.corp.test."))) == {DEFAULT_A}
    assert main.query_names() == ["intranet.corp.test."]
    write_yaml(
        conf,
        {
            "upstreams": [main.spec],
            "rules": {"forward": [{"zone": "corp.test", "upstreams": [corp.spec]}]},
        },
    )
    reload_and_wait(d)
    r = udp_query(d.port, make_query("intranet.corp.test."))
    assert a_addresses(r) == {"198.51.100.7"}, f"the main upstream's cached answer: {r}"
    assert corp.query_names() == ["intranet.corp.test."]
