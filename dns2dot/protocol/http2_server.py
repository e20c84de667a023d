"""The server side of HTTP/2 (RFC 9113) as a DoH listener uses it, sans-IO.

A DoH client asks one thing of an HTTP/2 server: take a GET or POST on a fresh stream
and send one response back, many at once on one connection. :class:`H2Server` does
that: bytes in (:meth:`H2Server.receive`, which returns :class:`Request` events),
responses out (:meth:`H2Server.answer`, :meth:`H2Server.reject`,
:meth:`H2Server.data_to_send`); no socket, no clock. The frame layer (frame types,
error codes, :func:`~dns2dot.protocol.http2.frame`) is shared with the client in
dns2dot/protocol/http2.py.

What it keeps: the preface and SETTINGS (it announces the stream limit, its window and
``MAX_HEADER_LIST_SIZE``); HEADERS and CONTINUATION decoded by ``hpack`` in order (a
block that leaves the dynamic table alone is decoded once and kept by its bytes:
clients repeat the same blocks); DATA with flow control both ways; RST_STREAM, PING,
GOAWAY. Streams beyond the limit are refused (REFUSED_STREAM); a body longer than a
DNS message is answered 413 at once. A broken connection (PROTOCOL_ERROR,
FRAME_SIZE_ERROR, FLOW_CONTROL_ERROR, COMPRESSION_ERROR) queues a GOAWAY and ends.

Responses are encoded without the dynamic table (static-table references and literals
"without indexing", RFC 7541 §6.1-6.2.2), so each is independent of the others; the
header fields and the body of a response go out together, one chunk per response in
:meth:`H2Server.data_to_send`, so that the I/O shell can put each in a TLS record of
its own. See docs/ARCHITECTURE.md, "protocol".
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import hpack

from dns2dot.protocol.doh import hpack_integer
from dns2dot.protocol.errors import Http2Error
from dns2dot.protocol.http2 import (
    ACK,
    DEFAULT_FRAME,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    LAST_STREAM_ID,
    MAX_DECODED,
    MAX_WINDOW,
    PADDED,
    PREFACE,
    PRIORITY_FLAG,
    ConnectionBroken,
    ErrorCode,
    Frame,
    Setting,
    frame,
    read_frames,
    unpad,
)
from dns2dot.protocol.http2_hpack import read_block

MAX_STREAMS = 100  # concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS)
MAX_HEADER_LIST = 16384  # octets of header fields per request (SETTINGS_MAX_HEADER_LIST_SIZE)
MAX_BODY = 65535  # a DNS message is at most this long
# Each stream's receive window: the largest DNS message and then some, so that an
# oversized body shows itself (413) instead of stalling on flow control.
STREAM_WINDOW = 2 * (MAX_BODY + 1)
WINDOW_REFILL = 2**30  # the connection's receive window is topped up after this many octets
MAX_HEADER_BLOCK = 4 * MAX_HEADER_LIST  # a request's header block, CONTINUATION included
MAX_CONTINUATIONS = 64  # CONTINUATION frames in one header block (empty ones cost too)
SERVER = b"dns2dot"
_DNS_TYPE = b"application/dns-message"

# RFC 7541 Appendix A: the static entries a response uses.
_STATUS_INDEX = {200: 8, 204: 9, 206: 10, 304: 11, 400: 12, 404: 13, 500: 14}
_NAME_INDEX = {
    b":status": 8,
    b"allow": 22,
    b"cache-control": 24,
    b"content-length": 28,
    b"content-type": 31,
    b"server": 54,
}


def _literal(name: bytes, value: bytes) -> bytes:
    """A field literal without indexing, its name from the static table (RFC 7541 §6.2.2)."""
    return hpack_integer(_NAME_INDEX[name], 4, 0x00) + hpack_integer(len(value), 7, 0) + value


def encode_response(status: int, fields: list[tuple[bytes, bytes]]) -> bytes:
    """A response's header block that neither uses nor changes the dynamic table."""
    index = _STATUS_INDEX.get(status)
    block = hpack_integer(index, 7, 0x80) if index else _literal(b":status", b"%d" % status)
    return block + b"".join(_literal(name, value) for name, value in fields)


# :status 200, content-type, server: the start of every answer's block.
_ANSWER_START = encode_response(200, [(b"content-type", _DNS_TYPE), (b"server", SERVER)])
_LENGTH = hpack_integer(_NAME_INDEX[b"content-length"], 4, 0x00)  # then the value
_CACHE = hpack_integer(_NAME_INDEX[b"cache-control"], 4, 0x00)


