"""The HTTP/2 server core of the DoH listener (dns2dot/protocol/http2_server.py), bytes only.

Why: the listener's HTTP/2 is our own sans-IO code, so every frame type, every limit
and every connection error is proved here with bytes alone, against h2 (a complete
HTTP/2 implementation) as the reference client; hypothesis feeds it arbitrary and
mutated byte streams, which it must survive without raising and without ever
answering a stream twice.
"""

from __future__ import annotations

import itertools
import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
from hpack import NeverIndexedHeaderTuple
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dns2dot.protocol.http2 import PREFACE, ConnectionBroken, ErrorCode, Frame, frame
from dns2dot.protocol.http2_hpack import huffman_decode, read_block
from dns2dot.protocol.http2_server import (
    MAX_CONTINUATIONS,
    MAX_HEADER_LIST,
    MAX_STREAMS,
    BodyTooLarge,
    GoAwayReceived,
    H2Server,
    Request,
    encode_response,
)

CT = b"application/dns-message"
EMPTY_SETTINGS = frame(Frame.SETTINGS, 0, 0)


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of every frame in ``data``."""
    out = []
    pos = 0
    while pos < len(data):
        high, low, kind, flags, stream = struct.unpack_from(">BHBBL", data, pos)
        length = high << 16 | low
        out.append((kind, flags, stream, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    assert pos == len(data)
    return out


def _sent(server: H2Server) -> bytes:
    return b"".join(server.data_to_send())


def _goaway(data: bytes) -> tuple[int, int] | None:
    """(last stream, error code) of the GOAWAY in ``data``, if any."""
    for kind, _, _, payload in _frames(data):
        if kind == Frame.GOAWAY:
            return int.from_bytes(payload[:4], "big"), int.from_bytes(payload[4:8], "big")
    return None


class Pair:
    """An h2 client talking to an H2Server through memory."""

    def __init__(self, local: dict[int, int] | None = None) -> None:
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        if local:
            self.client.local_settings = h2.settings.Settings(client=True, initial_values=local)
        self.client.initiate_connection()
        self.server = H2Server()
        self.events: list[object] = []
        self.client_events: list[h2.events.Event] = []
        self.pump()

    def pump(self) -> list[object]:
        """Move bytes both ways until both are quiet; the server's new events."""
        new: list[object] = []
        for _ in range(20):
            up = self.client.data_to_send()
            if up:
                new += self.server.receive(up)
            down = _sent(self.server)
            if down:
                self.client_events += self.client.receive_data(down)
            if not up and not down:
                break
        self.events += new
        return new

    def get(self, path: str = "/dns-query?dns=AAABAAABAAAAAAAAAWEAAAEAAQ", **kw: bool) -> int:
        stream_id: int = self.client.get_next_available_stream_id()
        self.client.send_headers(
            stream_id,
            [(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", path)],
            end_stream=kw.get("end_stream", True),
        )
        return stream_id

    def post(self, body: bytes, split: int = 0) -> int:
        stream_id: int = self.client.get_next_available_stream_id()
        self.client.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "x"),
                (":path", "/dns-query"),
                ("content-type", CT.decode()),
                ("content-length", str(len(body))),
            ],
        )
        cut = split or 16384
        pieces = [body[i : i + cut] for i in range(0, len(body), cut)]
        for i, piece in enumerate(pieces):
            self.client.send_data(stream_id, piece, end_stream=i == len(pieces) - 1)
        return stream_id

    def responses(self) -> dict[int, tuple[dict[bytes, bytes], bytes, bool]]:
        """(headers, body, ended) of each stream the client got a response on."""
        out: dict[int, tuple[dict[bytes, bytes], bytes, bool]] = {}
        for event in self.client_events:
            if isinstance(event, h2.events.ResponseReceived):
                out[event.stream_id] = (dict(event.headers), b"", False)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.DataReceived):
                headers, body, ended = out[event.stream_id]
                out[event.stream_id] = (headers, body + event.data, ended)
            elif isinstance(event, h2.events.StreamEnded):
                headers, body, _ = out[event.stream_id]
                out[event.stream_id] = (headers, body, True)
        return out


