"""DNS message parsing and building: bytes in, values out.

This is the hot path of every query, so it is hand-rolled on ``struct`` and byte
indexing instead of dnspython (which is the reference it is tested against). It knows
nothing of sockets, loops or clocks.

What it checks is what a forwarder must check before it spends an upstream round trip
on a message: the header is sane, there is exactly one well-formed question, the other
sections hold exactly as many well-formed records as the counts claim, compression
pointers only point backwards at earlier names, and there is at most one OPT record.
Everything else is the upstream's business.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from enum import IntEnum
from typing import NamedTuple

from dns2dot.protocol.errors import FormError, MessageError, ProtocolError

HEADER = struct.Struct("!HHHHHH")
HEADER_LEN = 12
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_U16 = struct.Struct("!H")
_COUNTS3 = struct.Struct("!HHH")  # ancount, nscount, arcount
_U16_U16 = struct.Struct("!HH")
_OPT_FIXED = struct.Struct("!HIH")  # an OPT record's class (payload), ttl, rdlength
_new_tuple = tuple.__new__

# Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.2).
QR = 0x8000
OPCODE_MASK = 0x7800
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
AD = 0x0020
CD = 0x0010
RCODE_MASK = 0x000F

MAX_NAME_LEN = 255
MAX_LABEL_LEN = 63
# A name has at most 127 labels, so a well-formed one never needs more jumps.
MAX_POINTER_HOPS = 127
MIN_UDP_PAYLOAD = 512
MAX_MESSAGE_LEN = 0xFFFF  # the TCP length prefix is 16 bits
# What dns2dot advertises in the OPT records it writes itself (DNS flag day 2020).
OWN_UDP_PAYLOAD = 1232
PAD_BLOCK = 128  # RFC 8467 §4.1: queries padded to a multiple of 128 octets


class Rcode(IntEnum):
    """Response codes dns2dot produces itself (RFC 1035 §4.1.1, RFC 6891 §9)."""

    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16


class Opcode(IntEnum):
    QUERY = 0


class RdataType(IntEnum):
    """The record types the forwarder itself has to recognise."""

    A = 1
    AAAA = 28
    OPT = 41
    IXFR = 251
    AXFR = 252


_OPT = int(RdataType.OPT)  # a plain int: compared once per record walked


class EdnsOption(IntEnum):
    CLIENT_SUBNET = 8
    PADDING = 12
    EDE = 15


class Edns(NamedTuple):
    """The requester's OPT record (RFC 6891 §6.1.2)."""

    payload: int
    version: int
    do: bool
    offset: int  # where the OPT record starts in the message


class Query(NamedTuple):
    """A validated query: what the forwarder needs from it, and nothing more.

    A named tuple, the cheapest immutable record: one is built for every query.
    """

    id: int
    flags: int
    qname: bytes  # wire form, the client's spelling (case preserved)
    qtype: int
    qclass: int
    question_end: int
    edns: Edns | None
    key: bytes  # the question case-folded: what an answer must echo (see question_key)

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE_MASK) >> 11

    @property
    def udp_limit(self) -> int:
        """The largest UDP answer this client accepts (RFC 6891 §6.2.5, RFC 1035 §4.2.1)."""
        if self.edns is None:
            return MIN_UDP_PAYLOAD
        return max(MIN_UDP_PAYLOAD, self.edns.payload)


def question_key(qname: bytes, qtype: int, qclass: int) -> bytes:
    """Case-fold a question for matching (RFC 4343: names compare case-insensitively)."""
    return _fold(qname, _U16.pack(qtype) + _U16.pack(qclass))


def _fold(qname: bytes, type_and_class: bytes) -> bytes:
    """The one definition of a question key: the name case-folded, type and class as is.

    Only the name is folded: length octets are at most 63 and never fall in the
    ASCII upper-case range, so ``bytes.lower`` on wire form is safe.
    """
    return qname.lower() + type_and_class


