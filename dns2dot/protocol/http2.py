"""The HTTP/2 frame layer (RFC 9113) and its client side as a DoH upstream uses it, sans-IO.

The frame layer (frame types, settings, error codes, :func:`frame`) is shared with the
server side, dns2dot/protocol/http2_server.py.

A DoH client asks one thing of HTTP/2: POST a small body on a fresh stream and get one
response back, many at once on one connection. :class:`H2Client` does exactly that:
bytes in (:meth:`H2Client.receive`), events and bytes out (:meth:`H2Client.request`,
:meth:`H2Client.data_to_send`); no socket, no clock. Request headers are encoded once
per body length (:class:`~dns2dot.protocol.doh.StaticHeaderEncoder`); response headers
are decoded by ``hpack`` (h2's own HPACK library), every block in order so that its
dynamic table stays in step with the server's.

What a general HTTP/2 library (``h2``) does besides, per stream, cost about six times
what this does; and ``h2`` closes the connection on a GOAWAY even for the streams the
server still answers (RFC 9113 §6.8), which this does not. Server push is refused
(SETTINGS_ENABLE_PUSH 0); the receive window is opened once to its largest and topped
up in bulk. See docs/ARCHITECTURE.md, "upstream".
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import hpack

from dns2dot.protocol.doh import MAX_BODY, StaticHeaderEncoder, request_headers
from dns2dot.protocol.errors import Http2Error

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_MAX_STREAMS = 100  # assumed until the server's SETTINGS arrive (RFC 9113 §6.5.2)
MAX_WINDOW = 2**31 - 1  # the largest flow-control window (RFC 9113 §6.9.1)
DEFAULT_WINDOW = 65535
DEFAULT_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE's initial value; ours stays at it
# Each stream's receive window: room for the largest DNS message and then some, so that
# an oversized body shows itself instead of stalling on flow control.
STREAM_WINDOW = 2 * (MAX_BODY + 1)
# The connection's receive window is topped up after this many octets.
WINDOW_REFILL = 2**30
LAST_STREAM_ID = 2**31 - 1
MAX_DECODED = 256  # response header blocks kept decoded
MAX_HEADER_BLOCK = 65536  # a response's header block, CONTINUATION frames included

FRAME_HEADER = struct.Struct(">BHBBL")  # length (24 bits, as 8 + 16), type, flags, stream
E = TypeVar("E")  # what a connection's frame handler collects


class Frame(enum.IntEnum):
    DATA = 0
    HEADERS = 1
    PRIORITY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PUSH_PROMISE = 5
    PING = 6
    GOAWAY = 7
    WINDOW_UPDATE = 8
    CONTINUATION = 9


class Setting(enum.IntEnum):
    HEADER_TABLE_SIZE = 1
    ENABLE_PUSH = 2
    MAX_CONCURRENT_STREAMS = 3
    INITIAL_WINDOW_SIZE = 4
    MAX_FRAME_SIZE = 5
    MAX_HEADER_LIST_SIZE = 6


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    STREAM_CLOSED = 5
    FRAME_SIZE_ERROR = 6
    REFUSED_STREAM = 7
    CANCEL = 8
    COMPRESSION_ERROR = 9


END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20


# -- events -----------------------------------------------------------------------------


class Response(NamedTuple):
    """A complete response on a stream of ours."""

    stream_id: int
    status: str
    content_type: str
    body: bytes


class StreamFailed(NamedTuple):
    """A stream of ours that cannot carry an answer (a body larger than any DNS
    message, or a flow-control error on it); it has been reset."""

    stream_id: int
    problem: str


class StreamReset(NamedTuple):
    """The server reset a stream of ours (RST_STREAM)."""

    stream_id: int
    error_code: int


class GoAway(NamedTuple):
    """The server takes no new streams; ``lost`` are ours beyond its last stream, never
    processed (RFC 9113 §6.8) and forgotten here. Streams up to ``last_stream_id``
    may still be answered."""

    last_stream_id: int
    error_code: int
    lost: tuple[int, ...]


class SettingsChanged(NamedTuple):
    """The server's SETTINGS arrived (acknowledged here); ``max_streams`` is its limit."""

    max_streams: int


class ConnectionBroken(NamedTuple):
    """The server broke the protocol; a GOAWAY is queued and the connection must end."""

    reason: str


Event = Response | StreamFailed | StreamReset | GoAway | SettingsChanged | ConnectionBroken


