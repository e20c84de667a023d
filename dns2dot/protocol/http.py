"""DNS over HTTPS (RFC 8484), the server's side, without I/O: bytes and strings in, values out.

Which request carries a DNS query and which status answers the others (400 for a bad
``dns`` parameter or a message that is not a query, 404 for another path, 405 for
another method, 413 for an oversized body, 415 for another content type), the
``Cache-Control`` an answer may carry (RFC 8484 §5.1: its smallest TTL), and an
HTTP/1.1 request reader with limits on header and body size. HTTP/2 framing is
dns2dot/protocol/http2_server.py's. See docs/ARCHITECTURE.md, "protocol".
"""

from __future__ import annotations

import base64
import binascii
import struct
from enum import Enum
from typing import NamedTuple

from dns2dot.protocol import wire
from dns2dot.protocol.errors import FormError

CONTENT_TYPE = "application/dns-message"
MAX_BODY = wire.MAX_MESSAGE_LEN  # a DNS message is at most 65535 octets
MAX_HEADER_BYTES = 16384  # request line and header fields of one HTTP/1.1 request
MAX_PIPELINED = 64  # HTTP/1.1 requests read ahead of their answers

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    505: "HTTP Version Not Supported",
}

_RR = struct.Struct("!HHIH")
_SINGLE = ("content-length", "content-type", "host")  # fields that may not disagree


class Rejection(NamedTuple):
    """A request that carries no DNS query: the status to answer it with, and why."""

    status: int
    reason: str


def decode_dns_param(query_string: str) -> bytes | None:
    """The ``dns`` parameter of a GET query string, base64url-decoded (RFC 8484 §4.1).

    Padding is tolerated though RFC 8484 says to leave it out; None when the parameter
    is missing, repeated, or not base64url.
    """
    found: str | None = None
    for pair in query_string.split("&"):
        name, _, value = pair.partition("=")
        if name == "dns":
            if found is not None:
                return None
            found = value
    if found is None:
        return None
    text = found.rstrip("=")
    if not text or len(text) % 4 == 1 or not text.isascii():
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None


def encode_dns_param(message: bytes) -> str:
    """base64url without padding: what a GET request carries (tests and probes)."""
    return base64.urlsafe_b64encode(message).rstrip(b"=").decode("ascii")


def dns_request(
    method: str, target: str, content_type: str | None, body: bytes, path: str
) -> bytes | Rejection:
    """The DNS query a request carries, or the status to answer it with."""
    request_path, _, query_string = target.partition("?")
    if request_path != path:
        return Rejection(404, f"only {path} answers DNS queries")
    if method == "GET":
        message = decode_dns_param(query_string)
        if message is None:
            return Rejection(400, "missing or malformed dns parameter")
    elif method == "POST":
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media != CONTENT_TYPE:
            return Rejection(415, f"Content-Type must be {CONTENT_TYPE}")
        if len(body) > MAX_BODY:
            return Rejection(413, "a DNS message is at most 65535 octets")
        message = body
    else:
        return Rejection(405, "GET or POST")
    if len(message) < wire.HEADER_LEN or message[2] & 0x80:
        return Rejection(400, "not a DNS query")
    return message


def min_ttl(answer: bytes) -> int | None:
    """The smallest TTL of the answer's records (OPT aside), or None if it has none.

    Negative answers carry the SOA whose TTL bounds their caching (RFC 2308 §5).
    """
    try:
        qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHH", answer, 4)
        offset = wire.HEADER_LEN
        for _ in range(qdcount):
            offset = wire.skip_name(answer, offset) + 4
        smallest: int | None = None
        for _ in range(ancount + nscount + arcount):
            offset = wire.skip_name(answer, offset)
            rtype, _class, ttl, rdlength = _RR.unpack_from(answer, offset)
            offset += _RR.size + rdlength
            if offset > len(answer):
                return smallest
            if rtype != wire.RdataType.OPT:
                ttl &= 0x7FFFFFFF  # RFC 2181 §8
                smallest = ttl if smallest is None else min(smallest, ttl)
        return smallest
    except (struct.error, IndexError, ValueError, FormError):
        return None


def cache_control(answer: bytes) -> str:
    """The Cache-Control of a DoH answer (RFC 8484 §5.1).

    The freshness is the smallest TTL; an answer without records, or a failure
    (SERVFAIL, REFUSED), is not to be kept.
    """
    rcode = answer[3] & 0x0F if len(answer) >= wire.HEADER_LEN else wire.Rcode.SERVFAIL
    if rcode not in (wire.Rcode.NOERROR, wire.Rcode.NXDOMAIN):
        return "no-store"
    ttl = min_ttl(answer)
    return "no-store" if ttl is None else f"max-age={ttl}"