def read_name(msg: bytes, offset: int) -> int:
    """Validate the name at ``offset`` and return the offset just past it.

    Compression pointers must point strictly before the previous jump target, so
    following them always terminates (no loops, no forward pointers), and into the
    message body, not the header. The part of the name a pointer leads to must also
    end before the part that holds the pointer: a compressor only ever points at a
    suffix it wrote earlier, never at octets that overlap the name being read (the
    rule dnspython 2.9 enforces too). The expanded name may not exceed 255 octets, and
    it may take at most :data:`MAX_POINTER_HOPS` jumps: a chain of pointers to
    pointers is legal but never needed, and unbounded it costs quadratic work.
    """
    size = len(msg)
    end = size  # where the octets of the current part of the name must stop
    pos = offset
    after = -1  # where the name ends in the message, once a pointer was taken
    limit = offset  # every pointer must land before this
    total = 1  # the root label
    hops = 0
    while True:
        if pos >= end:
            raise FormError(_overrun(end, size))
        length = msg[pos]
        if length == 0:
            return pos + 1 if after < 0 else after
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= end:
                raise FormError(
                    "compression pointer truncated" if end == size else _overrun(end, size)
                )
            target = ((length & 0x3F) << 8) | msg[pos + 1]
            if target >= limit or target < HEADER_LEN:
                raise FormError("compression pointer does not point backwards")
            if after < 0:
                after = pos + 2
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise FormError("too many compression pointers in one name")
            end = limit  # the part that starts at the target ends before this part began
            limit = target
            pos = target
            continue
        if kind:
            raise FormError("unknown label type")
        total += length + 1
        if total > MAX_NAME_LEN:
            raise FormError("name longer than 255 octets")
        pos += length + 1


def _overrun(end: int, size: int) -> str:
    """Why a name walked past ``end``: the message's end, or the name's own octets."""
    if end == size:
        return "name runs past the end of the message"
    return "compression target overlaps the name that points to it"


def _read_plain_name(msg: bytes, offset: int) -> int:
    """Like :func:`read_name` for a question name, which may not be compressed.

    The first name in a message can only point into the header, which is never a name.
    """
    end = len(msg)
    pos = offset
    while True:
        if pos >= end:
            raise FormError("name runs past the end of the message")
        length = msg[pos]
        if length == 0:
            pos += 1
            if pos - offset > MAX_NAME_LEN:
                raise FormError("name longer than 255 octets")
            return pos
        if length > MAX_LABEL_LEN:
            if length & 0xC0 == 0xC0:
                raise FormError("compression pointer does not point backwards")
            raise FormError("unknown label type")
        pos += length + 1


def walk_records(
    msg: bytes, offset: int, count: int, validate: bool = True
) -> Iterator[tuple[int, int, int]]:
    """Walk ``count`` resource records from ``offset``: the one record walker.

    Yields ``(start, fields, end)`` for each: where its owner name starts, where its
    fixed fields start (TYPE, CLASS, TTL and RDLENGTH at ``fields``, ``+2``, ``+4``,
    ``+8``) and where its RDATA ends. Owner names are checked by :func:`read_name`, or
    with ``validate=False`` only skipped (an answer that is forwarded, not interpreted
    by name). Raises :class:`FormError` when a record runs past the message.

    Callers on the hot path pass ``validate`` by position and run the walk to its
    end: a keyword call and closing a suspended generator each cost more than a
    record.
    """
    size = len(msg)
    for _ in range(count):
        start = offset
        if validate:
            offset = read_name(msg, offset)
        else:
            try:
                length = msg[offset]
                while length and length < 0xC0:
                    offset += length + 1
                    length = msg[offset]
            except IndexError:
                raise FormError("name runs past the end of the message") from None
            offset += 2 if length else 1  # a pointer or the root
        if offset + 10 > size:
            raise FormError("record header truncated")
        end = offset + 10 + ((msg[offset + 8] << 8) | msg[offset + 9])
        if end > size:
            raise FormError("record data truncated")
        yield start, offset, end
        offset = end


def _skip_records(msg: bytes, offset: int, count: int) -> tuple[int, Edns | None]:
    """Validate ``count`` resource records; return the end offset and the OPT record seen."""
    edns: Edns | None = None
    end = offset
    for start, fields, record_end in walk_records(msg, offset, count):
        end = record_end
        if msg[fields + 1] == _OPT and not msg[fields]:
            if edns is not None:
                raise FormError("more than one OPT record")
            if msg[start] != 0:
                raise FormError("OPT record not owned by the root")
            payload, ttl, _ = _OPT_FIXED.unpack_from(msg, fields + 2)
            edns = Edns(
                payload=payload,
                version=(ttl >> 16) & 0xFF,
                do=bool(ttl & 0x8000),
                offset=start,
            )
    return end, edns


