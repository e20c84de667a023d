"""dns2dot as a real process in front of a real DoT upstream (unbound), driven by
real clients (dig, kdig, dnsperf) and raw sockets.

Why: this is what users run. Every test here goes through the CLI, the event loop,
both listeners and verified TLS to unbound; both TCP modes (pool, pipe) are covered.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from support.dnsperf import run_dnsperf
from support.net import (
    LOOPBACK,
    TcpClient,
    a_addresses,
    frame,
    free_port,
    make_query,
    tcp_query,
    udp_query,
)
from support.pki import TLS_NAME, Pki
from support.proc import (
    STARTUP_MARK,
    Dns2Dot,
    require_tool,
    run_dns2dot,
    start_dns2dot,
)
from support.unbound import BIG_TXT, N_NAMES, UnboundUpstream, n_address

pytestmark = pytest.mark.integration

MODES = ["pool", "pipe"]


@pytest.fixture(scope="module", params=MODES)
def served(
    request: pytest.FixtureRequest,
    pki: Pki,
    unbound: UnboundUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Dns2Dot]:
    """One dns2dot per TCP mode for the whole module (pool = the default, no --mode flag)."""
    mode = str(request.param)
    d = start_dns2dot(
        tmp_path_factory.mktemp(f"dns2dot-{mode}"),
        upstreams=[unbound.spec],
        cafile=pki.ca,
        mode=None if mode == "pool" else mode,
    )
    try:
        yield d
    finally:
        d.stop()


# -- dig / kdig ------------------------------------------------------------------------


@dataclass
class ToolAnswer:
    """What dig or kdig printed, reduced to what tests check."""

    status: str
    qid: int
    flags: set[str]
    records: list[tuple[str, str, str]] = field(default_factory=list)  # (name, type, rdata)
    question: list[str] = field(default_factory=list)
    raw: str = ""


_HEADER = re.compile(r"->>HEADER<<- opcode: (\w+)[,;] status: (\w+)[,;] id: (\d+)")
_FLAGS = re.compile(r"^;; [Ff]lags: ([a-z ]*);", re.M)


def parse_tool_output(text: str) -> list[ToolAnswer]:
    """Split dig/kdig output into one :class:`ToolAnswer` per response printed."""
    answers: list[ToolAnswer] = []
    section = ""
    for line in text.splitlines():
        m = _HEADER.search(line)
        if m:
            answers.append(ToolAnswer(status=m.group(2), qid=int(m.group(3)), flags=set(), raw=""))
            section = ""
            continue
        if not answers:
            continue
        cur = answers[-1]
        cur.raw += line + "\n"
        fm = _FLAGS.match(line)
        if fm:
            cur.flags = set(fm.group(1).split())
            continue
        if not line.strip():
            section = ""
        elif line.startswith(";; QUESTION SECTION"):
            section = "question"
        elif line.startswith(";; ANSWER SECTION"):
            section = "answer"
        elif line.startswith(";;") and "SECTION" in line:
            section = "other"
        elif section == "question" and line.startswith(";") and line.strip(";").strip():
            cur.question.append(line.strip(";").split()[0])
        elif section == "answer" and line.strip() and not line.startswith(";"):
            parts = line.split(None, 4)
            if len(parts) == 5:
                cur.records.append((parts[0], parts[3], parts[4]))
    return answers


def run_tool(argv: Sequence[str], timeout: float = 30.0) -> str:
    """Run dig/kdig (which must exist) and return stdout+stderr."""
    require_tool(argv[0])
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    return proc.stdout + proc.stderr


def dig(port: int, *args: str) -> list[ToolAnswer]:
    """``dig @127.0.0.1 -p PORT +tries=1 +time=5 ARGS``."""
    out = run_tool(["dig", f"@{LOOPBACK}", "-p", str(port), "+tries=1", "+time=5", *args])
    answers = parse_tool_output(out)
    assert answers, f"dig printed no answer:\n{out}"
    assert "ID mismatch" not in out, out
    return answers


def kdig(port: int, *args: str) -> list[ToolAnswer]:
    """``kdig @127.0.0.1 -p PORT +retry=0 +time=5 ARGS``."""
    out = run_tool(["kdig", f"@{LOOPBACK}", "-p", str(port), "+retry=0", "+time=5", *args])
    answers = parse_tool_output(out)
    assert answers, f"kdig printed no answer:\n{out}"
    assert "reply ID" not in out and "question sections are different" not in out, out
    return answers


def test_startup_line(served: Dns2Dot, unbound: UnboundUpstream) -> None:
    """The one startup line names the listener and the upstream (DESIGN: interface contract)."""
    lines = [ln for ln in served.stderr().splitlines() if ln.startswith(STARTUP_MARK)]
    assert len(lines) == 1, served.stderr()
    assert f"{LOOPBACK}:{served.port}" in lines[0]
    assert f"{LOOPBACK}:{unbound.port}#{TLS_NAME}" in lines[0]


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_dig_a(served: Dns2Dot, transport: str) -> None:
    """dig over UDP and TCP gets unbound's record, with our ID, QR set and no error."""
    (ans,) = dig(served.port, transport, "+qid=4242", "a.example.test", "A")
    assert ans.status == "NOERROR", ans.raw
    assert ans.qid == 4242
    assert "qr" in ans.flags
    assert ("a.example.test.", "A", "192.0.2.10") in ans.records, ans.raw


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_kdig_aaaa_and_mx(served: Dns2Dot, transport: str) -> None:
    """kdig over UDP and TCP: AAAA and MX come through intact."""
    (ans,) = kdig(served.port, transport, "a.example.test", "AAAA")
    assert ans.status == "NOERROR", ans.raw
    assert ("a.example.test.", "AAAA", "2001:db8::10") in ans.records, ans.raw
    (mx,) = kdig(served.port, transport, "example.test", "MX")
    assert mx.status == "NOERROR", mx.raw
    assert ("example.test.", "MX", "10 mail.example.test.") in mx.records, mx.raw


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_dig_nxdomain(served: Dns2Dot, transport: str) -> None:
    """NXDOMAIN is passed through, not turned into SERVFAIL."""
    (ans,) = dig(served.port, transport, "nx.example.test", "A")
    assert ans.status == "NXDOMAIN", ans.raw
    assert not ans.records


