"""The client side of DNS over a stream (TCP now, TLS next), sans-IO.

:class:`ClientStream` is a plain object in the manner of h11: bytes the client sent go
in (:meth:`~ClientStream.receive`), queries to resolve come out
(:meth:`~ClientStream.next_query`), answers go in (:meth:`~ClientStream.answer`), and
the bytes to write come out (:meth:`~ClientStream.output`; :meth:`~ClientStream.sent` says
how many the connection took). It owns the framing, the in-flight cap, the bound on
unread answers, the rules for malformed and failing frames and the deadlines; it has no
socket, no loop and no clock (every call that needs the time is given it). What the
connection should do next is its :class:`ClientState`. See docs/ARCHITECTURE.md,
"protocol".
"""

from __future__ import annotations

from enum import Enum

from dns2dot.protocol.framing import FrameDecoder
from dns2dot.protocol.wire import HEADER_LEN

#: How long answers may wait for a client that takes none of them (its socket buffers
#: are full) before the connection is reset: a client that reads, however slowly,
#: takes some within this; one that stopped reading holds a slot and memory for nothing.
STALL_TIMEOUT = 3.0

#: Failed frames in a row (answered FORMERR or NOTIMP, or not answerable at all) that
#: close the connection once they have come over FAILURE_SPAN seconds or more...
FAILURE_STREAK = 3
FAILURE_SPAN = 1.0
#: ...or at once when this many came in a row, however quickly: a client may pipeline a
#: batch of odd queries, but not an endless one.
FAILURE_BURST = 32


class ClientState(Enum):
    """What the connection does next; changed only by ``ClientStream._to``."""

    READING = "reading"  # read the client
    HELD = "held"  # do not read: the cap is reached, queries wait, or answers are unread
    INPUT_ENDED = "input_ended"  # the client ended its input: answer what it sent, close
    CLOSING = "closing"  # dns2dot stopped reading it (garbage): answer what came before, close
    CLOSED = "closed"  # all answered and written: close the connection
    RESET = "reset"  # abort: reset the connection and drop everything held for it


# The members as module globals: reading ``ClientState.READING`` goes through the enum
# class, and costs a microsecond on Python 3.11, on the path of every query.
READING, HELD, INPUT_ENDED, CLOSING, CLOSED, RESET = ClientState

_UNLIMITED = 1 << 30

_OPEN = (READING, HELD)
_DRAINING = (INPUT_ENDED, CLOSING)
_FINAL = (CLOSED, RESET)
_ALLOWED: dict[ClientState, frozenset[ClientState]] = {
    READING: frozenset((HELD, INPUT_ENDED, CLOSING, *_FINAL)),
    HELD: frozenset((READING, INPUT_ENDED, CLOSING, *_FINAL)),
    INPUT_ENDED: frozenset((CLOSING, *_FINAL)),
    CLOSING: frozenset(_FINAL),
    CLOSED: frozenset((RESET,)),
    RESET: frozenset(),
}


