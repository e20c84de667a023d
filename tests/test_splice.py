"""The pipe mode's splice (dns2dot/transport/splice.py) over real TLS on socket pairs.

The "client" is one end of a plain socket pair, driven from a thread; the upstream is
a blocking TLS server in another thread, with the throwaway CA. What must hold: every
byte arrives once and in order both ways, whatever the chunking and however slowly
either end reads (back-pressure, never loss); the end of either side ends the splice
and closes both sockets, after the bytes already read were delivered (a client's
half-close, after the upstream has been quiet for the linger time); a broken TLS
record ends it too; and the handshake helper verifies like any other.

Run on the default asyncio loop and on uvloop (what dns2dot runs on).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.loops import LOOPS, read_to_end, run
from support.pki import TLS_NAME, Pki

from dns2dot.transport import tls
from dns2dot.transport.channel import TlsChannel, tls_handshake
from dns2dot.transport.splice import HALF_CLOSE_LINGER, Splice

Peer = Callable[[ssl.SSLSocket], None]


def small_buffers(sock: socket.socket) -> None:
    """Small kernel buffers, so that a megabyte really meets back-pressure."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)


async def spliced(
    pki: Pki,
    peer: Peer,
    *,
    on_upstream_data: Callable[[], None] | None = None,
    linger: float = HALF_CLOSE_LINGER,
    dns_framing: bool = False,
    tcp_client: bool = False,
) -> tuple[Splice, socket.socket, threading.Thread]:
    """A splice between a fresh client socket pair (loopback TCP with ``tcp_client``:
    a reset only exists there) and ``peer`` (a TLS server thread); returns it (not
    started), the application's end of the client pair, the thread."""
    ours, theirs = socket.socketpair()
    app, client = tcp_pair() if tcp_client else socket.socketpair()
    for sock in (ours, theirs, app, client):
        small_buffers(sock)
    server_context = pki.server_context()

    def serve() -> None:
        with (
            contextlib.suppress(OSError),
            server_context.wrap_socket(theirs, server_side=True) as tls_sock,
        ):
            peer(tls_sock)
        theirs.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ours.setblocking(False)
    client.setblocking(False)
    channel = TlsChannel(ours, tls.client_context(str(pki.ca)), TLS_NAME)
    await channel.handshake()
    splice = Splice(
        client, channel, on_upstream_data=on_upstream_data, linger=linger, dns_framing=dns_framing
    )
    return splice, app, thread


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        app = socket.create_connection(listener.getsockname())
        client, _ = listener.accept()
    return app, client


def echo(tls_sock: ssl.SSLSocket) -> None:
    """Send back every byte, one TLS record per read, until the client goes."""
    while data := tls_sock.recv(65536):
        tls_sock.sendall(data)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(20)
    parts: list[bytes] = []
    got = 0
    while got < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def in_thread(function: Callable[[], Any]) -> asyncio.Future[Any]:
    """Start ``function`` in a thread now; await the result later."""
    return asyncio.ensure_future(asyncio.to_thread(function))


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_megabyte_each_way_arrives_exactly_under_back_pressure(pki: Pki, loop_name: str) -> None:
    """The application writes 1 MiB without reading for a while: every buffer on the
    way fills, the splice stops reading each side in turn, then everything drains."""
    payload = bytes(range(256)) * 4096  # 1 MiB, every offset distinguishable mod 256

    async def main() -> tuple[bytes, int]:
        splice, app, thread = await spliced(pki, echo)
        task = asyncio.ensure_future(splice.run())

        def write() -> None:
            app.settimeout(20)
            app.sendall(payload)

        def read() -> bytes:
            time.sleep(0.5)  # let every buffer on the way fill first
            return read_exactly(app, len(payload))

        writing = in_thread(write)
        reading = in_thread(read)
        received = await reading
        await writing
        app.close()
        await task
        thread.join(10)
        return received, splice.activity

    received, activity = run(loop_name, main)
    assert received == payload
    assert activity > 2


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chunks=st.lists(st.binary(min_size=1, max_size=40000), min_size=1, max_size=12))
def test_any_chunking_arrives_exactly_once_in_order(pki: Pki, chunks: list[bytes]) -> None:
    """Whatever the sizes of the writes, the bytes that come back are the bytes sent."""
    payload = b"".join(chunks)

    async def main() -> bytes:
        splice, app, thread = await spliced(pki, echo)
        task = asyncio.ensure_future(splice.run())

        def write() -> None:
            app.settimeout(20)
            for chunk in chunks:
                app.sendall(chunk)

        writing = in_thread(write)
        received = await asyncio.to_thread(read_exactly, app, len(payload))
        await writing
        app.close()
        await task
        thread.join(10)
        return received

    assert run("uvloop", main) == payload


