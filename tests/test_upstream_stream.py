"""The sans-IO upstream side of DNS over a stream (dns2dot/protocol/upstream_stream.py),
fed with bytes alone: IDs, matching by ID and question, the outbox, broken streams.

dnspython builds the queries and answers and reads back what the core writes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dns2dot.protocol import wire
from dns2dot.protocol.errors import ProtocolError
from dns2dot.protocol.upstream_stream import (
    StreamBroken,
    Unmatched,
    UpstreamStream,
    match_answer,
)


@dataclass(eq=False)
class Q:
    """A query in flight, as the core sees an Exchange."""

    msg: bytes
    query: wire.Query = field(init=False)
    question: bytes = field(init=False)
    key: bytes = field(init=False)
    upstream_msg: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.query = wire.parse_query(self.msg)
        self.question = self.msg[wire.HEADER_LEN : self.query.question_end]
        self.key = self.query.key
        self.upstream_msg = self.msg


def make_q(name: str = "www.example.test.", rdtype: str = "A", qid: int = 7) -> Q:
    query = dns.message.make_query(name, rdtype)
    query.id = qid
    return Q(query.to_wire())


def answer_to(q: Q, uid: int, *, name: str | None = None, address: str = "192.0.2.1") -> bytes:
    """The upstream's answer to ``q`` under ``uid`` (its question respelt as ``name``)."""
    query = dns.message.from_wire(q.msg)
    response = dns.message.make_response(query)
    response.id = uid
    if name is not None:
        response.question[0].name = dns.name.from_text(name)
    rrset = dns.rrset.from_text(response.question[0].name, 60, "IN", "A", address)
    response.answer.append(rrset)
    return response.to_wire()


Answered = tuple  # the answered event is a plain (uid, query, token, answer)


def framed(msg: bytes) -> bytes:
    return struct.pack("!H", len(msg)) + msg