CASES = [
    ("a.example.test.", "A", dns.rcode.NOERROR, {"192.0.2.10"}),
    ("a.example.test.", "AAAA", dns.rcode.NOERROR, {"2001:db8::10"}),
    ("www.example.test.", "A", dns.rcode.NOERROR, {"192.0.2.11"}),
    ("n777.example.test.", "A", dns.rcode.NOERROR, {n_address(777)}),
    ("nodata.example.test.", "AAAA", dns.rcode.NOERROR, set()),
    ("no-such-name.example.test.", "A", dns.rcode.NXDOMAIN, set()),
]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize(("name", "rdtype", "rcode", "addrs"), CASES)
def test_answers_with_dnspython(
    served: Dns2Dot, transport: str, name: str, rdtype: str, rcode: int, addrs: set[str]
) -> None:
    """rcode, records, ID and question all match what unbound serves (NODATA included)."""
    q = make_query(name, rdtype, edns=0)
    send = udp_query if transport == "udp" else tcp_query
    r = send(served.port, q)
    assert r.id == q.id
    assert r.flags & dns.flags.QR
    assert r.question == q.question
    assert r.rcode() == rcode, r
    assert a_addresses(r) == addrs, r
    if rcode == dns.rcode.NOERROR and not addrs:
        assert not r.answer  # NODATA: no records, no error


# -- UDP truncation --------------------------------------------------------------------