# -- the connection's start -------------------------------------------------------------


def test_settings_announce_the_limits() -> None:
    pair = Pair()
    remote = pair.client.remote_settings
    assert remote.max_concurrent_streams == MAX_STREAMS
    assert remote.max_header_list_size == MAX_HEADER_LIST
    assert remote.initial_window_size > 65535
    assert any(isinstance(e, h2.events.SettingsAcknowledged) for e in pair.client_events)
    assert pair.client.outbound_flow_control_window == 2**31 - 1  # our window, opened
    assert not pair.events


def test_bad_preface_breaks_without_goaway() -> None:
    server = H2Server()
    start = _sent(server)
    assert [k for k, *_ in _frames(start)] == [Frame.SETTINGS, Frame.WINDOW_UPDATE]
    events = server.receive(b"GET / HTTP/1.1\r\n\r\n")
    assert len(events) == 1 and isinstance(events[0], ConnectionBroken)
    assert server.finished
    assert _sent(server) == b""
    assert server.receive(PREFACE + EMPTY_SETTINGS) == []


def test_preface_in_pieces() -> None:
    server = H2Server()
    data = PREFACE + EMPTY_SETTINGS
    for i in range(len(data)):
        assert server.receive(data[i : i + 1]) == []
    assert not server.finished
    assert [k for k, *_ in _frames(_sent(server))][-1] == Frame.SETTINGS  # our ACK


def test_first_frame_must_be_settings() -> None:
    server = H2Server()
    events = server.receive(PREFACE + frame(Frame.PING, 0, 0, bytes(8)))
    assert isinstance(events[0], ConnectionBroken)


# -- requests and responses --------------------------------------------------------------


def test_get_answered_with_static_headers() -> None:
    pair = Pair()
    stream = pair.get()
    (request,) = pair.pump()
    assert request == Request(stream, "GET", "/dns-query?dns=AAABAAABAAAAAAAAAWEAAAEAAQ", None, b"")
    assert pair.server.answer(stream, b"\x00" * 40, b"max-age=300")
    pair.pump()
    headers, body, ended = pair.responses()[stream]
    assert headers[b":status"] == b"200"
    assert headers[b"content-type"] == CT
    assert headers[b"content-length"] == b"40"
    assert headers[b"cache-control"] == b"max-age=300"
    assert body == b"\x00" * 40 and ended
    assert not pair.server.streams


def test_each_answer_is_one_chunk() -> None:
    pair = Pair()
    streams = [pair.get(f"/dns-query?dns=A{i}") for i in range(5)]
    pair.pump()
    for stream in streams:
        pair.server.answer(stream, b"x" * 30, b"no-store")
    chunks = pair.server.data_to_send()
    assert len(chunks) == 5
    for stream, chunk in zip(streams, chunks, strict=True):
        assert [(k, s) for k, _, s, _ in _frames(chunk)] == [
            (Frame.HEADERS, stream),
            (Frame.DATA, stream),
        ]


def test_post_body_in_several_data_frames() -> None:
    pair = Pair()
    stream = pair.post(b"q" * 100, split=30)
    (request,) = pair.pump()
    assert request == Request(stream, "POST", "/dns-query", CT.decode(), b"q" * 100)


def test_a_stream_is_answered_once() -> None:
    pair = Pair()
    stream = pair.get()
    pair.pump()
    assert pair.server.answer(stream, b"a", b"no-store")
    assert not pair.server.answer(stream, b"b", b"no-store")
    assert not pair.server.reject(stream, 400, [], b"no")
    assert not pair.server.answer(99, b"a", b"no-store")