class ClientStream:
    """One client connection's DNS-over-stream state, bytes in and bytes out.

    - Framing (RFC 1035 §4.2.2): input split or coalesced anyhow gives the same queries.
      A length prefix below a header's 12 octets cannot be answered and unsynchronises
      the stream: nothing after it is read, what came before is answered, then the
      connection closes (``reason`` "framing").
    - At most ``max_inflight`` queries are at the resolver; the rest wait here and the
      client is not read (state HELD) until answers come back. Nor is it read while
      ``max_unsent`` bytes of answers are unwritten.
    - Failing frames: a frame answered FORMERR or NOTIMP, or not answerable at all (an
      error response), is a failure; any other answer ends the streak. FAILURE_STREAK
      failures in a row spread over FAILURE_SPAN seconds, or FAILURE_BURST in a row, close
      the connection after the answers already due (``reason`` "failures"), so one odd
      query, or one pipelined batch of them, costs a client nothing.
    - Deadlines (:meth:`expired`): a frame that trickles in, an idle client, and a client
      that takes none of its answers for ``stall_timeout`` seconds.
    - The end of the client's input is not the end of the connection (RFC 7766 §6.2.4):
      what it sent is answered, then state CLOSED.
    """

    __slots__ = (
        "_blocked_since",
        "_chunks",
        "_decoder",
        "_head",
        "_queries",
        "_streak",
        "_streak_started",
        "_unsent",
        "frame_started",
        "frame_timeout",
        "idle_timeout",
        "inflight",
        "last_active",
        "max_inflight",
        "max_unsent",
        "reason",
        "stall_timeout",
        "state",
        "unsent_bytes",
    )

    def __init__(
        self,
        now: float,
        *,
        max_inflight: int = 256,
        max_unsent: int = 1 << 20,
        frame_timeout: float = 5.0,
        idle_timeout: float = 10.0,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self.max_inflight = max_inflight
        self.max_unsent = max_unsent
        self.frame_timeout = frame_timeout
        self.idle_timeout = idle_timeout
        self.stall_timeout = stall_timeout
        self.state = READING
        self.reason: str | None = None  # why dns2dot ends the connection, for counters
        self.inflight = 0
        # Framed answers not yet taken by the connection: _unsent (what output() gave
        # and the connection did not take), then _chunks (answers since), unsent_bytes
        # in all. Joined once per write, as a bytearray grown answer by answer and
        # consumed from the front costs a reallocation per answer.
        self._chunks: list[bytes] = []
        self._unsent = b""
        self.unsent_bytes = 0
        self.last_active = now
        self.frame_started = now
        self._decoder = FrameDecoder()
        # Read, not yet handed to the resolver: _queries[_head:] (a list and an index
        # rather than a deque, which costs half a kilobyte even when empty).
        self._queries: list[bytes] = []
        self._head = 0
        self._blocked_since: float | None = None  # output waiting, none taken since
        self._streak = 0
        self._streak_started = now

    # -- the one place the state changes ----------------------------------------------

    def _to(self, state: ClientState, now: float, reason: str | None = None) -> None:
        old = self.state
        if state is old:
            return
        if state not in _ALLOWED[old]:
            raise AssertionError(f"client stream: {old.name} -> {state.name}")
        self.state = state
        if reason is not None and self.reason is None:
            self.reason = reason
        if state is READING:
            self.frame_started = now  # a frame cut while held restarts its deadline
        elif state in _DRAINING:
            self._decoder = FrameDecoder()  # a part-read frame will never be completed
        elif state is RESET:
            self._queries.clear()
            self._head = 0
            self._chunks.clear()
            self._unsent = b""
            self.unsent_bytes = 0
            self._blocked_since = None

    def _settle(self, now: float) -> None:
        """Move between READING and HELD, or to CLOSED once a drain is complete."""
        state = self.state
        if state is READING or state is HELD:
            readable = (
                not self._queries
                and self.inflight < self.max_inflight
                and self.unsent_bytes < self.max_unsent
            )
            self._to(READING if readable else HELD, now)
        elif (state is INPUT_ENDED or state is CLOSING) and not (
            self.inflight or self._queries or self.unsent_bytes
        ):
            self._to(CLOSED, now)

    # -- client -> resolver ------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """Bytes read from the client; ``b""`` is the end of its input. Then call
        :meth:`next_query` until it returns None."""
        if self.state not in _OPEN:
            return  # read before the connection learnt it should stop: ignored
        if not data:
            self._to(INPUT_ENDED, now)
            self._settle(now)
            return
        self.last_active = now
        decoder = self._decoder
        was_buffered = decoder.buffered
        messages = decoder.feed(data)
        if decoder.buffered and not was_buffered:
            self.frame_started = now
        if messages:
            self._queries.extend(messages)
        if decoder.error is not None:
            self._to(CLOSING, now, "framing")
        if not self._queries:
            self._settle(now)  # else next_query settles once they are handed on

    def take(self, now: float, limit: int = _UNLIMITED) -> list[bytes]:
        """The queries to hand to the resolver now, in order: as many as the cap allows
        (at most ``limit``); empty when there are none. Call again until it is empty:
        answers given meanwhile may make room."""
        queries = self._queries
        room = min(self.max_inflight - self.inflight, limit)
        if not queries or room <= 0 or self.state in _FINAL:
            self._settle(now)  # once per round: read again, or hold
            return []
        head = self._head
        end = head + room
        if end >= len(queries):
            batch = queries[head:] if head else queries
            self._queries = []
            self._head = 0
        else:
            batch = queries[head:end]
            self._head = end
        self.inflight += len(batch)
        if self.inflight >= self.max_inflight and self.state is READING:
            self._to(HELD, now)
        return batch

    def next_query(self, now: float) -> bytes | None:
        """The next query to hand to the resolver, or None (none read, or the cap)."""
        batch = self.take(now, 1)
        return batch[0] if batch else None

    def give_back(self, count: int, now: float) -> None:
        """The last ``count`` queries taken were not handed on: the stream began
        closing (its :attr:`reason` changed) while they were."""
        if count and self.state not in _FINAL:
            self.inflight -= count
            self._settle(now)

    def dropped(self, now: float) -> None:
        """The resolver will not answer the last query (not DNS enough to answer)."""
        if self.state in _FINAL:
            return
        self.inflight -= 1
        self._failed(now)
        self._settle(now)

    def end_input(self, now: float) -> None:
        """The client ended its input (end of stream)."""
        self.receive(b"", now)

    # -- resolver -> client ------------------------------------------------------------

    def answer(self, msg: bytes, now: float) -> None:
        """An answer from the resolver, to be written framed; dropped after a reset."""
        state = self.state
        if state is RESET or state is CLOSED:
            return
        n = len(msg)
        self.inflight -= 1
        self._chunks.append(n.to_bytes(2, "big") + msg)  # OverflowError past 65535 octets
        unsent = self.unsent_bytes = self.unsent_bytes + n + 2
        self.last_active = now
        if n > 3 and (msg[3] & 0x0F) in (1, 4):  # FORMERR, NOTIMP
            self._failed(now)
        else:
            self._streak = 0
            if state is READING and unsent < self.max_unsent:
                return  # nothing to settle: the common case, kept short
        self._settle(now)

    def output(self) -> bytes:
        """What to write: every answer not yet taken by the connection, in order."""
        chunks = self._chunks
        if chunks:
            if self._unsent:
                chunks.insert(0, self._unsent)
            self._unsent = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
        return self._unsent

    def sent(self, count: int, now: float) -> None:
        """The connection took the first ``count`` bytes of :meth:`output`."""
        if count:
            self._unsent = self._unsent[count:]
            self.unsent_bytes -= count
            self.last_active = now  # a slow reader is not an idle one
        if not self.unsent_bytes:
            self._blocked_since = None
        elif count or self._blocked_since is None:
            self._blocked_since = now
        self._settle(now)

    def _failed(self, now: float) -> None:
        if self._streak == 0:
            self._streak_started = now
        self._streak += 1
        if self.state in _OPEN and (
            self._streak >= FAILURE_BURST
            or (self._streak >= FAILURE_STREAK and now - self._streak_started >= FAILURE_SPAN)
        ):
            self._queries.clear()  # read after the failures: not answered
            self._head = 0
            self._to(CLOSING, now, "failures")

    # -- deadlines and ends ------------------------------------------------------------

    def expired(self, now: float) -> str | None:
        """Why the connection should be ended now (a counter's name), or None."""
        if self.state in _FINAL:
            return None
        blocked = self._blocked_since
        if blocked is not None and now - blocked >= self.stall_timeout:
            return "unread_output"
        # A frame can only trickle in while it is read: not while the cap holds reading.
        if (
            self.state is READING
            and self._decoder.buffered
            and now - self.frame_started > self.frame_timeout
        ):
            return "slow_frame"
        if self.inflight == 0 and now - self.last_active > self.idle_timeout:
            return "idle"
        return None

    def close(self, now: float, reason: str | None = None) -> None:
        """End the connection: gracefully when nothing waits to be written, else reset."""
        if self.state in _FINAL:
            return
        self._to(RESET if self.unsent_bytes else CLOSED, now, reason)

    def reset(self, now: float, reason: str | None = None) -> None:
        """End the connection at once (a reset), dropping everything held for it."""
        if self.state is not RESET:
            self._to(RESET, now, reason)

    @property
    def write_blocked(self) -> bool:
        """Whether answers wait for the connection to take more (it took less than all)."""
        return self._blocked_since is not None

    @property
    def stall_deadline(self) -> float:
        """When :meth:`expired` says "unread_output" unless the connection takes some."""
        blocked = self._blocked_since
        return (self.last_active if blocked is None else blocked) + self.stall_timeout

    @property
    def buffered(self) -> int:
        """Bytes of a frame not yet complete."""
        return self._decoder.buffered

    @property
    def waiting(self) -> int:
        """Queries read and not yet handed to the resolver."""
        return len(self._queries) - self._head


class FrameScanner:
    """Follows the length prefixes of a client's byte stream without copying it: pipe
    mode's check of the client's frames, which passes the bytes on untouched.

    :meth:`feed` says where the stream stops being followed: at a prefix too short for
    a DNS header (the bytes before it can still go upstream, nothing after it does), or
    once frames that cannot be requests keep coming (QR set, or a question or zone count
    other than one; any opcode passes, as pipe mode carries UPDATE and NOTIFY too): the
    failure rule of :class:`ClientStream`, judged on the client's frames since pipe mode
    does not read the answers. Then the frames of the failing streak that are in the
    deciding read do not go upstream either: an upstream fed the garbage may drop the
    connection before answering the good queries in front of it. A frame whose header
    is cut between two reads is not judged.
    """

    __slots__ = ("_half", "_skip", "_streak", "_streak_started")

    def __init__(self) -> None:
        self._skip = 0  # bytes of the current frame's body still to come
        self._half = -1  # the first octet of a prefix cut between two reads
        self._streak = 0
        self._streak_started = 0.0

    def feed(self, data: bytes, now: float) -> int:
        """-1 while the stream is followed; else how much of ``data`` still goes
        upstream: the offset of a bad prefix (0 when its first octet came in the
        previous read), or, when the failures decided, the offset of the streak's first
        frame in this read (of the first frame that starts in it when the streak began
        before it)."""
        size = len(data)
        if not size:
            return -1
        pos = self._skip
        if self._half >= 0:
            length = (self._half << 8) | data[0]
            self._half = -1
            if length < HEADER_LEN:
                return 0
            pos = 1 + length
        streak_from = pos  # where this read's part of the failing streak starts
        while pos + 2 <= size:
            length = (data[pos] << 8) | data[pos + 1]
            if length < HEADER_LEN:
                return pos
            if pos + 8 <= size:
                if data[pos + 4] & 0x80 or data[pos + 6] or data[pos + 7] != 1:
                    if self._streak == 0:
                        self._streak_started = now
                        streak_from = pos
                    self._streak += 1
                    if self._streak >= FAILURE_BURST or (
                        self._streak >= FAILURE_STREAK
                        and now - self._streak_started >= FAILURE_SPAN
                    ):
                        return streak_from
                else:
                    self._streak = 0
            pos += 2 + length
        if pos == size - 1:
            self._half = data[pos]
            self._skip = 0
        else:
            self._skip = pos - size if pos > size else 0
        return -1