def _txt_strings(msg: dns.message.Message) -> set[str]:
    out: set[str] = set()
    for rrset in msg.answer:
        if rrset.rdtype == dns.rdatatype.TXT:
            for rd in rrset:
                out.update(s.decode() for s in rd.strings)
    return out


def test_dig_noedns_udp_big_answer_truncated(served: Dns2Dot) -> None:
    """Over 512 bytes to a plain-UDP client: TC=1 with the question (dig +ignore keeps it)."""
    (ans,) = dig(served.port, "+ignore", "+noedns", "big.example.test", "TXT")
    assert "tc" in ans.flags, ans.raw
    assert ans.question == ["big.example.test."], ans.raw


def test_dig_retries_truncated_over_tcp(served: Dns2Dot) -> None:
    """Without +ignore dig sees TC=1 and retries over TCP: the full answer arrives."""
    answers = dig(served.port, "+noedns", "big.example.test", "TXT")
    final = answers[-1]
    assert final.status == "NOERROR", final.raw
    assert "tc" not in final.flags
    assert len(final.records) == len(BIG_TXT), final.raw


def test_udp_noedns_truncated(served: Dns2Dot) -> None:
    """A no-EDNS UDP query gets at most 512 bytes, TC=1, same ID and question."""
    q = make_query("big.example.test.", "TXT")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(q.to_wire(), (LOOPBACK, served.port))
        data, _ = s.recvfrom(65535)
    assert len(data) <= 512
    r = dns.message.from_wire(data)
    assert r.id == q.id
    assert r.flags & dns.flags.TC
    assert r.question == q.question


@pytest.mark.parametrize("payload", [600, 1232])
def test_udp_edns_small_buffer_truncated(served: Dns2Dot, payload: int) -> None:
    """An EDNS buffer smaller than the answer also gives TC=1, within that size."""
    q = make_query("big.example.test.", "TXT", edns=0, payload=payload)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(q.to_wire(), (LOOPBACK, served.port))
        data, _ = s.recvfrom(65535)
    assert len(data) <= payload
    r = dns.message.from_wire(data)
    assert r.flags & dns.flags.TC
    assert r.question == q.question


def test_udp_edns_4096_full(served: Dns2Dot) -> None:
    """With EDNS 4096 over UDP the whole ~3 kB answer comes back untruncated."""
    r = udp_query(served.port, make_query("big.example.test.", "TXT", edns=0, payload=4096))
    assert not r.flags & dns.flags.TC
    assert _txt_strings(r) == set(BIG_TXT)


def test_tcp_big_answer_full(served: Dns2Dot) -> None:
    """Over TCP the big answer is never truncated."""
    r = tcp_query(served.port, make_query("big.example.test.", "TXT"))
    assert not r.flags & dns.flags.TC
    assert _txt_strings(r) == set(BIG_TXT)


# -- pipelining and framing ------------------------------------------------------------


def test_kdig_keepopen_several_names(served: Dns2Dot) -> None:
    """kdig +tcp +keepopen: several queries on one connection, each answered correctly."""
    idx = [1, 2, 3, 250, 500, 999]
    answers = kdig(served.port, "+tcp", "+keepopen", *[f"n{i}.example.test" for i in idx])
    assert len(answers) == len(idx), [a.raw for a in answers]
    got = {rec for a in answers for rec in a.records}
    assert all(a.status == "NOERROR" for a in answers)
    assert got == {(f"n{i}.example.test.", "A", n_address(i)) for i in idx}


def _pipelined(port: int, count: int) -> None:
    queries = {}
    for i in range(count):
        q = make_query(f"n{i % N_NAMES}.example.test.", "A", qid=i + 1)
        queries[q.id] = (q, i % N_NAMES)
    with TcpClient(port) as c:
        c.send(b"".join(frame(q.to_wire()) for q, _ in queries.values()))
        wires = c.recv_frames(count, timeout=60)
    assert len(wires) == count, f"{len(wires)} of {count} answers before EOF/timeout"
    seen: set[int] = set()
    for w in wires:
        r = dns.message.from_wire(w)
        assert r.id in queries and r.id not in seen, f"unexpected or duplicate ID {r.id}"
        seen.add(r.id)
        q, i = queries[r.id]
        assert r.question == q.question
        assert r.rcode() == dns.rcode.NOERROR
        assert a_addresses(r) == {n_address(i)}


