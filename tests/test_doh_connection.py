"""The DoH upstream connection in-process: a real :class:`DohConnection`, pool and TLS
channel against an HTTP/2 (or HTTP/1.1) peer that the test drives, on a socketpair.

Why: the DoH failure rules (docs/ARCHITECTURE.md, "upstream") decide whether a query is
sent again, elsewhere, or answered SERVFAIL; here each is checked stream by stream,
without processes or sleeping: GOAWAY, REFUSED_STREAM, HTTP errors, a wrong content
type, flow control both ways, the server's stream limit, and the HTTP/1.1 fallback.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
import trustme

from dns2dot.config import Config
from dns2dot.policy.strategy import Strategy
from dns2dot.protocol import wire
from dns2dot.protocol.doh import CONTENT_TYPE, parse_http1_head
from dns2dot.proxy import lifecycle
from dns2dot.transport.channel import TlsChannel
from dns2dot.transport.tls import TlsContexts
from dns2dot.upstream.connection import ConnectionState
from dns2dot.upstream.doh import DohConnection, Phase
from dns2dot.upstream.exchange import Exchange
from dns2dot.upstream.pool import UpstreamPool, UpstreamServer
from dns2dot.upstream.spec import UpstreamSpec

NAME = "dns.test"
TURNS = 2000  # loop turns any test waits at most for one condition


class Peer:
    """The server end of one connection: TLS through memory BIOs, then HTTP/2 (h2's
    server side) or HTTP/1.1 by hand. Records requests; answers only when told to,
    unless ``auto`` is set."""

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        http1: bool = False,
        settings: dict[int, int] | None = None,
        auto: bool = False,
        ack: bool = True,
    ) -> None:
        self.sock = sock
        self.ack = ack  # give back flow-control credit for request bodies
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.http1 = http1
        self.auto = auto
        self.handshaken = False
        self.eof = False
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        if settings:  # in the first SETTINGS frame, as a server would
            self.h2.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        self.h2.initiate_connection()
        self.headers: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytes] = {}
        self.complete: list[int] = []  # streams (or HTTP/1.1 request numbers) in order
        self.open_streams = 0
        self.most_open = 0  # the most streams open at once
        self.client_resets: list[int] = []
        self.raw = b""  # HTTP/1.1 bytes not parsed yet
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    # -- receiving ----------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except (BlockingIOError, ConnectionResetError):
            return
        if not data:
            self.eof = True
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            return
        self.incoming.write(data)
        plain = b""
        try:
            self.tls.do_handshake()
            self.handshaken = True
            while chunk := self.tls.read(1 << 20):
                plain += chunk
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        if plain and self.http1:
            self._http1_received(plain)
        elif plain:
            for event in self.h2.receive_data(plain):
                self._on_event(event)
        self.flush()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None and event.headers is not None
            self.headers[event.stream_id] = {bytes(k): bytes(v) for k, v in event.headers}
            self.bodies[event.stream_id] = b""
            self.open_streams += 1
            self.most_open = max(self.most_open, self.open_streams)
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None and event.data is not None
            self.bodies[event.stream_id] += event.data
            if self.ack:
                length = event.flow_controlled_length or 0
                self.h2.acknowledge_received_data(length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            self.complete.append(event.stream_id)
            if self.auto:
                self.answer(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            self.client_resets.append(event.stream_id)

    def _http1_received(self, data: bytes) -> None:
        self.raw += data
        while b"\r\n\r\n" in self.raw:
            head, _, rest = self.raw.partition(b"\r\n\r\n")
            _, headers = parse_http1_head(head)
            length = int(headers["content-length"])
            if len(rest) < length:
                return
            number = len(self.complete) + 1
            self.headers[number] = {k.encode(): v.encode() for k, v in headers.items()}
            self.headers[number][b":request-line"] = head.split(b"\r\n")[0]
            self.bodies[number] = rest[:length]
            self.raw = rest[length:]
            self.complete.append(number)
            self.open_streams = 1
            self.most_open = max(self.most_open, 1)
            if self.auto:
                self.answer(number)

    # -- sending ------------------------------------------------------------------------

    def flush(self) -> None:
        # h2's preface waits for the end of the handshake.
        if self.handshaken and not self.http1 and (data := self.h2.data_to_send()):
            self.tls.write(data)
        if pending := self.outgoing.read():
            self.sock.sendall(pending)

    def write_http1(self, data: bytes) -> None:
        self.tls.write(data)
        self.flush()

    def query(self, stream_id: int) -> dns.message.Message:
        return dns.message.from_wire(self.bodies[stream_id])

    def answer(
        self,
        stream_id: int,
        *,
        status: int = 200,
        content_type: str = CONTENT_TYPE,
        body: bytes | None = None,
        keep_alive: bool = True,
    ) -> None:
        """Answer the request on ``stream_id``: by default its A record, 192.0.2.1."""
        if body is None:
            response = dns.message.make_response(self.query(stream_id))
            response.answer.append(
                dns.rrset.from_text(response.question[0].name, 60, "IN", "A", "192.0.2.1")
            )
            body = response.to_wire()
        self.open_streams -= 1
        if self.http1:
            head = f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
            head += f"Content-Length: {len(body)}\r\n"
            head += "" if keep_alive else "Connection: close\r\n"
            self.write_http1(head.encode() + b"\r\n" + body)
            return
        self.h2.send_headers(
            stream_id,
            [
                (":status", str(status)),
                ("content-type", content_type),
                ("content-length", str(len(body))),
            ],
        )
        sent = 0
        while sent < len(body):  # the largest frames the client allows
            size = min(self.h2.max_outbound_frame_size, len(body) - sent)
            size = min(size, self.h2.local_flow_control_window(stream_id))
            assert size > 0, "the client's receive window is closed"
            self.h2.send_data(stream_id, body[sent : sent + size])
            sent += size
        self.h2.end_stream(stream_id)
        self.flush()

    def refuse(self, stream_id: int) -> None:
        self.open_streams -= 1
        self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        self.flush()

    def goaway(self, last_stream_id: int) -> None:
        """A graceful GOAWAY, written by hand: h2 answers no stream after its own."""
        self.flush()
        payload = last_stream_id.to_bytes(4, "big") + bytes(4)  # NO_ERROR
        self.tls.write(len(payload).to_bytes(3, "big") + b"\x07\x00" + bytes(4) + payload)
        self.flush()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


class Harness:
    """A pool with one DoH upstream whose connections reach :class:`Peer` objects."""

    def __init__(self, tmp_path: Path, *, http1: bool = False, **peer: object) -> None:
        ca = trustme.CA()
        self.server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(NAME).configure_cert(self.server_context)
        self.server_context.set_alpn_protocols(["http/1.1" if http1 else "h2"])
        cafile = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(cafile))
        spec = UpstreamSpec("127.0.0.1", 443, NAME, (), "https", "/dns-query")
        self.pool = UpstreamPool(
            [spec],
            TlsContexts(str(cafile)),
            strategy=Strategy(Config().strategy),
            lifecycle=lifecycle(Config()),
            connection_types={"https": DohConnection},
        )
        self.server: UpstreamServer = self.pool.servers[0]
        self.http1 = http1
        self.peer_options = peer
        self.peers: list[Peer] = []
        self.replies: dict[str, list[bytes]] = {}
        self.loop = asyncio.get_running_loop()
        self.server.open_channel = self._open_channel  # type: ignore[method-assign]

    async def _open_channel(self) -> TlsChannel:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        self.peers.append(Peer(theirs, self.server_context, http1=self.http1, **self.peer_options))  # type: ignore[arg-type]
        channel = TlsChannel(ours, self.server.context, NAME)
        await channel.handshake()
        return channel

    def exchange(self, name: str, qid: int = 0x1234) -> Exchange:
        """A query for ``name`` whose replies are kept, not submitted yet."""
        msg = dns.message.make_query(name, "A", id=qid).to_wire()
        self.replies.setdefault(name, [])
        return Exchange(
            msg, wire.parse_query(msg), self.replies[name].append, self.loop.time() + 30
        )

    def ask(self, name: str, qid: int = 0x1234) -> Exchange:
        exchange = self.exchange(name, qid)
        self.pool.submit(exchange)
        return exchange

    def reply(self, name: str) -> dns.message.Message:
        (only,) = self.replies[name]
        return dns.message.from_wire(only)

    def answered(self, name: str) -> bool:
        return bool(self.replies.get(name))

    @property
    def connections(self) -> list[DohConnection]:
        return [c for c in self.server.connections if isinstance(c, DohConnection)]

    def close(self) -> None:
        self.pool.close()
        for peer in self.peers:
            peer.close()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run until ``condition`` holds (bounded in turns, no sleeping)."""
    for _ in range(TURNS):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


