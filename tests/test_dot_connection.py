"""The pooled connection (dns2dot/upstream/dot.py) on a socket pair: a plain:// upstream
played by the test on the other end, so the connection's states, max_queries
retirement, the per-connection in-flight limit and a broken stream are reached on
purpose. Every wait is bounded; nothing sleeps. Run on asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import replace

import dns.message
import dns.rcode
import pytest
from support.loops import LOOPS, run

from dns2dot.config import Config
from dns2dot.policy.strategy import Strategy
from dns2dot.protocol import wire
from dns2dot.proxy import lifecycle
from dns2dot.transport.channel import PlainChannel
from dns2dot.transport.tls import TlsContexts
from dns2dot.upstream.connection import MAX_INFLIGHT_PER_CONNECTION, ConnectionState
from dns2dot.upstream.dot import DotConnection
from dns2dot.upstream.exchange import Exchange
from dns2dot.upstream.pool import UpstreamPool, UpstreamServer
from dns2dot.upstream.spec import UpstreamSpec


class Upstream:
    """The far end of each connection the pool opens: reads queries, answers on demand."""

    def __init__(self) -> None:
        self.ends: list[socket.socket] = []
        self.opened = 0

    async def open(self, server: UpstreamServer) -> PlainChannel:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        self.ends.append(theirs)
        self.opened += 1
        return PlainChannel(ours)

    async def queries(self, end: socket.socket, count: int) -> list[bytes]:
        """``count`` framed queries from ``end`` (bounded by the test's 30 s)."""
        loop = asyncio.get_running_loop()
        data = b""
        out: list[bytes] = []
        while len(out) < count:
            chunk = await loop.sock_recv(end, 65536)
            assert chunk, "connection closed early"
            data += chunk
            while len(data) >= 2 and len(data) >= 2 + struct.unpack_from("!H", data)[0]:
                n = struct.unpack_from("!H", data)[0]
                out.append(data[2 : 2 + n])
                data = data[2 + n :]
        return out


def answer(query: bytes) -> bytes:
    response = dns.message.make_response(dns.message.from_wire(query))
    wire_ = response.to_wire()
    return struct.pack("!H", len(wire_)) + wire_


def make_exchange(name: str, replies: list[bytes], deadline: float) -> Exchange:
    msg = dns.message.make_query(name, "A").to_wire()
    return Exchange(msg, wire.parse_query(msg), replies.append, deadline)


def pool_for(upstream: Upstream, monkeypatch: pytest.MonkeyPatch, max_queries: int) -> UpstreamPool:
    monkeypatch.setattr(UpstreamServer, "open_plain_channel", lambda server: upstream.open(server))
    spec = UpstreamSpec("127.0.0.1", 53, transport="plain")
    return UpstreamPool(
        [spec],
        TlsContexts(),
        strategy=Strategy(Config().strategy),
        lifecycle=replace(lifecycle(Config()), max_queries=max_queries),
    )


async def until(condition: object, what: str) -> None:
    for _ in range(2000):  # bounded: 2000 loop turns of at most 5 ms
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never: {what}")


@pytest.mark.parametrize("loop", LOOPS)
def test_retired_after_max_queries_once_answered(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        upstream = Upstream()
        pool = pool_for(upstream, monkeypatch, max_queries=3)
        deadline = asyncio.get_running_loop().time() + 20
        replies: list[bytes] = []
        for i in range(3):
            pool.submit(make_exchange(f"q{i}.test.", replies, deadline))
        [first] = pool.servers[0].connections
        assert first.state is ConnectionState.CONNECTING
        assert not first.accepting, "its query cap is reached"
        await until(lambda: upstream.opened == 1, "connected")
        queries = await upstream.queries(upstream.ends[0], 3)
        assert first.state is ConnectionState.OPEN
        pool.submit(make_exchange("q3.test.", replies, deadline))
        assert len(pool.servers[0].connections) == 2, "a fresh connection takes the 4th"
        upstream.ends[0].sendall(b"".join(answer(q) for q in queries))
        await until(lambda: len(replies) == 3, "three answers")
        await until(lambda: first.state is ConnectionState.CLOSED, "the first retired")
        assert first not in pool.servers[0].connections
        [query] = await upstream.queries(upstream.ends[1], 1)
        upstream.ends[1].sendall(answer(query))
        await until(lambda: len(replies) == 4, "the fourth answer")
        assert all(dns.message.from_wire(r).rcode() == dns.rcode.NOERROR for r in replies)
        pool.close()

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_per_connection_inflight_limit(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        upstream = Upstream()
        pool = pool_for(upstream, monkeypatch, max_queries=50000)
        deadline = asyncio.get_running_loop().time() + 20
        replies: list[bytes] = []
        for i in range(MAX_INFLIGHT_PER_CONNECTION + 1):
            pool.submit(make_exchange(f"q{i}.test.", replies, deadline))
        first, second = pool.servers[0].connections
        assert first.load == MAX_INFLIGHT_PER_CONNECTION and not first.accepting
        assert second.load == 1
        pool.close()
        await until(lambda: len(replies) == MAX_INFLIGHT_PER_CONNECTION + 1, "all failed")
        assert {dns.message.from_wire(r).rcode() for r in replies} == {dns.rcode.SERVFAIL}

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_broken_framing_resends_once_on_a_fresh_connection(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        upstream = Upstream()
        pool = pool_for(upstream, monkeypatch, max_queries=50000)
        deadline = asyncio.get_running_loop().time() + 20
        replies: list[bytes] = []
        pool.submit(make_exchange("q.test.", replies, deadline))
        [first] = pool.servers[0].connections
        await until(lambda: upstream.opened == 1, "connected")
        await upstream.queries(upstream.ends[0], 1)
        upstream.ends[0].sendall(b"\x00\x00")  # a zero length prefix
        await until(lambda: first.state is ConnectionState.CLOSED, "the broken one closed")
        await until(lambda: upstream.opened == 2, "a fresh connection")
        [query] = await upstream.queries(upstream.ends[1], 1)
        upstream.ends[1].close()  # the second loss: SERVFAIL
        await until(lambda: len(replies) == 1, "an answer")
        assert dns.message.from_wire(replies[0]).rcode() == dns.rcode.SERVFAIL
        assert query
        pool.close()

    run(loop, main)


def fail_once(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> list[int]:
    """Make ``cls.name`` raise RuntimeError on its first call (a bug after the open);
    the list counts the calls."""
    original = getattr(cls, name)
    calls: list[int] = []

    def failing(self: object, *args: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected")
        return original(self, *args)

    monkeypatch.setattr(cls, name, failing)
    return calls


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("where", ["run", "cancelled"])
def test_a_connection_that_fails_after_opening_hands_its_queries_back(
    loop: str, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error in the connection's own code once the channel is open (``run``: its
    first write raises), or its task cancelled while it waits for answers: the channel
    is closed, the queries go back to the pool once and are answered on a fresh
    connection, each exactly once."""

    async def main() -> None:
        upstream = Upstream()
        pool = pool_for(upstream, monkeypatch, max_queries=50000)
        if where == "run":
            fail_once(monkeypatch, DotConnection, "_flush")
        deadline = asyncio.get_running_loop().time() + 20
        replies: list[bytes] = []
        for i in range(3):
            pool.submit(make_exchange(f"f{i}.test.", replies, deadline))
        [first] = pool.servers[0].connections
        await until(lambda: upstream.opened >= 1, "connected")
        if where == "cancelled":
            await upstream.queries(upstream.ends[0], 3)
            assert first.state is ConnectionState.OPEN
            first._task.cancel()
        await until(lambda: first.state is ConnectionState.CLOSED, "the failed one closed")
        assert first not in pool.servers[0].connections
        await until(lambda: upstream.opened == 2, "a fresh connection")
        queries = await upstream.queries(upstream.ends[1], 3)
        upstream.ends[1].sendall(b"".join(answer(q) for q in queries))
        await until(lambda: len(replies) == 3, "three answers")
        assert {dns.message.from_wire(r).rcode() for r in replies} == {dns.rcode.NOERROR}
        upstream.ends[0].setblocking(True)
        upstream.ends[0].settimeout(5)
        while upstream.ends[0].recv(65536):  # the failed connection's socket was closed
            pass
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(replies) == 3, "an exchange answered twice"
        pool.close()

    run(loop, main)