def test_rejections_carry_their_status() -> None:
    pair = Pair()
    for status in (400, 404, 405, 413, 415):
        stream = pair.get()
        pair.pump()
        fields = [(b"cache-control", b"no-store"), (b"content-length", b"3")]
        if status == 405:
            fields.append((b"allow", b"GET, POST"))
        assert pair.server.reject(stream, status, fields, b"no\n")
        pair.pump()
        headers, body, ended = pair.responses()[stream]
        assert headers[b":status"] == str(status).encode()
        assert headers[b"cache-control"] == b"no-store"
        assert body == b"no\n" and ended
        if status == 405:
            assert headers[b"allow"] == b"GET, POST"


def test_encode_response_decodes() -> None:
    block = encode_response(415, [(b"content-type", b"text/plain"), (b"server", b"dns2dot")])
    assert hpack.Decoder().decode(block, raw=True) == [
        (b":status", b"415"),
        (b"content-type", b"text/plain"),
        (b"server", b"dns2dot"),
    ]


def test_dynamic_table_followed_across_requests() -> None:
    """h2 indexes the fields it repeats: later blocks refer to the dynamic table."""
    pair = Pair()
    paths = [f"/dns-query?dns=Q{i % 3}" for i in range(12)]
    streams = [pair.get(path) for path in paths]
    events = pair.pump()
    assert [(e.stream_id, e.path) for e in events] == list(zip(streams, paths, strict=True))  # type: ignore[attr-defined]


def test_trailers_end_the_request() -> None:
    pair = Pair()
    stream = pair.client.get_next_available_stream_id()
    pair.client.send_headers(
        stream, [(":method", "POST"), (":scheme", "https"), (":authority", "x"), (":path", "/q")]
    )
    pair.client.send_data(stream, b"body")
    pair.client.send_headers(stream, [("x-trailer", "1")], end_stream=True)
    (request,) = pair.pump()
    assert request == Request(stream, "POST", "/q", None, b"body")


# -- limits ------------------------------------------------------------------------------


def test_streams_beyond_the_limit_are_refused() -> None:
    pair = Pair()
    streams = [pair.get() for _ in range(MAX_STREAMS)]
    pair.pump()
    assert len(pair.server.streams) == MAX_STREAMS
    # h2 keeps to our limit; bypass it with a raw HEADERS frame for one more.
    block = hpack.Encoder().encode([(":method", "GET"), (":path", "/x")])
    extra = streams[-1] + 2
    events = pair.server.receive(frame(Frame.HEADERS, 0x5, extra, block))
    assert events == []
    resets = [(s, p) for k, _, s, p in _frames(_sent(pair.server)) if k == Frame.RST_STREAM]
    assert resets == [(extra, ErrorCode.REFUSED_STREAM.to_bytes(4, "big"))]
    assert pair.server.answer(streams[0], b"a", b"no-store")  # the others are served


def test_oversized_body_is_413_and_the_rest_dropped() -> None:
    pair = Pair()
    stream = pair.client.get_next_available_stream_id()
    pair.client.send_headers(
        stream, [(":method", "POST"), (":scheme", "https"), (":authority", "x"), (":path", "/q")]
    )
    for _ in range(5):
        pair.client.send_data(stream, bytes(16000))
    assert pair.pump() == [BodyTooLarge(stream)]
    assert pair.server.reject(stream, 413, [(b"cache-control", b"no-store")], b"big\n")
    assert not pair.server.reject(stream, 413, [], b"again")
    pair.pump()
    headers, body, ended = pair.responses()[stream]
    assert headers[b":status"] == b"413" and body == b"big\n" and ended
    assert stream in pair.server.streams  # the rest of its request is read and dropped
    pair.client.send_data(stream, bytes(100), end_stream=True)
    assert pair.pump() == []
    assert not pair.server.streams


def test_oversized_body_ended_before_the_413() -> None:
    pair = Pair()
    stream = pair.post(b"z" * 70000)
    assert pair.pump() == [BodyTooLarge(stream)]
    assert pair.server.reject(stream, 413, [], b"big\n")
    assert not pair.server.streams