def parse_query(msg: bytes) -> Query:
    """Validate a query from a client.

    Raises :class:`MessageError` when the header itself is missing (drop it, or close
    the TCP connection) and :class:`FormError` otherwise, whose ``rcode`` is the answer
    to give: FORMERR, NOTIMP for an opcode other than QUERY, BADVERS for EDNS > 0.
    """
    if len(msg) < HEADER_LEN:
        raise MessageError("message shorter than a DNS header")
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(msg)
    if flags & QR:
        raise FormError("QR set in a query")
    if flags & OPCODE_MASK:
        raise FormError("opcode not implemented", Rcode.NOTIMP)
    if flags & TC:
        raise FormError("TC set in a query")
    if qdcount != 1:
        raise FormError("QDCOUNT is not 1")
    end = len(msg)
    name_end = _read_plain_name(msg, HEADER_LEN)
    qend = name_end + 4
    if qend > end:
        raise FormError("question truncated")
    qtype, qclass = _U16_U16.unpack_from(msg, name_end)
    if qtype == RdataType.OPT or qtype == 0:
        raise FormError("meta type in the question")
    if ancount or nscount:
        offset, edns = _skip_records(msg, qend, ancount + nscount)
        if edns is not None:
            raise FormError("OPT record outside the additional section")
    else:
        offset = qend
    if not arcount:
        edns = None
    elif arcount == 1 and offset + 11 <= end and msg[offset : offset + 3] == b"\x00\x00\x29":
        # The usual additional section, a lone OPT record: read in place.
        payload, ttl, rdlen = _OPT_FIXED.unpack_from(msg, offset + 3)
        edns = _new_tuple(Edns, (payload, (ttl >> 16) & 0xFF, ttl & 0x8000 != 0, offset))
        offset += 11 + rdlen
        if offset > end:
            raise FormError("record data truncated")
    else:
        offset, edns = _skip_records(msg, offset, arcount)
    if offset != end:
        raise FormError("trailing bytes after the last record")
    if edns is not None and edns.version != 0:
        raise FormError("unsupported EDNS version", Rcode.BADVERS)
    qname = msg[HEADER_LEN:name_end]
    # Built as a plain tuple, skipping the named tuple's ``__new__`` and its checks.
    key = _fold(qname, msg[name_end:qend])
    return _new_tuple(Query, (qid, flags, qname, qtype, qclass, qend, edns, key))


def message_id(msg: bytes) -> int:
    """The message's ID; :class:`MessageError` when it is too short to have one."""
    try:
        return (msg[0] << 8) | msg[1]
    except IndexError:
        raise MessageError("message shorter than its ID") from None


def with_id(msg: bytes, new_id: int) -> bytes:
    """The same message with another ID: the one copy the forwarder makes of it."""
    return _U16.pack(new_id) + msg[2:]


def echoes(answer: bytes, question: bytes) -> bool:
    """Whether ``answer`` is a response whose one question is ``question`` (the query's
    question section, as it was sent) byte for byte.

    The common case, decided without parsing: an upstream echoes the question as it
    was asked. When this is False, :func:`answer_key` decides (another spelling of the
    name, an error answer without the question, or not DNS at all).
    """
    return (
        len(answer) >= HEADER_LEN
        and answer[2] & 0x80 != 0
        and answer[4] == 0
        and answer[5] == 1
        and answer.startswith(question, HEADER_LEN)
    )


def answer_key(msg: bytes) -> bytes | None:
    """The case-folded question an upstream answer echoes, or None if it has none.

    Raises :class:`MessageError` / :class:`FormError` for an answer that is not DNS.
    """
    if len(msg) < HEADER_LEN:
        raise MessageError("answer shorter than a DNS header")
    if not msg[2] & 0x80:
        raise FormError("answer without QR")
    if msg[4] != 0 or msg[5] != 1:
        return None
    qend = _read_plain_name(msg, HEADER_LEN)
    if qend + 4 > len(msg):
        raise FormError("question truncated")
    return _fold(msg[HEADER_LEN:qend], msg[qend : qend + 4])


