"""Unit tests for :mod:`dns2dot.framing`: the 2-byte length prefix of DNS over TCP/TLS
(RFC 1035 §4.2.2, RFC 7766 §8), fed bytes the way a socket delivers them."""

from __future__ import annotations

import itertools

import dns.message
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dns2dot.protocol.errors import FramingError, ProtocolError
from dns2dot.protocol.framing import MAX_MESSAGE_LEN, FrameDecoder, frame, frame_with_id
from dns2dot.protocol.wire import with_id

MSG_A = dns.message.make_query("a.example.", "A", id=1).to_wire()
MSG_B = dns.message.make_query("bb.example.", "AAAA", id=2, use_edns=0).to_wire()
MSG_C = dns.message.make_query("ccc.example.", "TXT", id=3, want_dnssec=True).to_wire()
STREAM = frame(MSG_A) + frame(MSG_B) + frame(MSG_C)


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


# --------------------------------------------------------------------------- frame()


def test_frame_prefixes_big_endian_length() -> None:
    assert frame(b"x" * 12) == b"\x00\x0c" + b"x" * 12
    assert frame(b"y" * 0x1234)[:2] == b"\x12\x34"


def test_frame_empty_and_maximum() -> None:
    assert frame(b"") == b"\x00\x00"
    big = b"z" * MAX_MESSAGE_LEN
    assert frame(big)[:2] == b"\xff\xff"
    assert len(frame(big)) == MAX_MESSAGE_LEN + 2


def test_frame_too_long_raises_value_error() -> None:
    """RFC 1035 §4.2.2: the prefix is 16 bits; 65536 octets cannot be said."""
    with pytest.raises(ValueError):
        frame(b"z" * (MAX_MESSAGE_LEN + 1))


def test_frame_round_trip() -> None:
    for msg in (MSG_A, MSG_B, MSG_C, b"h" * MAX_MESSAGE_LEN):
        decoder = FrameDecoder()
        assert decoder.feed(frame(msg)) == [msg]
        assert decoder.buffered == 0
        assert decoder.error is None


def test_frame_matches_dnspython_prepend_length() -> None:
    m = dns.message.make_query("example.com.", "A", id=77)
    assert frame(m.to_wire()) == m.to_wire(prepend_length=True)


@given(st.binary(min_size=2, max_size=600), st.integers(0, 0xFFFF))
def test_frame_with_id_is_frame_of_with_id(msg: bytes, new_id: int) -> None:
    assert frame_with_id(msg, new_id) == frame(with_id(msg, new_id))


def test_frame_with_id_at_the_limits() -> None:
    big = b"q" * MAX_MESSAGE_LEN
    assert frame_with_id(big, 0xABCD) == b"\xff\xff\xab\xcd" + big[2:]
    with pytest.raises(ValueError):
        frame_with_id(big + b"q", 1)


# --------------------------------------------------------------------------- FrameDecoder


def test_decoder_coalesced_frames() -> None:
    """RFC 7766 §6.2.1.1: a client may pipeline; one read can carry many messages."""
    decoder = FrameDecoder()
    assert decoder.feed(STREAM) == [MSG_A, MSG_B, MSG_C]
    assert decoder.buffered == 0


def test_decoder_empty_feed() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.buffered == 0
    assert decoder.error is None


@pytest.mark.parametrize("split", range(len(STREAM) + 1))
def test_decoder_every_split_point(split: int) -> None:
    """Any one split of the stream yields the same messages, in order."""
    decoder = FrameDecoder()
    first = decoder.feed(STREAM[:split])
    second = decoder.feed(STREAM[split:])
    assert first + second == [MSG_A, MSG_B, MSG_C]
    assert decoder.buffered == 0
    assert decoder.error is None


def test_decoder_every_pair_of_split_points_of_one_frame() -> None:
    data = frame(MSG_B)
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            decoder = FrameDecoder()
            assert feed_all(decoder, [data[:i], data[i:j], data[j:]]) == [MSG_B]


def test_decoder_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(STREAM)):
        got = decoder.feed(STREAM[i : i + 1])
        out.extend(got)
        if got:
            assert decoder.buffered == 0
    assert out == [MSG_A, MSG_B, MSG_C]


def test_decoder_messages_released_as_soon_as_complete() -> None:
    """A message is returned by the feed that completes it, not held for the next."""
    decoder = FrameDecoder()
    data = frame(MSG_A)
    assert decoder.feed(data[:-1]) == []
    assert decoder.feed(data[-1:] + frame(MSG_B)[:1]) == [MSG_A]
    assert decoder.buffered == 1


def test_decoder_buffered_counts_a_stalled_frame() -> None:
    """``buffered`` reports what a client that stalls mid-frame is holding."""
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00") == []
    assert decoder.buffered == 1
    assert decoder.feed(b"\x20") == []
    assert decoder.buffered == 2
    assert decoder.feed(b"q" * 10) == []
    assert decoder.buffered == 12
    assert decoder.feed(b"q" * 22) == [b"q" * 32]
    assert decoder.buffered == 0