class Request(NamedTuple):
    """A complete request on a stream: what :func:`dns2dot.protocol.http.dns_request`
    judges."""

    stream_id: int
    method: str
    path: str
    content_type: str | None
    body: bytes


class BodyTooLarge(NamedTuple):
    """A request body longer than a DNS message; answer 413 (:meth:`H2Server.reject`)."""

    stream_id: int


class GoAwayReceived(NamedTuple):
    """The client opens no more streams; the connection ends once the open ones are
    answered."""

    error_code: int


Event = Request | BodyTooLarge | GoAwayReceived | ConnectionBroken


class H2State(enum.Enum):
    """Where a server connection is; changed only by ``H2Server._to``."""

    PREFACE = "preface"  # waiting for the client's preface and first SETTINGS
    OPEN = "open"
    DRAINING = "draining"  # a GOAWAY either way: no new streams, the open ones finish
    BROKEN = "broken"  # a connection error: a GOAWAY is queued, nothing more is read


PREFACE_STATE, OPEN, DRAINING, BROKEN = H2State


class StreamState(enum.Enum):
    """Where one request is; a stream that is done leaves ``H2Server.streams``."""

    RECEIVING = "receiving"  # headers read, the body may follow
    WAITING = "waiting"  # the request is complete; its response is owed
    SENDING = "sending"  # the response started; flow control holds the rest of its body
    TOO_LARGE = "too large"  # the body passed MAX_BODY: the rest is dropped, 413 owed
    DISCARDING = "discarding"  # answered before its request ended: the rest is dropped


RECEIVING, WAITING, SENDING, TOO_LARGE, DISCARDING = StreamState


class _Stream:
    """One client stream: its request so far, then what is left of its response."""

    __slots__ = (
        "body",
        "content_type",
        "method",
        "path",
        "received",
        "send_window",
        "state",
        "unsent",
    )

    def __init__(self, send_window: int) -> None:
        self.state = RECEIVING
        self.method = ""
        self.path = ""
        self.content_type: str | None = None
        self.body = b""
        self.received = 0  # octets of DATA, for the stream's receive window
        self.send_window = send_window
        self.unsent = b""  # response body held back by flow control