def opt_record(
    *,
    payload: int = OWN_UDP_PAYLOAD,
    ext_rcode: int = 0,
    do: bool = False,
    options: bytes = b"",
) -> bytes:
    """An OPT pseudo-record (RFC 6891 §6.1.2): root owner, version 0."""
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return b"\x00" + _RR_FIXED.pack(RdataType.OPT, payload, ttl, len(options)) + options


def ede_option(info_code: int, text: str = "") -> bytes:
    """An Extended DNS Error option (RFC 8914 §2)."""
    body = _U16.pack(info_code) + text.encode("utf-8")
    return _U16.pack(EdnsOption.EDE) + _U16.pack(len(body)) + body


def _question_end_lenient(msg: bytes) -> int:
    """End of the question if it can be read, else 0: what an error answer can echo."""
    if len(msg) < HEADER_LEN or msg[4] != 0 or msg[5] != 1:
        return 0
    try:
        qend = _read_plain_name(msg, HEADER_LEN) + 4
    except FormError:
        return 0
    return qend if qend <= len(msg) else 0


def error_response(
    msg: bytes,
    rcode: int,
    query: Query | None = None,
    *,
    ede: int | None = None,
    ede_text: str = "",
) -> bytes:
    """An answer to ``msg`` carrying only ``rcode`` (and an EDE where given).

    Echoes the ID, opcode, RD and CD bits and, when it can be read, the question.
    Adds an OPT record when the client sent one (RFC 6891 §7), or when the rcode needs
    the extended bits (BADVERS); otherwise never, since a client without EDNS may not
    understand one. Raises :class:`MessageError` for a message shorter than a header.
    """
    if len(msg) < HEADER_LEN:
        raise MessageError("message shorter than a DNS header")
    if query is not None:
        qend = query.question_end
        has_edns = query.edns is not None
        do = has_edns and query.edns.do  # type: ignore[union-attr]
    else:
        qend = _question_end_lenient(msg)
        found = _find_opt_lenient(msg) if qend else None
        has_edns = found is not None
        # RFC 3225 §3: the DO bit is copied into the response.
        do = found is not None and bool(msg[found[0] + 7] & 0x80)
    flags = (msg[2] << 8) | msg[3]
    flags = QR | RA | (flags & (OPCODE_MASK | RD | CD)) | (rcode & RCODE_MASK)
    need_opt = has_edns or rcode > 15
    options = ede_option(ede, ede_text) if ede is not None and need_opt else b""
    tail = opt_record(ext_rcode=rcode >> 4, do=do, options=options) if need_opt else b""
    header = HEADER.pack(message_id(msg), flags, 1 if qend else 0, 0, 0, 1 if need_opt else 0)
    return header + msg[HEADER_LEN:qend] + tail


def _find_opt_lenient(msg: bytes) -> tuple[int, int] | None:
    """:func:`_find_opt` for a message that may be malformed: None when unreadable."""
    try:
        return _find_opt(msg)
    except ProtocolError:
        return None


def should_answer_malformed(msg: bytes) -> bool:
    """Whether a malformed message deserves an answer.

    A response (QR set) is answered FORMERR like any malformed query, except a response
    that is itself an error: answering those would let two servers bounce FORMERRs
    off each other forever (the reflection loop RFC 5452 warns of).
    """
    if len(msg) < HEADER_LEN:
        return False
    return not (msg[2] & 0x80 and msg[3] & RCODE_MASK)


def truncate(answer: bytes) -> bytes:
    """The answer cut down to header, question and OPT, with TC set (RFC 2181 §9).

    Tells a UDP client to ask again over TCP. The OPT record is rebuilt without
    options, so padding or EDE never pushes the stub past the client's limit.
    Raises :class:`MessageError` for an answer shorter than a header.
    """
    if len(answer) < HEADER_LEN:
        raise MessageError("answer shorter than a DNS header")
    qid, flags = _U16_U16.unpack_from(answer)
    qend = _question_end_lenient(answer)
    opt = b""
    if qend:
        found = _find_opt_lenient(answer)
        if found is not None:
            _, payload, ttl, _ = _RR_FIXED.unpack_from(answer, found[0] + 1)
            opt = b"\x00" + _RR_FIXED.pack(RdataType.OPT, payload, ttl, 0)
    header = HEADER.pack(qid, flags | TC, 1 if qend else 0, 0, 0, 1 if opt else 0)
    return header + answer[HEADER_LEN:qend] + opt


