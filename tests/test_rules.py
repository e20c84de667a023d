"""Unit tests for :mod:`dns2dot.rules`: hosts files, blocklists and forwarded zones.

Files are written to ``tmp_path``; queries are built with dnspython and every local
answer is parsed back with it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from dns2dot.policy import rules
from dns2dot.policy.rules import LOCAL_TTL, RuleSet, build_rules, name_to_wire, suffixes
from dns2dot.protocol import wire
from dns2dot.protocol.errors import ConfigError

# --------------------------------------------------------------------------- helpers


def query(
    name: str,
    rdtype: str = "A",
    rdclass: str = "IN",
    *,
    edns: bool = True,
    do: bool = False,
    qid: int = 0x4242,
) -> tuple[bytes, wire.Query]:
    q = dns.message.make_query(
        name, rdtype, rdclass, id=qid, use_edns=0 if edns else False, want_dnssec=do
    )
    msg = q.to_wire()
    return msg, wire.parse_query(msg)


def ask(ruleset: RuleSet, name: str, rdtype: str = "A", rdclass: str = "IN") -> bytes | int | None:
    msg, parsed = query(name, rdtype, rdclass)
    return ruleset.match(parsed, msg)


def local(
    ruleset: RuleSet, name: str, rdtype: str = "A", *, edns: bool = True, do: bool = False
) -> dns.message.Message:
    """The local answer a rule gives, parsed by dnspython, with the basics checked."""
    msg, parsed = query(name, rdtype, edns=edns, do=do)
    out = ruleset.match(parsed, msg)
    assert isinstance(out, bytes)
    m = dns.message.from_wire(out)
    sent = dns.message.from_wire(msg)
    assert m.id == sent.id
    assert m.flags & dns.flags.QR
    assert len(m.question) == 1
    assert m.question[0].name.to_wire() == parsed.qname  # the client's spelling
    assert m.question[0].rdtype == parsed.qtype
    assert m.question[0].rdclass == parsed.qclass
    assert (m.edns >= 0) == (parsed.edns is not None)  # OPT only if the query had one
    return m


def addresses(m: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in m.answer for rd in rrset)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "text",
    ["example.com", "example.com.", "Example.COM", "EXAMPLE.com.", "  example.com \n"],
)
def test_name_to_wire_folds_case_and_trailing_dot(text: str) -> None:
    assert name_to_wire(text) == b"\x07example\x03com\x00"


@pytest.mark.parametrize("text", ["www.example.org", "a.b.c.d", "_dmarc.example.net", "x"])
def test_name_to_wire_agrees_with_dnspython(text: str) -> None:
    assert name_to_wire(text) == dns.name.from_text(text).to_wire()


@pytest.mark.parametrize("text", [".", ""])
def test_name_to_wire_root(text: str) -> None:
    assert name_to_wire(text) == b"\x00"


@pytest.mark.parametrize(
    ("text", "ascii_name"),
    [
        ("bücher.de", "xn--bcher-kva.de"),
        ("BÜCHER.de.", "xn--bcher-kva.de"),
        ("münchen.example", "xn--mnchen-3ya.example"),
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
    ],
)
def test_name_to_wire_idna(text: str, ascii_name: str) -> None:
    assert name_to_wire(text) == dns.name.from_text(ascii_name).to_wire()


def test_name_to_wire_limits() -> None:
    assert name_to_wire("a" * 63 + ".com")[0] == 63
    longest = ".".join(["a" * 63] * 3 + ["a" * 61])  # 4 labels: 64*3 + 62 + 1 = 255
    assert len(name_to_wire(longest)) == 255


@pytest.mark.parametrize(
    "text",
    [
        "a" * 64 + ".com",  # label too long
        ".".join(["a" * 63] * 3 + ["a" * 62]),  # 256 octets
        "..",
        "\udcff.com",  # not encodable
        "\u200b.com",  # maps to an empty label
    ],
)
def test_name_to_wire_bad_names(text: str) -> None:
    with pytest.raises(ValueError):
        name_to_wire(text)


def test_name_to_wire_rejects_empty_labels() -> None:
    """An empty label inside a name is not a domain name (RFC 1035 §3.1; dnspython
    raises EmptyLabel). ``name_to_wire`` silently drops it, so a typo such as
    ``ads..example.com`` in a blocklist blocks ``ads.example.com`` instead of failing."""
    accepted = []
    for text in ("a..b", "ads..example.com", ".example.com"):
        with pytest.raises(dns.name.EmptyLabel):
            dns.name.from_text(text)
        with contextlib.suppress(ValueError):
            accepted.append((text, name_to_wire(text)))
    assert accepted == []


def test_suffixes_longest_first_without_root() -> None:
    name = name_to_wire("a.b.example.com")
    assert list(suffixes(name)) == [
        name_to_wire("a.b.example.com"),
        name_to_wire("b.example.com"),
        name_to_wire("example.com"),
        name_to_wire("com"),
    ]
    assert list(suffixes(b"\x00")) == []


@pytest.mark.parametrize("address", ["192.0.2.10", "2001:db8::10", "::1", "10.0.0.1"])
def test_reverse_name_agrees_with_dnspython(address: str) -> None:
    expected = dns.reversename.from_address(address).to_wire()
    assert rules.reverse_name(ipaddress.ip_address(address)) == expected


# --------------------------------------------------------------------------- hosts files

HOSTS = """\
# a comment line

