"""Unit tests for :mod:`dns2dot.wire`: bytes in, values out, checked against dnspython.

No sockets and no loop: every test builds a message (with dnspython where it can, by
hand where the message has to be broken on purpose) and feeds it to the pure code.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.wire
import pytest
from dns.rdtypes.ANY.CNAME import CNAME
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from support.mutate import mutated

from dns2dot.protocol import wire
from dns2dot.protocol.errors import Dns2DotError, FormError, MessageError, ProtocolError
from dns2dot.protocol.framing import FrameDecoder
from dns2dot.serve.resolver import validate

# --------------------------------------------------------------------------- helpers

QNAME = b"\x07example\x03com\x00"


def header(
    qid: int = 0x1234,
    flags: int = wire.RD,
    qd: int = 1,
    an: int = 0,
    ns: int = 0,
    ar: int = 0,
) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def question(name: bytes = QNAME, qtype: int = 1, qclass: int = 1) -> bytes:
    return name + struct.pack("!HH", qtype, qclass)


def rr(owner: bytes, rtype: int, rclass: int = 1, ttl: int = 0, rdata: bytes = b"") -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def opt(
    payload: int = 1232,
    *,
    version: int = 0,
    do: bool = False,
    ext_rcode: int = 0,
    options: bytes = b"",
    owner: bytes = b"\x00",
) -> bytes:
    ttl = (ext_rcode << 24) | (version << 16) | (0x8000 if do else 0)
    return rr(owner, 41, payload, ttl, options)


def ptr(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def dnsp_query(
    name: str | dns.name.Name = "example.com.",
    rdtype: int | str = "A",
    rdclass: int | str = "IN",
    *,
    qid: int = 0x1234,
    **kwargs: object,
) -> bytes:
    return dns.message.make_query(name, rdtype, rdclass, id=qid, **kwargs).to_wire()  # type: ignore[arg-type]


def form_error(msg: bytes) -> FormError:
    with pytest.raises(FormError) as info:
        wire.parse_query(msg)
    return info.value


def assert_formerr(msg: bytes, rcode: int = wire.Rcode.FORMERR) -> None:
    assert form_error(msg).rcode == rcode


def assert_agrees_with_dnspython(msg: bytes, query: wire.Query) -> None:
    """Everything :class:`wire.Query` reports, compared with dnspython's own parse."""
    m = dns.message.from_wire(msg)
    assert query.id == m.id
    assert query.flags == struct.unpack_from("!H", msg, 2)[0]
    assert query.opcode == m.opcode()
    assert len(m.question) == 1
    q = m.question[0]
    assert query.qname == q.name.to_wire()
    assert query.qtype == q.rdtype
    assert query.qclass == q.rdclass
    assert query.question_end == wire.HEADER_LEN + len(q.name.to_wire()) + 4
    assert query.key == q.name.to_wire().lower() + struct.pack("!HH", q.rdtype, q.rdclass)
    if m.edns < 0:
        assert query.edns is None
        assert query.udp_limit == 512
    else:
        assert query.edns is not None
        assert query.edns.payload == m.payload
        assert query.edns.version == m.edns
        assert query.edns.do == bool(m.ednsflags & dns.flags.DO)
        assert query.udp_limit == max(512, m.payload)
        assert msg[query.edns.offset] == 0
        assert struct.unpack_from("!H", msg, query.edns.offset + 1)[0] == 41


def parse_ok(msg: bytes) -> wire.Query:
    query = wire.parse_query(msg)
    assert_agrees_with_dnspython(msg, query)
    return query


# --------------------------------------------------------------------------- parse_query: good


@pytest.mark.parametrize(
    "rdtype", ["A", "AAAA", "MX", "TXT", "NS", "SOA", "PTR", "SRV", "HTTPS", "CAA", "ANY", 65280]
)
def test_parse_query_types(rdtype: str | int) -> None:
    parse_ok(dnsp_query("example.com.", rdtype))


@pytest.mark.parametrize("rdclass", ["IN", "CH", "HS", "ANY", 254, 65280])
def test_parse_query_classes(rdclass: str | int) -> None:
    query = parse_ok(dnsp_query("version.bind.", "TXT", rdclass))
    assert query.qclass == dns.rdataclass.RdataClass.make(rdclass)


@pytest.mark.parametrize("qid", [0, 1, 0x8000, 0xFFFF])
def test_parse_query_ids(qid: int) -> None:
    assert parse_ok(dnsp_query(qid=qid)).id == qid


def test_parse_query_root_name() -> None:
    query = parse_ok(dnsp_query(".", "NS"))
    assert query.qname == b"\x00"
    assert query.question_end == 12 + 1 + 4


def test_parse_query_without_edns() -> None:
    query = parse_ok(dnsp_query())
    assert query.edns is None
    assert query.udp_limit == wire.MIN_UDP_PAYLOAD


@pytest.mark.parametrize("payload", [0, 511, 512, 1232, 4096, 65535])
def test_parse_query_edns_payload(payload: int) -> None:
    query = parse_ok(dnsp_query(use_edns=0, payload=payload))
    assert query.edns is not None
    assert query.edns.payload == payload
    assert query.udp_limit == max(512, payload)


@pytest.mark.parametrize("do", [False, True])
def test_parse_query_do_bit(do: bool) -> None:
    query = parse_ok(dnsp_query(use_edns=0, want_dnssec=do))
    assert query.edns is not None
    assert query.edns.do is do
    assert query.edns.version == 0


def test_parse_query_edns_with_options() -> None:
    options = [
        dns.edns.ECSOption("192.0.2.0", 24),
        dns.edns.CookieOption(b"\x01" * 8, b""),
        dns.edns.GenericOption(65001, b"local"),
    ]
    query = parse_ok(dnsp_query(use_edns=0, options=options, pad=128))
    assert query.edns is not None


def test_parse_query_flags_preserved() -> None:
    flags = wire.RD | wire.CD | wire.AD | 0x0040  # Z as well: not ours to police
    query = parse_ok(dnsp_query(flags=flags))
    assert query.flags == flags
    assert query.opcode == 0


def test_parse_query_mixed_case_name_preserved() -> None:
    """RFC 4343 / draft-vixie-dnsext-dns0x20: case is kept on the wire, folded for keys."""
    msg = dnsp_query("ExAmPlE.CoM.", "A")
    query = parse_ok(msg)
    assert query.qname == b"\x07ExAmPlE\x03CoM\x00"
    assert query.key == b"\x07example\x03com\x00\x00\x01\x00\x01"
    assert query.key == parse_ok(dnsp_query("example.com.")).key


def test_parse_query_max_label() -> None:
    """RFC 1035 §2.3.4: labels of 63 octets are allowed."""
    name = dns.name.Name([b"a" * 63, b"b" * 63, b""])
    assert parse_ok(dnsp_query(name)).qname == name.to_wire()


def test_parse_query_max_name() -> None:
    """RFC 1035 §2.3.4: a name of exactly 255 octets (wire form) is allowed."""
    name = dns.name.Name([b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61, b""])
    assert len(name.to_wire()) == 255
    assert parse_ok(dnsp_query(name)).qname == name.to_wire()


def test_parse_query_binary_labels() -> None:
    """Labels are octet strings (RFC 2181 §11): dots, NULs and high bytes are data."""
    name = dns.name.Name([b"a.b", b"\x00\xff", b"\x80Z", b""])
    parse_ok(dnsp_query(name))


def test_parse_query_with_compressed_additional_record() -> None:
    """RFC 1035 §4.1.4: a record name may point back into the question."""
    m = dns.message.make_query("www.example.com.", "A", id=7, use_edns=0)
    m.additional.append(dns.rrset.from_text("www.example.com.", 60, "IN", "A", "192.0.2.1"))
    msg = m.to_wire()
    assert ptr(12) in msg  # dnspython compressed the owner name
    parse_ok(msg)


def test_parse_query_with_records_in_every_section() -> None:
    """A query may carry records (e.g. RFC 2136 style, or a NOTIFY-like SOA): only
    their structure is the forwarder's business."""
    m = dns.message.make_query("example.com.", "SOA", id=9, use_edns=0, want_dnssec=True)
    m.answer.append(dns.rrset.from_text("example.com.", 60, "IN", "A", "192.0.2.1"))
    m.authority.append(dns.rrset.from_text("example.com.", 60, "IN", "NS", "ns.example.com."))
    m.additional.append(dns.rrset.from_text("ns.example.com.", 60, "IN", "AAAA", "2001:db8::1"))
    msg = m.to_wire()
    query = parse_ok(msg)
    assert query.edns is not None and query.edns.do


def test_parse_query_opt_not_last_in_additional() -> None:
    """RFC 6891 §6.1.1: the OPT RR may be placed anywhere in the additional section."""
    msg = header(ar=2) + question() + opt(4096, do=True) + rr(ptr(12), 1, rdata=b"\xc0\x00\x02\x01")
    query = parse_ok(msg)
    assert query.edns is not None
    assert query.edns.offset == 12 + len(question())
    assert query.edns.payload == 4096


def test_parse_query_name_of_255_through_compression() -> None:
    """RFC 1035 §4.1.4: the length limit applies to the expanded name: 255 is fine."""
    qname = dns.name.Name([b"a" * 63, b"b" * 63, b"c" * 63, b""]).to_wire()  # 193 octets
    # 62 octets more: a 61-octet label in front of a pointer to the question name.
    owner = bytes([61]) + b"x" * 61 + ptr(12)
    msg = header(ar=1) + question(qname) + rr(owner, 1, rdata=b"\x00\x00\x00\x00")
    assert len(dns.message.from_wire(msg).additional[0].name.to_wire()) == 255
    parse_ok(msg)


