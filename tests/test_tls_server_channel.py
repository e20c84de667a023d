"""The server TLS transport in process, on both loops: handshake, half-close, backpressure.

Why: :class:`~dns2dot.transport.tls_server_channel.TlsServerTransport` carries every DoT
client (docs/ARCHITECTURE.md, "transport"); its promises are that a handshake that
fails or is not done in time ends with ``on_failed`` and a closed socket, that a
client's end of stream is a half-close (the plaintext before it is delivered, then
``b""``), and that ``send`` counts bytes as taken only once their ciphertext is in the
kernel, so a client that does not read is seen as over plain TCP. A client on a
socketpair, blocking, in a thread; every wait bounded.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from support.loops import LOOPS, run
from support.pki import TLS_NAME, Pki

from dns2dot.transport.server_tls import ALPN_DOT, server_context
from dns2dot.transport.tls_server_channel import CLOSED, OPEN, TlsServerTransport


def _server(pki: Pki, sock: socket.socket) -> TlsServerTransport:
    sock.setblocking(False)
    context = server_context(str(pki.good.cert), str(pki.good.key), ALPN_DOT)
    return TlsServerTransport(sock, context, asyncio.get_running_loop())


async def _handshake(transport: TlsServerTransport, timeout: float) -> str | None:
    """None once done, or why it failed."""
    done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    transport.handshake(timeout, lambda: done.set_result(None), done.set_result)
    return await asyncio.wait_for(done, timeout + 5)


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_half_close_delivers_then_ends(pki: Pki, loop_name: str) -> None:
    async def main() -> None:
        ours, theirs = socket.socketpair()
        transport = _server(pki, ours)
        ctx = pki.client_context()
        ctx.set_alpn_protocols(["dot"])
        got: list[bytes] = []

        def client() -> None:
            theirs.settimeout(10)
            with ctx.wrap_socket(theirs, server_hostname=TLS_NAME) as tls:
                got.append((tls.selected_alpn_protocol() or "").encode())
                tls.sendall(b"query bytes")
                tls.shutdown(socket.SHUT_WR)  # end of stream without close_notify
                while tls.recv(65536):  # (TLS dropped) the ciphertext, then end of stream
                    pass

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        assert await _handshake(transport, 5.0) is None
        assert transport.state is OPEN
        received = b""
        ended = asyncio.Event()

        def readable() -> None:
            nonlocal received
            try:
                data = transport.recv(65536)
            except BlockingIOError:
                return
            if not data:
                transport.want_read(False)
                ended.set()
            received += data

        transport.attach(readable, lambda: None)
        transport.want_read(True)
        await asyncio.wait_for(ended.wait(), 10)
        assert received == b"query bytes"
        assert transport.send(b"the answer") == len(b"the answer")  # after its half-close
        transport.close()
        assert transport.state is CLOSED
        await asyncio.to_thread(thread.join, 10)
        assert got == [b"dot"]

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", list(LOOPS))
@pytest.mark.parametrize("client", ["garbage", "silent", "closes"])
def test_failed_handshake_closes(pki: Pki, loop_name: str, client: str) -> None:
    async def main() -> None:
        ours, theirs = socket.socketpair()
        transport = _server(pki, ours)
        if client == "garbage":
            theirs.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        elif client == "closes":
            theirs.shutdown(socket.SHUT_WR)
        why = await _handshake(transport, 0.3)
        assert why is not None
        if client == "silent":
            assert why == "handshake timeout"
        assert transport.state is CLOSED
        theirs.settimeout(5)
        try:
            while theirs.recv(65536):  # an alert, perhaps, then end of stream
                pass
        except ConnectionResetError:
            pass
        theirs.close()

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_send_counts_what_the_kernel_took(pki: Pki, loop_name: str) -> None:
    """Against a client that reads nothing, ``send`` returns 0 once the socket is full,
    keeps the ciphertext, and counts those bytes when the client reads them."""

    async def main() -> None:
        ours, theirs = socket.socketpair()
        transport = _server(pki, ours)
        ctx = pki.client_context()
        ready = threading.Event()
        drain = threading.Event()
        total = 0

        def client() -> None:
            nonlocal total
            theirs.settimeout(10)
            with ctx.wrap_socket(theirs, server_hostname=TLS_NAME) as tls:
                ready.set()
                drain.wait(10)
                while chunk := tls.recv(65536):
                    total += len(chunk)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        assert await _handshake(transport, 5.0) is None
        await asyncio.to_thread(ready.wait, 10)
        block = b"x" * 16384
        taken = 0
        for _ in range(10_000):
            n = transport.send(block)
            if n == 0:
                break
            assert n == len(block)
            taken += n
        else:
            pytest.fail("the socket never filled up")
        assert transport.send(block) == 0  # still held: nothing counted twice
        drain.set()
        for _ in range(500):
            n = transport.send(block)
            if n:
                break
            await asyncio.sleep(0.01)
        assert n == len(block), "the held bytes were not counted once the client read"
        taken += n
        transport.close()
        await asyncio.to_thread(thread.join, 10)
        assert total == taken

    run(loop_name, main)
