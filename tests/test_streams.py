"""Reading past tornado (dns2dot/transport/streams.py) over real TLS on a socket pair.

The peer is a blocking TLS server in a thread that writes one TLS record per
``sendall``, as an upstream writes one record per answer. What must hold: every byte
arrives once and in order, several records come back from one call, the per-call
bound holds, and end of stream or a broken record ends the stream as tornado would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable

import pytest
from support.pki import TLS_NAME, Pki
from tornado.iostream import SSLIOStream, StreamClosedError

from dns2dot.transport import tls
from dns2dot.transport.streams import (
    MAX_MORE_READS,
    READ_CHUNK,
    read_all,
    read_available,
    read_more,
)

Peer = Callable[[ssl.SSLSocket], None]


def records(count: int) -> list[bytes]:
    """Distinct, numbered payloads of varied sizes: any loss or reordering shows."""
    return [f"{i:06d}:".encode() + bytes([i % 251]) * (i % 300) for i in range(count)]


async def talk_to(pki: Pki, peer: Peer) -> tuple[SSLIOStream, threading.Thread]:
    """Handshake with ``peer`` (run in a thread on the other end), return our stream."""
    ours, theirs = socket.socketpair()
    for end in (ours, theirs):  # room for every record at once
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    server_context = pki.server_context()

    def serve() -> None:
        with server_context.wrap_socket(theirs, server_side=True) as tls_sock:
            peer(tls_sock)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ours.setblocking(False)
    context = tls.client_context(str(pki.ca))
    stream = SSLIOStream(
        context.wrap_socket(ours, server_hostname=TLS_NAME, do_handshake_on_connect=False),
        ssl_options=context,
        read_chunk_size=READ_CHUNK,
    )
    await asyncio.wait_for(stream.wait_for_handshake(), 10)
    return stream, thread


async def read_until_closed(stream: SSLIOStream) -> bytes:
    """Everything until the stream closes."""
    received = b""
    async with asyncio.timeout(10):  # a deadline without a task in between
        for _ in range(10_000):
            try:
                received += await read_available(stream)
            except StreamClosedError:
                return received
    raise AssertionError("the stream never closed")


async def read_from_peer(pki: Pki, peer: Peer) -> tuple[bytes, SSLIOStream]:
    """Everything ``peer`` sends until the stream closes, and the closed stream."""
    stream, thread = await talk_to(pki, peer)
    received = await read_until_closed(stream)
    thread.join(10)
    return received, stream


def test_every_record_arrives_once_in_order_and_several_come_from_one_call(pki: Pki) -> None:
    payloads = records(500)
    written = threading.Event()

    def peer(tls_sock: ssl.SSLSocket) -> None:
        for payload in payloads:
            tls_sock.sendall(payload)  # one TLS record each
        written.set()
        tls_sock.recv(1)  # wait for the client to go

    async def main() -> tuple[bytes, list[int]]:
        stream, thread = await talk_to(pki, peer)
        assert await asyncio.to_thread(written.wait, 10)
        calls: list[int] = []
        received = b""
        async with asyncio.timeout(10):
            while len(received) < sum(map(len, payloads)):
                data = await read_available(stream)
                calls.append(len(data))
                received += data
        stream.close()
        thread.join(10)
        return received, calls

    received, calls = asyncio.run(main())
    assert received == b"".join(payloads)
    # All 500 records were waiting: the calls drained them in bounded batches.
    assert len(calls) < 500 / 10
    biggest = max(len(p) for p in payloads)
    assert max(calls) <= (MAX_MORE_READS + 1) * biggest


def test_bytes_tornado_buffered_by_itself_are_never_overtaken(pki: Pki) -> None:
    """Between the read and ``read_more``, loop iterations pass (an extra task, as
    ``asyncio.wait_for`` makes): the idle stream reads into its own buffer meanwhile,
    and ``read_more`` must then leave the socket alone."""
    payloads = records(500)

    def peer(tls_sock: ssl.SSLSocket) -> None:
        for payload in payloads:
            tls_sock.sendall(payload)
        tls_sock.recv(1)

    async def main() -> bytes:
        stream, thread = await talk_to(pki, peer)
        received = b""
        async with asyncio.timeout(10):
            while len(received) < sum(map(len, payloads)):
                reading = asyncio.ensure_future(read_all(stream))
                data = await reading
                for _ in range(3):
                    await asyncio.sleep(0.001)  # the peer writes on; tornado may read
                received += read_more(stream, data)
        stream.close()
        thread.join(10)
        return received

    assert asyncio.run(main()) == b"".join(payloads)


def test_data_then_end_of_stream_delivers_the_data_then_closes(pki: Pki) -> None:
    payloads = records(40)

    def peer(tls_sock: ssl.SSLSocket) -> None:
        for payload in payloads:
            tls_sock.sendall(payload)
        with contextlib.suppress(OSError):  # the client need not answer close_notify
            tls_sock.unwrap()

    received, stream = asyncio.run(read_from_peer(pki, peer))
    assert received == b"".join(payloads)
    assert stream.closed()


@pytest.mark.parametrize("garbage", [b"\x17\x03\x03\x00\x10" + b"\x00" * 16, b"not tls at all"])
def test_a_broken_record_closes_the_stream_with_the_tls_error(pki: Pki, garbage: bytes) -> None:
    """A forged application-data record or plain bytes after the handshake: the TLS
    error is kept on the stream, and the read raises StreamClosedError, whether the
    bytes were met past tornado or by tornado's own read."""
    payloads = records(10)

    def peer(tls_sock: ssl.SSLSocket) -> None:
        for payload in payloads:
            tls_sock.sendall(payload)
        # Past TLS, on the same connection: the client's next record is broken.
        with socket.fromfd(tls_sock.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.sendall(garbage)
            raw.recv(1)

    received, stream = asyncio.run(read_from_peer(pki, peer))
    assert received == b"".join(payloads)
    assert stream.closed()
    assert isinstance(stream.error, ssl.SSLError)