def unframe(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("!H", data, pos)
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out


def test_queries_go_out_framed_under_fresh_ids_in_one_piece() -> None:
    core: UpstreamStream[Q] = UpstreamStream(first_id=0xFFFE)
    qs = [make_q(f"n{i}.example.test.") for i in range(3)]
    uids = [core.send(q) for q in qs]
    assert uids == [0xFFFE, 0xFFFF, 0], "IDs go up from the start and wrap"
    assert core.has_outgoing
    sent = unframe(core.data_to_send())
    assert not core.has_outgoing and core.data_to_send() == b""
    for msg, q, uid in zip(sent, qs, uids, strict=True):
        parsed = dns.message.from_wire(msg)
        assert parsed.id == uid
        assert parsed.question == dns.message.from_wire(q.msg).question


def test_random_start() -> None:
    starts = {UpstreamStream[Q]().send(make_q()) for _ in range(20)}
    assert len(starts) > 1, "IDs must not start at the same place every time"


def test_ids_in_flight_are_skipped() -> None:
    core: UpstreamStream[Q] = UpstreamStream(first_id=5)
    a, b = make_q("a.test."), make_q("b.test.")
    assert core.send(a) == 5
    core._next_id = 5  # wrapped around to an ID still in flight
    assert core.send(b) == 6


def test_answer_matched_by_id_and_question() -> None:
    core: UpstreamStream[Q] = UpstreamStream(first_id=100)
    q = make_q()
    uid = core.send(q, token=1.5)
    answer = answer_to(q, uid)
    [event] = core.data_received(framed(answer))
    assert isinstance(event, Answered)
    assert event == (uid, q, 1.5, answer)
    assert not core.in_flight


def test_answer_with_the_question_respelt_is_accepted() -> None:
    core: UpstreamStream[Q] = UpstreamStream(first_id=1)
    q = make_q("www.example.test.")
    uid = core.send(q)
    [event] = core.data_received(framed(answer_to(q, uid, name="WwW.ExAmple.TEST.")))
    assert isinstance(event, Answered)


def test_answer_to_another_question_is_ignored_and_the_query_still_waits() -> None:
    core: UpstreamStream[Q] = UpstreamStream(first_id=1)
    q = make_q("www.example.test.")
    uid = core.send(q)
    [event] = core.data_received(framed(answer_to(q, uid, name="evil.example.test.")))
    assert isinstance(event, Unmatched) and event.uid == uid
    assert uid in core.in_flight
    [event] = core.data_received(framed(answer_to(q, uid)))
    assert isinstance(event, Answered)


def test_answer_for_unknown_id_is_ignored() -> None:
    core: UpstreamStream[Q] = UpstreamStream(first_id=1)
    q = make_q()
    core.send(q)
    [event] = core.data_received(framed(answer_to(q, 999)))
    assert isinstance(event, Unmatched) and event.uid == 999
    assert len(core.in_flight) == 1


def test_error_answer_without_question_becomes_our_own() -> None:
    core: UpstreamStream[Q] = UpstreamStream(first_id=1)
    q = make_q(qid=4242)
    uid = core.send(q)
    bare = struct.pack("!HHHHHH", uid, 0x8000 | dns.rcode.REFUSED, 0, 0, 0, 0)
    [event] = core.data_received(framed(bare))
    assert isinstance(event, Answered)
    ours = dns.message.from_wire(event[3])
    assert ours.rcode() == dns.rcode.REFUSED
    assert ours.id == 4242, "built from the client's query"
    assert ours.question == dns.message.from_wire(q.msg).question


def test_noerror_answer_without_question_is_ignored() -> None:
    core: UpstreamStream[Q] = UpstreamStream(first_id=1)
    uid = core.send(make_q())
    bare = struct.pack("!HHHHHH", uid, 0x8000, 0, 0, 0, 0)
    [event] = core.data_received(framed(bare))
    assert isinstance(event, Unmatched)


def test_forgotten_query_answer_is_unmatched() -> None:
    core: UpstreamStream[Q] = UpstreamStream(first_id=1)
    q, other = make_q(), make_q()
    uid = core.send(q)
    assert not core.forget(uid, other), "only the query under that ID"
    assert core.forget(uid, q)
    [event] = core.data_received(framed(answer_to(q, uid)))
    assert isinstance(event, Unmatched)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00",  # a zero length prefix
        b"\x00\x05hello",  # shorter than a header
    ],
)
def test_broken_framing_ends_the_stream(garbage: bytes) -> None:
    core: UpstreamStream[Q] = UpstreamStream(first_id=1)
    q = make_q()
    uid = core.send(q)
    events = core.data_received(garbage + framed(answer_to(q, uid)))
    assert len(events) == 1 and isinstance(events[0], StreamBroken)
    assert core.broken is not None
    assert core.data_received(framed(answer_to(q, uid))) == [], "nothing after the break"
    assert core.take_in_flight() == [q]
    assert not core.in_flight


def test_answer_without_qr_ends_the_stream_after_what_came_before() -> None:
    core: UpstreamStream[Q] = UpstreamStream(first_id=1)
    a, b = make_q("a.test."), make_q("b.test.")
    ua, ub = core.send(a), core.send(b)
    not_an_answer = b.msg[:0] + struct.pack("!H", ub) + b.msg[2:]  # QR clear: a query
    events = core.data_received(framed(answer_to(a, ua)) + framed(not_an_answer))
    assert [type(e) for e in events] == [Answered, StreamBroken]


def test_all_ids_in_flight_is_the_callers_bug() -> None:
    core: UpstreamStream[Q] = UpstreamStream(first_id=0)
    q = make_q()
    for uid in range(0x10000):
        core.in_flight[uid] = (q, 0.0)
    assert not core.has_room
    with pytest.raises(OverflowError):
        core.send(q)


def test_discard_outgoing() -> None:
    core: UpstreamStream[Q] = UpstreamStream(first_id=1)
    core.send(make_q())
    core.discard_outgoing()
    assert core.data_to_send() == b""


def test_match_answer_raises_only_our_errors_for_non_dns() -> None:
    q = make_q()
    with pytest.raises(ProtocolError):
        match_answer(b"\x00\x01\x80", q)
    with pytest.raises(ProtocolError):
        match_answer(q.msg, q)  # QR clear: a query, not an answer


# -- properties ------------------------------------------------------------------------