@pytest.mark.parametrize("loop_name", LOOPS)
def test_upstream_end_delivers_what_it_sent_then_closes_the_client(
    pki: Pki, loop_name: str
) -> None:
    """The upstream sends 300 records, then close_notify: the client gets them all,
    then end of stream; the session callback ran once."""
    records = [f"{i:05d}".encode() * (i % 50 + 1) for i in range(300)]
    calls: list[int] = []

    def peer(tls_sock: ssl.SSLSocket) -> None:
        for record in records:
            tls_sock.sendall(record)
        with contextlib.suppress(OSError):
            tls_sock.unwrap()

    async def main() -> bytes:
        splice, app, thread = await spliced(pki, peer, on_upstream_data=lambda: calls.append(1))
        task = asyncio.ensure_future(splice.run())
        received = await asyncio.to_thread(read_to_end, app)
        await task
        thread.join(10)
        assert splice.error is None
        return received

    assert run(loop_name, main) == b"".join(records)
    assert calls == [1]


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("linger", [HALF_CLOSE_LINGER, 0.0])
def test_client_end_closes_the_upstream(pki: Pki, loop_name: str, linger: float) -> None:
    """The client hangs up: the splice ends (after the linger, or at once without
    one), and the upstream sees end of stream."""
    upstream_saw: list[bytes] = []

    def peer(tls_sock: ssl.SSLSocket) -> None:
        data = b""
        while chunk := tls_sock.recv(65536):
            data += chunk
        upstream_saw.append(data)

    async def main() -> None:
        splice, app, thread = await spliced(pki, peer, linger=linger)
        task = asyncio.ensure_future(splice.run())
        app.sendall(b"\x00\x05hello")
        app.close()
        await task
        await asyncio.to_thread(thread.join, 10)

    run(loop_name, main)
    assert upstream_saw == [b"\x00\x05hello"]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_client_half_close_still_gets_every_answer(pki: Pki, loop_name: str) -> None:
    """The client sends its queries, then ``shutdown(SHUT_WR)`` and reads to the end
    (``socat -``, a script's heredoc): everything the upstream sends back still
    arrives, then end of stream. The upstream is not told of the half-close (it would
    see end of stream only once the splice ends)."""
    payload = b"".join(bytes([i % 251]) * 300 for i in range(200))  # 60 kB

    async def main() -> bytes:
        splice, app, thread = await spliced(pki, echo)
        task = asyncio.ensure_future(splice.run())

        def client() -> bytes:
            app.sendall(payload)
            app.shutdown(socket.SHUT_WR)
            return read_to_end(app)

        received = await asyncio.to_thread(client)
        await task
        await asyncio.to_thread(thread.join, 10)
        assert splice.error is None
        return received

    assert run(loop_name, main) == payload


def test_half_closed_client_waits_while_the_upstream_is_still_talking(pki: Pki) -> None:
    """The linger counts from the upstream's last bytes, not from the half-close: five
    answers 0.3 s apart (1.5 s in all) all reach a client that half-closed at once,
    with a linger of 1 s."""
    answers = [f"answer {i}".encode() for i in range(5)]

    def peer(tls_sock: ssl.SSLSocket) -> None:
        tls_sock.recv(65536)
        for answer in answers:
            time.sleep(0.3)
            tls_sock.sendall(answer)
        with contextlib.suppress(OSError):
            while tls_sock.recv(65536):  # until the splice ends
                pass

    async def main() -> bytes:
        splice, app, thread = await spliced(pki, peer, linger=1.0)
        task = asyncio.ensure_future(splice.run())

        def client() -> bytes:
            app.sendall(b"\x00\x05query")
            app.shutdown(socket.SHUT_WR)
            return read_to_end(app)

        received = await asyncio.to_thread(client)
        await task
        await asyncio.to_thread(thread.join, 10)
        return received

    assert run("uvloop", main) == b"".join(answers)