def test_header_list_too_large_breaks_the_connection() -> None:
    pair = Pair()
    fields = [(":method", "GET"), ("x", "a" * (MAX_HEADER_LIST + 10))]
    block = hpack.Encoder().encode(fields, huffman=False)
    parts = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    assert len(parts) == 2
    data = frame(Frame.HEADERS, 0, 1, parts[0]) + frame(Frame.CONTINUATION, 0x4, 1, parts[1])
    events = pair.server.receive(data)
    assert isinstance(events[0], ConnectionBroken)
    assert _goaway(_sent(pair.server)) == (0, ErrorCode.PROTOCOL_ERROR)


def test_frame_larger_than_our_limit() -> None:
    pair = Pair()
    events = pair.server.receive(frame(Frame.DATA, 0, 1, bytes(16385)))
    assert isinstance(events[0], ConnectionBroken)
    assert _goaway(_sent(pair.server)) == (0, ErrorCode.FRAME_SIZE_ERROR)


# -- frames, one by one ------------------------------------------------------------------


def test_continuation_joined() -> None:
    pair = Pair()
    block = hpack.Encoder().encode([(":method", "GET"), (":path", "/dns-query?dns=AAAA")])
    data = frame(Frame.HEADERS, 0x1, 1, block[:3]) + frame(Frame.CONTINUATION, 0, 1, block[3:5])
    data += frame(Frame.CONTINUATION, 0x4, 1, block[5:])
    assert pair.server.receive(data) == [Request(1, "GET", "/dns-query?dns=AAAA", None, b"")]


def test_continuation_interrupted_or_out_of_place() -> None:
    block = hpack.Encoder().encode([(":method", "GET")])
    for data in (
        frame(Frame.HEADERS, 0x1, 1, block) + frame(Frame.PING, 0, 0, bytes(8)),
        frame(Frame.CONTINUATION, 0x4, 1, block),
        frame(Frame.HEADERS, 0x1, 1, block) + frame(Frame.CONTINUATION, 0x4, 3, block),
    ):
        pair = Pair()
        assert isinstance(pair.server.receive(data)[0], ConnectionBroken)
        assert _goaway(_sent(pair.server)) == (0, ErrorCode.PROTOCOL_ERROR)


def test_continuation_flood_breaks_the_connection() -> None:
    """Empty CONTINUATION frames add nothing to the block but cost a frame each."""
    pair = Pair()
    data = frame(Frame.HEADERS, 0x1, 1, b"\x82")
    data += b"".join(frame(Frame.CONTINUATION, 0, 1, b"") for _ in range(MAX_CONTINUATIONS + 1))
    assert isinstance(pair.server.receive(data)[0], ConnectionBroken)
    assert _goaway(_sent(pair.server)) == (0, ErrorCode.PROTOCOL_ERROR)


def test_bad_hpack_is_a_compression_error() -> None:
    pair = Pair()
    events = pair.server.receive(frame(Frame.HEADERS, 0x5, 1, b"\xff\xff\xff\xff\x0f"))
    assert isinstance(events[0], ConnectionBroken)
    assert _goaway(_sent(pair.server)) == (0, ErrorCode.COMPRESSION_ERROR)


def test_padded_and_prioritised_headers_and_padded_data() -> None:
    pair = Pair()
    block = hpack.Encoder().encode([(":method", "POST"), (":path", "/q")])
    headers = bytes([2]) + bytes(5) + block + b"\x00\x00"  # pad length, priority, block, pad
    data = bytes([3]) + b"body" + bytes(3)
    events = pair.server.receive(
        frame(Frame.HEADERS, 0x4 | 0x8 | 0x20, 1, headers) + frame(Frame.DATA, 0x1 | 0x8, 1, data)
    )
    assert events == [Request(1, "POST", "/q", None, b"body")]


