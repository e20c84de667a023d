"""The HTTP side of DNS over HTTPS (RFC 8484), sans-IO: bytes in, values out.

Two pieces the DoH upstream connection needs beside ``h2``:

- :class:`StaticHeaderEncoder` stands in for h2's HPACK encoder. A DoH client sends
  the same request headers on every stream but for ``content-length``, so each header
  block is built once without the dynamic table (static-table references and literals
  "without indexing", RFC 7541 §6.1-6.2.2) and then reused. Such a block means the
  same whatever was sent before, so reusing it is correct.
- :class:`Http1Reader` and :func:`http1_request`: the HTTP/1.1 fallback for a server
  that does not offer ``h2``, one request at a time on a keep-alive connection.

See docs/ARCHITECTURE.md, "upstream".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CONTENT_TYPE = "application/dns-message"
MAX_BODY = 65535  # a DNS message is at most this long (RFC 8484 §6)
MAX_HEADER_BYTES = 16384  # an HTTP/1.1 response head, at most

# RFC 7541 Appendix A: the entries a DoH request can use.
_STATIC_FIELDS = {
    (b":method", b"GET"): 2,
    (b":method", b"POST"): 3,
    (b":path", b"/"): 4,
    (b":scheme", b"http"): 6,
    (b":scheme", b"https"): 7,
}
_STATIC_NAMES = {
    b":authority": 1,
    b":method": 2,
    b":path": 4,
    b":scheme": 6,
    b"accept": 19,
    b"content-length": 28,
    b"content-type": 31,
    b"user-agent": 58,
}
_MAX_CACHED_BLOCKS = 512  # distinct header lists kept (one per content-length in practice)


def hpack_integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with the flag bits ``first`` in its first octet."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_string(data: bytes) -> bytes:
    """A string literal without Huffman coding (RFC 7541 §5.2)."""
    return hpack_integer(len(data), 7, 0x00) + data


def encode_header_block(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """An HPACK header block that neither uses nor changes the dynamic table."""
    out = bytearray()
    for name, value in headers:
        index = _STATIC_FIELDS.get((name, value))
        if index is not None:
            out += hpack_integer(index, 7, 0x80)  # indexed field (§6.1)
            continue
        index = _STATIC_NAMES.get(name, 0)
        out += hpack_integer(index, 4, 0x00)  # literal without indexing (§6.2.2)
        if not index:
            out += _hpack_string(name)
        out += _hpack_string(value)
    return bytes(out)


class StaticHeaderEncoder:
    """Encodes header lists as :func:`encode_header_block` does, each distinct list
    once; a drop-in for ``h2.connection.H2Connection.encoder``.

    The peer may change the dynamic table's maximum size (SETTINGS_HEADER_TABLE_SIZE);
    h2 then sets :attr:`header_table_size`, and the next block starts with the size
    update(s) RFC 7541 §4.2 requires, though no entry is ever added.
    """

    def __init__(self) -> None:
        self._size = 4096  # the initial maximum (RFC 7541 §4.2)
        self._smallest: int | None = None  # the smallest size set since the last block
        self._blocks: dict[tuple[tuple[bytes, bytes], ...], bytes] = {}

    @property
    def pending_update(self) -> bool:
        """Whether the next block starts with a table size update."""
        return self._smallest is not None

    @property
    def header_table_size(self) -> int:
        return self._size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._smallest = value if self._smallest is None else min(self._smallest, value)
        self._size = value

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        """The block for ``headers`` (``huffman`` is ignored: literals are sent raw)."""
        key = tuple((name, value) for name, value in headers)
        block = self._blocks.get(key)
        if block is None:
            if len(self._blocks) >= _MAX_CACHED_BLOCKS:
                self._blocks.clear()
            block = self._blocks[key] = encode_header_block(key)
        if self._smallest is not None:
            update = hpack_integer(self._smallest, 5, 0x20)
            if self._smallest != self._size:
                update += hpack_integer(self._size, 5, 0x20)
            self._smallest = None
            block = update + block
        return block


def request_headers(authority: str, path: str, length: int) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 request headers of one DoH POST with a body of ``length`` octets."""
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", authority.encode("ascii")),
        (b":path", path.encode("ascii")),
        (b"accept", CONTENT_TYPE.encode("ascii")),
        (b"content-type", CONTENT_TYPE.encode("ascii")),
        (b"content-length", str(length).encode("ascii")),
    ]


def response_problem(status: str, content_type: str) -> str | None:
    """Why a response with this status and content type carries no usable answer."""
    if status != "200":
        return f"HTTP status {status}"
    if media_type(content_type) != CONTENT_TYPE:
        return f"content type {media_type(content_type)!r}"
    return None


def media_type(content_type: str) -> str:
    """``Application/DNS-Message; charset=x`` -> ``application/dns-message``."""
    return content_type.split(";")[0].strip().lower()


# -- HTTP/1.1 ---------------------------------------------------------------------------


def http1_request(authority: str, path: str, body: bytes) -> bytes:
    """One DoH POST as HTTP/1.1 (keep-alive is the default)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n"
        f"Accept: {CONTENT_TYPE}\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def parse_http1_head(raw: bytes) -> tuple[str, dict[str, str]]:
    """The status code and lower-cased headers of an HTTP/1.1 response head."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = parts[1] if len(parts) > 1 and parts[0].startswith("HTTP/1.") else ""
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


@dataclass(frozen=True)
class Http1Response:
    """One HTTP/1.1 response: status, content type, body, and whether the server
    keeps the connection open."""

    status: str
    content_type: str
    body: bytes
    keep_alive: bool


class Http1Reader:
    """Splits the bytes of an HTTP/1.1 connection into responses.

    Only what a DoH answer needs: a head of at most :data:`MAX_HEADER_BYTES` and a
    ``Content-Length`` body of at most :data:`MAX_BODY`. Anything else (no length,
    chunked encoding, a head too long) cannot be resynchronised: :attr:`broken` says
    why, and the connection must go.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._head: tuple[str, dict[str, str]] | None = None
        self._length = 0
        self.broken: str | None = None

    def feed(self, data: bytes) -> list[Http1Response]:
        """The responses completed by ``data``; none once :attr:`broken`."""
        if self.broken is not None:
            return []
        self._buffer += data
        out: list[Http1Response] = []
        while True:
            if self._head is None:
                end = self._buffer.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
                if end < 0:
                    if len(self._buffer) > MAX_HEADER_BYTES:
                        self.broken = "response head too long"
                    return out
                self._head = parse_http1_head(bytes(self._buffer[:end]))
                del self._buffer[: end + 4]
                length = self._head[1].get("content-length", "")
                if not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY:
                    self.broken = "answer without a usable Content-Length"
                    return out
                self._length = int(length)
            if len(self._buffer) < self._length:
                return out
            status, headers = self._head
            body = bytes(self._buffer[: self._length])
            del self._buffer[: self._length]
            self._head = None
            keep_alive = headers.get("connection", "").lower() != "close"
            out.append(Http1Response(status, headers.get("content-type", ""), body, keep_alive))