def run(test: Callable[[Path], Awaitable[None]]) -> Callable[[Path], None]:
    """Run an async test on a fresh loop, bounded in time."""

    def runner(tmp_path: Path) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(20):
                await test(tmp_path)

        asyncio.run(bounded())

    runner.__name__ = test.__name__
    runner.__doc__ = test.__doc__
    return runner


def a_of(msg: dns.message.Message) -> set[str]:
    return {rr.to_text() for rrset in msg.answer for rr in rrset}


# -- the tests ---------------------------------------------------------------------------


@run
async def test_answers_under_the_clients_ids(tmp_path: Path) -> None:
    """Queries go out as POSTs with ID 0 and the right headers; answers come back under
    each client's own ID, all on one connection."""
    h = Harness(tmp_path, auto=True)
    names = [f"q{i}.example.test." for i in range(5)]
    for i, name in enumerate(names):
        h.ask(name, qid=0x1000 + i)
    await until(lambda: all(h.answered(n) for n in names), "five answers")
    for i, name in enumerate(names):
        reply = h.reply(name)
        assert reply.id == 0x1000 + i and a_of(reply) == {"192.0.2.1"}, reply
    (peer,) = h.peers
    assert len(peer.complete) == 5
    for stream_id in peer.complete:
        headers = peer.headers[stream_id]
        assert headers[b":method"] == b"POST" and headers[b":scheme"] == b"https"
        assert headers[b":path"] == b"/dns-query"
        assert headers[b":authority"] == NAME.encode()
        assert headers[b"content-type"] == headers[b"accept"] == CONTENT_TYPE.encode()
        assert int(headers[b"content-length"]) == len(peer.bodies[stream_id])
        assert peer.query(stream_id).id == 0
    h.close()