def test_pipelined_600_queries_one_send(served: Dns2Dot) -> None:
    """600 framed queries in one write on one connection: 600 answers, IDs matched, any order."""
    _pipelined(served.port, 600)


def test_query_written_one_byte_at_a_time(served: Dns2Dot) -> None:
    """A query split into 1-byte writes (length prefix included) is reassembled and answered."""
    q = make_query("n42.example.test.", "A", edns=0)
    with TcpClient(served.port) as c:
        c.send_slowly(frame(q.to_wire()), chunk=1, pause=0.003)
        r = c.recv_message(timeout=10)
    assert r is not None and r.id == q.id
    assert a_addresses(r) == {n_address(42)}


def test_writes_split_across_frames(served: Dns2Dot) -> None:
    """Writes that end mid-prefix and mid-message of the next frame still parse as frames."""
    q1 = make_query("n1.example.test.", "A", qid=101)
    q2 = make_query("n2.example.test.", "A", qid=102)
    q3 = make_query("n3.example.test.", "A", qid=103)
    data = frame(q1.to_wire()) + frame(q2.to_wire()) + frame(q3.to_wire())
    cut1 = len(frame(q1.to_wire())) + 1  # inside q2's length prefix
    cut2 = cut1 + 10  # inside q2's message
    with TcpClient(served.port) as c:
        for part in (data[:cut1], data[cut1:cut2], data[cut2:]):
            c.send(part)
            time.sleep(0.05)
        wires = c.recv_frames(3, timeout=10)
    got = {dns.message.from_wire(w).id: a_addresses(dns.message.from_wire(w)) for w in wires}
    assert got == {101: {n_address(1)}, 102: {n_address(2)}, 103: {n_address(3)}}


# -- dnsperf bursts --------------------------------------------------------------------