def test_ping_is_acknowledged() -> None:
    pair = Pair()
    pair.client.ping(b"12345678")
    pair.pump()
    acks = [e for e in pair.client_events if isinstance(e, h2.events.PingAckReceived)]
    assert [a.ping_data for a in acks] == [b"12345678"]


def test_priority_and_unknown_frames_ignored() -> None:
    pair = Pair()
    events = pair.server.receive(frame(Frame.PRIORITY, 0, 1, bytes(5)) + frame(0x42, 0, 0, b"?"))
    assert events == []
    assert not pair.server.finished


def test_client_reset_drops_the_answer() -> None:
    pair = Pair()
    stream = pair.get()
    pair.pump()
    pair.client.reset_stream(stream)
    pair.pump()
    assert not pair.server.answer(stream, b"a", b"no-store")


def test_protocol_errors_break_the_connection() -> None:
    cases = {
        "DATA on stream 0": frame(Frame.DATA, 0, 0, b"junk"),
        "DATA on an idle stream": frame(Frame.DATA, 0, 7, b"junk"),
        "an even stream": frame(Frame.HEADERS, 0x4, 2, b"\x82"),
        "SETTINGS on a stream": frame(Frame.SETTINGS, 0, 1, b""),
        "PUSH_PROMISE": frame(Frame.PUSH_PROMISE, 0x4, 1, bytes(4)),
        "WINDOW_UPDATE of 0": frame(Frame.WINDOW_UPDATE, 0, 0, bytes(4)),
        "RST_STREAM on an idle stream": frame(Frame.RST_STREAM, 0, 9, bytes(4)),
        "PING on a stream": frame(Frame.PING, 0, 1, bytes(8)),
        "ENABLE_PUSH 2": frame(Frame.SETTINGS, 0, 0, b"\x00\x02\x00\x00\x00\x02"),
    }
    for name, data in cases.items():
        pair = Pair()
        events = pair.server.receive(data)
        assert len(events) == 1 and isinstance(events[0], ConnectionBroken), name
        assert _goaway(_sent(pair.server)) == (0, ErrorCode.PROTOCOL_ERROR), name
        assert pair.server.receive(frame(Frame.PING, 0, 0, bytes(8))) == [], name


def test_frame_size_errors() -> None:
    for data in (
        frame(Frame.PING, 0, 0, bytes(7)),
        frame(Frame.SETTINGS, 0, 0, bytes(5)),
        frame(Frame.SETTINGS, 0x1, 0, bytes(6)),
        frame(Frame.WINDOW_UPDATE, 0, 0, bytes(3)),
        frame(Frame.GOAWAY, 0, 0, bytes(4)),
    ):
        pair = Pair()
        assert isinstance(pair.server.receive(data)[0], ConnectionBroken)
        assert _goaway(_sent(pair.server)) == (0, ErrorCode.FRAME_SIZE_ERROR)