@run
async def test_goaway_resends_streams_beyond_last_elsewhere(tmp_path: Path) -> None:
    """GOAWAY naming stream 3 of six: the other four (never processed, RFC 9113 §6.8)
    go to a new connection at once, and the old one takes nothing more; streams 1 and
    3 are still answered there (a graceful shutdown), then it is closed. Every query
    gets exactly one answer."""
    h = Harness(tmp_path)
    names = [f"g{i}.example.test." for i in range(6)]
    for name in names:
        h.ask(name)
    await until(lambda: h.peers and len(h.peers[0].complete) == 6, "six requests")
    first = h.peers[0]
    first.goaway(last_stream_id=3)
    await until(lambda: len(h.peers) == 2 and len(h.peers[1].complete) == 4, "four resent")
    second = h.peers[1]
    beyond = {first.query(s).question[0].name.to_text() for s in first.complete if s > 3}
    resent = {second.query(s).question[0].name.to_text() for s in second.complete}
    assert resent == beyond and len(beyond) == 4
    old = next(c for c in h.connections if c.phase is Phase.DRAINING)
    h.ask("later.example.test.")
    await until(lambda: len(second.complete) == 5, "a new query on the new connection")
    assert len(first.complete) == 6  # the draining connection took nothing new
    first.answer(1)
    within = {first.query(s).question[0].name.to_text() for s in (1, 3)}
    await until(lambda: sum(h.answered(n) for n in within) == 1, "stream 1's answer")
    assert old.phase is Phase.DRAINING  # stream 3 is still to come
    first.answer(3)
    await until(lambda: all(h.answered(n) for n in within), "stream 3's answer")
    await until(lambda: old.phase is Phase.ENDED and first.eof, "the old connection closed")
    assert old not in h.server.connections
    assert len(second.complete) == 5  # nothing sent twice
    for stream_id in second.complete:
        second.answer(stream_id)
    await until(lambda: all(h.answered(n) for n in [*names, "later.example.test."]), "all")
    assert all(len(h.replies[n]) == 1 for n in names)
    assert all(a_of(h.reply(n)) == {"192.0.2.1"} for n in names)
    h.close()