@pytest.fixture(scope="module")
def perf_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dnsperf input file: the 1000 ``n<i>`` names, type A."""
    p = tmp_path_factory.mktemp("dnsperf") / "queries.txt"
    p.write_text("".join(f"n{i}.example.test A\n" for i in range(N_NAMES)))
    return p


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dnsperf_burst_loses_nothing(served: Dns2Dot, perf_data: Path, transport: str) -> None:
    """3000 queries as fast as dnsperf sends them: none lost, all NOERROR."""
    res = run_dnsperf(served.port, perf_data, tcp=transport == "tcp", runs=3, seconds=20)
    assert res.sent == 3 * N_NAMES, res.raw
    assert res.lost == 0, res.raw
    assert res.completed == res.sent, res.raw
    assert res.rcodes == {"NOERROR": res.sent}, res.raw


# -- IPv6 loopback ---------------------------------------------------------------------


def test_listen_ipv6_loopback(dns2dot: Callable[..., Dns2Dot], unbound: UnboundUpstream) -> None:
    """``-l [::1]:PORT`` serves UDP and TCP on ::1."""
    port6 = free_port()
    d = dns2dot(upstreams=[unbound.spec], extra=["-l", f"[::1]:{port6}"])
    assert f"[::1]:{port6}" in d.startup
    q = make_query("a.example.test.", "A")
    for send in (dns.query.udp, dns.query.tcp):
        r = send(q, "::1", port=port6, timeout=5)
        assert a_addresses(r) == {"192.0.2.10"}


# -- configuration: exit codes, environment, launchers ----------------------------------


def _config_error_lines(stderr: str) -> list[str]:
    """The non-usage lines of stderr (argparse may print a usage block first)."""
    return [
        ln
        for ln in stderr.splitlines()
        if ln.strip() and not ln.startswith("usage:") and not ln.startswith(" ")
    ]


def _assert_config_error(res: subprocess.CompletedProcess[str], *mentions: str) -> None:
    assert res.returncode == 2, f"exit {res.returncode}, stderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    lines = _config_error_lines(res.stderr)
    assert len(lines) == 1, f"expected a one-line message, got:\n{res.stderr}"
    for word in mentions:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"


@pytest.mark.parametrize(
    "listen",
    ["127.0.0.1:notaport", "127.0.0.1:70000", "999.1.1.1:5353", "localhost:5353", "[::1:5353"],
)
def test_bad_listen_exits_2(pki: Pki, listen: str) -> None:
    """A malformed --listen is a configuration error: exit 2, one line naming the setting."""
    res = run_dns2dot(["-l", listen, "-u", f"{LOOPBACK}:1#{TLS_NAME}", "--cafile", str(pki.ca)])
    _assert_config_error(res, "listen")


def test_missing_cafile_exits_2(tmp_path: Path) -> None:
    """--cafile naming a missing file: exit 2, one line naming the setting."""
    missing = tmp_path / "no-such-ca.pem"
    res = run_dns2dot(
        [
            "-l",
            f"{LOOPBACK}:{free_port()}",
            "-u",
            f"{LOOPBACK}:1#{TLS_NAME}",
            "--cafile",
            str(missing),
        ]
    )
    _assert_config_error(res, "cafile")


def test_yaml_unknown_key_exits_2(pki: Pki, tmp_path: Path) -> None:
    """An unknown key in the YAML --config: exit 2, one line naming the key."""
    cfg = tmp_path / "dns2dot.yaml"
    cfg.write_text("bogus_setting_xyz: 1\n")
    res = run_dns2dot(
        ["-l", f"{LOOPBACK}:{free_port()}", "--cafile", str(pki.ca), "--config", str(cfg)]
    )
    _assert_config_error(res, "bogus_setting_xyz")


@pytest.mark.parametrize("spec", [f"{LOOPBACK}:99999#{TLS_NAME}", "not-an-ip#dns.test"])
def test_bad_upstream_exits_2(pki: Pki, spec: str) -> None:
    """A malformed --upstream: exit 2, one line naming the setting."""
    res = run_dns2dot(["-l", f"{LOOPBACK}:{free_port()}", "-u", spec, "--cafile", str(pki.ca)])
    _assert_config_error(res, "upstream")


def test_bad_mode_exits_2(pki: Pki) -> None:
    """--mode other than pool|pipe: exit 2."""
    res = run_dns2dot(
        ["-l", f"{LOOPBACK}:{free_port()}", "--mode", "bogus", "--cafile", str(pki.ca)]
    )
    _assert_config_error(res, "mode")


def test_environment_variables(
    dns2dot: Callable[..., Dns2Dot], pki: Pki, unbound: UnboundUpstream
) -> None:
    """DNS2DOT_LISTEN/UPSTREAM/CAFILE alone configure a working proxy."""
    port = free_port()
    d = dns2dot(
        cafile=None,
        listen_flag=False,
        listen_port=port,
        env={
            "DNS2DOT_LISTEN": f"{LOOPBACK}:{port}",
            "DNS2DOT_UPSTREAM": unbound.spec,
            "DNS2DOT_CAFILE": str(pki.ca),
        },
    )
    assert unbound.spec in d.startup
    assert a_addresses(udp_query(port, make_query("a.example.test."))) == {"192.0.2.10"}


def test_environment_upstream_list(
    dns2dot: Callable[..., Dns2Dot], unbound: UnboundUpstream
) -> None:
    """A repeatable option in the environment is comma-separated."""
    other = f"{LOOPBACK}:{free_port()}#{TLS_NAME}"
    d = dns2dot(env={"DNS2DOT_UPSTREAM": f"{unbound.spec},{other}"})
    assert unbound.spec in d.startup and other in d.startup, d.startup
    assert a_addresses(udp_query(d.port, make_query("a.example.test."))) == {"192.0.2.10"}


def test_dnsserver_shorthand(dns2dot: Callable[..., Dns2Dot]) -> None:
    """DNSSERVER=IP means one upstream IP:853 (startup line only: nothing listens on 853)."""
    d = dns2dot(env={"DNSSERVER": "127.0.0.1"})
    assert "127.0.0.1:853" in d.startup, d.startup
    assert "cloudflare" not in d.startup


def test_flag_overrides_environment(
    dns2dot: Callable[..., Dns2Dot], unbound: UnboundUpstream
) -> None:
    """-u on the command line wins over DNS2DOT_UPSTREAM."""
    other = f"{LOOPBACK}:{free_port()}#{TLS_NAME}"
    d = dns2dot(upstreams=[unbound.spec], env={"DNS2DOT_UPSTREAM": other})
    assert unbound.spec in d.startup and other not in d.startup, d.startup


def test_yaml_upstreams(
    dns2dot: Callable[..., Dns2Dot], unbound: UnboundUpstream, tmp_path: Path
) -> None:
    """YAML ``upstreams:`` entries (address + name) configure the upstream."""
    cfg = tmp_path / "dns2dot.yaml"
    cfg.write_text(f"upstreams:\n  - address: {LOOPBACK}:{unbound.port}\n    name: {TLS_NAME}\n")
    d = dns2dot(extra=["--config", str(cfg)])
    assert unbound.spec in d.startup, d.startup
    assert a_addresses(tcp_query(d.port, make_query("a.example.test."))) == {"192.0.2.10"}


def test_flag_overrides_yaml(
    dns2dot: Callable[..., Dns2Dot], unbound: UnboundUpstream, tmp_path: Path
) -> None:
    """Command-line flags override the YAML file."""
    dead = free_port()
    cfg = tmp_path / "dns2dot.yaml"
    cfg.write_text(f"upstreams:\n  - address: {LOOPBACK}:{dead}\n    name: {TLS_NAME}\n")
    d = dns2dot(upstreams=[unbound.spec], extra=["--config", str(cfg)])
    assert unbound.spec in d.startup and f":{dead}#" not in d.startup, d.startup
    assert a_addresses(udp_query(d.port, make_query("a.example.test."))) == {"192.0.2.10"}


def test_upstream_without_name_verifies_ip(
    dns2dot: Callable[..., Dns2Dot], unbound: UnboundUpstream
) -> None:
    """``-u IP:PORT`` without #name: the certificate's IP SAN (127.0.0.1) is what's checked."""
    d = dns2dot(upstreams=[f"{LOOPBACK}:{unbound.port}"])
    assert a_addresses(udp_query(d.port, make_query("a.example.test."))) == {"192.0.2.10"}


def test_dnsproxy_script(dns2dot: Callable[..., Dns2Dot], unbound: UnboundUpstream) -> None:
    """``python dnsproxy.py`` at the repo root behaves like ``dns2dot``."""
    d = dns2dot(upstreams=[unbound.spec], launcher="script")
    assert d.startup.startswith(STARTUP_MARK), d.startup
    assert a_addresses(udp_query(d.port, make_query("a.example.test."))) == {"192.0.2.10"}
    assert a_addresses(tcp_query(d.port, make_query("www.example.test."))) == {"192.0.2.11"}


def test_sigterm_exits_0(dns2dot: Callable[..., Dns2Dot], unbound: UnboundUpstream) -> None:
    """SIGTERM is a clean stop: exit code 0."""
    d = dns2dot(upstreams=[unbound.spec])
    udp_query(d.port, make_query("a.example.test."))
    assert d.stop() == 0, d.stderr()