def answer_headers(answer: bytes) -> list[tuple[str, str]]:
    """The header fields of a 200 answer, beyond its status."""
    return [
        ("content-type", CONTENT_TYPE),
        ("content-length", str(len(answer))),
        ("cache-control", cache_control(answer)),
    ]


def rejection_headers(rejection: Rejection) -> list[tuple[str, str]]:
    body = rejection.reason.encode() + b"\n"
    headers = [
        ("content-type", "text/plain; charset=utf-8"),
        ("content-length", str(len(body))),
        ("cache-control", "no-store"),
    ]
    if rejection.status == 405:
        headers.append(("allow", "GET, POST"))
    return headers


# -- HTTP/1.1 -------------------------------------------------------------------------


class Http1Request(NamedTuple):
    method: str
    target: str
    content_type: str | None
    body: bytes
    keep_alive: bool


class ReaderState(Enum):
    """Where :class:`Http1Reader` is: in a request's head, its body, or done for good."""

    HEAD = "head"
    BODY = "body"
    BROKEN = "broken"


class Http1Reader:
    """Reads HTTP/1.1 requests from a byte stream (RFC 9112), with limits.

    :meth:`feed` returns the requests completed so far, and a :class:`Rejection` after
    which the connection is answered and closed: a head larger than
    ``MAX_HEADER_BYTES`` (431, or 414 for the request line alone), a body larger than
    ``MAX_BODY`` (413), a chunked body (411: DNS queries have a known length), or
    bytes that are not HTTP/1.x (400, 505).
    """

    def __init__(self) -> None:
        self.state = ReaderState.HEAD
        self._buffer = bytearray()
        self._head: tuple[str, str, str | None, bool] | None = None
        self._length = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> tuple[list[Http1Request], Rejection | None]:
        if self.state is ReaderState.BROKEN:
            return [], None
        self._buffer += data
        requests: list[Http1Request] = []
        while True:
            if self.state is ReaderState.HEAD:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_HEADER_BYTES:
                        line_end = self._buffer.find(b"\r\n")
                        status = 414 if line_end < 0 or line_end > MAX_HEADER_BYTES else 431
                        return requests, self._broken(status, "request head too large")
                    return requests, None
                if end > MAX_HEADER_BYTES:
                    return requests, self._broken(431, "request head too large")
                head = bytes(self._buffer[:end])
                del self._buffer[: end + 4]
                parsed = self._parse_head(head)
                if isinstance(parsed, Rejection):
                    return requests, self._broken(parsed.status, parsed.reason)
                self._head = parsed[:4]
                self._length = parsed[4]
                self.state = ReaderState.BODY
            if self.state is ReaderState.BODY:
                if len(self._buffer) < self._length:
                    return requests, None
                assert self._head is not None
                method, target, content_type, keep_alive = self._head
                body = bytes(self._buffer[: self._length])
                del self._buffer[: self._length]
                requests.append(Http1Request(method, target, content_type, body, keep_alive))
                self._head = None
                self.state = ReaderState.HEAD
                if not keep_alive:
                    self.state = ReaderState.BROKEN  # nothing after a "close" is read
                    return requests, None

    def _broken(self, status: int, reason: str) -> Rejection:
        self.state = ReaderState.BROKEN
        self._buffer.clear()
        return Rejection(status, reason)

    @staticmethod
    def _parse_head(head: bytes) -> tuple[str, str, str | None, bool, int] | Rejection:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            return Rejection(400, "bad request head")
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
            return Rejection(400, "bad request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            return Rejection(505 if version.startswith("HTTP/") else 400, "HTTP/1.1 only")
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or " " in name:
                return Rejection(400, "bad header field")
            key = name.lower()
            value = value.strip()
            if key in _SINGLE and fields.get(key, value) != value:
                return Rejection(400, f"conflicting {key}")
            fields[key] = value
        if "transfer-encoding" in fields:
            return Rejection(411, "send a Content-Length, not a chunked body")
        length_text = fields.get("content-length", "0")
        if not length_text.isascii() or not length_text.isdigit():
            return Rejection(400, "bad Content-Length")
        length = int(length_text)
        if length > MAX_BODY:
            return Rejection(413, "a DNS message is at most 65535 octets")
        connection = fields.get("connection", "").lower()
        if version == "HTTP/1.0":
            keep_alive = "keep-alive" in connection
        else:
            keep_alive = "close" not in connection
        return method, target, fields.get("content-type"), keep_alive, length


def http1_response(
    status: int, headers: list[tuple[str, str]], body: bytes, *, keep_alive: bool
) -> bytes:
    """One HTTP/1.1 response, head and body."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