@run
async def test_refused_stream_is_sent_again(tmp_path: Path) -> None:
    """RST_STREAM REFUSED_STREAM: the query is sent again and the client gets the answer."""
    h = Harness(tmp_path)
    h.ask("r.example.test.", qid=0x4242)
    await until(lambda: h.peers and h.peers[0].complete, "the request")
    peer = h.peers[0]
    peer.refuse(peer.complete[0])
    await until(lambda: len(peer.complete) == 2, "the request again")
    assert peer.query(peer.complete[1]).question == peer.query(peer.complete[0]).question
    peer.answer(peer.complete[1])
    await until(lambda: h.answered("r.example.test."), "the answer")
    reply = h.reply("r.example.test.")
    assert reply.id == 0x4242 and a_of(reply) == {"192.0.2.1"}
    h.close()


@pytest.mark.parametrize(
    ("status", "content_type"), [(503, CONTENT_TYPE), (404, CONTENT_TYPE), (200, "text/html")]
)
def test_unusable_http_answer_is_servfail(tmp_path: Path, status: int, content_type: str) -> None:
    """An HTTP error, or a 200 that is not a DNS message: SERVFAIL for that query (the
    only upstream), counted as an HTTP failure; the connection goes on serving."""

    async def test() -> None:
        h = Harness(tmp_path)
        h.ask("bad.example.test.", qid=0x5353)
        await until(lambda: h.peers and h.peers[0].complete, "the request")
        peer = h.peers[0]
        peer.answer(peer.complete[0], status=status, content_type=content_type)
        await until(lambda: h.answered("bad.example.test."), "a reply")
        reply = h.reply("bad.example.test.")
        assert reply.id == 0x5353 and reply.rcode() == dns.rcode.SERVFAIL, reply
        assert h.server.failures["http"] == 1
        assert len(peer.complete) == 1  # one upstream only: not sent again
        h.ask("good.example.test.")
        await until(lambda: len(peer.complete) == 2, "the next request, same connection")
        peer.answer(peer.complete[1])
        await until(lambda: h.answered("good.example.test."), "the next answer")
        assert a_of(h.reply("good.example.test.")) == {"192.0.2.1"}
        assert len(h.peers) == 1
        h.close()

    asyncio.run(asyncio.wait_for(test(), 20))


@run
async def test_flow_control_both_ways(tmp_path: Path) -> None:
    """The server's window of 16 octets holds the request body back until its
    WINDOW_UPDATE; answers that add up to more than HTTP/2's default connection
    window (65,535 octets) come in without a WINDOW_UPDATE per answer."""
    h = Harness(tmp_path, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16}, ack=False)
    h.ask("w.example.test.")
    await until(lambda: h.peers and 1 in h.peers[0].bodies, "the request headers")
    peer = h.peers[0]
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(peer.bodies[1]) == 16 and not peer.complete  # held back by flow control
    peer.h2.increment_flow_control_window(4096, stream_id=1)
    peer.flush()
    await until(lambda: peer.complete == [1], "the rest of the body")
    assert peer.query(1).question[0].name.to_text() == "w.example.test."
    peer.answer(1)
    await until(lambda: h.answered("w.example.test."), "the answer")
    # Three answers of 30,000 octets each: 90,000 > 65,535.
    peer.ack = True
    names = [f"big{i}.example.test." for i in range(3)]
    for name in names:
        h.ask(name)
    await until(lambda: len(peer.complete) == 4, "three more requests")
    for stream_id in peer.complete[1:]:
        response = dns.message.make_response(peer.query(stream_id))
        padding = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\0" * 30000)
        response.use_edns(0, 0, 1232, options=[padding])
        peer.answer(stream_id, body=response.to_wire(max_size=65535))
    await until(lambda: all(h.answered(n) for n in names), "three big answers")
    assert all(h.reply(n).rcode() == dns.rcode.NOERROR for n in names)
    h.close()