def test_parse_query_pointer_chain() -> None:
    """Pointers to names that themselves end in pointers (always backwards) are fine."""
    q = question(b"\x03www" + QNAME)  # www.example.com at 12, example.com at 16
    first = 12 + len(q)
    rec1 = rr(b"\x04mail" + ptr(16), 1, rdata=b"\x00" * 4)  # mail.example.com
    rec2 = rr(b"\x03foo" + ptr(first), 1, rdata=b"\x00" * 4)  # foo.mail.example.com
    msg = header(ar=2) + q + rec1 + rec2
    parse_ok(msg)
    names = [r.name.to_text() for r in dns.message.from_wire(msg).additional]
    assert names == ["mail.example.com.", "foo.mail.example.com."]


# --------------------------------------------------------------------------- parse_query: bad


@pytest.mark.parametrize("length", range(12))
def test_shorter_than_header_is_message_error(length: int) -> None:
    """RFC 1035 §4.1.1: every message starts with a 12-octet header; without one there
    is no ID to answer to, so it is a MessageError (drop), not a FormError."""
    msg = dnsp_query()[:length]
    with pytest.raises(MessageError):
        wire.parse_query(msg)


def test_qr_set_is_formerr() -> None:
    """RFC 1035 §4.1.1: QR=1 marks a response; a response is not a query."""
    assert_formerr(header(flags=wire.QR | wire.RD) + question())


def test_tc_set_is_formerr() -> None:
    """RFC 1035 §4.1.1: TC marks a truncated message; a truncated query cannot be
    resolved as it stands."""
    assert_formerr(header(flags=wire.TC | wire.RD) + question())


@pytest.mark.parametrize("opcode", range(1, 16))
def test_opcode_not_query_is_notimp(opcode: int) -> None:
    """RFC 1035 §4.1.1: RCODE 4 (Not Implemented) for a kind of query not supported."""
    assert_formerr(header(flags=(opcode << 11) | wire.RD) + question(), wire.Rcode.NOTIMP)


def test_qr_checked_before_opcode() -> None:
    """A response with an unknown opcode is still a response: FORMERR, not NOTIMP."""
    assert_formerr(header(flags=wire.QR | (5 << 11)) + question())


def test_qdcount_zero_is_formerr() -> None:
    """RFC 9619 §3 (and RFC 1035 §4.1.2): a QUERY carries exactly one question."""
    assert_formerr(header(qd=0))


def test_qdcount_two_is_formerr() -> None:
    """RFC 9619 §3: QDCOUNT > 1 in a QUERY is a format error."""
    assert_formerr(header(qd=2) + question() + question(b"\x00"))


@pytest.mark.parametrize("length", [64, 0x40 | 5, 0x80, 0xBF])
def test_label_longer_than_63_is_formerr(length: int) -> None:
    """RFC 1035 §2.3.4 / §4.1.4: labels are at most 63 octets; the 01 and 10 label
    types are reserved (extended labels are deprecated by RFC 6891 §5)."""
    assert_formerr(header() + bytes([length]) + b"a" * length + b"\x00" + b"\x00\x01\x00\x01")


def test_name_longer_than_255_is_formerr() -> None:
    """RFC 1035 §2.3.4: names are 255 octets or less (wire form, root included)."""
    name = b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63 + b"\x3e" + b"d" * 62
    name += b"\x00"
    assert len(name) == 256
    assert_formerr(header() + question(name))


def test_name_longer_than_255_through_compression_is_formerr() -> None:
    """RFC 1035 §2.3.4: the expanded name counts, not its compressed spelling."""
    qname = dns.name.Name([b"a" * 63, b"b" * 63, b"c" * 63, b""]).to_wire()  # 193
    owner = bytes([62]) + b"x" * 62 + ptr(12)  # 63 + 193 = 256
    assert_formerr(header(ar=1) + question(qname) + rr(owner, 1, rdata=b"\x00" * 4))


def test_compression_pointer_in_question_is_formerr() -> None:
    """RFC 1035 §4.1.4: a pointer refers to a *prior* occurrence; the question name is
    the first name in the message, so it has nothing to point to but the header."""
    assert_formerr(header() + ptr(12) + b"\x00\x01\x00\x01")
    assert_formerr(header() + ptr(2) + b"\x00\x01\x00\x01")
    assert_formerr(header() + b"\x03www" + ptr(16) + b"\x00\x01\x00\x01")


def test_pointer_self_loop_in_additional_is_formerr() -> None:
    """RFC 1035 §4.1.4: a pointer to itself loops forever; it must be refused."""
    start = 12 + len(question())
    assert_formerr(header(ar=1) + question() + rr(ptr(start), 1, rdata=b"\x00" * 4))


def test_pointer_loop_reached_backwards_is_formerr() -> None:
    """RFC 1035 §4.1.4: a loop A → B → A hidden in RDATA (which dns2dot never reads as
    a name) and entered through a perfectly backward pointer: every pointer after the
    first must land strictly before the previous target, or the walk never ends."""
    start = 12 + len(question())
    x = start + 11  # where rec1's RDATA begins
    loop = b"\x01a" + ptr(x + 4) + b"\x01b" + ptr(x)  # "a" -> "b" -> "a" -> ...
    rec1 = rr(b"\x00", 65280, rdata=loop)
    rec2 = rr(ptr(x), 1, rdata=b"\x00" * 4)
    msg = header(ar=2) + question() + rec1 + rec2
    with pytest.raises(dns.name.BadPointer):
        dns.message.from_wire(msg)
    assert_formerr(msg)


def test_pointer_self_loop_reached_backwards_is_formerr() -> None:
    """RFC 1035 §4.1.4: a label followed by a pointer back to that label loops."""
    start = 12 + len(question())
    x = start + 11
    rec1 = rr(b"\x00", 65280, rdata=b"\x01y" + ptr(x))
    msg = header(ar=2) + question() + rec1 + rr(ptr(x), 1, rdata=b"\x00" * 4)
    assert_formerr(msg)


def test_pointer_target_overlapping_its_own_name_is_formerr() -> None:
    """RFC 1035 §4.1.4: a pointer replaces a suffix that "occurs earlier"; a target
    whose label runs over the pointer itself is not an earlier name. Here rec1's
    one-octet RDATA (2) read as a label covers rec2's owner pointer, and the next octet
    (rec2's type, 00 01) is the root: every pointer points backwards, yet the name is
    made of its own pointer. dnspython 2.9 refuses it too."""
    start = 12 + len(question())
    x = start + 11  # rec1's RDATA
    msg = (
        header(ar=2)
        + question()
        + rr(b"\x00", 65280, rdata=b"\x02")
        + rr(ptr(x), 1, rdata=b"\x00" * 4)
    )
    with pytest.raises(dns.exception.FormError):
        dns.message.from_wire(msg)
    with pytest.raises(FormError, match="overlaps the name"):
        wire.parse_query(msg)
    assert_formerr(msg)


def test_pointer_target_overlapping_the_pointer_chain_is_formerr() -> None:
    """The same rule after a second hop: the part reached through the second pointer
    must end before the part that held that pointer, not merely before the name."""
    start = 12 + len(question())
    x = start + 11  # rec1's RDATA, which dns2dot never reads as a name by itself
    # Legal: rec2 -> x+3 ("a", then a pointer to x) -> x ("b", root): "a.b."
    legal = header(ar=2) + question()
    legal += rr(b"\x00", 65280, rdata=b"\x01b\x00\x01a" + ptr(x)) + rr(
        ptr(x + 3), 1, rdata=b"\x00" * 4
    )
    assert dns.message.from_wire(legal).additional[1].name.to_text() == "a.b."
    parse_ok(legal)
    # Overlapping: rec2 -> x+1 ("a", then a pointer to x) -> x, whose 4-octet label
    # covers "a" and that pointer, then the root at x+5. Every pointer points backwards.
    bad = header(ar=2) + question()
    bad += rr(b"\x00", 65280, rdata=b"\x04\x01a" + ptr(x) + b"\x00") + rr(
        ptr(x + 1), 1, rdata=b"\x00" * 4
    )
    with pytest.raises(dns.exception.FormError):
        dns.message.from_wire(bad)
    with pytest.raises(FormError, match="overlaps the name"):
        wire.parse_query(bad)


def test_forward_pointer_in_additional_is_formerr() -> None:
    """RFC 1035 §4.1.4: pointers point to prior occurrences, never forwards."""
    start = 12 + len(question())
    rec1 = rr(ptr(start + 12 + 2), 1, rdata=b"\x00\x00")
    rec2 = rr(b"\x00", 1, rdata=b"\x00")
    assert_formerr(header(ar=2) + question() + rec1 + rec2)


def test_pointer_into_the_header_is_formerr() -> None:
    """RFC 1035 §4.1.4: a pointer names a prior *name*; the 12-octet header holds none."""
    # Header bytes 4..5 are QDCOUNT = 00 01: a pointer there would read label 0 = root.
    assert_formerr(header(ar=1) + question() + rr(ptr(4), 1, rdata=b"\x00" * 4))
    assert_formerr(header(ar=1) + question() + rr(ptr(0), 1, rdata=b"\x00" * 4))


def test_pointer_to_unknown_label_type_is_formerr() -> None:
    """RFC 1035 §4.1.4: a pointer that lands on a reserved label type is malformed."""
    first = header(ar=2) + question() + rr(b"\x00", 1, rdata=b"\x80")
    target = len(first) - 1  # the 0x80 RDATA octet: a reserved label type
    assert_formerr(first + rr(ptr(target), 1))


def test_truncated_question_name_is_formerr() -> None:
    """RFC 1035 §4.1.2: the question name must end (with the root label) in the message."""
    assert_formerr(header() + b"\x07exam")
    assert_formerr(header() + b"\x07example")
    assert_formerr(header())


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_truncated_question_type_class_is_formerr(cut: int) -> None:
    """RFC 1035 §4.1.2: QTYPE and QCLASS are two octets each."""
    assert_formerr((header() + question())[:-cut])


@pytest.mark.parametrize("cut", range(1, 11))
def test_truncated_record_header_is_formerr(cut: int) -> None:
    """RFC 1035 §4.1.3: TYPE, CLASS, TTL and RDLENGTH (10 octets) follow the name."""
    assert_formerr((header(ar=1) + question() + rr(b"\x00", 1))[:-cut])