def test_decoder_buffered_after_complete_and_partial() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(MSG_A) + frame(MSG_B)[:5]) == [MSG_A]
    assert decoder.buffered == 5


@pytest.mark.parametrize("length", range(12))
def test_decoder_prefix_shorter_than_header_sets_error(length: int) -> None:
    """RFC 1035 §4.1.1: a message is at least a 12-octet header; a prefix below that
    (zero included) cannot be answered and leaves the stream unsynchronised."""
    decoder = FrameDecoder()
    out = decoder.feed(frame(MSG_A) + length.to_bytes(2, "big") + b"x" * length + frame(MSG_B))
    assert out == [MSG_A], "what came before the bad prefix is still delivered"
    assert isinstance(decoder.error, FramingError)
    assert isinstance(decoder.error, ProtocolError)
    assert decoder.buffered == 0
    assert decoder.feed(frame(MSG_C)) == []
    assert decoder.feed(STREAM) == []
    assert decoder.buffered == 0


def test_decoder_zero_length_prefix_split() -> None:
    """The bad prefix is noticed as soon as both of its octets are in."""
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00") == []
    assert decoder.error is None
    assert decoder.feed(b"\x00") == []
    assert decoder.error is not None
    assert decoder.feed(frame(MSG_A)) == []


def test_decoder_exactly_header_length_is_fine() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(b"h" * 12)) == [b"h" * 12]
    assert decoder.error is None


def test_decoder_min_length_parameter() -> None:
    """``min_length`` moves the threshold (e.g. the upstream side)."""
    lenient = FrameDecoder(min_length=1)
    assert lenient.feed(frame(b"a") + frame(b"bcd")) == [b"a", b"bcd"]
    assert lenient.error is None
    assert lenient.min_length == 1
    zero = FrameDecoder(min_length=0)
    assert zero.feed(frame(b"") + frame(b"x")) == [b"", b"x"]
    assert zero.error is None
    strict = FrameDecoder(min_length=20)
    assert strict.feed(frame(b"y" * 20) + frame(b"y" * 19)) == [b"y" * 20]
    assert strict.error is not None


def test_decoder_default_min_length_is_header() -> None:
    assert FrameDecoder().min_length == 12


def test_decoder_max_length_frame_in_pieces() -> None:
    big = bytes(range(256)) * 255 + b"\x01" * 255  # 65535 octets
    assert len(big) == MAX_MESSAGE_LEN
    data = frame(big) + frame(MSG_A)
    decoder = FrameDecoder()
    out = feed_all(decoder, [data[i : i + 4096] for i in range(0, len(data), 4096)])
    assert out == [big, MSG_A]


def test_decoder_independent_instances() -> None:
    one, two = FrameDecoder(), FrameDecoder()
    one.feed(b"\x00")
    assert two.buffered == 0
    two.feed(b"\x00\x00")
    assert one.error is None
    assert two.error is not None


# --------------------------------------------------------------------------- hypothesis

messages = st.lists(st.binary(min_size=12, max_size=300), max_size=12)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(st.data(), messages)
@settings(max_examples=500, deadline=None)
def test_property_any_chunking_yields_same_messages(data: st.DataObject, msgs: list[bytes]) -> None:
    stream = b"".join(frame(m) for m in msgs)
    chunks = data.draw(chunked(stream))
    assert b"".join(chunks) == stream
    decoder = FrameDecoder()
    assert feed_all(decoder, chunks) == msgs
    assert decoder.buffered == 0
    assert decoder.error is None


@given(st.data(), messages, st.binary(min_size=1, max_size=40))
@settings(max_examples=300, deadline=None)
def test_property_partial_tail_is_buffered(
    data: st.DataObject, msgs: list[bytes], tail_msg: bytes
) -> None:
    """A stream cut inside a frame yields the whole frames and buffers the rest."""
    tail_frame = frame(tail_msg + b"\x00" * 12)
    cut = data.draw(st.integers(0, len(tail_frame) - 1))
    stream = b"".join(frame(m) for m in msgs) + tail_frame[:cut]
    decoder = FrameDecoder()
    assert feed_all(decoder, data.draw(chunked(stream))) == msgs
    assert decoder.buffered == cut
    assert decoder.error is None


@given(st.data(), messages, st.integers(0, 11), messages)
@settings(max_examples=300, deadline=None)
def test_property_bad_prefix_stops_the_stream(
    data: st.DataObject, before: list[bytes], bad: int, after: list[bytes]
) -> None:
    stream = b"".join(frame(m) for m in before) + bad.to_bytes(2, "big")
    stream += b"".join(frame(m) for m in after)
    decoder = FrameDecoder()
    assert feed_all(decoder, data.draw(chunked(stream))) == before
    assert decoder.error is not None
    assert decoder.buffered == 0


@given(st.binary(max_size=2000), st.data())
@settings(max_examples=300, deadline=None)
def test_property_random_bytes_never_raise(blob: bytes, data: st.DataObject) -> None:
    decoder = FrameDecoder()
    out = feed_all(decoder, data.draw(chunked(blob)))
    assert all(len(m) >= 12 for m in out)
    assert sum(len(m) + 2 for m in out) + decoder.buffered <= len(blob)