@run
async def test_concurrent_stream_limit_from_settings(tmp_path: Path) -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS 2: never more than two streams open on a
    connection; every query is answered."""
    h = Harness(tmp_path, settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    names = [f"c{i}.example.test." for i in range(7)]
    for name in names:
        h.ask(name)

    def answer_some() -> bool:
        for peer in h.peers:
            for stream_id in peer.complete:
                if stream_id not in peer.client_resets and peer.h2.streams.get(stream_id):
                    stream = peer.h2.streams[stream_id]
                    if stream.open:
                        peer.answer(stream_id)
        return all(h.answered(n) for n in names)

    await until(answer_some, "every answer")
    assert all(peer.most_open <= 2 for peer in h.peers), [p.most_open for p in h.peers]
    assert sum(len(peer.complete) for peer in h.peers) == len(names)
    h.close()


@run
async def test_http1_fallback(tmp_path: Path) -> None:
    """A server without h2: HTTP/1.1 POSTs one at a time on one keep-alive connection;
    an HTTP error is SERVFAIL; an answer without Content-Length ends the connection
    (SERVFAIL for its query) and the next query goes on a new one."""
    h = Harness(tmp_path, http1=True, auto=True)
    names = [f"h{i}.example.test." for i in range(3)]
    for i, name in enumerate(names):
        h.ask(name, qid=0x700 + i)
    await until(lambda: all(h.answered(n) for n in names), "three answers")
    for i, name in enumerate(names):
        assert h.reply(name).id == 0x700 + i and a_of(h.reply(name)) == {"192.0.2.1"}
    (peer,) = h.peers
    assert peer.most_open == 1 and len(peer.complete) == 3
    for number in peer.complete:
        headers = peer.headers[number]
        assert headers[b":request-line"] == b"POST /dns-query HTTP/1.1"
        assert headers[b"host"] == NAME.encode()
        assert headers[b"content-type"] == CONTENT_TYPE.encode()
        assert peer.query(number).id == 0
    peer.auto = False
    h.ask("e.example.test.")
    await until(lambda: len(peer.complete) == 4, "the fourth request")
    peer.answer(4, status=502)
    await until(lambda: h.answered("e.example.test."), "a reply")
    assert h.reply("e.example.test.").rcode() == dns.rcode.SERVFAIL
    h.ask("n.example.test.")
    await until(lambda: len(peer.complete) == 5, "the fifth request")
    peer.write_http1(b"HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\n\r\n")
    await until(lambda: h.answered("n.example.test."), "a reply")
    assert h.reply("n.example.test.").rcode() == dns.rcode.SERVFAIL
    await until(lambda: peer.eof, "the connection closed")
    peer_count = len(h.peers)
    h.ask("after.example.test.")
    await until(lambda: h.answered("after.example.test."), "an answer on a new connection")
    assert len(h.peers) == peer_count + 1
    assert a_of(h.reply("after.example.test.")) == {"192.0.2.1"}
    h.close()


@pytest.mark.parametrize("where", ["run", "cancelled"])
def test_a_connection_that_fails_after_opening_hands_its_queries_back(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error in the connection's own code once the channel is open (``run``: its
    first HTTP/2 write raises), or its task cancelled while its streams wait for answers: the
    channel is closed, the queries go back to the pool once and are answered on a new
    connection, each exactly once."""

    async def test() -> None:
        if where == "run":
            original = DohConnection._flush
            calls: list[int] = []

            def failing(self: DohConnection) -> None:
                calls.append(1)
                if len(calls) == 1:
                    assert self.state is ConnectionState.OPEN
                    raise RuntimeError("injected")
                original(self)

            monkeypatch.setattr(DohConnection, "_flush", failing)
        h = Harness(tmp_path)
        names = [f"x{i}.example.test." for i in range(3)]
        for name in names:
            h.ask(name)
        (first,) = h.connections
        await until(lambda: bool(h.peers), "the first connection")
        if where == "cancelled":
            await until(lambda: len(h.peers[0].complete) == 3, "three requests")
            first._task.cancel()
        await until(lambda: first.state is ConnectionState.CLOSED, "the failed one closed")
        assert first not in h.server.connections
        await until(lambda: h.peers[0].eof, "its channel closed")
        await until(lambda: len(h.peers) == 2 and len(h.peers[1].complete) == 3, "sent again")
        second = h.peers[1]
        for stream_id in second.complete:
            second.answer(stream_id)
        await until(lambda: all(h.answered(n) for n in names), "every answer")
        for _ in range(20):
            await asyncio.sleep(0)
        assert all(len(h.replies[n]) == 1 for n in names)
        assert all(a_of(h.reply(n)) == {"192.0.2.1"} for n in names)
        h.close()

    asyncio.run(asyncio.wait_for(test(), 20))