def test_truncated_record_owner_is_formerr() -> None:
    """RFC 1035 §4.1.3: the record's name must be complete."""
    assert_formerr(header(ar=1) + question() + b"\x03ab")
    assert_formerr(header(ar=1) + question() + b"\xc0")


@pytest.mark.parametrize("cut", [1, 3])
def test_truncated_rdata_is_formerr(cut: int) -> None:
    """RFC 1035 §4.1.3: RDLENGTH octets of RDATA must be present."""
    assert_formerr((header(ar=1) + question() + rr(b"\x00", 1, rdata=b"\x01\x02\x03\x04"))[:-cut])


def test_truncated_opt_rdata_is_formerr() -> None:
    """RFC 6891 §6.1.2: the OPT RDATA is RDLENGTH octets of options."""
    assert_formerr((header(ar=1) + question() + opt(options=b"\xfd\xe9\x00\x02ab"))[:-1])


def test_counts_too_many_is_formerr() -> None:
    """RFC 1035 §4.1.1: ARCOUNT records must follow; claiming more than are there fails."""
    assert_formerr(header(ar=2) + question() + opt())
    assert_formerr(header(an=1) + question())
    assert_formerr(header(ns=3) + question() + rr(ptr(12), 1, rdata=b"\x00" * 4))


def test_counts_too_few_leaves_trailing_bytes() -> None:
    """RFC 1035 §4.1.1: bytes after the counted records are junk (dnspython's
    TrailingJunk); a message that under-counts is malformed."""
    msg = header(ar=0) + question() + opt()
    assert "trailing" in str(form_error(msg))
    with pytest.raises(dns.message.TrailingJunk):
        dns.message.from_wire(msg)
    assert_formerr(header() + question() + b"\x00")


def test_two_opt_records_is_formerr() -> None:
    """RFC 6891 §6.1.1: more than one OPT RR in a query MUST get FORMERR."""
    assert_formerr(header(ar=2) + question() + opt() + opt())


def test_two_opt_records_with_bad_version_is_formerr_not_badvers() -> None:
    """RFC 6891 §6.1.1 before §6.1.3: a message with two OPTs is malformed whatever
    their versions say."""
    assert_formerr(header(ar=2) + question() + opt(version=1) + opt())


def test_opt_not_owned_by_root_is_formerr() -> None:
    """RFC 6891 §6.1.2: the OPT NAME MUST be 0 (the root domain)."""
    assert_formerr(header(ar=1) + question() + opt(owner=b"\x01a\x00"))
    assert_formerr(header(ar=1) + question() + opt(owner=ptr(12)))


def test_opt_owner_compressed_to_root_is_formerr() -> None:
    """RFC 6891 §6.1.2: NAME "MUST be 0": the single zero octet, not a pointer that
    happens to expand to the root (dns2dot reads this strictly; dnspython accepts it)."""
    root_at = 12  # the question is the root name: b"\\x00" at offset 12
    msg = header(ar=1) + question(b"\x00", 2) + opt(owner=ptr(root_at))
    assert dns.message.from_wire(msg).edns == 0
    assert_formerr(msg)


@pytest.mark.parametrize("section", ["an", "ns"])
def test_opt_in_answer_or_authority_is_formerr(section: str) -> None:
    """RFC 6891 §6.1.1: the OPT RR belongs in the additional data section only."""
    assert_formerr(header(**{section: 1}) + question() + opt())  # type: ignore[arg-type]


def test_opt_in_answer_and_additional_is_formerr() -> None:
    """RFC 6891 §6.1.1: an OPT outside the additional section is an error even when a
    proper one follows."""
    assert_formerr(header(an=1, ar=1) + question() + opt() + opt())


@pytest.mark.parametrize("version", [1, 2, 255])
def test_edns_version_above_zero_is_badvers(version: int) -> None:
    """RFC 6891 §6.1.3: a responder that does not implement the requested VERSION MUST
    answer BADVERS (extended RCODE 16)."""
    msg = header(ar=1) + question() + opt(version=version)
    assert dns.message.from_wire(msg).edns == version
    err = form_error(msg)
    assert err.rcode == wire.Rcode.BADVERS == 16


def test_badvers_only_for_otherwise_valid_message() -> None:
    """Structure first: a version-1 OPT in a message with trailing junk is FORMERR."""
    assert_formerr(header(ar=1) + question() + opt(version=1) + b"\x00")


@pytest.mark.parametrize("qtype", [41, 0])
def test_meta_qtype_opt_or_zero_is_formerr(qtype: int) -> None:
    """RFC 6891 §6.1.1 / RFC 6895 §3.1: OPT is a pseudo-RR for the additional section,
    never something to ask for; type 0 is reserved."""
    assert_formerr(header() + question(qtype=qtype))


def test_formerror_and_messageerror_are_protocol_errors() -> None:
    assert issubclass(FormError, ProtocolError)
    assert issubclass(MessageError, ProtocolError)
    assert issubclass(ProtocolError, Dns2DotError)
    assert FormError("x").rcode == 1


@pytest.mark.parametrize("chain", [100, 126, 127, 128, 4000])
def test_long_pointer_chains_are_bounded_work(chain: int) -> None:
    """RFC 1035 §4.1.4 / RFC 9267 §2 (compression pointer loops and chains): following
    pointers must cost bounded work per name.

    Every pointer here points strictly backwards, so the walk terminates; but thousands
    of records, each owned by a pointer to the head of a long chain of backward
    pointers, cost (records x chain) steps in one 64 KiB query: with a 4000-pointer
    chain that stalled the single event loop for seconds. A name never needs more than
    127 jumps, so longer chains are FORMERR (dnspython refuses more than 16 hops).
    The work bound is checked by what is accepted, not by a clock.
    """
    msg = pointer_chain_query(chain)
    assert len(msg) > 60000
    with pytest.raises(dns.name.PointerChainTooLong):
        dns.message.from_wire(msg)
    hops = chain + 1  # each record's owner is itself a pointer to the chain's head
    if hops <= wire.MAX_POINTER_HOPS:
        assert wire.parse_query(msg).qname == b"\x00"
    else:
        with pytest.raises(FormError, match="too many compression pointers"):
            wire.parse_query(msg)


def pointer_chain_query(chain: int, total: int = 65535) -> bytes:
    """A query whose first record's RDATA is a chain of ``chain`` backward pointers,
    followed by as many records as fit, each owned by a pointer to the chain's head."""
    body = bytearray(header(ar=0) + question(b"\x00"))
    rdata = bytearray()
    rdata_start = len(body) + 11
    prev = 12  # the root question name
    for i in range(chain):
        rdata += ptr(prev)
        prev = rdata_start + 2 * i
    body += rr(b"\x00", 65280, rdata=bytes(rdata))
    count = (total - len(body)) // 12
    for _ in range(count):
        body += rr(ptr(prev), 65280)
    struct.pack_into("!H", body, 10, 1 + count)
    return bytes(body)


# --------------------------------------------------------------------------- validate


def test_validate_good_query_returns_query() -> None:
    assert isinstance(validate(dnsp_query()), wire.Query)


def test_validate_short_message_is_dropped() -> None:
    assert validate(b"\x12\x34\x01") is None


def test_validate_malformed_query_gets_formerr() -> None:
    answer = validate(header(qd=2) + question() + question())
    assert isinstance(answer, bytes)
    m = dns.message.from_wire(answer)
    assert m.rcode() == dns.rcode.FORMERR
    assert m.id == 0x1234


def test_validate_badvers_answer_carries_extended_rcode() -> None:
    answer = validate(header(ar=1) + question() + opt(version=1))
    assert isinstance(answer, bytes)
    assert dns.message.from_wire(answer).rcode() == dns.rcode.BADVERS


def test_validate_error_response_is_not_answered() -> None:
    """RFC 5452 §9.3 style loop breaking: an error *response* is dropped, never answered."""
    assert validate(header(flags=wire.QR | 1) + question()) is None


def test_validate_plain_response_is_answered_formerr() -> None:
    answer = validate(header(flags=wire.QR) + question())
    assert isinstance(answer, bytes)
    assert dns.message.from_wire(answer).rcode() == dns.rcode.FORMERR


# --------------------------------------------------------------------------- error_response


@pytest.mark.parametrize("rcode", [1, 2, 3, 4, 5])
def test_error_response_echoes_header_and_question(rcode: int) -> None:
    """RFC 1035 §4.1.1: the response copies ID, OPCODE and RD, and the question;
    RFC 4035 §3.2.2: CD is copied too. QR and RA are set; AA, TC, AD are not."""
    msg = dnsp_query("WwW.Example.com.", "AAAA", qid=0xBEEF, flags=wire.RD | wire.CD | wire.AD)
    query = wire.parse_query(msg)
    for q in (query, None):
        out = wire.error_response(msg, rcode, q)
        m = dns.message.from_wire(out)
        assert m.id == 0xBEEF
        assert m.rcode() == rcode
        assert m.opcode() == dns.opcode.QUERY
        assert m.flags & dns.flags.QR
        assert m.flags & dns.flags.RA
        assert m.flags & dns.flags.RD
        assert m.flags & dns.flags.CD
        assert not m.flags & (dns.flags.AA | dns.flags.TC | dns.flags.AD)
        assert m.question[0].name.to_wire() == b"\x03WwW\x07Example\x03com\x00"
        assert m.question[0].rdtype == dns.rdatatype.AAAA
        assert (len(m.answer), len(m.authority), len(m.additional)) == (0, 0, 0)
        assert m.edns == -1, "no OPT for a client that sent none (RFC 6891 §7)"
        assert out[12:] == msg[12:]


def test_error_response_rd_clear_stays_clear() -> None:
    msg = dnsp_query(flags=0)
    m = dns.message.from_wire(wire.error_response(msg, 2, wire.parse_query(msg)))
    assert not m.flags & dns.flags.RD
    assert not m.flags & dns.flags.CD


