"""The upstream side of DNS over a stream (RFC 7766, RFC 7858), sans-IO.

:class:`UpstreamStream` is what one pipelined connection to an upstream knows, with
no socket, loop or clock of its own, in the manner of h11 and h2: queries go in with
:meth:`~UpstreamStream.send` (each gets a DNS ID unique among those in flight),
:meth:`~UpstreamStream.data_to_send` hands out the framed bytes to write (everything
queued since the last call, in one piece), and :meth:`~UpstreamStream.data_received`
takes whatever the transport read and returns events: :class:`Answered` (an answer
matched to its query by ID *and* question: a plain tuple, the one event that
is tested with ``isinstance(event, tuple)``), :class:`Unmatched` (an answer that fits
nothing in flight: ignored, reported), :class:`StreamBroken` (framing or an answer
that is not DNS: the connection is done). See docs/ARCHITECTURE.md, "protocol".

:func:`match_answer` holds the matching rules on their own, for transports that do
their own framing (DoH matches by HTTP/2 stream, then by question).
"""

from __future__ import annotations

import random
import struct
from typing import Generic, Protocol, TypeAlias, TypeVar

from dns2dot.protocol import wire
from dns2dot.protocol.errors import FormError, MessageError, ProtocolError
from dns2dot.protocol.framing import FrameDecoder, frame_with_id

ID_SPACE = 0x10000  # 16-bit DNS IDs
UNKNOWN_ID = "answer for an ID not in flight"
OTHER_QUESTION = "an answer did not echo its question"  # identical each time: logs fold it


class Outstanding(Protocol):
    """What the core needs to know of a query in flight (an ``Exchange`` upstream)."""

    @property
    def msg(self) -> bytes:
        """The client's query, for an error answer of ours."""

    @property
    def query(self) -> wire.Query:
        """Its parse."""

    @property
    def question(self) -> bytes:
        """Its question section as an answer echoes it."""

    @property
    def key(self) -> bytes:
        """Its case-folded question (``wire.Query.key``)."""

    @property
    def upstream_msg(self) -> bytes:
        """What is written upstream (its ID replaced by the one given here)."""


Q = TypeVar("Q", bound=Outstanding)


def match_answer(answer: bytes, query: Outstanding) -> bytes | None:
    """The answer ``query`` gets from ``answer`` (which came under its ID), or None.

    - it echoes the question byte for byte, or the same question spelt otherwise
      (another case): the answer as it is;
    - an error answer without a question (RFC 1035 allows it): an error answer of ours
      with the same rcode, never the upstream's bytes;
    - anything else (another question): None, to be ignored.

    Raises :class:`MessageError` / :class:`FormError` for an answer that is not DNS.
    """
    if wire.echoes(answer, query.question):
        return answer
    try:
        key = wire.answer_key(answer)
    except (IndexError, ValueError, struct.error) as exc:  # defensive: wire's own errors only
        raise FormError(f"unreadable answer ({exc.__class__.__name__})") from exc
    if key == query.key:
        return answer
    if key is None and answer[4] == answer[5] == 0 and wire.rcode_of(answer):
        return wire.error_response(query.msg, wire.rcode_of(answer), query.query)
    return None


# An answer for a query in flight, no longer in flight: (the ID it was sent under, the
# query, the caller's token given to ``send``, the answer). A plain tuple rather than a
# class: it is made for every answer, and a class instance costs several times more.
Answered: TypeAlias = tuple[int, Q, float, bytes]


class Unmatched:
    """An answer that fits no query in flight (unknown ID, or another question): it
    was ignored. ``reason`` says which, in words that repeat identically."""

    __slots__ = ("answer", "reason", "uid")

    def __init__(self, uid: int, answer: bytes, reason: str) -> None:
        self.uid = uid
        self.answer = answer
        self.reason = reason

    def __repr__(self) -> str:
        return f"Unmatched(uid={self.uid}, reason={self.reason!r})"


class StreamBroken:
    """The upstream broke the protocol (framing, an answer that is not DNS): nothing
    more can be read from this stream. The queries still in flight stay in flight for
    the caller to take back (:meth:`UpstreamStream.take_in_flight`)."""

    __slots__ = ("error",)

    def __init__(self, error: ProtocolError) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"StreamBroken({self.error!r})"