class H2Server:
    """One HTTP/2 server connection for DoH: requests in, responses out, sans-IO."""

    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        self.state = PREFACE_STATE
        self.max_streams = max_streams
        self.streams: dict[int, _Stream] = {}
        self.highest = 0  # the highest stream ID the client opened
        self.goaway_sent: int | None = None  # the last stream ID of our GOAWAY
        self._buffer = b""
        self._send_window = DEFAULT_WINDOW  # the connection's, towards the client
        self._initial_window = DEFAULT_WINDOW  # each new stream's, towards the client
        self._max_frame_out = DEFAULT_FRAME
        self._received = 0  # octets since the last connection WINDOW_UPDATE of ours
        self._table_update = b""  # a dynamic table size update owed (RFC 7541 §4.2)
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        self._decoded: dict[bytes, tuple[object, int, int, list[tuple[bytes, bytes]]]] = {}
        self._continuing: tuple[int, int, list[bytes]] | None = None  # stream, flags, block
        self._control: list[bytes] = []  # frames not tied to a response
        self._responses: list[bytes] = []  # one chunk per response (or its remainder)
        settings = (
            Setting.MAX_CONCURRENT_STREAMS.to_bytes(2, "big")
            + max_streams.to_bytes(4, "big")
            + Setting.INITIAL_WINDOW_SIZE.to_bytes(2, "big")
            + STREAM_WINDOW.to_bytes(4, "big")
            + Setting.MAX_HEADER_LIST_SIZE.to_bytes(2, "big")
            + MAX_HEADER_LIST.to_bytes(4, "big")
        )
        self._control += [
            frame(Frame.SETTINGS, 0, 0, settings),
            frame(Frame.WINDOW_UPDATE, 0, 0, (MAX_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big")),
        ]

    def _to(self, state: H2State) -> None:
        if self.state is not BROKEN:
            self.state = state

    @property
    def finished(self) -> bool:
        """Draining or broken, with no response owed: the connection may end."""
        return self.state is BROKEN or (self.state is DRAINING and not self.streams)

    # -- sending ------------------------------------------------------------------------

    def answer(self, stream_id: int, body: bytes, cache_control: bytes) -> bool:
        """Respond 200 ``application/dns-message`` with ``body``; False (and nothing
        sent) if the stream is not waiting for a response (reset, or answered)."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.state is not WAITING or self.state is BROKEN:
            return False
        length = b"%d" % len(body)
        block = (
            self._table_update
            + _ANSWER_START
            + _LENGTH
            + hpack_integer(len(length), 7, 0)
            + length
            + _CACHE
            + hpack_integer(len(cache_control), 7, 0)
            + cache_control
        )
        self._table_update = b""
        self._respond(stream_id, stream, block, body)
        return True

    def reject(
        self, stream_id: int, status: int, fields: list[tuple[bytes, bytes]], body: bytes
    ) -> bool:
        """Respond ``status`` with ``fields`` (lower-case names from the static table)
        and ``body``; False if the stream takes no response. A request still arriving
        is read to its end and dropped (a reset would make some clients, curl among
        them, report an error instead of the response)."""
        stream = self.streams.get(stream_id)
        if (
            stream is None
            or stream.state is SENDING
            or stream.state is DISCARDING
            or self.state is BROKEN
        ):
            return False
        receiving = stream.state is RECEIVING or stream.state is TOO_LARGE
        block = self._table_update + encode_response(status, fields)
        self._table_update = b""
        self._respond(stream_id, stream, block, body)
        if receiving and stream_id not in self.streams:
            stream.state = DISCARDING
            self.streams[stream_id] = stream
        return True

    def _respond(self, stream_id: int, stream: _Stream, block: bytes, body: bytes) -> None:
        length = len(body)
        headers = frame(Frame.HEADERS, END_HEADERS, stream_id, block)
        if (
            length <= stream.send_window
            and length <= self._send_window
            and length <= self._max_frame_out
        ):
            stream.send_window -= length
            self._send_window -= length
            self._responses.append(headers + frame(Frame.DATA, END_STREAM, stream_id, body))
            del self.streams[stream_id]
            return
        stream.state = SENDING
        self._responses.append(headers + self._send_body(stream_id, stream, body))

    def _send_body(self, stream_id: int, stream: _Stream, body: bytes) -> bytes:
        """The DATA frames flow control allows of ``body``; the rest waits in
        ``unsent``. A stream whose body is all out is done."""
        out = []
        while body:
            allowed = min(stream.send_window, self._send_window, self._max_frame_out)
            if allowed <= 0:
                break
            chunk, body = body[:allowed], body[allowed:]
            out.append(frame(Frame.DATA, 0 if body else END_STREAM, stream_id, chunk))
            stream.send_window -= len(chunk)
            self._send_window -= len(chunk)
        stream.unsent = body
        if not body:
            self.streams.pop(stream_id, None)
        return b"".join(out)

    def _send_unsent(self) -> None:
        for stream_id, stream in list(self.streams.items()):
            if stream.state is SENDING and stream.unsent:
                chunk = self._send_body(stream_id, stream, stream.unsent)
                if chunk:
                    self._responses.append(chunk)

    def shutdown(self) -> None:
        """GOAWAY (NO_ERROR): no new streams; those open are still answered (§6.8)."""
        if self.goaway_sent is not None or self.state is BROKEN:
            return
        self.goaway_sent = self.highest
        self._control.append(self._goaway_frame(ErrorCode.NO_ERROR))
        self._to(DRAINING)

    def _goaway_frame(self, code: ErrorCode) -> bytes:
        return frame(Frame.GOAWAY, 0, 0, self.highest.to_bytes(4, "big") + code.to_bytes(4, "big"))

    def data_to_send(self) -> list[bytes]:
        """What is queued for the client, one chunk per response (the frames that go
        with no response ride with the first)."""
        responses = self._responses
        control = self._control
        if not control:
            if not responses:
                return []
            self._responses = []
            return responses
        head = b"".join(control)
        control.clear()
        if not responses:
            return [head]
        self._responses = []
        responses[0] = head + responses[0]
        return responses

    # -- receiving ----------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        """The events in ``data`` (and in what was left over from the last call)."""
        if self.state is BROKEN:
            return []
        events: list[Event] = []
        buffer = self._buffer + data if self._buffer else data
        pos, size = 0, len(buffer)
        try:
            if self.state is PREFACE_STATE:
                if size < len(PREFACE) + 9:
                    if not PREFACE.startswith(buffer[: len(PREFACE)]):
                        raise Http2Error(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 preface")
                    self._buffer = buffer
                    return events
                if buffer[: len(PREFACE)] != PREFACE:
                    raise Http2Error(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 preface")
                if buffer[len(PREFACE) + 3] != Frame.SETTINGS:
                    raise Http2Error(ErrorCode.PROTOCOL_ERROR, "no SETTINGS after the preface")
                pos = len(PREFACE)
                self._to(OPEN)
            pos = read_frames(buffer, pos, self._frame, events)
        except Http2Error as exc:
            return self._break(ErrorCode(exc.code), str(exc), events)
        except hpack.OversizedHeaderListError:
            return self._break(ErrorCode.PROTOCOL_ERROR, "header list too large", events)
        except (hpack.HPACKError, IndexError, ValueError) as exc:
            return self._break(ErrorCode.COMPRESSION_ERROR, f"header block: {exc}", events)
        self._buffer = buffer[pos:] if pos < size else b""
        if self._received >= WINDOW_REFILL:
            self._control.append(
                frame(Frame.WINDOW_UPDATE, 0, 0, self._received.to_bytes(4, "big"))
            )
            self._received = 0
        return events

    def _break(self, code: ErrorCode, reason: str, events: list[Event]) -> list[Event]:
        """A connection error: GOAWAY with ``code``; the requests read are dropped."""
        if self.state is not PREFACE_STATE:
            self._control.append(self._goaway_frame(code))
        self._to(BROKEN)
        self._buffer = b""
        self._responses.clear()
        self.streams.clear()
        return [ConnectionBroken(reason)]

    def _frame(
        self, kind: int, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if self._continuing is not None and kind != Frame.CONTINUATION:
            raise Http2Error(ErrorCode.PROTOCOL_ERROR, "header block interrupted")
        if kind == Frame.DATA:
            self._data(flags, stream_id, payload, events)
        elif kind == Frame.HEADERS:
            if not stream_id:
                raise Http2Error(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
            if flags & PADDED:
                payload = unpad(payload)
            if flags & PRIORITY_FLAG:
                if len(payload) < 5:
                    raise Http2Error(ErrorCode.FRAME_SIZE_ERROR, "HEADERS priority cut short")
                payload = payload[5:]
            if flags & END_HEADERS:
                self._headers(stream_id, flags, payload, events)
            else:
                self._continuing = (stream_id, flags, [payload])
        elif kind == Frame.CONTINUATION:
            if self._continuing is None or self._continuing[0] != stream_id:
                raise Http2Error(ErrorCode.PROTOCOL_ERROR, "CONTINUATION out of place")
            parts = self._continuing[2]
            parts.append(payload)
            if len(parts) > MAX_CONTINUATIONS or sum(map(len, parts)) > MAX_HEADER_BLOCK:
                raise Http2Error(ErrorCode.PROTOCOL_ERROR, "header block too long")
            if flags & END_HEADERS:
                stream_id, first_flags, parts = self._continuing
                self._continuing = None
                self._headers(stream_id, first_flags, b"".join(parts), events)
        elif kind == Frame.RST_STREAM:
            if not stream_id or stream_id > self.highest:
                raise Http2Error(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            if len(payload) != 4:
                raise Http2Error(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
            self.streams.pop(stream_id, None)
        elif kind == Frame.SETTINGS:
            if stream_id:
                raise Http2Error(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
            if flags & ACK:
                if payload:
                    raise Http2Error(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            else:
                self._settings(payload)
        elif kind == Frame.PING:
            if stream_id:
                raise Http2Error(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise Http2Error(ErrorCode.FRAME_SIZE_ERROR, "PING of the wrong size")
            if not flags & ACK:
                self._control.append(frame(Frame.PING, ACK, 0, payload))
        elif kind == Frame.GOAWAY:
            if stream_id:
                raise Http2Error(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise Http2Error(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY too short")
            if self.state is not DRAINING:
                self._to(DRAINING)
                events.append(GoAwayReceived(int.from_bytes(payload[4:8], "big")))
        elif kind == Frame.WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == Frame.PUSH_PROMISE:
            raise Http2Error(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        elif kind == Frame.PRIORITY and not stream_id:
            raise Http2Error(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        # Unknown frame types are ignored (RFC 9113 §5.5).

    def _data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise Http2Error(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        if stream_id > self.highest:
            raise Http2Error(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream")
        self._received += len(payload)
        if self._received > MAX_WINDOW:
            raise Http2Error(ErrorCode.FLOW_CONTROL_ERROR, "connection window overrun")
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # reset, refused or answered: its bytes are dropped
        stream.received += len(payload)
        if stream.received > STREAM_WINDOW:
            self._reset(stream_id, ErrorCode.FLOW_CONTROL_ERROR)
            return
        if stream.state is not RECEIVING:
            if flags & END_STREAM:
                self._ended_early(stream_id, stream)
            return
        if flags & PADDED:
            payload = unpad(payload)
        body = stream.body + payload if stream.body else payload
        if len(body) > MAX_BODY:
            stream.body = b""
            stream.state = TOO_LARGE
            events.append(BodyTooLarge(stream_id))
            return
        stream.body = body
        if flags & END_STREAM:
            self._complete(stream_id, stream, events)

    def _ended_early(self, stream_id: int, stream: _Stream) -> None:
        """The end of a request whose body was too large: done if answered already,
        else the 413 is still owed."""
        if stream.state is DISCARDING:
            del self.streams[stream_id]
        elif stream.state is TOO_LARGE:
            stream.state = WAITING

    def _complete(self, stream_id: int, stream: _Stream, events: list[Event]) -> None:
        stream.state = WAITING
        body, stream.body = stream.body, b""
        events.append(Request(stream_id, stream.method, stream.path, stream.content_type, body))

    def _reset(self, stream_id: int, code: ErrorCode) -> None:
        self.streams.pop(stream_id, None)
        self._control.append(frame(Frame.RST_STREAM, 0, stream_id, code.to_bytes(4, "big")))

    def _headers(self, stream_id: int, flags: int, block: bytes, events: list[Event]) -> None:
        headers = self._decode(block)  # whatever the stream: the table must stay in step
        if not stream_id & 1:
            raise Http2Error(ErrorCode.PROTOCOL_ERROR, "a client stream with an even ID")
        if stream_id <= self.highest:
            stream = self.streams.get(stream_id)
            if stream is not None and stream.state is not WAITING:
                if not flags & END_STREAM:
                    raise Http2Error(ErrorCode.PROTOCOL_ERROR, "trailers without END_STREAM")
                if stream.state is RECEIVING:
                    self._complete(stream_id, stream, events)  # trailers end the request
                else:
                    self._ended_early(stream_id, stream)
            return  # a stream we refused, reset or answered
        self.highest = stream_id
        if self.state is DRAINING or len(self.streams) >= self.max_streams:
            self._reset(stream_id, ErrorCode.REFUSED_STREAM)
            return
        stream = _Stream(self._initial_window)
        for name, value in headers:
            if name == b":method":
                stream.method = value.decode("latin-1")
            elif name == b":path":
                stream.path = value.decode("latin-1")
            elif name == b"content-type":
                stream.content_type = value.decode("latin-1")
        self.streams[stream_id] = stream
        if flags & END_STREAM:
            self._complete(stream_id, stream, events)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The header fields of ``block``; a block that adds nothing to the dynamic
        table means the same while the table is unchanged, so it is decoded once and
        kept with that table state (its newest entry, compared by identity; its
        length; its size limit), as :class:`~dns2dot.protocol.http2.H2Client` does.
        Such a block is read by :func:`~dns2dot.protocol.http2_hpack.read_block`; the
        others by ``hpack.Decoder``, which keeps the table."""
        table = self._decoder.header_table
        entries = table.dynamic_entries
        state = (entries[0] if entries else None, len(entries), table.maxsize)
        kept = self._decoded.get(block)
        if kept is not None:
            newest, count, maxsize, headers = kept
            if newest is state[0] and count == state[1] and maxsize == state[2]:
                return headers
        fast = read_block(block, table, MAX_HEADER_LIST)
        if fast is not None:
            headers = fast
            after = state
        else:
            decoded = self._decoder.decode(block, raw=True)
            headers = [(bytes(name), bytes(value)) for name, value in decoded]
            after = (entries[0] if entries else None, len(entries), table.maxsize)
        if after[0] is state[0] and after[1:] == state[1:]:
            if len(self._decoded) >= MAX_DECODED:
                self._decoded.clear()
            self._decoded[block] = (*state, headers)
        return headers

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise Http2Error(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        for offset in range(0, len(payload), 6):
            code = int.from_bytes(payload[offset : offset + 2], "big")
            value = int.from_bytes(payload[offset + 2 : offset + 6], "big")
            if code == Setting.HEADER_TABLE_SIZE:
                # Our blocks use no dynamic table; a decoder that shrank its table
                # still expects the size update at the start of the next block.
                self._table_update = hpack_integer(min(value, 4096), 5, 0x20)
            elif code == Setting.ENABLE_PUSH:
                if value > 1:
                    raise Http2Error(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1")
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
        self._control.append(frame(Frame.SETTINGS, ACK, 0))
        self._send_unsent()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
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
            if stream_id > self.highest:
                raise Http2Error(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            if not increment:
                self._reset(stream_id, ErrorCode.PROTOCOL_ERROR)
                return
            if stream.send_window + increment > MAX_WINDOW:
                self._reset(stream_id, ErrorCode.FLOW_CONTROL_ERROR)
                return
            stream.send_window += increment
        self._send_unsent()