def test_half_closed_client_and_a_silent_upstream_end_the_splice(pki: Pki) -> None:
    """An upstream that never answers cannot keep a half-closed client's splice: it
    ends once the linger is over, and both sides see end of stream."""
    upstream_saw: list[bytes] = []

    def peer(tls_sock: ssl.SSLSocket) -> None:
        data = b""
        with contextlib.suppress(OSError):
            while chunk := tls_sock.recv(65536):
                data += chunk
        upstream_saw.append(data)

    async def main() -> bytes:
        splice, app, thread = await spliced(pki, peer, linger=0.2)
        task = asyncio.ensure_future(splice.run())
        app.sendall(b"\x00\x05hello")
        app.shutdown(socket.SHUT_WR)
        received = await asyncio.to_thread(read_to_end, app)
        await task
        await asyncio.to_thread(thread.join, 10)
        return received

    assert run("uvloop", main) == b""
    assert upstream_saw == [b"\x00\x05hello"]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_broken_record_ends_the_splice(pki: Pki, loop_name: str) -> None:
    """Garbage on the socket under TLS (a forged record): the splice ends with the TLS
    error, and the client is closed rather than handed anything unauthenticated."""

    def peer(tls_sock: ssl.SSLSocket) -> None:
        tls_sock.sendall(b"first")
        raw = socket.socket(fileno=tls_sock.detach())
        raw.sendall(b"\x17\x03\x03\x00\x20" + b"\xaa" * 32)  # application data, bad tag
        raw.recv(1)
        raw.close()

    async def main() -> tuple[bytes, BaseException | None]:
        splice, app, thread = await spliced(pki, peer)
        task = asyncio.ensure_future(splice.run())
        received = await asyncio.to_thread(read_to_end, app)
        await task
        thread.join(10)
        return received, splice.error

    received, error = run(loop_name, main)
    assert received == b"first"
    assert isinstance(error, ssl.SSLError), error


@pytest.mark.parametrize("loop_name", LOOPS)
def test_close_stops_a_busy_splice_and_is_idempotent(pki: Pki, loop_name: str) -> None:
    """close() while bytes flow: run() returns, both sockets are closed, twice is fine."""

    async def main() -> None:
        splice, app, thread = await spliced(pki, echo)
        task = asyncio.ensure_future(splice.run())
        writing = in_thread(lambda: app.sendall(b"x" * 100_000))  # more than fits
        await asyncio.sleep(0.05)
        splice.close()
        splice.close()
        await task
        with contextlib.suppress(ConnectionResetError):  # unread bytes make it a reset
            assert len(read_to_end(app)) < 100_000  # then end of stream, not a hang
        with contextlib.suppress(OSError):
            await writing  # the writer fails once its peer is gone
        app.close()
        thread.join(10)

    run(loop_name, main)


@pytest.mark.parametrize("kind", ["socket", "memory"])
def test_handshake_verifies_the_name(pki: Pki, kind: str) -> None:
    """Both handshakes (tls_handshake on an SSLSocket for tornado, TlsChannel's for the
    splice) are the strict one: a certificate that does not carry the name fails."""

    async def main() -> None:
        ours, theirs = socket.socketpair()
        server_context = pki.server_context()

        def serve() -> None:
            with contextlib.suppress(OSError):
                server_context.wrap_socket(theirs, server_side=True).recv(1)
            theirs.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        ours.setblocking(False)
        context = tls.client_context(str(pki.ca))
        with pytest.raises(ssl.SSLCertVerificationError):
            if kind == "memory":
                try:
                    await TlsChannel(ours, context, "other.test").handshake()
                finally:
                    ours.close()
            else:
                upstream = context.wrap_socket(
                    ours, server_hostname="other.test", do_handshake_on_connect=False
                )
                try:
                    await tls_handshake(upstream)
                finally:
                    upstream.close()
        thread.join(10)

    run("uvloop", main)