127.0.0.1   localhost
192.0.2.10  Router.LAN router   # aliases, and a trailing comment
2001:db8::10 router.lan
192.0.2.11  nas.lan
192.0.2.12  nas.lan
fe80::1%eth0 link.lan
\t192.0.2.10   second.lan
"""


@pytest.fixture
def hosts_rules(tmp_path: Path) -> RuleSet:
    return build_rules(hosts=[write(tmp_path, "hosts", HOSTS)])


def test_hosts_loads_records(hosts_rules: RuleSet) -> None:
    h = hosts_rules.hosts
    a, aaaa, ptr = 1, 28, 12
    assert h[name_to_wire("router.lan")] == [
        (a, bytes([192, 0, 2, 10])),
        (aaaa, ipaddress.ip_address("2001:db8::10").packed),
    ]
    assert h[name_to_wire("router")] == [(a, bytes([192, 0, 2, 10]))]
    assert h[name_to_wire("nas.lan")] == [(a, bytes([192, 0, 2, 11])), (a, bytes([192, 0, 2, 12]))]
    assert h[name_to_wire("link.lan")] == [(aaaa, ipaddress.ip_address("fe80::1").packed)]
    # One PTR per address, to the first name given for it.
    assert h[rules.reverse_name(ipaddress.ip_address("192.0.2.10"))] == [
        (ptr, name_to_wire("router.lan"))
    ]
    assert h[rules.reverse_name(ipaddress.ip_address("2001:db8::10"))] == [
        (ptr, name_to_wire("router.lan"))
    ]
    assert h[rules.reverse_name(ipaddress.ip_address("192.0.2.12"))] == [
        (ptr, name_to_wire("nas.lan"))
    ]
    assert h[rules.reverse_name(ipaddress.ip_address("fe80::1"))] == [
        (ptr, name_to_wire("link.lan"))
    ]
    assert name_to_wire("a") not in h
    assert not hosts_rules.blocked
    assert not hosts_rules.forward


def test_hosts_answer_a(hosts_rules: RuleSet) -> None:
    m = local(hosts_rules, "RoUtEr.LaN.", "A")
    assert m.rcode() == dns.rcode.NOERROR
    assert m.flags & dns.flags.AA
    assert m.flags & dns.flags.RD  # copied from the query
    assert addresses(m) == ["192.0.2.10"]
    rrset = m.answer[0]
    assert rrset.ttl == LOCAL_TTL == 60
    assert rrset.name == dns.name.from_text("router.lan.")
    assert rrset.rdtype == dns.rdatatype.A
    assert not m.authority
    assert not m.additional


def test_hosts_answer_aaaa_and_any(hosts_rules: RuleSet) -> None:
    assert addresses(local(hosts_rules, "router.lan.", "AAAA")) == ["2001:db8::10"]
    m = local(hosts_rules, "router.lan.", "ANY")
    assert addresses(m) == ["192.0.2.10", "2001:db8::10"]
    assert all(rrset.ttl == 60 for rrset in m.answer)


def test_hosts_answer_two_addresses(hosts_rules: RuleSet) -> None:
    assert addresses(local(hosts_rules, "nas.lan.", "A")) == ["192.0.2.11", "192.0.2.12"]


@pytest.mark.parametrize(
    ("address", "target"),
    [("192.0.2.10", "router.lan."), ("2001:db8::10", "router.lan."), ("192.0.2.12", "nas.lan.")],
)
def test_hosts_answer_ptr(hosts_rules: RuleSet, address: str, target: str) -> None:
    name = dns.reversename.from_address(address).to_text()
    m = local(hosts_rules, name, "PTR")
    assert m.flags & dns.flags.AA
    assert [rd.target.to_text() for rd in m.answer[0]] == [target]
    assert m.answer[0].ttl == 60


@pytest.mark.parametrize(("name", "rdtype"), [("router.lan.", "MX"), ("router.", "AAAA")])
def test_hosts_other_types_nodata(hosts_rules: RuleSet, name: str, rdtype: str) -> None:
    m = local(hosts_rules, name, rdtype)
    assert m.rcode() == dns.rcode.NOERROR
    assert m.flags & dns.flags.AA
    assert not m.answer


def test_hosts_ptr_name_asked_for_a_is_nodata(hosts_rules: RuleSet) -> None:
    m = local(hosts_rules, dns.reversename.from_address("192.0.2.10").to_text(), "A")
    assert not m.answer


@pytest.mark.parametrize("edns", [True, False])
@pytest.mark.parametrize("do", [True, False])
def test_hosts_answer_opt_follows_query(hosts_rules: RuleSet, edns: bool, do: bool) -> None:
    if do and not edns:
        return
    m = local(hosts_rules, "router.lan.", edns=edns, do=do)
    assert (m.edns == 0) == edns
    if edns:
        assert bool(m.ednsflags & dns.flags.DO) == do


def test_hosts_cd_bit_copied(hosts_rules: RuleSet) -> None:
    q = dns.message.make_query("router.lan.", "A")
    q.flags = dns.flags.CD  # and no RD
    msg = q.to_wire()
    out = hosts_rules.match(wire.parse_query(msg), msg)
    assert isinstance(out, bytes)
    m = dns.message.from_wire(out)
    assert m.flags & dns.flags.CD
    assert not m.flags & dns.flags.RD


def test_hosts_other_class_not_answered(hosts_rules: RuleSet) -> None:
    assert ask(hosts_rules, "router.lan.", "A", "CH") is None


def test_hosts_names_not_listed_fall_through(hosts_rules: RuleSet) -> None:
    assert ask(hosts_rules, "printer.lan.") is None
    assert ask(hosts_rules, "x.router.lan.") is None  # hosts entries are exact names
    assert ask(hosts_rules, "lan.") is None


def test_hosts_hits_counted(hosts_rules: RuleSet) -> None:
    local(hosts_rules, "router.lan.")
    local(hosts_rules, "router.lan.", "MX")
    ask(hosts_rules, "elsewhere.example.")
    assert hosts_rules.hits == {"hosts": 2, "block": 0, "forward": 0}


def test_hosts_several_files_merge(tmp_path: Path) -> None:
    one = write(tmp_path, "one", "192.0.2.1 shared.lan\n")
    two = write(tmp_path, "two", "192.0.2.2 shared.lan\n192.0.2.1 shared.lan\n")
    ruleset = build_rules(hosts=[one, two])
    assert addresses(local(ruleset, "shared.lan.")) == ["192.0.2.1", "192.0.2.2"]


@pytest.mark.parametrize(
    "bad",
    ["192.0.2.1", "not-an-ip host.lan", "192.0.2.300 host.lan", "192.0.2.1 " + "a" * 64],
)
def test_hosts_bad_line_names_file_and_line(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path, "hosts", f"192.0.2.1 ok.lan\n{bad}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2")):
        build_rules(hosts=[path])


def test_hosts_bad_line_number_counts_comments_and_blanks(tmp_path: Path) -> None:
    """The line number in the error is the line in the file, comments and blank
    lines included (``_lines`` drops them before ``enumerate`` numbers what is left,
    so this reports ``hosts:2``)."""
    path = write(tmp_path, "hosts", "# header\n\n127.0.0.1 localhost\nbogus\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:4:")):
        build_rules(hosts=[path])


def test_hosts_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=re.escape(missing)):
        build_rules(hosts=[missing])


# --------------------------------------------------------------------------- blocklists

BLOCKLIST = """\
# one name a line
ads.example
Mixed.Case.Example
tracker.example.net.   # trailing comment