Event = Answered[Q] | Unmatched | StreamBroken


class UpstreamStream(Generic[Q]):
    """One pipelined DNS-over-stream connection to an upstream, as data.

    ``in_flight`` maps each DNS ID in use to its query and the caller's token (the
    pool keeps the send time there for the round-trip time). IDs start at a random
    point (``first_id`` for tests) and go up, skipping those in use: unique among the
    queries in flight, not guessable from outside.
    """

    __slots__ = ("_decoder", "_next_id", "_outbox", "broken", "in_flight")

    def __init__(self, first_id: int | None = None) -> None:
        self.in_flight: dict[int, tuple[Q, float]] = {}
        self._next_id = random.getrandbits(16) if first_id is None else first_id & 0xFFFF
        self._outbox: list[bytes] = []
        self._decoder = FrameDecoder(min_length=wire.HEADER_LEN)
        self.broken: ProtocolError | None = None

    @property
    def has_room(self) -> bool:
        """Whether one more query can get an ID."""
        return len(self.in_flight) < ID_SPACE

    @property
    def has_outgoing(self) -> bool:
        """Whether :meth:`data_to_send` has something."""
        return bool(self._outbox)

    def send(self, query: Q, token: float = 0.0) -> int:
        """Queue ``query`` under a fresh ID and return the ID.

        Raises ``OverflowError`` when all 65536 IDs are in flight (check
        :attr:`has_room`: that is the caller's bug, not the upstream's).
        """
        in_flight = self.in_flight
        if len(in_flight) >= ID_SPACE:
            raise OverflowError("every DNS ID is in flight on this connection")
        uid = self._next_id
        while uid in in_flight:
            uid = (uid + 1) & 0xFFFF
        self._next_id = (uid + 1) & 0xFFFF
        in_flight[uid] = (query, token)
        self._outbox.append(frame_with_id(query.upstream_msg, uid))
        return uid

    def forget(self, uid: int, query: Q) -> bool:
        """Stop waiting for ``query`` under ``uid`` (answered elsewhere, timed out);
        an answer for it is then :class:`Unmatched`. Whether it was in flight."""
        entry = self.in_flight.get(uid)
        if entry is not None and entry[0] is query:
            del self.in_flight[uid]
            return True
        return False

    def take_in_flight(self) -> list[Q]:
        """Every query still in flight, now no longer: for a connection that ended."""
        queries = [query for query, _ in self.in_flight.values()]
        self.in_flight.clear()
        return queries

    def data_to_send(self) -> bytes:
        """The framed queries queued since the last call, in one piece (b"" if none)."""
        outbox = self._outbox
        if not outbox:
            return b""
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        outbox.clear()
        return data

    def discard_outgoing(self) -> None:
        """Forget what was queued but not taken (the connection is gone)."""
        self._outbox.clear()

    def data_received(self, data: bytes) -> list[Event[Q]]:
        """Take bytes read from the upstream; return what they mean, in order.

        Raises nothing for any input: a broken stream is a :class:`StreamBroken` event,
        after which every call returns no events.
        """
        if self.broken is not None:
            return []
        decoder = self._decoder
        events: list[Event[Q]] = []
        in_flight = self.in_flight
        for msg in decoder.feed(data):
            uid = (msg[0] << 8) | msg[1]
            entry = in_flight.get(uid)
            if entry is None:
                events.append(Unmatched(uid, msg, UNKNOWN_ID))
                continue
            query = entry[0]
            if wire.echoes(msg, query.question):  # the usual case, without a call
                answer = msg
            else:
                try:
                    matched = match_answer(msg, query)
                except (MessageError, FormError) as exc:
                    return self._break(events, exc)
                if matched is None:
                    events.append(Unmatched(uid, msg, OTHER_QUESTION))
                    continue
                answer = matched
            del in_flight[uid]
            events.append((uid, query, entry[1], answer))
        if decoder.error is not None:
            return self._break(events, decoder.error)
        return events

    def _break(self, events: list[Event[Q]], error: ProtocolError) -> list[Event[Q]]:
        self.broken = error
        events.append(StreamBroken(error))
        return events