def test_flow_control_errors() -> None:
    pair = Pair()
    bad_window = frame(Frame.SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00")
    assert isinstance(pair.server.receive(bad_window)[0], ConnectionBroken)
    assert _goaway(_sent(pair.server)) == (0, ErrorCode.FLOW_CONTROL_ERROR)
    pair = Pair()
    overflow = frame(Frame.WINDOW_UPDATE, 0, 0, (2**31 - 1).to_bytes(4, "big"))
    assert isinstance(pair.server.receive(overflow)[0], ConnectionBroken)
    assert _goaway(_sent(pair.server)) == (0, ErrorCode.FLOW_CONTROL_ERROR)


def test_stream_window_overrun_resets_that_stream() -> None:
    pair = Pair()
    stream = pair.get(end_stream=False)
    pair.pump()
    data = b"".join(frame(Frame.DATA, 0, stream, bytes(16384)) for _ in range(9))
    events = pair.server.receive(data)
    assert BodyTooLarge(stream) in events
    resets = [(s, p) for k, _, s, p in _frames(_sent(pair.server)) if k == Frame.RST_STREAM]
    assert resets == [(stream, ErrorCode.FLOW_CONTROL_ERROR.to_bytes(4, "big"))]


# -- flow control towards the client -----------------------------------------------------


def test_answer_waits_for_the_stream_window() -> None:
    pair = Pair({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    stream = pair.get()
    pair.pump()
    assert pair.server.answer(stream, bytes(range(25)), b"no-store")
    pair.pump()  # h2 acknowledges as it goes (WINDOW_UPDATE) once data is acknowledged
    _, body, ended = pair.responses()[stream]
    assert body == bytes(range(10)) and not ended
    for _ in range(3):
        pair.client.acknowledge_received_data(10, stream)
        pair.pump()
    _, body, ended = pair.responses()[stream]
    assert body == bytes(range(25)) and ended
    assert not pair.server.streams


def test_answer_waits_for_the_connection_window() -> None:
    pair = Pair()
    streams = [pair.get(f"/q{i}") for i in range(3)]
    pair.pump()
    big = bytes(30000)
    for stream in streams:
        pair.server.answer(stream, big, b"no-store")
    pair.pump()
    got = pair.responses()
    assert sum(len(body) for _, body, _ in got.values()) == 65535  # the initial window
    pair.client.increment_flow_control_window(2 * 30000)
    pair.pump()
    got = pair.responses()
    assert all(body == big and ended for _, body, ended in got.values())


def test_max_frame_size_of_the_client_respected() -> None:
    pair = Pair()
    stream = pair.get()
    pair.pump()
    pair.server.answer(stream, bytes(40000), b"no-store")
    sizes = [len(p) for k, _, _, p in _frames(_sent(pair.server)) if k == Frame.DATA]
    assert sizes == [16384, 16384, 7232]


def test_table_size_update_after_a_smaller_client_table() -> None:
    pair = Pair({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    stream = pair.get()
    pair.pump()
    pair.server.answer(stream, b"a", b"no-store")
    chunk = pair.server.data_to_send()[0]
    (_, _, _, block), _ = _frames(chunk)
    assert block[0] == 0x20  # a size update to 0 first
    pair.client_events += pair.client.receive_data(chunk)
    assert pair.responses()[stream][2]


# -- GOAWAY ------------------------------------------------------------------------------


def test_shutdown_goaway_lets_open_streams_finish() -> None:
    pair = Pair()
    first = pair.get()
    pair.pump()
    pair.server.shutdown()
    assert _goaway(_sent(pair.server)) == (first, ErrorCode.NO_ERROR)
    assert not pair.server.finished
    block = hpack.Encoder().encode([(":method", "GET"), (":path", "/x")])
    assert pair.server.receive(frame(Frame.HEADERS, 0x5, first + 2, block)) == []
    resets = [(s, p) for k, _, s, p in _frames(_sent(pair.server)) if k == Frame.RST_STREAM]
    assert resets == [(first + 2, ErrorCode.REFUSED_STREAM.to_bytes(4, "big"))]
    assert pair.server.answer(first, b"a", b"no-store")
    assert pair.server.finished
    pair.server.shutdown()  # once only
    assert _goaway(_sent(pair.server)) is None


def test_client_goaway() -> None:
    pair = Pair()
    stream = pair.get()
    pair.pump()
    pair.client.close_connection()
    events = pair.pump()
    assert events == [GoAwayReceived(0)]
    assert not pair.server.finished
    pair.server.answer(stream, b"a", b"no-store")
    assert pair.server.finished


# -- hostile input -----------------------------------------------------------------------


def _conversation() -> bytes:
    """A valid client conversation: preface, settings, GETs, a POST, PING, RST."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for i in range(3):
        sid = client.get_next_available_stream_id()
        client.send_headers(
            sid,
            [(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", f"/q{i}")],
            end_stream=True,
        )
    sid = client.get_next_available_stream_id()
    client.send_headers(
        sid, [(":method", "POST"), (":scheme", "https"), (":authority", "x"), (":path", "/q")]
    )
    client.send_data(sid, b"body" * 10, end_stream=True)
    client.ping(b"abcdefgh")
    client.reset_stream(1)
    data: bytes = client.data_to_send()
    return data


CONVERSATION = _conversation()


def _run(chunks: list[bytes]) -> None:
    """Feed ``chunks``; answer every request at once; no stream is answered twice and
    nothing but the documented events comes out."""
    server = H2Server()
    answered: set[int] = set()
    for chunk in chunks:
        for event in server.receive(chunk):
            assert isinstance(event, Request | BodyTooLarge | GoAwayReceived | ConnectionBroken)
            if isinstance(event, Request | BodyTooLarge) and (
                server.answer(event.stream_id, b"a", b"no-store")
                or server.reject(event.stream_id, 413, [], b"x")
            ):
                assert event.stream_id not in answered
                answered.add(event.stream_id)
        for data in server.data_to_send():
            _frames(data)  # well-formed frames only
    server.shutdown()
    _frames(_sent(server))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_after_the_preface(data: bytes) -> None:
    _run([PREFACE + EMPTY_SETTINGS, data])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes_from_the_start(data: bytes) -> None:
    _run([data])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, len(CONVERSATION) - 1), st.integers(0, 255)), max_size=8),
    st.lists(st.integers(1, len(CONVERSATION) - 1), max_size=6),
)
def test_mutated_conversations(flips: list[tuple[int, int]], cuts: list[int]) -> None:
    data = bytearray(CONVERSATION)
    for pos, value in flips:
        data[pos] = value
    bounds = [0, *sorted(set(cuts)), len(data)]
    _run([bytes(data[a:b]) for a, b in itertools.pairwise(bounds)])


# -- the fast HPACK reader ---------------------------------------------------------------

_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_huffman_decode_matches_hpack(data: bytes) -> None:
    assert huffman_decode(_HUFFMAN.encode(data)) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_huffman_decode_agrees_on_any_input(data: bytes) -> None:
    """Valid or not as hpack says, with the same octets when valid."""
    try:
        expected: bytes | None = decode_huffman(data)
    except hpack.HPACKDecodingError:
        expected = None
    assert huffman_decode(data) == expected


def test_read_block_takes_blocks_that_leave_the_table_alone() -> None:
    encoder = hpack.Encoder()
    fields = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        NeverIndexedHeaderTuple(b":path", b"/dns-query?dns=AAABAAAB"),
        NeverIndexedHeaderTuple(b"x-custom", b"value"),
    ]
    decoder = hpack.Decoder()
    for huffman in (True, False):
        block = encoder.encode(fields, huffman=huffman)
        assert read_block(block, decoder.header_table, MAX_HEADER_LIST) == [
            (bytes(n), bytes(v)) for n, v in fields
        ]
    indexing = hpack.Encoder().encode([(b"accept", b"application/dns-message")])
    assert read_block(indexing, decoder.header_table, MAX_HEADER_LIST) is None
    assert read_block(b"\x3f\xe1\x1f", decoder.header_table, MAX_HEADER_LIST) is None  # size
    assert read_block(b"\xbe", decoder.header_table, MAX_HEADER_LIST) is None  # no entry 62
    big = encoder.encode([NeverIndexedHeaderTuple(b"x", b"a" * 200)])
    assert read_block(big, decoder.header_table, 100) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_read_block_never_disagrees_with_hpack(block: bytes) -> None:
    """Whatever it reads, hpack reads the same; it leaves the table alone."""
    decoder = hpack.Decoder()
    decoder.header_table.add(b"x-dyn", b"1")
    fast = read_block(block, decoder.header_table, MAX_HEADER_LIST)
    if fast is not None:
        assert len(decoder.header_table.dynamic_entries) == 1
        assert [(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)] == fast
