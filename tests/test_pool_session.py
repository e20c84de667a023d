"""Pool mode's client session (dns2dot/serve/tcp.py ``PoolSession``) on socket pairs.

The client is one end of a plain socket pair, driven from a thread; the session runs
on the other end with a fake resolver that answers when the test says so (an echo of
the query as its "answer"), so every state is reached on purpose: the in-flight cap
holding queries back, a half-close with queries still unanswered, a client that stops
reading, a handler that raises, a frame left half-sent while the cap holds reading.

The end-to-end behaviour against a real dns2dot and unbound is in
test_faults_client.py; this is the state machine alone. Run on the default asyncio
loop and on uvloop (what dns2dot runs on).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable

import pytest
from support.loops import LOOPS, read_to_end, run

from dns2dot.config import Config
from dns2dot.metrics import Stats
from dns2dot.protocol.client_stream import FAILURE_BURST
from dns2dot.proxy import tcp_limits
from dns2dot.serve.tcp import PoolSession, TcpLimits

Reply = Callable[[bytes], None]


def limits(**changes: float) -> TcpLimits:
    """The default configuration's TCP limits (``Config()``), with ``changes``."""
    built = tcp_limits(Config())
    for name, value in changes.items():
        setattr(built, name, value)
    return built


def query(i: int, size: int = 20) -> bytes:
    """A stand-in query: 12 header-sized octets carrying ``i``, padded to ``size``."""
    return struct.pack("!H", i) + bytes(size - 2)


def framed(msg: bytes) -> bytes:
    return struct.pack("!H", len(msg)) + msg