def test_channel_handshake_with_a_peer_that_hangs_up(pki: Pki) -> None:
    """A peer that closes before the handshake ends: an OSError, not a hang."""

    async def main() -> None:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.close()
        with pytest.raises(OSError):
            await TlsChannel(ours, tls.client_context(str(pki.ca)), TLS_NAME).handshake()
        ours.close()

    run("uvloop", main)


class RecordingSocket(socket.socket):
    """A real socket that notes the options set on it."""

    options: list[tuple[int, int, int]]

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:  # type: ignore[override]
        self.options.append((level, option, value))
        super().setsockopt(level, option, value, *rest)


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux only")
@pytest.mark.parametrize("family", ["tcp", "unix"])
@pytest.mark.parametrize("asked", [True, False])
def test_receive_asks_for_quick_acks_when_told(pki: Pki, family: str, asked: bool) -> None:
    """After ``acknowledge_at_once`` (the pool's shared connections), every read from a
    TCP upstream re-arms TCP_QUICKACK: a DoT server that writes without TCP_NODELAY
    (unbound 1.17) otherwise holds each answer until a delayed ACK, one query late at
    low rates. A splice does not ask; a Unix socket (bench.hotpath's) has no such
    option."""
    if family == "tcp":
        with socket.create_server(("127.0.0.1", 0)) as listener:
            ours = socket.create_connection(listener.getsockname())
            theirs, _ = listener.accept()
    else:
        ours, theirs = socket.socketpair()
    recording = RecordingSocket(fileno=ours.detach())
    recording.options = []
    with recording, theirs:
        channel = TlsChannel(recording, tls.client_context(str(pki.ca)), TLS_NAME)
        if asked:
            channel.acknowledge_at_once()
        for _ in range(3):
            theirs.sendall(b"\x17\x03\x03\x00\x01x")  # any bytes: receive() does not parse
            channel.receive()
        quick = (socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        assert recording.options.count(quick) == (3 if asked and family == "tcp" else 0)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_dns_framing_stops_at_a_short_prefix(pki: Pki, loop_name: str) -> None:
    """Pipe mode follows the client's frames: at a length prefix below a header, the
    frames before it go upstream, nothing after it does, and the client's input is
    over (the splice ends after the linger, as after a half-close)."""
    upstream_saw: list[bytes] = []
    good = b"\x00\x0c" + bytes(12)

    def peer(tls_sock: ssl.SSLSocket) -> None:
        data = b""
        while chunk := tls_sock.recv(65536):
            data += chunk
        upstream_saw.append(data)

    async def main() -> bytes:
        splice, app, thread = await spliced(pki, peer, linger=0.1, dns_framing=True)
        task = asyncio.ensure_future(splice.run())
        app.sendall(good[:7])
        await asyncio.sleep(0.05)  # a frame split across reads is followed
        app.sendall(good[7:] + good + b"\x00\x00" + good)
        received = await asyncio.to_thread(read_to_end, app)
        await task
        await asyncio.to_thread(thread.join, 10)
        return received

    assert run(loop_name, main) == b""
    assert upstream_saw == [good + good]


def test_a_client_that_takes_nothing_is_stalled_then_reset(pki: Pki) -> None:
    """The upstream talks, the client never reads: once the client's buffers are full
    the splice reports how long it has been stalled, and closing it resets the client
    (what the sweep does after the stall timeout)."""

    def peer(tls_sock: ssl.SSLSocket) -> None:
        with contextlib.suppress(OSError):
            for _ in range(1000):
                tls_sock.sendall(bytes(16384))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        splice, app, thread = await spliced(pki, peer, tcp_client=True)
        task = asyncio.ensure_future(splice.run())
        for _ in range(1000):  # 10 s
            if splice.stalled(loop.time()) > 0:
                break
            await asyncio.sleep(0.01)
        assert splice.stalled(loop.time() + 5) >= 5
        splice.close()
        await task
        with pytest.raises(ConnectionResetError):
            await asyncio.to_thread(read_to_end, app)
        app.close()
        await asyncio.to_thread(thread.join, 10)

    run("uvloop", main)