def fit_udp(answer: bytes, query_msg: bytes) -> bytes:
    """The answer as it may go back over UDP to the client that sent ``query_msg``.

    The client's limit is only worked out for answers over 512 bytes, the rare case.
    """
    if len(answer) <= MIN_UDP_PAYLOAD:
        return answer
    try:
        limit = parse_query(query_msg).udp_limit
    except (FormError, MessageError):
        limit = MIN_UDP_PAYLOAD
    if len(answer) <= limit:
        return answer
    return truncate(answer)


def rcode_of(msg: bytes) -> int:
    """The header rcode (without the EDNS extension bits)."""
    try:
        return msg[3] & RCODE_MASK
    except IndexError:
        raise MessageError("message shorter than its flags") from None


def skip_name(msg: bytes, pos: int) -> int:
    """The offset past the name at ``pos``, without following or checking pointers.

    Only for locating records in a message that is not interpreted further by name
    (an upstream's answer); raises :class:`FormError` when the message ends first.
    """
    try:
        length = msg[pos]
        while length and length < 0xC0:
            pos += length + 1
            length = msg[pos]
    except IndexError:
        raise FormError("name runs past the end of the message") from None
    pos += 2 if length else 1
    if pos > len(msg):
        raise FormError("compression pointer truncated")
    return pos


def _find_opt(msg: bytes) -> tuple[int, int] | None:
    """(start, end) of the OPT record in the additional section, if there is one.

    On the path of every answer, so records are skipped, not validated.
    """
    if len(msg) < HEADER_LEN:
        raise MessageError("message shorter than a DNS header")
    if not (msg[10] or msg[11]):
        return None
    offset = HEADER_LEN
    for _ in range((msg[4] << 8) | msg[5]):
        offset = skip_name(msg, offset) + 4
    return _find_opt_after(msg, offset)


def _find_opt_after(msg: bytes, offset: int) -> tuple[int, int] | None:
    """:func:`_find_opt` for records starting at ``offset`` (the question's end).

    The first OPT record of the additional section, in an answer whose records all
    hold together (:func:`walk_records` without name checks).
    """
    ancount, nscount, arcount = _COUNTS3.unpack_from(msg, 6)
    if not arcount:
        return None
    index = -(ancount + nscount)  # 0 at the first additional record
    found = None
    for start, fields, end in walk_records(msg, offset, arcount - index, False):
        if index >= 0 and found is None and msg[fields + 1] == _OPT and not msg[fields]:
            found = start, end
        index += 1
    return found