@run
async def test_zero_concurrent_streams_fails_queries_over_at_once(tmp_path: Path) -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS 0 (RFC 9113 §6.5.2) in the server's first
    SETTINGS: the queued queries are that upstream's SERVFAIL at once, not at their
    deadline (the only upstream here, so the clients get SERVFAIL), no stream is opened,
    and the connection retires."""
    h = Harness(tmp_path, settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0})
    names = [f"z{i}.example.test." for i in range(3)]
    for i, name in enumerate(names):
        h.ask(name, qid=0x900 + i)
    (first,) = h.connections
    await until(lambda: all(h.answered(n) for n in names), "every reply")
    for i, name in enumerate(names):
        reply = h.reply(name)
        assert reply.id == 0x900 + i and reply.rcode() == dns.rcode.SERVFAIL, reply
    assert h.server.failures["http"] == len(names)
    assert not h.peers[0].headers, "a stream was opened"
    await until(lambda: first.state is ConnectionState.CLOSED, "the connection retired")
    await until(lambda: h.peers[0].eof, "its channel closed")
    assert first not in h.server.connections
    h.close()


@run
async def test_zero_concurrent_streams_later_lets_open_streams_finish(tmp_path: Path) -> None:
    """The limit lowered to 0 while a stream is open: that stream is still answered,
    a query queued meanwhile is SERVFAIL'd at once, and the connection then retires."""
    h = Harness(tmp_path, settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    h.ask("open.example.test.")
    await until(lambda: h.peers and h.peers[0].complete == [1], "the first request")
    peer = h.peers[0]
    (first,) = h.connections
    queued = h.exchange("queued.example.test.")
    queued.tried = 1  # as the pool marks the upstream it sends to
    first.send(queued)  # waits on this connection: its one stream is taken
    for _ in range(20):
        await asyncio.sleep(0)
    assert peer.complete == [1]
    peer.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0})
    peer.flush()
    await until(lambda: first.phase is Phase.DRAINING, "no new streams")
    assert not first.accepting and not first.has_room
    await until(lambda: h.answered("queued.example.test."), "the queued one's reply")
    assert h.reply("queued.example.test.").rcode() == dns.rcode.SERVFAIL
    assert peer.complete == [1]
    peer.answer(1)
    await until(lambda: h.answered("open.example.test."), "the open stream's answer")
    assert a_of(h.reply("open.example.test.")) == {"192.0.2.1"}
    await until(lambda: first.state is ConnectionState.CLOSED, "the connection retired")
    h.close()