class _Stream:
    """One request of ours: what is left to send, and the response so far."""

    __slots__ = ("body", "content_type", "send_window", "status", "unsent")

    def __init__(self, send_window: int) -> None:
        self.send_window = send_window
        self.unsent = b""  # request body held back by flow control
        self.status = ""  # set by the final (non-1xx) response headers
        self.content_type = ""
        self.body = b""


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    length = len(payload)
    return FRAME_HEADER.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


def _setting(code: int, value: int) -> bytes:
    return code.to_bytes(2, "big") + value.to_bytes(4, "big")


class H2Client:
    """One HTTP/2 client connection for DoH: requests out, responses in, sans-IO."""

    def __init__(self, authority: str, path: str) -> None:
        self.authority = authority
        self.path = path
        self.settled = False  # the server's first SETTINGS arrived
        self.max_streams = DEFAULT_MAX_STREAMS
        self.goaway = False  # the server sent GOAWAY: no new streams
        self.broken = False
        self.streams: dict[int, _Stream] = {}  # ours, open (waiting for a response)
        self._next_id = 1
        self._send_window = DEFAULT_WINDOW  # the connection's, towards the server
        self._initial_window = DEFAULT_WINDOW  # each new stream's, towards the server
        self._max_frame_out = DEFAULT_FRAME
        self._received = 0  # octets received since the last connection WINDOW_UPDATE
        self._encoder = StaticHeaderEncoder()
        self._decoder = hpack.Decoder()
        self._decoded: dict[bytes, tuple[object, int, int, list[tuple[bytes, bytes]]]] = {}
        self._blocks: dict[int, bytes] = {}  # HEADERS frame payload by body length
        self._buffer = b""  # the start of a frame not complete yet
        self._continuing: tuple[int, int, list[bytes]] | None = None  # stream, flags, block
        settings = _setting(Setting.ENABLE_PUSH, 0) + _setting(
            Setting.INITIAL_WINDOW_SIZE, STREAM_WINDOW
        )
        self._out: list[bytes] = [
            PREFACE,
            frame(Frame.SETTINGS, 0, 0, settings),
            frame(Frame.WINDOW_UPDATE, 0, 0, (MAX_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big")),
        ]

    # -- sending ------------------------------------------------------------------------

    @property
    def exhausted(self) -> bool:
        """Every stream ID is used: the connection must be replaced."""
        return self._next_id > LAST_STREAM_ID

    def request(self, body: bytes) -> int:
        """Open a stream POSTing ``body``; returns its ID. The caller keeps below
        :attr:`max_streams` and stops at :attr:`exhausted` or :attr:`goaway`."""
        stream_id = self._next_id
        self._next_id += 2
        length = len(body)
        block = self._blocks.get(length)
        if block is None or self._encoder.pending_update:
            # A table size update starts this block only: such a block is not kept.
            cache = not self._encoder.pending_update
            block = self._encoder.encode(request_headers(self.authority, self.path, length))
            if cache:
                if len(self._blocks) > 64:
                    self._blocks.clear()
                self._blocks[length] = block
        stream = _Stream(self._initial_window)
        self.streams[stream_id] = stream
        self._out.append(frame(Frame.HEADERS, END_HEADERS, stream_id, block))
        if (
            length <= stream.send_window
            and length <= self._send_window
            and length <= self._max_frame_out
        ):
            self._out.append(frame(Frame.DATA, END_STREAM, stream_id, body))
            stream.send_window -= length
            self._send_window -= length
        else:
            self._send_body(stream_id, stream, body)
        return stream_id

    def _send_body(self, stream_id: int, stream: _Stream, body: bytes) -> None:
        """Send what flow control allows of ``body``; keep the rest in ``unsent``."""
        while body:
            allowed = min(stream.send_window, self._send_window, self._max_frame_out)
            if allowed <= 0:
                break
            chunk, body = body[:allowed], body[allowed:]
            self._out.append(frame(Frame.DATA, 0 if body else END_STREAM, stream_id, chunk))
            stream.send_window -= len(chunk)
            self._send_window -= len(chunk)
        stream.unsent = body

    def reset(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        """Cancel a stream of ours (RST_STREAM); its response is ignored from now on."""
        if self.streams.pop(stream_id, None) is not None:
            self._out.append(frame(Frame.RST_STREAM, 0, stream_id, code.to_bytes(4, "big")))

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR) -> None:
        """Say GOAWAY (we accept no stream of the server's, so the last is 0)."""
        self._out.append(frame(Frame.GOAWAY, 0, 0, bytes(4) + code.to_bytes(4, "big")))

    def data_to_send(self) -> bytes:
        """Everything queued for the server since the last call."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    # -- receiving ----------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        """The events in ``data`` (and in what was left over from the last call)."""
        if self.broken:
            return []
        events: list[Event] = []
        buffer = self._buffer + data if self._buffer else data
        try:
            pos = read_frames(buffer, 0, self._frame, events)
        except Http2Error as exc:
            self.broken = True
            self._buffer = b""
            self.close(ErrorCode(exc.code))
            events.append(ConnectionBroken(str(exc)))
            return events
        except hpack.HPACKError as exc:
            self.broken = True
            self._buffer = b""
            self.close(ErrorCode.COMPRESSION_ERROR)
            events.append(ConnectionBroken(f"header block: {exc}"))
            return events
        self._buffer = buffer[pos:] if pos < len(buffer) else b""
        if self._received >= WINDOW_REFILL:
            self._out.append(frame(Frame.WINDOW_UPDATE, 0, 0, self._received.to_bytes(4, "big")))
            self._received = 0
        return events

    def _frame(
        self, kind: int, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if self._continuing is not None and kind != Frame.CONTINUATION:
            raise Http2Error(ErrorCode.PROTOCOL_ERROR, "header block interrupted")
        if kind == Frame.DATA:
            self._data(flags, stream_id, payload, events)
        elif kind == Frame.HEADERS:
            if flags & PADDED:
                payload = unpad(payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self._headers(stream_id, flags, payload, events)
            else:
                self._continuing = (stream_id, flags, [payload])
        elif kind == Frame.CONTINUATION:
            if self._continuing is None or self._continuing[0] != stream_id:
                raise Http2Error(ErrorCode.PROTOCOL_ERROR, "CONTINUATION out of place")
            self._continuing[2].append(payload)
            if sum(map(len, self._continuing[2])) > MAX_HEADER_BLOCK:
                raise Http2Error(ErrorCode.PROTOCOL_ERROR, "header block too long")
            if flags & END_HEADERS:
                stream_id, first_flags, parts = self._continuing
                self._continuing = None
                self._headers(stream_id, first_flags, b"".join(parts), events)
        elif kind == Frame.RST_STREAM:
            if len(payload) != 4:
                raise Http2Error(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
            if self.streams.pop(stream_id, None) is not None:
                events.append(StreamReset(stream_id, int.from_bytes(payload, "big")))
        elif kind == Frame.SETTINGS:
            if stream_id:
                raise Http2Error(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
            if not flags & ACK:
                self._settings(payload, events)
        elif kind == Frame.PING:
            if len(payload) != 8:
                raise Http2Error(ErrorCode.FRAME_SIZE_ERROR, "PING of the wrong size")
            if not flags & ACK:
                self._out.append(frame(Frame.PING, ACK, 0, payload))
        elif kind == Frame.GOAWAY:
            self._goaway(payload, events)
        elif kind == Frame.WINDOW_UPDATE:
            self._window_update(stream_id, payload, events)
        elif kind == Frame.PUSH_PROMISE:
            raise Http2Error(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE though push is off")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §5.5).

    def _data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise Http2Error(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        self._received += len(payload)
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # reset or forgotten by us: its window is the server's business
        if flags & PADDED:
            payload = unpad(payload)
        body = stream.body + payload if stream.body else payload
        if len(body) > MAX_BODY:
            self.reset(stream_id)
            events.append(StreamFailed(stream_id, "answer larger than a DNS message"))
            return
        stream.body = body
        if flags & END_STREAM:
            del self.streams[stream_id]
            events.append(Response(stream_id, stream.status, stream.content_type, body))

    def _headers(self, stream_id: int, flags: int, block: bytes, events: list[Event]) -> None:
        headers = self._decode(block)
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not stream.status:
            status = content_type = length = b""
            for name, value in headers:
                if name == b":status":
                    status = value
                elif name == b"content-type":
                    content_type = value
                elif name == b"content-length":
                    length = value
            if status[:1] == b"1" and not flags & END_STREAM:
                return  # informational (1xx): the response follows
            stream.status = status.decode("latin-1") or "?"
            stream.content_type = content_type.decode("latin-1")
            if length.isdigit() and int(length) > MAX_BODY:
                self.reset(stream_id)
                events.append(StreamFailed(stream_id, "answer larger than a DNS message"))
                return
        if flags & END_STREAM:  # no body, or trailers after it
            del self.streams[stream_id]
            events.append(Response(stream_id, stream.status, stream.content_type, stream.body))

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The headers of ``block``, whatever its stream: the dynamic table must follow
        the server's.

        A server sends nearly the same block every time (the same status and type,
        a few lengths), and once its entries are in the table a block that adds none
        means the same as long as the table does not change: such blocks are decoded
        once and kept with the table state they were decoded in (its newest entry,
        held, compared by identity; its length; its size limit).
        """
        table = self._decoder.header_table
        entries = table.dynamic_entries
        state = (entries[0] if entries else None, len(entries), table.maxsize)
        kept = self._decoded.get(block)
        if kept is not None:
            newest, count, maxsize, headers = kept
            if newest is state[0] and count == state[1] and maxsize == state[2]:
                return headers
        decoded = self._decoder.decode(block, raw=True)
        headers = [(bytes(name), bytes(value)) for name, value in decoded]
        after = (entries[0] if entries else None, len(entries), table.maxsize)
        if after[0] is state[0] and after[1:] == state[1:]:
            if len(self._decoded) >= MAX_DECODED:
                self._decoded.clear()
            self._decoded[block] = (*state, headers)
        return headers

    def _settings(self, payload: bytes, events: list[Event]) -> None:
        if len(payload) % 6:
            raise Http2Error(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        for offset in range(0, len(payload), 6):
            code = int.from_bytes(payload[offset : offset + 2], "big")
            value = int.from_bytes(payload[offset + 2 : offset + 6], "big")
            if code == Setting.HEADER_TABLE_SIZE:
                self._encoder.header_table_size = value
            elif code == Setting.MAX_CONCURRENT_STREAMS:
                self.max_streams = value
            elif code == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise Http2Error(ErrorCode.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._initial_window
                self._initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif code == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= 2**24 - 1:
                    raise Http2Error(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self._max_frame_out = value
        self._out.append(frame(Frame.SETTINGS, ACK, 0))
        self.settled = True
        self._send_unsent()
        events.append(SettingsChanged(self.max_streams))

    def _goaway(self, payload: bytes, events: list[Event]) -> None:
        if len(payload) < 8:
            raise Http2Error(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY too short")
        last = int.from_bytes(payload[:4], "big") & LAST_STREAM_ID
        lost = tuple(sorted(sid for sid in self.streams if sid > last))
        for stream_id in lost:
            del self.streams[stream_id]
        self.goaway = True
        events.append(GoAway(last, int.from_bytes(payload[4:8], "big"), lost))

    def _window_update(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise Http2Error(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = int.from_bytes(payload, "big") & LAST_STREAM_ID
        if not stream_id:
            if not increment:
                raise Http2Error(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise Http2Error(ErrorCode.FLOW_CONTROL_ERROR, "connection window overflow")
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            if not increment or stream.send_window + increment > MAX_WINDOW:
                self.reset(stream_id, ErrorCode.FLOW_CONTROL_ERROR)
                events.append(StreamFailed(stream_id, "bad WINDOW_UPDATE on the stream"))
                return
            stream.send_window += increment
        self._send_unsent()

    def _send_unsent(self) -> None:
        for stream_id, stream in list(self.streams.items()):
            if stream.unsent:
                self._send_body(stream_id, stream, stream.unsent)


def unpad(payload: bytes) -> bytes:
    """The content of a PADDED frame (RFC 9113 §6.1)."""
    if not payload or payload[0] >= len(payload):
        raise Http2Error(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


def read_frames(
    buffer: bytes,
    pos: int,
    handle: Callable[[int, int, int, bytes, list[E]], None],
    events: list[E],
) -> int:
    """Hand every whole frame of ``buffer`` from ``pos`` on to ``handle(kind, flags,
    stream_id, payload, events)``; return where the first incomplete frame starts. Both ends
    advertise no SETTINGS_MAX_FRAME_SIZE above the default, so a longer frame is a
    FRAME_SIZE_ERROR (RFC 9113 §4.2)."""
    size = len(buffer)
    unpack = FRAME_HEADER.unpack_from
    while size - pos >= 9:
        high, low, kind, flags, stream_id = unpack(buffer, pos)
        length = high << 16 | low
        if length > DEFAULT_FRAME:
            raise Http2Error(ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} octets")
        end = pos + 9 + length
        if end > size:
            break
        handle(kind, flags, stream_id & LAST_STREAM_ID, buffer[pos + 9 : end], events)
        pos = end
    return pos