@pytest.mark.parametrize("opcode", [1, 2, 4, 5, 6, 15])
def test_error_response_echoes_opcode(opcode: int) -> None:
    """RFC 1035 §4.1.1: OPCODE "is copied into the response"."""
    msg = header(flags=(opcode << 11) | wire.RD, qd=0)
    out = wire.error_response(msg, wire.Rcode.NOTIMP)
    assert (struct.unpack_from("!H", out, 2)[0] >> 11) & 0xF == opcode
    assert out[3] & 0xF == wire.Rcode.NOTIMP
    m = dns.message.from_wire(out)
    assert m.opcode() == opcode
    assert m.rcode() == dns.rcode.NOTIMP


def test_error_response_with_edns_query_has_opt() -> None:
    """RFC 6891 §7: a query with OPT gets an OPT back; DO is copied (RFC 3225 §3)."""
    msg = dnsp_query(use_edns=0, payload=4096, want_dnssec=True)
    out = wire.error_response(msg, wire.Rcode.SERVFAIL, wire.parse_query(msg))
    m = dns.message.from_wire(out)
    assert m.edns == 0
    assert m.payload == wire.OWN_UDP_PAYLOAD
    assert m.ednsflags & dns.flags.DO
    assert m.rcode() == dns.rcode.SERVFAIL
    assert not m.options
    assert len(m.question) == 1


def test_error_response_without_query_finds_opt_leniently() -> None:
    """A malformed query (trailing junk) that visibly carries OPT still gets one back."""
    msg = header(ar=1) + question() + opt(4096) + b"junk"
    with pytest.raises(FormError):
        wire.parse_query(msg)
    m = dns.message.from_wire(wire.error_response(msg, wire.Rcode.FORMERR))
    assert m.edns == 0
    assert m.rcode() == dns.rcode.FORMERR
    assert m.question[0].name.to_wire() == QNAME


def test_error_response_badvers_uses_extended_rcode() -> None:
    """RFC 6891 §6.1.3 / §9: BADVERS is 16: header RCODE 0, OPT EXTENDED-RCODE 1."""
    msg = header(ar=1) + question() + opt(version=1)
    out = wire.error_response(msg, form_error(msg).rcode)
    assert out[3] & 0xF == 0
    assert struct.unpack_from("!H", out, 10)[0] == 1  # ARCOUNT: the OPT
    m = dns.message.from_wire(out)
    assert m.rcode() == dns.rcode.BADVERS
    assert m.edns == 0, "we answer with the version we do support"
    assert (m.ednsflags >> 24) & 0xFF == 1


def test_error_response_badvers_without_edns_query_still_has_opt() -> None:
    """An rcode above 15 cannot be said without an OPT (RFC 6891 §6.1.3)."""
    msg = dnsp_query()
    out = wire.error_response(msg, wire.Rcode.BADVERS, wire.parse_query(msg))
    assert dns.message.from_wire(out).rcode() == dns.rcode.BADVERS


def test_error_response_ede_present_and_parseable() -> None:
    """RFC 8914 §2: the Extended DNS Error option: INFO-CODE and UTF-8 EXTRA-TEXT."""
    msg = dnsp_query(use_edns=0)
    out = wire.error_response(
        msg, wire.Rcode.SERVFAIL, wire.parse_query(msg), ede=23, ede_text="Network Error"
    )
    m = dns.message.from_wire(out)
    (option,) = m.options
    assert isinstance(option, dns.edns.EDEOption)
    assert option.code == dns.edns.EDECode.NETWORK_ERROR == 23
    assert option.text == "Network Error"


def test_error_response_ede_without_text() -> None:
    msg = dnsp_query(use_edns=0)
    out = wire.error_response(msg, wire.Rcode.REFUSED, wire.parse_query(msg), ede=18)
    (option,) = dns.message.from_wire(out).options
    assert isinstance(option, dns.edns.EDEOption)
    assert option.code == 18
    assert not option.text


def test_error_response_ede_non_ascii_text() -> None:
    msg = dnsp_query(use_edns=0)
    out = wire.error_response(msg, 2, wire.parse_query(msg), ede=0, ede_text="délai dépassé")
    (option,) = dns.message.from_wire(out).options
    assert option.text == "délai dépassé"  # type: ignore[attr-defined]


def test_error_response_ede_dropped_without_edns() -> None:
    """RFC 6891 §7: no OPT for a client without EDNS, so no room for an EDE either."""
    msg = dnsp_query()
    out = wire.error_response(msg, 2, wire.parse_query(msg), ede=23, ede_text="Network Error")
    m = dns.message.from_wire(out)
    assert m.edns == -1
    assert m.rcode() == dns.rcode.SERVFAIL


def test_ede_option_encoding() -> None:
    assert wire.ede_option(23, "x") == b"\x00\x0f\x00\x03\x00\x17x"


def test_opt_record_encoding() -> None:
    rec = wire.opt_record(payload=1232, ext_rcode=1, do=True, options=b"ab")
    assert rec == b"\x00\x00\x29\x04\xd0\x01\x00\x80\x00\x00\x02ab"


@pytest.mark.parametrize(
    "msg",
    [
        header(qd=0),
        header(qd=2) + question() + question(),
        header() + b"\x07exam",
        header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
        header() + ptr(12) + b"\x00\x01\x00\x01",
        header() + QNAME + b"\x00",  # type/class cut short
        header(),
    ],
    ids=["qd0", "qd2", "cut-name", "long-label", "pointer", "cut-type", "bare-header"],
)
def test_error_response_garbage_is_header_only(msg: bytes) -> None:
    """With no readable question there is nothing to echo but the header (RFC 1035
    §4.1.1 allows QDCOUNT 0 in a FORMERR response)."""
    out = wire.error_response(msg, wire.Rcode.FORMERR)
    assert len(out) == 12
    m = dns.message.from_wire(out)
    assert m.id == 0x1234
    assert m.rcode() == dns.rcode.FORMERR
    assert m.question == []
    assert m.edns == -1


def test_error_response_ignores_input_rcode_and_flags() -> None:
    """The response's rcode is ours; AA/TC/AD/Z bits of the input are not copied."""
    msg = header(flags=0xFFFF & ~wire.OPCODE_MASK) + question()
    out = wire.error_response(msg, 1)
    m = dns.message.from_wire(out)
    assert m.rcode() == 1
    assert not m.flags & (dns.flags.AA | dns.flags.TC | dns.flags.AD)
    flags = struct.unpack_from("!H", out, 2)[0]
    assert flags == wire.QR | wire.RA | wire.RD | wire.CD | 1


# ---------------------------------------------------------------- should_answer_malformed


@pytest.mark.parametrize("rcode", range(16))
def test_should_answer_malformed_queries(rcode: int) -> None:
    """Any malformed *query* gets an answer, whatever junk its rcode field holds."""
    assert wire.should_answer_malformed(header(flags=rcode) + question())


def test_should_answer_malformed_response_without_error() -> None:
    assert wire.should_answer_malformed(header(flags=wire.QR) + question())


@pytest.mark.parametrize("rcode", range(1, 16))
def test_should_not_answer_error_responses(rcode: int) -> None:
    """RFC 5452 §9.3 / RFC 1035 §7.3: answering an error response with an error lets
    two servers bounce FORMERRs forever: break the loop."""
    assert not wire.should_answer_malformed(header(flags=wire.QR | rcode) + question())
    assert not wire.should_answer_malformed(header(flags=wire.QR | rcode, qd=0))


def test_should_not_answer_own_error_response() -> None:
    """Our own FORMERR, reflected back at us, must not be answered."""
    out = wire.error_response(header(qd=0), wire.Rcode.FORMERR)
    assert not wire.should_answer_malformed(out)


@pytest.mark.parametrize("length", range(12))
def test_should_not_answer_without_header(length: int) -> None:
    assert not wire.should_answer_malformed(dnsp_query()[:length])


# --------------------------------------------------------------------------- truncate / fit_udp


def big_response(
    *,
    edns: bool = False,
    options: list[dns.edns.Option] | None = None,
    do: bool = False,
    records: int = 30,
    rcode: int = dns.rcode.NOERROR,
    name: str = "big.example.com.",
    rdtype: str = "TXT",
    qid: int = 0x4242,
) -> bytes:
    q = dns.message.make_query(name, rdtype, id=qid)
    r = dns.message.make_response(q)
    if edns:
        r.use_edns(0, dns.flags.DO if do else 0, 1232, options=options or [])
    else:
        r.use_edns(False)
    r.set_rcode(rcode)  # after use_edns, which would reset the extended bits
    texts = [f'"{i:04d} {"x" * 40}"' for i in range(records)]
    r.answer.append(dns.rrset.from_text(name, 300, "IN", "TXT", *texts))
    r.authority.append(dns.rrset.from_text(name, 300, "IN", "NS", "ns1.example.com."))
    r.additional.append(dns.rrset.from_text("ns1.example.com.", 300, "IN", "A", "192.0.2.53"))
    return r.to_wire(max_size=65535, want_shuffle=False)


def check_truncated(original: bytes, out: bytes, *, expect_opt: bool) -> dns.message.Message:
    assert len(out) <= 512
    m = dns.message.from_wire(out)
    o = dns.message.from_wire(original)
    assert m.flags & dns.flags.TC
    assert m.id == o.id
    assert m.flags & ~dns.flags.TC == o.flags & ~dns.flags.TC
    assert m.question == o.question
    assert (len(m.answer), len(m.authority)) == (0, 0)
    counts = struct.unpack_from("!HHHH", out, 4)
    assert counts == (1, 0, 0, 1 if expect_opt else 0)
    qend = 12 + len(o.question[0].name.to_wire()) + 4
    assert out[:2] == original[:2]
    assert out[12:qend] == original[12:qend]
    if expect_opt:
        assert m.edns == o.edns
        assert m.payload == o.payload
        assert m.ednsflags == o.ednsflags, "OPT flags/version/extended rcode preserved"
        assert not m.options, "OPT rebuilt without options"
        assert m.rcode() == o.rcode()
        assert len(out) == qend + 11
    else:
        assert m.edns == -1
        assert len(out) == qend
        assert m.rcode() == o.rcode()
    return m


