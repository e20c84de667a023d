"""The 2-byte length prefix of DNS over TCP and TLS (RFC 1035 §4.2.2, RFC 7766 §8).

Pure: a decoder is fed whatever the socket delivered (half a prefix, a dozen
coalesced messages, one byte at a time) and hands back whole messages.
"""

from __future__ import annotations

import struct

from dns2dot.protocol.errors import FramingError
from dns2dot.protocol.wire import HEADER_LEN, MAX_MESSAGE_LEN

_LENGTH_AND_ID = struct.Struct("!HH")


def frame(msg: bytes) -> bytes:
    """Prefix a message with its length."""
    n = len(msg)
    if n > MAX_MESSAGE_LEN:
        raise ValueError(f"DNS message of {n} bytes cannot be framed")
    return n.to_bytes(2, "big") + msg


def frame_with_id(msg: bytes, new_id: int) -> bytes:
    """:func:`frame` of the message under another DNS ID: what goes upstream, one copy."""
    n = len(msg)
    if n > MAX_MESSAGE_LEN:
        raise ValueError(f"DNS message of {n} bytes cannot be framed")
    return _LENGTH_AND_ID.pack(n, new_id) + msg[2:]


class FrameDecoder:
    """Splits a TCP byte stream into DNS messages.

    A prefix of zero, or one too short to hold a DNS header, cannot be answered (there
    is no ID to answer to) and leaves the stream unsynchronised: :meth:`feed` then
    stops, sets :attr:`error`, and everything after it is ignored. ``min_length``
    lets the upstream side accept any answer that is at least a header too.
    """

    __slots__ = ("_buffer", "error", "min_length")

    def __init__(self, min_length: int = HEADER_LEN) -> None:
        self._buffer = b""
        self.error: FramingError | None = None
        self.min_length = min_length

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a whole message (a stalled frame)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes from the stream; return the messages they complete, in order."""
        if self.error is not None:
            return []
        if self._buffer:
            data = self._buffer + data
        messages: list[bytes] = []
        pos = 0
        size = len(data)
        while size - pos >= 2:
            length = (data[pos] << 8) | data[pos + 1]
            if length < self.min_length:
                self.error = FramingError(f"length prefix {length} is shorter than a DNS header")
                self._buffer = b""
                return messages
            end = pos + 2 + length
            if end > size:
                break
            messages.append(data[pos + 2 : end])
            pos = end
        self._buffer = data[pos:] if pos < size else b""
        return messages