def unframe(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 2 <= len(data):
        (n,) = struct.unpack_from("!H", data, pos)
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    assert pos == len(data), "a torn frame"
    return out


class FakeResolver:
    """Keeps every query with its reply callback; the test answers them."""

    def __init__(self) -> None:
        self.pending: list[tuple[bytes, Reply]] = []
        self.seen = 0
        self.most_in_flight = 0

    def handle(self, msg: bytes, reply: Reply) -> bool:
        self.seen += 1
        self.pending.append((msg, reply))
        self.most_in_flight = max(self.most_in_flight, len(self.pending))
        return True

    def answer_all(self, answer: Callable[[bytes], bytes] = lambda m: m) -> int:
        pending, self.pending = self.pending, []
        for msg, reply in pending:
            reply(answer(msg))
        return len(pending)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair with small buffers (a reset only exists on TCP,
    and the kernel's own buffers would otherwise absorb megabytes)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(listener.getsockname())
        ours, _ = listener.accept()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return ours, client


async def session_on_pair(
    handler: Callable[[bytes, Reply], bool],
    limits: TcpLimits,
    stats: Stats | None = None,
    *,
    tcp: bool = False,
) -> tuple[PoolSession, socket.socket]:
    ours, client = tcp_pair() if tcp else socket.socketpair()
    ours.setblocking(False)
    session = PoolSession(ours, handler, limits, stats or Stats())
    return session, client


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(2000):  # 10 s
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("loop_name", LOOPS)
def test_half_close_beyond_the_cap_gets_every_answer_then_end_of_stream(loop_name: str) -> None:
    """50 queries and a half-close, with at most 3 in flight: the session never holds
    more than 3 at the resolver, answers all 50 (the ones it kept back included), then
    closes its side."""
    resolver = FakeResolver()
    sent = [query(i) for i in range(50)]

    async def main() -> list[bytes]:
        session, client = await session_on_pair(resolver.handle, limits(max_inflight=3))
        task = asyncio.ensure_future(session.run())
        client.sendall(b"".join(framed(q) for q in sent))
        client.shutdown(socket.SHUT_WR)
        received = asyncio.ensure_future(asyncio.to_thread(read_to_end, client))
        while not task.done() and resolver.seen < len(sent):
            await until(lambda: bool(resolver.pending), "queries at the resolver")
            resolver.answer_all()
        resolver.answer_all()
        data = await received
        await task
        client.close()
        return unframe(data)

    assert run(loop_name, main) == sent
    assert resolver.most_in_flight == 3


def test_a_frame_left_half_sent_while_the_cap_holds_reading_is_not_slow() -> None:
    """The cap stops reading, so a frame cut at the end of the last read cannot be
    completed: the frame deadline waits until reading resumes, then starts afresh."""
    resolver = FakeResolver()
    tight = limits(max_inflight=1, frame_timeout=5.0, idle_timeout=60.0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        session, client = await session_on_pair(resolver.handle, tight)
        task = asyncio.ensure_future(session.run())
        client.sendall(framed(query(1)) + framed(query(2))[:5])  # one and a half
        await until(lambda: resolver.seen == 1, "the first query")
        later = loop.time() + 60
        assert session.expired(later) is None  # reading is held: neither slow nor idle
        resolver.answer_all()
        await until(lambda: session.expired(loop.time() + 6) == "slow_frame", "reading again")
        assert session.expired(loop.time() + 4) is None  # the deadline restarted
        session.close()
        await task
        client.close()

    run("uvloop", main)


def test_a_client_that_stops_reading_is_reset_past_its_write_buffer() -> None:
    """Answers pile up in the session only up to ``max_write_buffer``; past it the
    client is counted as ``unread_output`` and reset, not kept for ever."""
    stats = Stats()
    big = query(0, size=16000)

    def handler(msg: bytes, reply: Reply) -> bool:
        asyncio.get_running_loop().call_soon(reply, big)
        return True

    async def main() -> None:
        session, client = await session_on_pair(
            handler, limits(max_write_buffer=64 * 1024), stats, tcp=True
        )
        task = asyncio.ensure_future(session.run())
        await asyncio.to_thread(client.sendall, b"".join(framed(query(i)) for i in range(200)))
        await task  # ends by itself
        with pytest.raises(ConnectionResetError):
            await asyncio.to_thread(read_to_end, client)
        client.close()

    run("uvloop", main)
    assert stats.dropped["unread_output"] == 1


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_handler_that_raises_closes_only_that_client(
    loop_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the resolver on one query (here: the one held back by the cap, then
    served by the resume) closes that client, loudly, and the session ends."""
    calls: list[Reply] = []

    def handler(msg: bytes, reply: Reply) -> bool:
        if msg == query(2):
            raise RuntimeError("a bug")
        calls.append(reply)
        return True

    async def main() -> bytes:
        session, client = await session_on_pair(handler, limits(max_inflight=1))
        task = asyncio.ensure_future(session.run())
        client.sendall(framed(query(1)) + framed(query(2)))
        await until(lambda: bool(calls), "the first query")
        calls[0](query(1))  # frees the slot: query 2 is served by the resume, and raises
        data = await asyncio.to_thread(read_to_end, client)
        await task
        client.close()
        return data

    with caplog.at_level(logging.ERROR, logger="dns2dot.tcp"):
        assert unframe(run(loop_name, main)) == [query(1)]
    assert "unexpected error" in caplog.text


def test_answers_after_the_session_closed_are_dropped_quietly() -> None:
    """The sweep or a shutdown closes a session with queries still at the resolver;
    their answers come later and go nowhere, without an error."""
    resolver = FakeResolver()

    async def main() -> None:
        session, client = await session_on_pair(resolver.handle, limits())
        task = asyncio.ensure_future(session.run())
        client.sendall(framed(query(1)) + framed(query(2)))
        await until(lambda: resolver.seen == 2, "both queries")
        session.close()
        await task
        assert resolver.answer_all() == 2
        await asyncio.sleep(0.01)  # the flush they scheduled runs
        assert read_to_end(client) == b""
        client.close()

    run("uvloop", main)


def test_failing_frames_close_the_session_after_their_answers() -> None:
    """A burst of frames the resolver answers FORMERR: the session answers as many as
    the failure rule allows, writes them, then closes (FIN), counted as "failures";
    the frames after them are not handed on (README "How it behaves")."""
    stats = Stats()
    seen: list[bytes] = []

    def formerr(msg: bytes, reply: Reply) -> bool:
        seen.append(msg)
        reply(msg[:3] + bytes([msg[3] | 1]) + msg[4:])
        return True

    async def main() -> bytes:
        session, client = await session_on_pair(formerr, limits(max_inflight=1000), stats)
        task = asyncio.ensure_future(session.run())
        client.sendall(b"".join(framed(query(i)) for i in range(FAILURE_BURST * 2)))
        data = await asyncio.to_thread(read_to_end, client)
        await task
        client.close()
        return data

    answers = unframe(run("uvloop", main))
    assert len(answers) == len(seen) == FAILURE_BURST
    assert stats.dropped["failures"] == 1