def _options(rdata: bytes) -> list[tuple[int, bytes]]:
    """The options in an OPT record's RDATA; a malformed tail is dropped."""
    options = []
    pos = 0
    while pos + 4 <= len(rdata):
        code, length = struct.unpack_from("!HH", rdata, pos)
        if pos + 4 + length > len(rdata):
            break
        options.append((code, rdata[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return options


def _pack_options(options: list[tuple[int, bytes]]) -> bytes:
    return b"".join(_U16.pack(code) + _U16.pack(len(data)) + data for code, data in options)


def _set_arcount(msg: bytes, arcount: int) -> bytes:
    return msg[:10] + _U16.pack(arcount) + msg[12:]


def prepare_upstream(
    msg: bytes, query: Query, *, pad_block: int = PAD_BLOCK, keep_client_subnet: bool = False
) -> bytes:
    """The query as it goes upstream: padded (RFC 7830, RFC 8467), ECS removed.

    The client's OPT keeps its payload size, flags and other options; a client that
    sent none gets one, so that the padding has somewhere to live (the answer's OPT is
    removed again for it, see :func:`client_view`). ``pad_block=0`` turns padding off.
    """
    if query.edns is None:
        if not pad_block:
            return msg
        if pad_block == PAD_BLOCK and len(msg) <= MAX_MESSAGE_LEN - 15 - 127:
            # The common case (a client without EDNS): one precomputed padded OPT.
            arcount = ((msg[10] << 8) | msg[11]) + 1
            return _set_arcount(msg, arcount) + _PADDED_OPT[(-(len(msg) + 15)) % PAD_BLOCK]
        opt_start, opt_end = len(msg), len(msg)
        payload, ttl, options = OWN_UDP_PAYLOAD, 0, []
        arcount = ((msg[10] << 8) | msg[11]) + 1
    else:
        opt_start = query.edns.offset
        payload, ttl, rdlen = _OPT_FIXED.unpack_from(msg, opt_start + 3)
        opt_end = opt_start + 11 + rdlen
        if (
            pad_block == PAD_BLOCK
            and not rdlen
            and opt_end == len(msg) <= MAX_MESSAGE_LEN - 4 - 127
        ):
            # The common case with EDNS: a last OPT without options gets the padding.
            pad = (-(len(msg) + 4)) % PAD_BLOCK
            return msg[: opt_start + 9] + _PADDING_RDATA[pad]
        options = _options(msg[opt_end - rdlen : opt_end])
        drop = (
            {EdnsOption.PADDING}
            if keep_client_subnet
            else {EdnsOption.PADDING, EdnsOption.CLIENT_SUBNET}
        )
        kept = [option for option in options if option[0] not in drop]
        if not pad_block and len(kept) == len(options):
            return msg
        options = kept
        arcount = (msg[10] << 8) | msg[11]
    head = _set_arcount(msg[:opt_start], arcount) if query.edns is None else msg[:opt_start]
    tail = msg[opt_end:]
    body = _pack_options(options)
    if pad_block:
        unpadded = len(head) + 11 + len(body) + 4 + len(tail)
        body += _padding_option((-unpadded) % pad_block)
    opt = b"\x00" + _RR_FIXED.pack(RdataType.OPT, payload, ttl, len(body)) + body
    prepared = head + opt + tail
    if len(prepared) > MAX_MESSAGE_LEN:
        # No room for padding (RFC 1035 §4.2.2: 65535 octets at most over TCP).
        return (
            msg
            if pad_block == 0
            else prepare_upstream(msg, query, pad_block=0, keep_client_subnet=keep_client_subnet)
        )
    return prepared


def _padding_option(pad: int) -> bytes:
    """A padding option (RFC 7830) of ``pad`` zero octets."""
    return _U16_U16.pack(EdnsOption.PADDING, pad) + b"\x00" * pad


def _padded_opt(pad: int) -> bytes:
    """An OPT record of our own carrying only a padding option of ``pad`` zero octets."""
    body = _padding_option(pad)
    return b"\x00" + _RR_FIXED.pack(RdataType.OPT, OWN_UDP_PAYLOAD, 0, len(body)) + body


_PADDED_OPT = tuple(_padded_opt(pad) for pad in range(PAD_BLOCK))
# RDLENGTH and RDATA of an OPT record holding only a padding option of ``pad`` octets.
_PADDING_RDATA = tuple(_U16.pack(4 + pad) + _padding_option(pad) for pad in range(PAD_BLOCK))


def client_view(answer: bytes, client_has_edns: bool) -> bytes:
    """The answer as a cleartext client may see it: no padding, no OPT it did not ask for.

    Padding protects the encrypted hop only and is removed (RFC 8467 §4); an OPT record
    goes only to a client that sent one (RFC 6891 §7).
    """
    if len(answer) < HEADER_LEN or not (answer[10] or answer[11]):
        return answer
    found = _find_opt_lenient(answer)
    if found is None:
        return answer
    return _without_opt_parts(answer, found, client_has_edns, answer[:2])


def for_client(answer: bytes, query: Query) -> bytes:
    """:func:`client_view` of an answer to ``query``, under the client's ID.

    What every upstream answer goes through on its way to the client: one copy. The
    answer echoes the query's question (checked when it arrived), so only the records
    after it are walked.
    """
    qid = _U16.pack(query.id)
    if len(answer) < HEADER_LEN or not (answer[10] or answer[11]):
        return qid + answer[2:]
    try:
        if answer[4] == 0 and answer[5] == 1:
            found = _find_opt_after(answer, query.question_end)
        else:
            found = _find_opt(answer)
    except ProtocolError:
        found = None
    if found is None:
        return qid + answer[2:]
    return _without_opt_parts(answer, found, query.edns is not None, qid)


def _without_opt_parts(
    answer: bytes, opt: tuple[int, int], client_has_edns: bool, qid: bytes
) -> bytes:
    """The answer under ID ``qid``, its OPT at ``opt`` without padding, or removed."""
    start, end = opt
    if not client_has_edns:
        arcount = ((answer[10] << 8) | answer[11]) - 1
        return qid + answer[2:10] + _U16.pack(arcount) + answer[12:start] + answer[end:]
    stripped = strip_padding(answer, start, end)
    return stripped if qid == stripped[:2] else qid + stripped[2:]


def strip_padding(answer: bytes, start: int, end: int) -> bytes:
    """The answer without the padding option of the OPT record at ``start:end``."""
    rdlen = (answer[start + 9] << 8) | answer[start + 10]
    if (
        rdlen >= 4
        and answer[start + 11] == 0
        and answer[start + 12] == EdnsOption.PADDING
        and 4 + ((answer[start + 13] << 8) | answer[start + 14]) == rdlen
    ):
        # The usual OPT of a padding upstream: the padding option and nothing else.
        return answer[: start + 9] + b"\x00\x00" + answer[end:]
    options = _options(answer[end - rdlen : end])
    kept = [option for option in options if option[0] != EdnsOption.PADDING]
    if len(kept) == len(options):
        return answer
    body = _pack_options(kept)
    return answer[: start + 9] + _U16.pack(len(body)) + body + answer[end:]


# DNSSEC (RFC 4035): what a validating forwarder asks upstream and what a client
# without DO is not shown.
_DNSSEC_ONLY = frozenset({46, 47, 50})  # RRSIG, NSEC, NSEC3: shown only to DO clients
# RFC 3597 §4: only RFC 1035's types may carry compressed names in their RDATA. For
# each: the octets before the first name, the number of names, and the fixed tail.
_NAMED_RDATA = {
    2: (0, 1),  # NS
    3: (0, 1),  # MD
    4: (0, 1),  # MF
    5: (0, 1),  # CNAME
    6: (0, 2),  # SOA: MNAME, RNAME, then 20 octets
    7: (0, 1),  # MB
    8: (0, 1),  # MG
    9: (0, 1),  # MR
    12: (0, 1),  # PTR
    14: (0, 2),  # MINFO
    15: (2, 1),  # MX: PREFERENCE, EXCHANGE
}
EDE_TEXT = {
    1: "Unsupported DNSKEY Algorithm",
    2: "Unsupported DS Digest Type",
    6: "DNSSEC Bogus",
    7: "Signature Expired",
    8: "Signature Not Yet Valid",
    9: "DNSKEY Missing",
    10: "RRSIGs Missing",
}


def dnssec_query(msg: bytes) -> bytes:
    """The query as a validating stub sends it: DO set (RFC 3225) and CD set (RFC 4035
    §3.2.2), so the upstream hands over its records and signatures unjudged. A query
    without an OPT record gets one."""
    header = msg[:3] + bytes((msg[3] | (CD & 0xFF),))
    found = _find_opt(msg)
    if found is None:
        arcount = ((msg[10] << 8) | msg[11]) + 1
        return header + msg[4:10] + _U16.pack(arcount) + msg[12:] + opt_record(do=True)
    flag = found[0] + 7  # the high octet of the OPT's flags, where DO lives
    return header + msg[4:flag] + bytes((msg[flag] | 0x80,)) + msg[flag + 1 :]


def with_ede(answer: bytes, code: int, text: str = "") -> bytes:
    """``answer`` with an Extended DNS Error option (RFC 8914) added to its OPT record;
    unchanged when it has none (a client without EDNS gets no option)."""
    found = _find_opt(answer)
    if found is None:
        return answer
    start, end = found
    option = ede_option(code, text)
    rdlen = (answer[start + 9] << 8) | answer[start + 10]
    head = answer[: start + 9] + _U16.pack(rdlen + len(option))
    return head + answer[start + 11 : end] + option + answer[end:]


def with_ad_cd(answer: bytes, ad: bool, cd: bool) -> bytes:
    """``answer`` with its AD and CD header bits set as given (RFC 4035 §3.2.3, RFC
    6840 §5.7: AD for a client that set DO or AD; CD echoes the client's)."""
    flags = (answer[3] & ~0x30) | (0x20 if ad else 0) | (0x10 if cd else 0)
    return answer[:3] + bytes((flags,)) + answer[4:]


def without_dnssec(answer: bytes, qtype: int) -> bytes:
    """``answer`` as a client that did not set DO sees it (RFC 4035 §3.2.1): no RRSIG,
    NSEC or NSEC3 record unless the question asked for that type, and DO clear in the
    OPT record. When records go, the names of those that stay are written out in full,
    since a compression pointer may have pointed into what went. Raises
    :class:`FormError` for an answer whose records do not hold together.
    """
    if len(answer) < HEADER_LEN:
        raise MessageError("message shorter than a DNS header")
    _, _, qdcount, ancount, nscount, arcount = HEADER.unpack_from(answer)
    offset = HEADER_LEN
    for _ in range(qdcount):
        offset = read_name(answer, offset) + 4
    if offset > len(answer):
        raise FormError("question truncated")
    question_end = offset
    records = list(walk_records(answer, offset, ancount + nscount + arcount, True))
    counts = [ancount, nscount, arcount]
    kept: list[tuple[int, int, int]] = []
    for index, record in enumerate(records):
        rtype = (answer[record[1]] << 8) | answer[record[1] + 1]
        if rtype in _DNSSEC_ONLY and rtype != qtype:
            counts[0 if index < ancount else 1 if index < ancount + nscount else 2] -= 1
        else:
            kept.append(record)
    if len(kept) == len(records):
        return _clear_do(answer, records, ancount + nscount)
    parts = [answer[:6], struct.pack("!HHH", *counts), answer[HEADER_LEN:question_end]]
    for start, fields, end in kept:
        rtype = (answer[fields] << 8) | answer[fields + 1]
        if rtype == _OPT:
            body = answer[fields:end]
            parts.append(b"\x00" + body[:6] + bytes((body[6] & 0x7F,)) + body[7:])
            continue
        parts.append(_expanded_name(answer, start)[0])
        rdata_start = fields + 10
        layout = _NAMED_RDATA.get(rtype)
        if layout is None:
            parts.append(answer[fields:end])
            continue
        before, names = layout
        rdata = [answer[rdata_start : rdata_start + before]]
        pos = rdata_start + before
        for _ in range(names):
            name, pos = _expanded_name(answer, pos)
            rdata.append(name)
        if pos > end:
            raise FormError("record data overruns its length")
        rdata.append(answer[pos:end])
        body = b"".join(rdata)
        parts.append(answer[fields : fields + 8] + _U16.pack(len(body)) + body)
    return b"".join(parts)


def _clear_do(answer: bytes, records: list[tuple[int, int, int]], first_additional: int) -> bytes:
    """``answer`` with the DO bit of its OPT record cleared (RFC 3225 §3)."""
    for _, fields, _ in records[first_additional:]:
        if answer[fields] == 0 and answer[fields + 1] == _OPT:
            flag = fields + 6
            if answer[flag] & 0x80:
                return answer[:flag] + bytes((answer[flag] & 0x7F,)) + answer[flag + 1 :]
            return answer
    return answer


def _expanded_name(msg: bytes, offset: int) -> tuple[bytes, int]:
    """The name at ``offset`` with every compression pointer followed, and the offset
    just past it in place. Raises :class:`FormError` for a name that cannot be read."""
    labels = bytearray()
    end = -1
    hops = 0
    try:
        while True:
            length = msg[offset]
            if length >= 0xC0:
                if end < 0:
                    end = offset + 2
                target = ((length & 0x3F) << 8) | msg[offset + 1]
                hops += 1
                if target >= offset or hops > MAX_POINTER_HOPS:
                    raise FormError("compression pointer does not point backwards")
                offset = target
                continue
            if length > MAX_LABEL_LEN:
                raise FormError("unknown label type")
            labels += msg[offset : offset + length + 1]
            if len(labels) > MAX_NAME_LEN:
                raise FormError("name longer than 255 octets")
            if not length:
                break
            offset += length + 1
    except IndexError:
        raise FormError("name runs past the end of the message") from None
    if end < 0:
        end = offset + 1
    return bytes(labels), end
