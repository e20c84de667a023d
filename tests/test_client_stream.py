"""The sans-IO client side of DNS over a stream (dns2dot/protocol/client_stream.py),
fed with bytes alone: no socket, no loop, time passed in.

The rules checked here are the README's "How it behaves" for TCP clients: framing,
the in-flight cap, the bound on unread answers, garbage and failing frames, half-close,
and the deadlines (RFC 7766 §6.2.1.1, §6.2.3, §6.2.4, §8, §10).
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dns2dot.protocol.client_stream import (
    FAILURE_BURST,
    FAILURE_SPAN,
    FAILURE_STREAK,
    STALL_TIMEOUT,
    ClientState,
    ClientStream,
    FrameScanner,
)
from dns2dot.protocol.errors import Dns2DotError


def query(i: int, size: int = 20) -> bytes:
    """A stand-in query: ID ``i``, flags 0 (rcode NOERROR), padded to ``size``."""
    return struct.pack("!H", i) + bytes(size - 2)


def framed(msg: bytes) -> bytes:
    return struct.pack("!H", len(msg)) + msg


def with_rcode(msg: bytes, rcode: int) -> bytes:
    return msg[:3] + bytes([(msg[3] & 0xF0) | rcode]) + msg[4:]


def unframe(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 2 <= len(data):
        (n,) = struct.unpack_from("!H", data, pos)
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    assert pos == len(data), "a torn frame"
    return out


def drain(stream: ClientStream, now: float = 0.0) -> list[bytes]:
    """Every query the stream hands out now."""
    out = []
    while (msg := stream.next_query(now)) is not None:
        out.append(msg)
    return out


def write_all(stream: ClientStream, now: float = 0.0) -> bytes:
    data = stream.output()
    stream.sent(len(data), now)
    return data


def test_split_and_coalesced_frames_give_the_same_queries() -> None:
    data = b"".join(framed(query(i)) for i in range(5))
    one = ClientStream(0.0)
    one.receive(data, 0.0)
    bytewise = ClientStream(0.0)
    got = []
    for b in data:
        bytewise.receive(bytes([b]), 0.0)
        got += drain(bytewise)
    assert drain(one) == got == [query(i) for i in range(5)]


def test_answers_are_framed_and_written_then_the_half_closed_stream_closes() -> None:
    stream = ClientStream(0.0)
    stream.receive(framed(query(1)) + framed(query(2)), 0.0)
    stream.end_input(0.1)
    assert stream.state is ClientState.INPUT_ENDED
    for msg in drain(stream):
        stream.answer(msg, 0.2)
    assert stream.state is ClientState.INPUT_ENDED  # written yet? not until sent
    assert unframe(write_all(stream)) == [query(1), query(2)]
    assert stream.state is ClientState.CLOSED
    assert stream.reason is None


def test_a_short_length_prefix_closes_after_the_queries_before_it() -> None:
    """RFC 7766 §6.2.4: what was read before the bad prefix is answered first."""
    stream = ClientStream(0.0)
    stream.receive(framed(query(1)), 0.0)
    stream.receive(framed(query(2)) + b"\x00\x00" + framed(query(3)), 0.0)
    assert stream.state is ClientState.CLOSING
    assert stream.reason == "framing"
    queries = drain(stream)
    assert queries == [query(1), query(2)]
    for msg in queries:
        stream.answer(msg, 0.0)
    stream.receive(framed(query(4)), 0.0)  # read after the bad prefix: ignored
    assert drain(stream) == []
    assert unframe(write_all(stream)) == [query(1), query(2)]
    assert stream.state is ClientState.CLOSED


def test_the_in_flight_cap_holds_reading_and_queries() -> None:
    stream = ClientStream(0.0, max_inflight=2)
    stream.receive(b"".join(framed(query(i)) for i in range(5)), 0.0)
    first = drain(stream)
    assert first == [query(0), query(1)]
    assert stream.state is ClientState.HELD and stream.waiting == 3
    stream.answer(first[0], 1.0)
    assert drain(stream) == [query(2)]
    assert stream.state is ClientState.HELD
    for msg in (first[1], query(2)):
        stream.answer(msg, 1.0)
    assert drain(stream, 1.0) == [query(3), query(4)]
    stream.answer(query(3), 2.0)
    stream.answer(query(4), 2.0)
    assert stream.state is ClientState.READING


def test_unread_answers_at_the_bound_hold_reading() -> None:
    stream = ClientStream(0.0, max_unsent=100)
    stream.receive(b"".join(framed(query(i, 40)) for i in range(3)), 0.0)
    for msg in drain(stream):
        stream.answer(msg, 0.0)
    stream.sent(0, 0.0)
    assert stream.unsent_bytes == 126
    assert stream.state is ClientState.HELD
    stream.sent(100, 1.0)
    assert stream.state is ClientState.READING


def test_a_client_that_takes_nothing_is_stalled_after_the_timeout() -> None:
    stream = ClientStream(0.0, idle_timeout=60.0)
    stream.receive(framed(query(1)), 0.0)
    (msg,) = drain(stream)
    stream.answer(msg, 0.0)
    stream.sent(0, 1.0)
    assert stream.write_blocked
    assert stream.expired(1.0 + STALL_TIMEOUT - 0.1) is None
    stream.sent(3, 2.0)  # some progress: a slow reader
    assert stream.expired(1.0 + STALL_TIMEOUT + 0.1) is None
    assert stream.stall_deadline == 2.0 + STALL_TIMEOUT
    assert stream.expired(2.0 + STALL_TIMEOUT) == "unread_output"
    stream.close(5.0, "unread_output")
    assert stream.state is ClientState.RESET  # answers were waiting: a reset
    assert stream.unsent_bytes == 0
    stream.answer(query(9), 6.0)  # late: dropped
    assert stream.unsent_bytes == 0


def test_a_frame_trickling_in_is_slow_only_while_read() -> None:
    stream = ClientStream(0.0, max_inflight=1, frame_timeout=5.0, idle_timeout=60.0)
    stream.receive(framed(query(1)) + framed(query(2))[:5], 0.0)
    (msg,) = drain(stream)
    assert stream.state is ClientState.HELD
    assert stream.expired(30.0) is None
    stream.answer(msg, 30.0)  # reading again: the frame's deadline restarts
    assert stream.state is ClientState.READING
    assert stream.expired(34.0) is None
    assert stream.expired(35.5) == "slow_frame"


def test_idle_only_without_queries_in_flight() -> None:
    stream = ClientStream(0.0, idle_timeout=10.0)
    stream.receive(framed(query(1)), 1.0)
    drain(stream)
    assert stream.expired(20.0) is None
    stream.answer(query(1), 20.0)
    write_all(stream, 20.0)
    assert stream.expired(29.0) is None
    assert stream.expired(30.5) == "idle"


def test_one_odd_query_or_one_pipelined_batch_keeps_the_connection() -> None:
    stream = ClientStream(0.0, max_inflight=100)
    stream.receive(b"".join(framed(query(i)) for i in range(FAILURE_BURST - 1)), 0.0)
    for msg in drain(stream):
        stream.answer(with_rcode(msg, 1), 0.0)  # FORMERR
    assert stream.state is ClientState.READING
    stream.receive(framed(query(99)), 5.0)
    stream.answer(drain(stream, 5.0)[0], 5.0)  # a good answer ends the streak
    stream.receive(framed(query(100)), 9.0)
    stream.answer(with_rcode(drain(stream, 9.0)[0], 4), 9.0)  # NOTIMP, one
    assert stream.state is ClientState.READING


def test_failing_frames_over_a_second_close_after_their_answers() -> None:
    """Each read: a failing frame, then a good query left in flight; the streak runs on
    (no good answer comes between) and closes once it spans FAILURE_SPAN."""
    stream = ClientStream(0.0)
    now = 0.0
    for i in range(FAILURE_STREAK):
        assert stream.state is not ClientState.CLOSING
        stream.receive(framed(query(i)) + framed(query(100 + i)), now)
        assert stream.next_query(now) == query(i)
        if i % 2:
            stream.dropped(now)  # an error response: not answered, a failure too
        else:
            stream.answer(with_rcode(query(i), 1), now)
        if i < FAILURE_STREAK - 1:
            assert stream.next_query(now) == query(100 + i)  # in flight, unanswered
        now += FAILURE_SPAN / (FAILURE_STREAK - 1)
    assert stream.state is ClientState.CLOSING
    assert stream.reason == "failures"
    assert stream.waiting == 0  # what came after the last failure is not answered
    assert stream.inflight == FAILURE_STREAK - 1
    while stream.inflight:  # those in flight are still answered, then it closes
        stream.answer(query(7), now)
    assert len(unframe(write_all(stream, now))) == 2 + (FAILURE_STREAK + 1) // 2
    assert stream.state is ClientState.CLOSED


def test_a_burst_of_failing_frames_closes_at_once() -> None:
    stream = ClientStream(0.0, max_inflight=1000)
    stream.receive(b"".join(framed(query(i)) for i in range(FAILURE_BURST + 10)), 0.0)
    handed = 0
    while (msg := stream.next_query(0.0)) is not None:
        handed += 1
        stream.answer(with_rcode(msg, 1), 0.0)
    assert handed == FAILURE_BURST
    assert stream.state is ClientState.CLOSING and stream.reason == "failures"
    write_all(stream)
    assert stream.state is ClientState.CLOSED


def test_a_reset_drops_everything_at_once() -> None:
    stream = ClientStream(0.0, max_inflight=2)
    stream.receive(b"".join(framed(query(i)) for i in range(5)), 0.0)
    drain(stream)
    stream.answer(query(0), 0.0)
    stream.reset(0.0, "unread_output")
    assert stream.state is ClientState.RESET
    assert stream.unsent_bytes == 0 and stream.waiting == 0
    assert stream.next_query(0.0) is None
    stream.receive(framed(query(9)), 0.0)
    assert stream.next_query(0.0) is None


# -- properties ----------------------------------------------------------------------


chunks = st.lists(st.binary(max_size=300), max_size=20)


@given(parts=chunks)
@example(parts=[b"\x00"])
@example(parts=[b"\x00\x0b" + bytes(11)])
def test_arbitrary_bytes_raise_nothing_but_our_errors(parts: list[bytes]) -> None:
    """Whatever the client sends, in whatever pieces, the stream only hands out
    messages of header size and ends in a state the connection can act on."""
    stream = ClientStream(0.0, max_inflight=4, max_unsent=200)
    now = 0.0
    try:
        for part in parts:
            now += 0.3
            stream.receive(part, now)
            for msg in drain(stream, now):
                assert len(msg) >= 12
                if msg[2] & 0x80:
                    stream.dropped(now)
                else:
                    stream.answer(msg, now)
            stream.sent(len(stream.output()) // 2, now)
            stream.expired(now)
        stream.end_input(now)
    except Dns2DotError:
        pass
    assert stream.state in ClientState


messages = st.lists(st.binary(min_size=12, max_size=60), max_size=30)


def _replay(data: bytes, cuts: list[int], max_inflight: int) -> tuple[list[bytes], bytes]:
    """Feed ``data`` cut at ``cuts``; answer every query (rcode cleared) once the cap
    holds; return the queries handed out and every byte written."""
    stream = ClientStream(0.0, max_inflight=max_inflight)
    handed: list[bytes] = []
    written = b""
    pending: list[bytes] = []
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for start, end in itertools.pairwise(bounds):
        if start == end:
            continue  # an empty read is the end of input
        stream.receive(data[start:end], 0.0)
        while True:
            while (msg := stream.next_query(0.0)) is not None:
                handed.append(msg)
                pending.append(msg)
            if not pending:
                break
            for msg in pending:
                stream.answer(with_rcode(msg, 0), 0.0)
            pending.clear()
        written += write_all(stream)
    stream.end_input(0.0)
    assert stream.state is ClientState.CLOSED
    return handed, written


@given(msgs=messages, cuts=st.lists(st.integers(min_value=0), max_size=10), cap=st.integers(1, 8))
def test_answers_match_queries_however_the_input_is_split(
    msgs: list[bytes], cuts: list[int], cap: int
) -> None:
    """Every query handed out, in order, whatever the pieces and the cap; every answer
    written once, framed, in the order given; and the same as with one piece."""
    data = b"".join(framed(m) for m in msgs)
    handed, written = _replay(data, cuts, cap)
    assert handed == msgs
    assert unframe(written) == [with_rcode(m, 0) for m in msgs]
    assert _replay(data, [], cap) == (handed, written)


@pytest.mark.parametrize("rcode", [1, 4])
def test_failures_counted_from_answers_not_from_queries(rcode: int) -> None:
    """The streak is judged on what the resolver answered (FORMERR, NOTIMP)."""
    stream = ClientStream(0.0)
    for i in range(FAILURE_STREAK):
        stream.receive(framed(query(i)), float(i))
        stream.answer(with_rcode(drain(stream, float(i))[0], rcode), float(i))
    assert stream.state is ClientState.CLOSING


# -- pipe mode's framing check -------------------------------------------------------


def first_bad_prefix(data: bytes) -> int:
    """Where a reader of RFC 1035 §4.2.2 frames meets a length below 12, or -1."""
    pos = 0
    while pos + 2 <= len(data):
        length = (data[pos] << 8) | data[pos + 1]
        if length < 12:
            return pos
        pos += 2 + length
    return -1


@given(
    data=st.one_of(
        st.binary(max_size=400),
        messages.map(lambda ms: b"".join(framed(m) for m in ms)),
        st.tuples(messages, st.binary(max_size=3)).map(
            lambda t: b"".join(framed(m) for m in t[0]) + t[1]
        ),
    ),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
@example(data=framed(bytes(12)) + b"\x00\x05", cuts=[15])
def test_frame_scanner_finds_the_bad_prefix_however_split(data: bytes, cuts: list[int]) -> None:
    scanner = FrameScanner()
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    found = -1
    for start, end in itertools.pairwise(bounds):
        bad = scanner.feed(data[start:end], 0.0)  # under FAILURE_BURST frames: framing only
        if bad >= 0:
            # a prefix split across reads is reported at the start of the second read
            found = start + bad
            break
    expected = first_bad_prefix(data)
    if expected >= 0 and found >= 0 and found != expected:
        assert found == expected + 1 and start == expected + 1  # the split prefix
    else:
        assert found == expected


def test_frame_scanner_failure_rule_on_the_clients_frames() -> None:
    """Pipe mode: frames that cannot be queries end the stream after FAILURE_STREAK over
    FAILURE_SPAN, or FAILURE_BURST in a row (the streak's frames in the deciding read
    do not go upstream); a plausible query between them starts the count again; one odd
    frame is nothing."""
    odd = framed(struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0))  # QR set
    good = framed(struct.pack("!HHHHHH", 2, 0x0100, 1, 0, 0, 0))
    scanner = FrameScanner()
    assert scanner.feed(odd * (FAILURE_BURST - 1) + good, 0.0) == -1
    assert scanner.feed(odd + good + odd, 5.0) == -1
    data = odd * 2
    assert scanner.feed(data, 5.5) == -1  # three in a row since 5.0, but within the span
    assert scanner.feed(odd, 5.0 + FAILURE_SPAN) == 0
    burst = odd * FAILURE_BURST
    assert FrameScanner().feed(burst, 0.0) == 0
    update = framed(struct.pack("!HHHHHH", 3, 0x2800, 1, 0, 1, 0))  # opcode UPDATE
    assert FrameScanner().feed(update * (FAILURE_BURST + 1), 9.0) == -1  # carried


def test_frame_scanner_passes_on_what_came_before_the_failing_streak() -> None:
    """The good frames in front of a deciding streak go upstream, the streak's frames in
    that read do not: the upstream answers the good ones instead of reacting to the
    garbage (tests/test_misbehaving_clients.py, a good query and garbage in one write)."""
    odd = framed(struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0))  # QR set
    good = framed(struct.pack("!HHHHHH", 2, 0x0100, 1, 0, 0, 0))
    data = good + odd + good + odd * FAILURE_BURST + good + odd
    assert FrameScanner().feed(data, 0.0) == 2 * len(good) + len(odd)
    # a streak begun in an earlier read: cut at the first frame that starts in this one,
    # after the rest of a frame whose body the earlier read began
    scanner = FrameScanner()
    first = good + odd * (FAILURE_BURST - 1) + odd[:5]  # a header cut short: not judged
    assert scanner.feed(first, 0.0) == -1
    rest = odd[5:]
    assert scanner.feed(rest + odd + good, 0.0) == len(rest)
    # decided by the span (so begun in an earlier read): nothing of the deciding read
    scanner = FrameScanner()
    assert scanner.feed(good + odd * 2, 0.0) == -1
    assert scanner.feed(odd + good, FAILURE_SPAN) == 0