def test_truncate_plain_answer() -> None:
    """RFC 1035 §4.2.1 / RFC 2181 §9: a UDP answer over 512 octets is cut, TC set."""
    answer = big_response()
    assert len(answer) > 512
    check_truncated(answer, wire.truncate(answer), expect_opt=False)


def test_truncate_keeps_rcode() -> None:
    answer = big_response(rcode=dns.rcode.NXDOMAIN)
    m = check_truncated(answer, wire.truncate(answer), expect_opt=False)
    assert m.rcode() == dns.rcode.NXDOMAIN


def test_truncate_edns_answer_with_options_keeps_bare_opt() -> None:
    """RFC 6891 §7: the truncated answer keeps an OPT, rebuilt without options, so the
    client still sees EDNS (payload, version, DO) and nothing pushes it past its limit."""
    answer = big_response(
        edns=True,
        do=True,
        options=[dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\0" * 64)],
    )
    check_truncated(answer, wire.truncate(answer), expect_opt=True)


def test_truncate_edns_answer_with_ede_keeps_bare_opt() -> None:
    answer = big_response(
        edns=True, options=[dns.edns.EDEOption(dns.edns.EDECode.STALE_ANSWER, "stale")]
    )
    check_truncated(answer, wire.truncate(answer), expect_opt=True)


def test_truncate_edns_answer_whose_opt_has_no_options() -> None:
    """The most common EDNS answer of all: an OPT with RDLENGTH 0, last in the message.

    Truncating it must not raise (it is an upstream answer on the UDP path; an
    exception here means the client gets no answer at all).
    """
    answer = big_response(edns=True)
    assert answer.endswith(b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00")
    check_truncated(answer, wire.truncate(answer), expect_opt=True)


def test_truncate_edns_answer_preserves_do_and_extended_rcode() -> None:
    """RFC 6891 §6.1.3: the OPT TTL carries EXTENDED-RCODE, VERSION and DO; a truncated
    answer must say the same thing (BADCOOKIE = 23 needs the extended bits)."""
    answer = big_response(
        edns=True, do=True, rcode=dns.rcode.BADCOOKIE, options=[dns.edns.GenericOption(65001, b"x")]
    )
    m = check_truncated(answer, wire.truncate(answer), expect_opt=True)
    assert m.rcode() == dns.rcode.BADCOOKIE
    assert m.ednsflags & dns.flags.DO


def test_truncate_answer_with_opt_in_the_middle_of_additional() -> None:
    """RFC 6891 §6.1.1: the OPT may sit anywhere in the additional section."""
    q = header(qid=0x5151, flags=wire.QR | wire.RD | wire.RA, an=1, ar=2) + question()
    txt = b"\xff" + b"t" * 255
    msg = q + rr(ptr(12), 16, rdata=txt * 2) + opt(4096, do=True) + rr(ptr(12), 1, rdata=b"\0" * 4)
    assert len(msg) > 512
    check_truncated(msg, wire.truncate(msg), expect_opt=True)


def test_truncate_answer_without_question() -> None:
    """An answer that echoes no question is cut to its header."""
    msg = header(flags=wire.QR | 2, qd=0, an=1) + rr(b"\x00", 16, rdata=b"x" * 600)
    out = wire.truncate(msg)
    assert out == header(flags=wire.QR | 2 | wire.TC, qd=0)


def test_truncate_answer_with_broken_records_drops_opt() -> None:
    """Records that cannot be walked: the question survives, no OPT is invented."""
    msg = header(flags=wire.QR, an=5, ar=1) + question() + b"\x05junk" * 200
    out = wire.truncate(msg)
    assert out == header(flags=wire.QR | wire.TC) + question()


def test_fit_udp_small_answer_unchanged() -> None:
    answer = big_response(records=3)
    assert len(answer) <= 512
    assert wire.fit_udp(answer, dnsp_query("big.example.com.", "TXT")) is answer


def test_fit_udp_exact_limit_unchanged() -> None:
    """An answer exactly as large as the client's EDNS payload fits; one byte more does not."""
    answer = big_response(records=10)
    exact = dnsp_query(use_edns=0, payload=len(answer))
    below = dnsp_query(use_edns=0, payload=len(answer) - 1)
    assert wire.fit_udp(answer, exact) is answer
    assert wire.fit_udp(answer, below) == wire.truncate(answer)


def test_fit_udp_plain_client_gets_512() -> None:
    """RFC 1035 §4.2.1: without EDNS a client accepts 512 octets over UDP."""
    answer = big_response()
    out = wire.fit_udp(answer, dnsp_query("big.example.com.", "TXT"))
    check_truncated(answer, out, expect_opt=False)


def test_fit_udp_unparseable_query_gets_512() -> None:
    """A query that cannot be read again (it was validated once) falls back to 512."""
    answer = big_response()
    check_truncated(answer, wire.fit_udp(answer, b"\x00" * 5), expect_opt=False)


def test_fit_udp_respects_edns_limit() -> None:
    """RFC 6891 §6.2.5: the requestor's payload size is the limit."""
    answer = big_response(records=40, options=[dns.edns.GenericOption(65001, b"x")], edns=True)
    assert len(answer) > 1232
    small = dnsp_query(use_edns=0, payload=1232)
    big = dnsp_query(use_edns=0, payload=65535)
    assert wire.fit_udp(answer, big) is answer
    check_truncated(answer, wire.fit_udp(answer, small), expect_opt=True)
    tiny = dnsp_query(use_edns=0, payload=100)
    assert wire.parse_query(tiny).udp_limit == 512
    check_truncated(answer, wire.fit_udp(answer, tiny), expect_opt=True)


# --------------------------------------------------------------------------- ids and keys


def test_message_id() -> None:
    assert wire.message_id(b"\xbe\xef" + b"\x00" * 10) == 0xBEEF
    assert wire.message_id(dnsp_query(qid=513)) == 513


@pytest.mark.parametrize("new_id", [0, 1, 0x1234, 0xFFFF])
def test_with_id_rewrites_only_the_id(new_id: int) -> None:
    msg = dnsp_query(qid=0xAAAA, use_edns=0)
    out = wire.with_id(msg, new_id)
    assert wire.message_id(out) == new_id
    assert out[2:] == msg[2:]
    assert len(out) == len(msg)
    assert dns.message.from_wire(out).id == new_id


def test_with_id_out_of_range_raises() -> None:
    with pytest.raises(struct.error):
        wire.with_id(dnsp_query(), 0x10000)


def test_question_key_folds_only_the_name() -> None:
    key = wire.question_key(b"\x03WwW\x07ExAmPlE\x00", 0x4142, 0x4344)
    assert key == b"\x03www\x07example\x00AB" + b"CD"


def test_question_key_non_ascii_untouched() -> None:
    """RFC 4343 §3: only ASCII A-Z fold; other octets compare exactly."""
    assert wire.question_key(b"\x02\xc4\xd6\x00", 1, 1) == b"\x02\xc4\xd6\x00\x00\x01\x00\x01"


def test_question_key_length_octets_never_fold() -> None:
    """Label lengths 0x41..0x5A do not exist (max 63 = 0x3F), but 'A'-length
    labels do not either: a 26-octet label stays a 26-octet label."""
    name = bytes([26]) + b"ABCDEFGHIJKLMNOPQRSTUVWXYZ" + b"\x00"
    assert wire.question_key(name, 1, 1)[0] == 26


def response_for(msg: bytes) -> bytes:
    m = dns.message.from_wire(msg)
    return dns.message.make_response(m).to_wire()


def test_answer_key_matches_query_key() -> None:
    msg = dnsp_query("MiXeD.ExAmPlE.", "MX")
    answer = response_for(msg)
    assert wire.answer_key(answer) == wire.parse_query(msg).key
    assert wire.answer_key(answer) == b"\x05mixed\x07example\x00\x00\x0f\x00\x01"


def test_answer_key_leaves_type_and_class_bytes_alone() -> None:
    """Only the name folds: type 0x4142 ('AB') and class 0x4344 ('CD') stay upper case."""
    answer = header(flags=wire.QR) + question(b"\x03FoO\x00", 0x4142, 0x4344)
    assert wire.answer_key(answer) == b"\x03foo\x00ABCD"
    assert wire.answer_key(answer) == wire.question_key(b"\x03FOO\x00", 0x4142, 0x4344)


def test_answer_key_none_without_single_question() -> None:
    assert wire.answer_key(header(flags=wire.QR | 2, qd=0)) is None
    assert wire.answer_key(header(flags=wire.QR, qd=2) + question() + question()) is None
    assert wire.answer_key(header(flags=wire.QR, qd=0x0101) + question()) is None


def test_answer_key_requires_qr() -> None:
    with pytest.raises(FormError):
        wire.answer_key(dnsp_query())


def test_answer_key_short_message() -> None:
    with pytest.raises(MessageError):
        wire.answer_key(b"\x00" * 11)


def test_answer_key_malformed_question() -> None:
    with pytest.raises(FormError):
        wire.answer_key(header(flags=wire.QR) + QNAME + b"\x00")
    with pytest.raises(FormError):
        wire.answer_key(header(flags=wire.QR) + b"\x07exa")
    with pytest.raises(FormError):
        wire.answer_key(header(flags=wire.QR) + ptr(12) + b"\x00\x01\x00\x01")


def test_rcode_of() -> None:
    assert wire.rcode_of(header(flags=wire.QR | 3)) == 3
    badvers = wire.error_response(header(ar=1) + question() + opt(version=1), 16)
    assert wire.rcode_of(badvers) == 0  # the header nibble only


# --------------------------------------------------------------------------- hypothesis

label_st = st.binary(min_size=1, max_size=63)


@st.composite
def names(draw: st.DrawFn) -> dns.name.Name:
    labels: list[bytes] = []
    total = 1
    for label in draw(st.lists(label_st, max_size=8)):
        if total + len(label) + 1 > 255:
            break
        labels.append(label)
        total += len(label) + 1
    if draw(st.booleans()):  # sometimes pad up to the 255 limit exactly
        room = 255 - total - 1
        if room > 0:
            labels.append(b"z" * min(room, 63))
    return dns.name.Name([*labels, b""])


rdtypes = st.integers(1, 65535).filter(lambda t: t != 41)
rdclasses = st.integers(1, 65535)
safe_options = st.lists(
    st.builds(
        dns.edns.GenericOption,
        st.integers(65001, 65534),
        st.binary(max_size=20),
    ),
    max_size=3,
)


@st.composite
def dnspython_queries(draw: st.DrawFn) -> bytes:
    name = draw(names())
    m = dns.message.make_query(
        name,
        draw(rdtypes),
        draw(rdclasses),
        id=draw(st.integers(0, 0xFFFF)),
        flags=draw(st.sampled_from([0, wire.RD])) | draw(st.sampled_from([0, wire.CD, wire.AD])),
    )
    if draw(st.booleans()):
        m.use_edns(
            0,
            dns.flags.DO if draw(st.booleans()) else 0,
            draw(st.integers(0, 65535)),
            options=draw(safe_options),
            pad=draw(st.sampled_from([0, 0, 128, 468])),  # RFC 8467 block sizes
        )
    if draw(st.booleans()):
        m.additional.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.1"))
    if draw(st.booleans()):
        cname = CNAME(dns.rdataclass.IN, dns.rdatatype.CNAME, name)  # compresses to qname
        m.answer.append(dns.rrset.from_rdata(name, 60, cname))
    return m.to_wire(max_size=65535, want_shuffle=False)


@given(dnspython_queries())
@settings(max_examples=600, deadline=None)
def test_property_parse_agrees_with_dnspython(msg: bytes) -> None:
    assume(len(msg) <= 0xFFFF)
    parse_ok(msg)


def reference_verdict(msg: bytes) -> tuple[object, ...]:
    """dns2dot's rules, restated on dnspython's own cursor and name decompressor.

    The header is replaced by 0xFF octets before names are read, so any name that
    strays into it meets a forward pointer, which dnspython refuses: that is "pointers
    may not point into the header" without a second decompressor. dnspython 2.9 also
    refuses a pointer target that overlaps the name pointing to it, as dns2dot does.
    """
    if len(msg) < 12:
        return ("message",)
    _, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", msg)
    if flags & wire.QR:
        return ("form", 1)
    if flags & wire.OPCODE_MASK:
        return ("form", 4)
    if flags & wire.TC:
        return ("form", 1)
    if qd != 1:
        return ("form", 1)
    parser = dns.wire.Parser(b"\xff" * 12 + msg[12:])
    parser.seek(12)
    try:
        qname = dns.name.from_wire_parser(parser)
        qtype, qclass = parser.get_struct("!HH")
        qend = parser.current
        if qtype in (0, 41):
            return ("form", 1)
        edns = None
        for i in range(an + ns + ar):
            start = parser.current
            dns.name.from_wire_parser(parser)
            rtype, rclass, ttl, rdlen = parser.get_struct("!HHIH")
            parser.get_bytes(rdlen)
            if rtype == 41:
                # RFC 6891 §6.1.1 / §6.1.2: one OPT, additional section, NAME = 0.
                if i < an + ns or edns is not None or msg[start] != 0:
                    return ("form", 1)
                edns = (rclass, (ttl >> 16) & 0xFF, bool(ttl & 0x8000), start)
        if parser.remaining():
            return ("form", 1)
    except dns.exception.FormError as exc:
        return ("form", 1, type(exc).__name__)
    if edns is not None and edns[1] != 0:
        return ("form", 16)
    return ("ok", qname.to_wire(), qtype, qclass, qend, edns)


def dns2dot_verdict(msg: bytes) -> tuple[object, ...]:
    try:
        q = wire.parse_query(msg)
    except MessageError:
        return ("message",)
    except FormError as exc:
        return ("form", exc.rcode)
    edns = None if q.edns is None else (q.edns.payload, q.edns.version, q.edns.do, q.edns.offset)
    return ("ok", q.qname, q.qtype, q.qclass, q.question_end, edns)


def clear_qr_opcode_tc(msg: bytes) -> bytes:
    """Most mutations of the flags stop at the first check; sometimes undo that so the
    body gets exercised."""
    if len(msg) < 4:
        return msg
    return msg[:2] + bytes([msg[2] & 0x01, msg[3]]) + msg[4:]


hostile = st.one_of(
    st.binary(max_size=80),
    st.binary(min_size=12, max_size=80).map(lambda b: b[:4] + b"\x00\x01" + b[6:]),
    mutated(dnspython_queries()),
    mutated(dnspython_queries()).map(clear_qr_opcode_tc),
)


# Found by this test in CI: an answer owned by a pointer to offset 13, inside the
# question name, whose octet there (0x32) reads as a 50-octet label that runs over
# that very pointer and ends on the root at 64 (dnspython 2.9 refuses the overlap).
_OVERLAP = (
    header(0, 0, an=1)
    + question(b"\x102" + b"\x00" * 15 + b"\x01\x00\x08" + b"\x00" * 8 + b"\x10" + b"\x00" * 17)
    + rr(ptr(13), 5, ttl=60, rdata=ptr(12))
)


@given(hostile)
@example(_OVERLAP)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_hostile_input_never_crashes_and_agrees_with_dnspython(msg: bytes) -> None:
    """parse_query either returns a Query or raises MessageError/FormError, never
    anything else; its verdict equals the reference built on dnspython's parser; and
    whatever it accepts dnspython reads as one question with the same name/type/class."""
    try:
        query = wire.parse_query(msg)
    except (MessageError, FormError):
        query = None
    reference = reference_verdict(msg)
    event(f"verdict: {reference[0]} {reference[1] if reference[0] == 'form' else ''}")
    if reference[0] == "form":
        reference = reference[:2]  # drop dnspython's exception name
    assert dns2dot_verdict(msg) == reference
    if query is not None:
        m = dns.message.from_wire(msg, question_only=True)
        assert len(m.question) == 1
        assert m.question[0].name.to_wire() == query.qname
        assert m.question[0].rdtype == query.qtype
        assert m.question[0].rdclass == query.qclass
        assert m.id == query.id


def dnspython_reads(out: bytes) -> dns.message.Message:
    """dnspython's parse of an error response; an UPDATE-opcode echo is read as QUERY,
    since dnspython holds an UPDATE's zone section to RFC 2136 rules."""
    try:
        return dns.message.from_wire(out)
    except dns.exception.FormError:
        if (out[2] >> 3) & 0xF != dns.opcode.UPDATE:
            raise
        return dns.message.from_wire(out[:2] + bytes([out[2] & 0x87]) + out[3:])


@given(
    hostile.filter(lambda b: len(b) >= 12),
    st.sampled_from([1, 2, 3, 4, 5, 16]),
    st.none() | st.integers(0, 30),
)
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_error_response_never_raises(msg: bytes, rcode: int, ede: int | None) -> None:
    out = wire.error_response(msg, rcode, ede=ede, ede_text="t")
    m = dnspython_reads(out)
    assert m.id == wire.message_id(msg)
    assert m.rcode() == rcode
    assert m.flags & dns.flags.QR
    assert len(m.question) in (0, 1)
    try:
        query = wire.parse_query(msg)
    except (MessageError, FormError):
        return
    out = wire.error_response(msg, rcode, query, ede=ede)
    m = dns.message.from_wire(out)
    assert m.rcode() == rcode
    assert m.question[0].name.to_wire() == query.qname
    assert (m.edns >= 0) == (query.edns is not None or rcode > 15)


@st.composite
def dnspython_answers(draw: st.DrawFn) -> bytes:
    name = draw(names())
    q = dns.message.make_query(name, "TXT", id=draw(st.integers(0, 0xFFFF)))
    r = dns.message.make_response(q)
    edns = draw(st.booleans())
    if edns:
        r.use_edns(
            0,
            dns.flags.DO if draw(st.booleans()) else 0,
            draw(st.integers(512, 65535)),
            options=draw(safe_options),
        )
    else:
        r.use_edns(False)
    r.set_rcode(draw(st.sampled_from([0, 2, 3, 5, *([16, 23] if edns else [])])))
    count = draw(st.integers(0, 40))
    if count:
        texts = [f'"{"y" * draw(st.integers(0, 200))}"' for _ in range(count)]
        r.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT", *texts))
    return r.to_wire(max_size=65535, want_shuffle=False)


@given(dnspython_answers())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_truncate_fits_512_and_parses(answer: bytes) -> None:
    out = wire.truncate(answer)
    assert len(out) <= 512
    m = dns.message.from_wire(out)
    o = dns.message.from_wire(answer)
    assert m.flags & dns.flags.TC
    assert m.question == o.question
    assert m.rcode() == o.rcode()
    assert m.edns == o.edns
    assert not m.options
    plain_query = dnsp_query("big.example.com.", "TXT")  # no EDNS: a 512-octet client
    if len(answer) <= 512:
        assert wire.fit_udp(answer, plain_query) is answer
    else:
        assert wire.fit_udp(answer, plain_query) == out


@given(mutated(dnspython_answers()).filter(lambda b: len(b) >= 12))
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_truncate_never_raises_on_hostile_answers(answer: bytes) -> None:
    """truncate runs on upstream answers that were only checked for their question
    (``answer_key``): whatever follows the question, it must not raise."""
    out = wire.truncate(answer)
    assert len(out) <= 12 + 259 + 11
    assert out[2] & 0x02  # TC


# --------------------------------------------------------------------------- prepare_upstream


def edns_options(msg: bytes) -> list[tuple[int, bytes]]:
    """(code, data) of every option in the message's OPT, read with dnspython."""
    return [(int(o.otype), o.to_wire()) for o in dns.message.from_wire(msg).options]


def check_upstream(msg: bytes, out: bytes, block: int) -> dns.message.Message:
    """``out`` is ``msg`` as prepared for upstream: same header and question, a valid
    query for dns2dot and dnspython, padded to ``block`` (RFC 8467 §4.1)."""
    query = wire.parse_query(out)
    original = wire.parse_query(msg)
    assert (query.id, query.flags, query.qname) == (original.id, original.flags, original.qname)
    assert (query.qtype, query.qclass) == (original.qtype, original.qclass)
    assert query.edns is not None
    m = dns.message.from_wire(out)
    if block:
        assert len(out) % block == 0
        assert [o.otype for o in m.options][-1] == dns.edns.OptionType.PADDING
        padding = m.options[-1].to_wire()
        assert padding == b"\x00" * len(padding), "RFC 7830 §3: padding octets are 0x00"
    return m


@pytest.mark.parametrize("block", [128, 468, 16])
def test_prepare_upstream_adds_opt_and_padding(block: int) -> None:
    """RFC 7830 / RFC 8467: a query without EDNS gets an OPT to carry the padding."""
    msg = dnsp_query("www.example.com.", "AAAA", qid=0x0102)
    out = wire.prepare_upstream(msg, wire.parse_query(msg), pad_block=block)
    m = check_upstream(msg, out, block)
    assert m.edns == 0
    assert m.payload == wire.OWN_UDP_PAYLOAD
    assert not m.ednsflags & dns.flags.DO
    assert struct.unpack_from("!H", out, 10)[0] == 1


def test_prepare_upstream_keeps_client_edns() -> None:
    """The client's payload size, DO bit and other options travel on."""
    cookie = dns.edns.CookieOption(b"\x01" * 8, b"")
    local = dns.edns.GenericOption(65001, b"keep me")
    msg = dnsp_query(use_edns=0, payload=4096, want_dnssec=True, options=[cookie, local])
    out = wire.prepare_upstream(msg, wire.parse_query(msg))
    m = check_upstream(msg, out, 128)
    assert m.payload == 4096
    assert m.ednsflags & dns.flags.DO
    assert edns_options(out)[:2] == [(10, cookie.to_wire()), (65001, b"keep me")]


def test_prepare_upstream_removes_client_subnet() -> None:
    """RFC 7871 §11.1: ECS is privacy-sensitive; a stub's subnet is not forwarded."""
    ecs = dns.edns.ECSOption("192.0.2.0", 24)
    msg = dnsp_query(use_edns=0, options=[ecs, dns.edns.GenericOption(65002, b"x")])
    out = wire.prepare_upstream(msg, wire.parse_query(msg))
    codes = [code for code, _ in edns_options(out)]
    assert dns.edns.OptionType.ECS not in codes
    assert 65002 in codes
    kept = wire.prepare_upstream(msg, wire.parse_query(msg), keep_client_subnet=True)
    assert dns.edns.OptionType.ECS in [code for code, _ in edns_options(kept)]


def test_prepare_upstream_replaces_client_padding() -> None:
    msg = dnsp_query(use_edns=0, pad=100)
    assert len(msg) % 100 == 0
    out = wire.prepare_upstream(msg, wire.parse_query(msg), pad_block=128)
    m = check_upstream(msg, out, 128)
    assert [o.otype for o in m.options] == [dns.edns.OptionType.PADDING]


def test_prepare_upstream_without_padding() -> None:
    plain = dnsp_query()
    assert wire.prepare_upstream(plain, wire.parse_query(plain), pad_block=0) == plain
    edns = dnsp_query(use_edns=0, options=[dns.edns.GenericOption(65001, b"x")])
    assert wire.prepare_upstream(edns, wire.parse_query(edns), pad_block=0) == edns
    ecs = dnsp_query(use_edns=0, options=[dns.edns.ECSOption("192.0.2.0", 24)])
    out = wire.prepare_upstream(ecs, wire.parse_query(ecs), pad_block=0)
    check_upstream(ecs, out, 0)
    assert edns_options(out) == []


def test_prepare_upstream_opt_in_the_middle_of_additional() -> None:
    """Records after the OPT are carried over untouched."""
    after = rr(ptr(12), 1, rdata=b"\xc0\x00\x02\x01")
    msg = header(ar=2) + question() + opt(4096, do=True) + after
    out = wire.prepare_upstream(msg, wire.parse_query(msg))
    check_upstream(msg, out, 128)
    assert out.endswith(after)
    assert struct.unpack_from("!H", out, 10)[0] == 2


def test_prepare_upstream_never_exceeds_65535() -> None:
    """RFC 1035 §4.2.2: a message travels over TCP/TLS behind a 16-bit length, so
    padding must never push a legal query past 65535 octets (``frame()`` would raise
    ValueError inside ``UpstreamConnection.send``)."""
    q = header(ar=1) + question()
    msg = q + rr(b"\x00", 65280, rdata=b"x" * (65535 - len(q) - 11 - 8))
    query = wire.parse_query(msg)
    assert len(msg) <= 0xFFFF
    for block in (128, 468):
        out = wire.prepare_upstream(msg, query, pad_block=block)
        assert len(out) <= 0xFFFF, f"{len(msg)} octets became {len(out)}"
        wire.parse_query(out)


@given(dnspython_queries(), st.sampled_from([0, 128, 468]), st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_prepare_upstream(msg: bytes, block: int, keep_ecs: bool) -> None:
    query = wire.parse_query(msg)
    out = wire.prepare_upstream(msg, query, pad_block=block, keep_client_subnet=keep_ecs)
    if query.edns is None and not block:
        assert out == msg
        return
    check_upstream(msg, out, block)
    drop = {dns.edns.OptionType.PADDING}
    before = [o for o in edns_options(msg) if o[0] not in drop] if query.edns else []
    after = [o for o in edns_options(out) if o[0] not in drop]
    assert after == before  # generated queries carry no ECS


# --------------------------------------------------------------------------- client_view


def padded_answer(*, options: list[dns.edns.Option], extra: bool = True) -> bytes:
    q = dns.message.make_query("example.com.", "A", id=0x3333)
    r = dns.message.make_response(q)
    r.use_edns(0, dns.flags.DO, 1232, options=options)
    r.answer.append(dns.rrset.from_text("example.com.", 60, "IN", "A", "192.0.2.7"))
    if extra:
        r.additional.append(dns.rrset.from_text("ns.example.com.", 60, "IN", "A", "192.0.2.8"))
    return r.to_wire(want_shuffle=False)


def test_client_view_removes_padding_keeps_other_options() -> None:
    """RFC 8467 §4: padding protects the encrypted hop only."""
    ede = dns.edns.EDEOption(dns.edns.EDECode.STALE_ANSWER, "stale")
    pad = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 40)
    answer = padded_answer(options=[ede, pad])
    out = wire.client_view(answer, True)
    m = dns.message.from_wire(out)
    assert [o.otype for o in m.options] == [dns.edns.OptionType.EDE]
    assert m.ednsflags & dns.flags.DO
    assert len(out) == len(answer) - 44
    assert m.answer == dns.message.from_wire(answer).answer


def test_client_view_removes_opt_for_client_without_edns() -> None:
    """RFC 6891 §7: no OPT in the answer to a client that sent none."""
    answer = padded_answer(options=[dns.edns.GenericOption(12, b"\x00" * 8)])
    out = wire.client_view(answer, False)
    m = dns.message.from_wire(out)
    o = dns.message.from_wire(answer)
    assert m.edns == -1
    assert m.additional == o.additional
    assert m.answer == o.answer
    assert struct.unpack_from("!H", out, 10)[0] == 1


def test_client_view_unchanged_when_nothing_to_remove() -> None:
    answer = padded_answer(options=[dns.edns.GenericOption(65001, b"x")])
    assert wire.client_view(answer, True) == answer
    plain = response_for(dnsp_query())
    assert wire.client_view(plain, False) == plain
    assert wire.client_view(plain, True) == plain
    assert wire.client_view(b"\x00\x01", False) == b"\x00\x01"


@given(mutated(dnspython_answers()), st.booleans())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_client_view_never_raises(answer: bytes, has_edns: bool) -> None:
    """client_view runs on upstream answers checked only for their question."""
    wire.client_view(answer, has_edns)


@given(dnspython_answers(), st.booleans())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_client_view_of_good_answers(answer: bytes, has_edns: bool) -> None:
    out = wire.client_view(answer, has_edns)
    m = dns.message.from_wire(out)
    o = dns.message.from_wire(answer)
    assert m.question == o.question
    assert m.answer == o.answer
    assert m.id == o.id
    if not has_edns:
        assert m.edns == -1
    else:
        assert m.edns == o.edns
        assert dns.edns.OptionType.PADDING not in [opt.otype for opt in m.options]


# --------------------------------------------------------------------------- for_client, echoes


@st.composite
def padded_answers(draw: st.DrawFn) -> bytes:
    """Answers as a padding upstream sends them: the padding alone, or among others."""
    name = draw(names())
    q = dns.message.make_query(
        name, draw(st.sampled_from(["A", "TXT"])), id=draw(st.integers(0, 0xFFFF))
    )
    r = dns.message.make_response(q)
    options: list[dns.edns.Option] = draw(safe_options)
    if draw(st.booleans()):
        pad = dns.edns.GenericOption(
            dns.edns.OptionType.PADDING, b"\x00" * draw(st.integers(0, 300))
        )
        options.insert(draw(st.integers(0, len(options))), pad)
    r.use_edns(0, dns.flags.DO if draw(st.booleans()) else 0, 1232, options=options)
    r.set_rcode(draw(st.sampled_from([0, 2, 3])))
    for _ in range(draw(st.integers(0, 3))):
        r.answer.append(
            dns.rrset.from_text(name, 60, "IN", "TXT", f'"{"y" * draw(st.integers(0, 90))}"')
        )
    if draw(st.booleans()):
        r.additional.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.8"))
    return r.to_wire(max_size=65535, want_shuffle=False)


def query_for(answer: bytes, qid: int, edns: bool) -> wire.Query:
    """The query (under ``qid``, with or without EDNS) that ``answer`` answers."""
    question = dns.message.from_wire(answer).question[0]
    q = dns.message.make_query(
        question.name, question.rdtype, id=qid, use_edns=0 if edns else False
    )
    return wire.parse_query(q.to_wire())


@given(st.one_of(padded_answers(), dnspython_answers()), st.integers(0, 0xFFFF), st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_for_client_is_client_view_under_the_client_id(
    answer: bytes, qid: int, edns: bool
) -> None:
    """The hot path's one-copy version agrees byte for byte with the general one."""
    query = query_for(answer, qid, edns)
    out = wire.for_client(answer, query)
    assert out == wire.with_id(wire.client_view(answer, edns), qid)
    m, o = dns.message.from_wire(out), dns.message.from_wire(answer)
    assert m.id == qid
    assert (m.question, m.answer, m.additional) == (o.question, o.answer, o.additional)
    assert out[3] & 0x0F == answer[3] & 0x0F  # the extended rcode bits go with the OPT
    if not edns:
        assert m.edns == -1
    elif o.edns >= 0:
        assert m.rcode() == o.rcode()
        kept = [opt for opt in o.options if opt.otype != dns.edns.OptionType.PADDING]
        assert (m.edns, m.ednsflags, m.payload) == (o.edns, o.ednsflags, o.payload)
        assert list(m.options) == kept


@given(mutated(padded_answers()), st.integers(0, 0xFFFF), st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_for_client_never_raises(answer: bytes, qid: int, edns: bool) -> None:
    """Hostile answers: whatever the upstream sent, the client's ID goes on it."""
    query = wire.parse_query(dns.message.make_query("a.example.", "A", id=qid).to_wire())
    query = query._replace(edns=query.edns if edns else None)
    out = wire.for_client(answer, query)
    if len(answer) >= 2:
        assert out[:2] == qid.to_bytes(2, "big")


def test_for_client_removes_a_lone_padding_option() -> None:
    """A padding upstream's usual OPT (padding only) keeps its flags and loses its RDATA."""
    pad = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 200)
    answer = padded_answer(options=[pad])
    out = wire.for_client(answer, query_for(answer, 0x4242, True))
    m = dns.message.from_wire(out)
    assert m.id == 0x4242
    assert not m.options and m.ednsflags & dns.flags.DO and m.payload == 1232
    assert len(out) == len(answer) - 204


def test_echoes_the_question_byte_for_byte() -> None:
    msg = dns.message.make_query("Mixed.Example.", "A", id=7).to_wire()
    query = wire.parse_query(msg)
    question = msg[wire.HEADER_LEN : query.question_end]
    answer = response_for(msg)
    assert wire.echoes(answer, question)
    # Another spelling is for answer_key to judge; so is anything that is not a response.
    lower = dns.message.make_response(dns.message.make_query("mixed.example.", "A", id=7)).to_wire()
    assert not wire.echoes(lower, question)
    assert wire.answer_key(lower) == query.key
    assert not wire.echoes(msg, question)  # QR clear
    assert not wire.echoes(answer[:4] + b"\x00\x00" + answer[6:], question)  # no question
    assert not wire.echoes(answer[:11], question)
    assert not wire.echoes(answer[: wire.HEADER_LEN + 3], question)


@st.composite
def answer_to_query(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A query, and a mutated answer to it (so that the question often survives)."""
    query = dns.message.make_query(draw(names()), draw(rdtypes), id=draw(st.integers(0, 0xFFFF)))
    answer = draw(mutated(st.just(response_for(query.to_wire()))))
    return query.to_wire(), answer


@given(answer_to_query())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_echoes_implies_the_answer_key(pair: tuple[bytes, bytes]) -> None:
    """The shortcut never accepts an answer that answer_key would not match."""
    msg, answer = pair
    query = wire.parse_query(msg)
    echoed = wire.echoes(answer, msg[wire.HEADER_LEN : query.question_end])
    event(f"echoes: {echoed}")
    if echoed:
        assert wire.answer_key(answer) == query.key


# --------------------------------------------------------------------------- only our own errors


def _parsers(msg: bytes, offset: int) -> list[tuple[str, Callable[[], object]]]:
    """Every public entry point of wire that reads bytes from outside, on ``msg``."""
    calls: list[tuple[str, Callable[[], object]]] = [
        ("parse_query", lambda: wire.parse_query(msg)),
        ("answer_key", lambda: wire.answer_key(msg)),
        ("echoes", lambda: wire.echoes(msg, msg[wire.HEADER_LEN : wire.HEADER_LEN + offset])),
        ("read_name", lambda: wire.read_name(msg, offset)),
        ("skip_name", lambda: wire.skip_name(msg, offset)),
        ("walk_records", lambda: list(wire.walk_records(msg, offset, 1 + offset // 8))),
        ("walk_records(lenient)", lambda: list(wire.walk_records(msg, 12, 3, validate=False))),
        ("message_id", lambda: wire.message_id(msg)),
        ("rcode_of", lambda: wire.rcode_of(msg)),
        ("should_answer_malformed", lambda: wire.should_answer_malformed(msg)),
        ("error_response", lambda: wire.error_response(msg, wire.Rcode.FORMERR)),
        ("truncate", lambda: wire.truncate(msg)),
        ("fit_udp", lambda: wire.fit_udp(msg * 8, msg)),
        ("client_view", lambda: wire.client_view(msg, offset % 2 == 0)),
        ("frame_decoder", lambda: FrameDecoder().feed(msg)),
    ]
    query = wire.parse_query(dnsp_query("a.example.", "A", use_edns=offset % 2 == 0))
    calls.append(("for_client", lambda: wire.for_client(msg, query)))
    try:
        own = wire.parse_query(msg)
    except ProtocolError:
        return calls
    calls += [
        ("error_response(query)", lambda: wire.error_response(msg, 2, own)),
        ("prepare_upstream", lambda: wire.prepare_upstream(msg, own, pad_block=offset % 200)),
        ("for_client(own)", lambda: wire.for_client(msg, own)),
    ]
    return calls


@given(
    st.one_of(hostile, mutated(padded_answers()), mutated(dnspython_answers())),
    st.integers(0, 90),
)
@example(b"", 0)
@example(b"\x00", 0)
@example(header(flags=0x8180, an=1) + question() + b"\x03abc", 0)
@example(header(flags=0x8180, ar=1) + question() + b"\xc0", 0)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_parsers_raise_only_dns2dot_errors(msg: bytes, offset: int) -> None:
    """Malformed or truncated input raises the project's own errors, never IndexError,
    struct.error or anything else, from every public parser (docs/ARCHITECTURE.md)."""
    for name, call in _parsers(msg, offset):
        try:
            call()
        except Dns2DotError as exc:
            assert isinstance(exc, ProtocolError), (name, exc)
            event(f"{name}: {type(exc).__name__}")


# --------------------------------------------------------------------------- walk_records


def dnspython_record_walk(msg: bytes) -> list[tuple[int, int, int]]:
    """(start, fields, end) of every record after the question, by dnspython's parser."""
    parser = dns.wire.Parser(msg)
    _, _, qd, an, ns, ar = parser.get_struct("!HHHHHH")
    for _ in range(qd):
        dns.name.from_wire_parser(parser)
        parser.get_struct("!HH")
    walked = []
    for _ in range(an + ns + ar):
        start = parser.current
        dns.name.from_wire_parser(parser)
        fields = parser.current
        *_, rdlen = parser.get_struct("!HHIH")
        parser.get_bytes(rdlen)
        walked.append((start, fields, parser.current))
    return walked


@given(st.one_of(padded_answers(), dnspython_answers(), dnspython_queries()))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_walk_records_agrees_with_dnspython(msg: bytes) -> None:
    """The one record walker finds every record where dnspython does, names checked or
    not, and the OPT the hot path strips is the first in the additional section."""
    qend = wire.skip_name(msg, wire.HEADER_LEN) + 4
    _, _, _, an, ns, ar = struct.unpack_from("!HHHHHH", msg)
    expected = dnspython_record_walk(msg)
    assert list(wire.walk_records(msg, qend, an + ns + ar)) == expected
    assert list(wire.walk_records(msg, qend, an + ns + ar, validate=False)) == expected
    opts = [
        (s, e)
        for i, (s, f, e) in enumerate(expected)
        if i >= an + ns and msg[f : f + 2] == b"\x00\x29"
    ]
    assert wire._find_opt_after(msg, qend) == (opts[0] if opts else None)


def test_walk_records_raises_form_error_for_every_truncation() -> None:
    """Cut anywhere inside its records, a message walks into FormError, never IndexError."""
    response = dns.message.make_response(dns.message.make_query("walk.example.", "A", use_edns=0))
    response.answer.append(dns.rrset.from_text("walk.example.", 60, "IN", "A", "192.0.2.7"))
    msg = response.to_wire()
    qend = wire.skip_name(msg, wire.HEADER_LEN) + 4
    _, _, _, an, ns, ar = struct.unpack_from("!HHHHHH", msg)
    assert an == ar == 1
    for cut in range(qend, len(msg)):
        for checked in (True, False):
            with pytest.raises(FormError):
                list(wire.walk_records(msg[:cut], qend, an + ns + ar, validate=checked))


def test_walk_records_checks_names_only_when_asked() -> None:
    """A forward compression pointer is refused by the validating walk and skipped by the
    lenient one (what forwarding an answer needs)."""
    msg = header(flags=0x8180, an=1) + question() + rr(ptr(0x3FFF), 1, rdata=b"\x7f\x00\x00\x01")
    qend = wire.HEADER_LEN + len(question())
    with pytest.raises(FormError, match="point backwards"):
        list(wire.walk_records(msg, qend, 1))
    assert list(wire.walk_records(msg, qend, 1, validate=False)) == [(qend, qend + 2, len(msg))]
