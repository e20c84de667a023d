"""EDNS(0) for clients on an encrypted stream (DoT, DoH): padding and TCP keepalive.

An encrypted client whose query carries the Padding option (RFC 7830) gets its answer
padded to a multiple of 468 octets (RFC 8467 §4.1: a server that receives a padded
query pads its response; 468 is the block the RFC recommends for responses). Only
then: a client that pads nothing has chosen not to hide its sizes, and a client
without EDNS cannot be sent an OPT record (RFC 6891 §7). A DoT client that sends the
edns-tcp-keepalive option (RFC 7828) is told the idle timeout in the answer's OPT.
Pure: bytes in, bytes out. See docs/ARCHITECTURE.md, "protocol".
"""

from __future__ import annotations

import struct
from enum import IntFlag

from dns2dot.protocol import wire
from dns2dot.protocol.errors import FormError

RESPONSE_BLOCK = 468  # RFC 8467 §4.1
KEEPALIVE = 11  # edns-tcp-keepalive option code (RFC 7828)
PADDING = 12  # RFC 7830

_RR = struct.Struct("!HHIH")
_OPTION = struct.Struct("!HH")


class Asks(IntFlag):
    """What an encrypted client's query asks of the answer's OPT record."""

    NOTHING = 0
    PADDING = 1
    KEEPALIVE = 2


def _opt_span(msg: bytes) -> tuple[int, int] | None:
    """(start, end) of the OPT record in the additional section, or None."""
    qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHH", msg, 4)
    if not arcount:
        return None
    offset = wire.HEADER_LEN
    for _ in range(qdcount):
        offset = wire.skip_name(msg, offset) + 4
    for index in range(ancount + nscount + arcount):
        start = offset
        offset = wire.skip_name(msg, offset)
        rtype, _class, _ttl, rdlength = _RR.unpack_from(msg, offset)
        offset += _RR.size + rdlength
        if offset > len(msg):
            return None
        if rtype == wire.RdataType.OPT and index >= ancount + nscount:
            return start, offset
    return None


def _options(rdata: bytes) -> list[tuple[int, bytes]]:
    options = []
    pos = 0
    while pos + 4 <= len(rdata):
        code, length = _OPTION.unpack_from(rdata, pos)
        if pos + 4 + length > len(rdata):
            break
        options.append((code, rdata[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return options


def client_asks(query: bytes) -> Asks:
    """Whether ``query`` carries a Padding and/or an edns-tcp-keepalive option."""
    if len(query) < wire.HEADER_LEN or not (query[10] or query[11]):
        return Asks.NOTHING  # no additional record: no OPT (the common case, cheaply)
    try:
        span = _opt_span(query)
    except (struct.error, IndexError, FormError):
        return Asks.NOTHING
    if span is None:
        return Asks.NOTHING
    start, end = span
    asks = Asks.NOTHING
    for code, _data in _options(query[start + 11 : end]):
        if code == PADDING:
            asks |= Asks.PADDING
        elif code == KEEPALIVE:
            asks |= Asks.KEEPALIVE
    return asks


def finish_answer(answer: bytes, asks: Asks, idle_timeout: float) -> bytes:
    """``answer`` with the keepalive timeout and/or padding its query asked for.

    Needs the answer's OPT record (present when the client sent one); an answer
    without it, or one that would outgrow 65535 octets, goes out as it is.
    """
    if not asks or len(answer) < wire.HEADER_LEN:
        return answer
    try:
        span = _opt_span(answer)
    except (struct.error, IndexError, FormError):
        return answer
    if span is None:
        return answer
    start, end = span
    kept = [
        (code, data)
        for code, data in _options(answer[start + 11 : end])
        if code not in (PADDING, KEEPALIVE)
    ]
    if asks & Asks.KEEPALIVE:
        # In units of 100 ms (RFC 7828 §3.1), at most 65535.
        kept.append((KEEPALIVE, struct.pack("!H", min(0xFFFF, int(idle_timeout * 10)))))
    body = b"".join(_OPTION.pack(code, len(data)) + data for code, data in kept)
    head = answer[: start + 9]  # the OPT record up to its RDLENGTH
    tail = answer[end:]
    if asks & Asks.PADDING:
        unpadded = len(head) + 2 + len(body) + 4 + len(tail)
        pad = (-unpadded) % RESPONSE_BLOCK
        if unpadded + pad <= wire.MAX_MESSAGE_LEN:
            body += _OPTION.pack(PADDING, pad) + b"\x00" * pad
    changed = head + struct.pack("!H", len(body)) + body + tail
    # The keepalive option alone can push a full-size answer past what a frame holds.
    return changed if len(changed) <= wire.MAX_MESSAGE_LEN else answer