NAMES = [f"h{i}.example.test." for i in range(8)]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, len(NAMES) - 1)),
        st.tuples(st.just("answer"), st.integers(0, 1000)),
        st.tuples(st.just("forget"), st.integers(0, 1000)),
    ),
    max_size=200,
)


@settings(max_examples=100, deadline=None)
@given(first=st.integers(0, 0xFFFF), steps=ops)
def test_ids_never_collide_in_flight(first: int, steps: list[tuple[str, int]]) -> None:
    core: UpstreamStream[Q] = UpstreamStream(first_id=first)
    queries = [make_q(name) for name in NAMES]
    waiting: dict[int, Q] = {}
    for op, arg in steps:
        if op == "send":
            q = Q(queries[arg].msg)
            uid = core.send(q)
            assert uid not in waiting
            waiting[uid] = q
        elif waiting:
            uid = sorted(waiting)[arg % len(waiting)]
            q = waiting.pop(uid)
            if op == "forget":
                assert core.forget(uid, q)
            else:
                [event] = core.data_received(framed(answer_to(q, uid)))
                assert isinstance(event, Answered) and event[1] is q
        assert {uid: entry[0] for uid, entry in core.in_flight.items()} == waiting


def _events(core: UpstreamStream[Q], chunks: list[bytes]) -> list[tuple[str, int, bytes]]:
    out = []
    for chunk in chunks:
        for event in core.data_received(chunk):
            if isinstance(event, Answered):
                out.append(("answered", event[0], event[3]))
            elif isinstance(event, Unmatched):
                out.append(("unmatched", event.uid, event.answer))
            else:
                out.append(("broken", 0, str(event.error).encode()))
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    picks=st.lists(st.integers(0, 20), min_size=1, max_size=12),
    cuts=st.lists(st.integers(1, 4000), max_size=30),
    tail=st.sampled_from([b"", b"\x00\x00", b"\x00"]),
)
def test_any_chunking_gives_the_same_events(picks: list[int], cuts: list[int], tail: bytes) -> None:
    """Answers (some for IDs not in flight, some to other questions) cut anywhere."""

    def build() -> tuple[UpstreamStream[Q], bytes]:
        core: UpstreamStream[Q] = UpstreamStream(first_id=10)
        qs = [make_q(name) for name in NAMES]
        uids = [core.send(q) for q in qs]
        stream = b""
        for pick in picks:
            i = pick % len(qs)
            if pick < 8:
                stream += framed(answer_to(qs[i], uids[i]))
            elif pick < 16:
                stream += framed(answer_to(qs[i], uids[i], name="other.test."))
            else:
                stream += framed(answer_to(qs[i], 5000 + pick))
        return core, stream + tail

    core, stream = build()
    whole = _events(core, [stream])
    core, stream = build()
    positions = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *positions], [*positions, len(stream)], strict=True)]
    assert _events(core, chunks) == whole


@settings(max_examples=300, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=80), max_size=8),
    junk=st.binary(max_size=64),
    under_ids=st.booleans(),
)
def test_hostile_answers_never_raise(bodies: list[bytes], junk: bytes, under_ids: bool) -> None:
    """Anything the upstream sends is events, never an exception; what is in flight
    stays accounted for (answered, still waiting, or handed back)."""
    core: UpstreamStream[Q] = UpstreamStream(first_id=300)
    qs = [make_q(name) for name in NAMES[:4]]
    uids = [core.send(q) for q in qs]
    stream = b""
    for i, body in enumerate(bodies):
        if under_ids and len(body) >= 2:
            body = struct.pack("!H", uids[i % len(uids)]) + body[2:]
        stream += framed(body)
    events = core.data_received(stream + junk)
    answered = [e[1] for e in events if isinstance(e, Answered)]
    assert all(isinstance(e, Answered | Unmatched | StreamBroken) for e in events)
    assert sum(isinstance(e, StreamBroken) for e in events) <= 1
    assert len(answered) + len(core.in_flight) == len(qs)
    for event in events:
        if isinstance(event, Answered):
            assert event[3][2] & 0x80, "only responses are handed on"