# hosts format
0.0.0.0 hostsformat.example
127.0.0.1 localhost
0.0.0.0 localhost.localdomain
::1 local
255.255.255.255 broadcasthost
"""


@pytest.fixture
def block_rules(tmp_path: Path) -> RuleSet:
    return build_rules(blocklists=[write(tmp_path, "block", BLOCKLIST)])


def test_blocklist_loads(block_rules: RuleSet) -> None:
    assert block_rules.blocked == {
        name_to_wire(n)
        for n in (
            "ads.example",
            "mixed.case.example",
            "tracker.example.net",
            "hostsformat.example",
        )
    }


@pytest.mark.parametrize(
    "name",
    [
        "ads.example.",
        "ADS.EXAMPLE.",
        "x.ads.example.",
        "a.b.c.ads.example.",
        "mixed.case.example.",
        "deep.MIXED.case.EXAMPLE.",
        "tracker.example.net.",
        "hostsformat.example.",
        "sub.hostsformat.example.",
    ],
)
def test_blocked_names_get_nxdomain(block_rules: RuleSet, name: str) -> None:
    m = local(block_rules, name)
    assert m.rcode() == dns.rcode.NXDOMAIN
    assert not m.answer


@pytest.mark.parametrize(
    "name",
    [
        "example.",  # a parent is not blocked by a child entry
        "case.example.",
        "example.net.",
        "notads.example.",  # a suffix of the text, not of the labels
        "ads.example.org.",
        "localhost.",
        "localhost.localdomain.",
        "local.",
        "broadcasthost.",
    ],
)
def test_not_blocked(block_rules: RuleSet, name: str) -> None:
    assert ask(block_rules, name) is None


@pytest.mark.parametrize("edns", [True, False])
def test_blocked_nxdomain_opt_follows_query(block_rules: RuleSet, edns: bool) -> None:
    m = local(block_rules, "ads.example.", "AAAA", edns=edns)
    assert m.rcode() == dns.rcode.NXDOMAIN


def test_block_hits_counted(block_rules: RuleSet) -> None:
    ask(block_rules, "ads.example.")
    ask(block_rules, "x.ads.example.")
    ask(block_rules, "example.")
    assert block_rules.hits == {"hosts": 0, "block": 2, "forward": 0}


def test_blocklist_hosts_format_blocks_every_name_on_the_line(tmp_path: Path) -> None:
    """hosts(5) lines carry aliases: ``0.0.0.0 a.example b.example`` blocks both.

    Only the last field is taken today, so ``a.example`` is silently not blocked."""
    path = write(tmp_path, "block", "0.0.0.0 a.example b.example\n")
    ruleset = build_rules(blocklists=[path])
    assert ask(ruleset, "b.example.") is not None
    assert ask(ruleset, "a.example.") is not None


def test_blocklist_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "block", "ok.example\n" + "a" * 64 + ".example\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2")):
        build_rules(blocklists=[path])


def test_blocklist_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        build_rules(blocklists=[str(tmp_path / "nope")])


def block_with(tmp_path: Path, *answers: str) -> RuleSet:
    path = write(tmp_path, "block", "ads.example\n")
    return build_rules(blocklists=[path], block_answer=answers)


def test_block_answer_addresses(tmp_path: Path) -> None:
    ruleset = block_with(tmp_path, "0.0.0.0", "::")
    m = local(ruleset, "x.ads.example.", "A")
    assert m.rcode() == dns.rcode.NOERROR
    assert m.flags & dns.flags.AA
    assert addresses(m) == ["0.0.0.0"]
    assert m.answer[0].ttl == 60
    assert m.answer[0].name == dns.name.from_text("x.ads.example.")
    assert addresses(local(ruleset, "ads.example.", "AAAA")) == ["::"]
    assert addresses(local(ruleset, "ads.example.", "ANY")) == ["0.0.0.0", "::"]
    nodata = local(ruleset, "ads.example.", "MX")
    assert nodata.rcode() == dns.rcode.NOERROR
    assert not nodata.answer


def test_block_answer_v4_only_gives_nodata_for_aaaa(tmp_path: Path) -> None:
    ruleset = block_with(tmp_path, "192.0.2.99")
    assert addresses(local(ruleset, "ads.example.", "A")) == ["192.0.2.99"]
    m = local(ruleset, "ads.example.", "AAAA")
    assert m.rcode() == dns.rcode.NOERROR
    assert not m.answer


def test_block_answer_v6_only_gives_nodata_for_a(tmp_path: Path) -> None:
    ruleset = block_with(tmp_path, "2001:db8::99")
    assert addresses(local(ruleset, "ads.example.", "AAAA")) == ["2001:db8::99"]
    assert not local(ruleset, "ads.example.", "A").answer


@pytest.mark.parametrize("answers", [("nxdomain",), ("NXDOMAIN",), ()])
def test_block_answer_nxdomain(tmp_path: Path, answers: tuple[str, ...]) -> None:
    ruleset = block_with(tmp_path, *answers)
    assert ruleset.block_address is None
    assert local(ruleset, "ads.example.").rcode() == dns.rcode.NXDOMAIN


def test_parse_block_address() -> None:
    assert rules.parse_block_address(["0.0.0.0"]) == (b"\x00" * 4, b"")
    assert rules.parse_block_address(["::1", "127.0.0.1"]) == (
        bytes([127, 0, 0, 1]),
        ipaddress.ip_address("::1").packed,
    )
    with pytest.raises(ConfigError, match="block-answer"):
        rules.parse_block_address(["blackhole"])


# --------------------------------------------------------------------------- forwarding


def test_forward_zone_and_below() -> None:
    ruleset = build_rules(forward_zones=["corp.example", "lan."])
    assert ruleset.zones == ["corp.example", "lan."]
    assert ask(ruleset, "corp.example.") == 0
    assert ask(ruleset, "host.CORP.example.") == 0
    assert ask(ruleset, "a.b.corp.example.", "MX") == 0
    assert ask(ruleset, "printer.lan.") == 1
    assert ask(ruleset, "lan.") == 1
    assert ask(ruleset, "example.") is None
    assert ask(ruleset, "notcorp.example.") is None
    assert ask(ruleset, "corp.example.org.") is None
    assert ruleset.hits["forward"] == 5


@pytest.mark.parametrize(
    ("zones", "inner", "outer"),
    [(["example", "corp.example"], 1, 0), (["corp.example", "example"], 0, 1)],
)
def test_forward_nested_zones_longest_suffix_wins(zones: list[str], inner: int, outer: int) -> None:
    ruleset = build_rules(forward_zones=zones)
    assert ask(ruleset, "host.corp.example.") == inner
    assert ask(ruleset, "corp.example.") == inner
    assert ask(ruleset, "other.example.") == outer
    assert ask(ruleset, "example.") == outer


def test_forward_bad_zone() -> None:
    with pytest.raises(ConfigError, match="forward"):
        build_rules(forward_zones=["a" * 64 + ".example"])


def test_rule_order_hosts_then_block_then_forward(tmp_path: Path) -> None:
    ruleset = build_rules(
        hosts=[write(tmp_path, "hosts", "192.0.2.1 ads.corp.example\n")],
        blocklists=[write(tmp_path, "block", "corp.example\n")],
        forward_zones=["corp.example"],
    )
    assert addresses(local(ruleset, "ads.corp.example.")) == ["192.0.2.1"]
    assert local(ruleset, "other.corp.example.").rcode() == dns.rcode.NXDOMAIN
    assert ruleset.hits == {"hosts": 1, "block": 1, "forward": 0}


def test_empty_ruleset() -> None:
    ruleset = build_rules()
    assert ruleset.empty
    assert ask(ruleset, "anything.example.") is None
    assert not build_rules(forward_zones=["x"]).empty


# --------------------------------------------------------------------------- scale


def test_million_name_blocklist(tmp_path: Path) -> None:
    path = tmp_path / "big"
    count = 1_000_000
    with path.open("w") as handle:
        handle.write("# a big list\n")
        for i in range(count):
            if i % 2:
                handle.write(f"0.0.0.0 host{i}.ads{i % 997}.example\n")
            else:
                handle.write(f"host{i}.ads{i % 997}.example\n")
    ruleset = build_rules(blocklists=[str(path)])
    assert len(ruleset.blocked) == count
    for i in (0, 1, 2, 499_999, 500_000, 777_777, count - 1):
        name = f"host{i}.ads{i % 997}.example."
        assert local(ruleset, name).rcode() == dns.rcode.NXDOMAIN
        assert local(ruleset, "www." + name.upper()).rcode() == dns.rcode.NXDOMAIN
    assert ask(ruleset, "ads5.example.") is None
    assert ask(ruleset, f"host{count}.ads{count % 997}.example.") is None
    assert ask(ruleset, "host1.ads2.example.") is None  # mixed-up labels are not listed
    assert ruleset.hits["block"] == 14
