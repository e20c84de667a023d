"""The DNS-over-HTTPS listener (RFC 8484): HTTP/2 (ALPN ``h2``) and HTTP/1.1.

A :class:`DohSession` runs on a
:class:`~dns2dot.transport.tls_server_channel.TlsServerTransport` whose handshake is
done, on the loop's readiness callbacks, as a DoT client's session does. The protocol
is pure: HTTP/2 framing is :class:`~dns2dot.protocol.http2_server.H2Server`, HTTP/1.1
reading :class:`~dns2dot.protocol.http.Http1Reader`, and what a request means is
decided by dns2dot/protocol/http.py (GET ``?dns=``, POST ``application/dns-message``,
the error statuses, ``Cache-Control``); this module moves bytes between them, the
transport and the resolver.

Each response goes out in a TLS record of its own, the responses of one loop iteration
in one ``send``: dnsperf 2.10's DoH client takes one answer per record it reads and
leaves the others of that record unread until more bytes arrive.

Limits: at most ``MAX_STREAMS`` concurrent streams per HTTP/2 connection (more are
refused) and ``MAX_HEADER_LIST`` octets of header fields; bodies beyond 65535 octets
are answered 413; an HTTP/1.1 client may pipeline up to ``MAX_PIPELINED`` requests,
answered in order. A client that takes none of its answers for the stall timeout, or
whose unsent answers pass the write-buffer limit, is reset, as a DoT client is.
On shutdown HTTP/2 clients get a GOAWAY, and streams already open are still answered;
a client's end of input is a half-close (what it asked is still answered).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING

from dns2dot.protocol import http
from dns2dot.protocol.client_stream import STALL_TIMEOUT
from dns2dot.protocol.encrypted import Asks, client_asks, finish_answer
from dns2dot.protocol.http2 import ConnectionBroken
from dns2dot.protocol.http2_server import (
    MAX_HEADER_LIST,
    MAX_STREAMS,
    BodyTooLarge,
    GoAwayReceived,
    H2Server,
    Request,
)
from dns2dot.serve.tcp import TcpLimits
from dns2dot.transport.tls_server_channel import TlsServerTransport

if TYPE_CHECKING:
    from dns2dot.serve.tls_clients import EncryptedServer

__all__ = ["MAX_HEADER_LIST", "MAX_STREAMS", "DohSession", "serve_doh"]

log = logging.getLogger("dns2dot.doh")

Handler = Callable[[bytes, Callable[[bytes], None]], bool]

READ_CHUNK = 65536  # what one readiness callback reads from a client at most
_SERVER = ("server", "dns2dot")
_TOO_LARGE = http.Rejection(413, "a DNS message is at most 65535 octets")


class SessionState(Enum):
    """Where a DoH session is; changed only by ``DohSession._to``."""

    OPEN = "open"
    FINISHING = "finishing"  # answer what is owed, then close (shutdown, end of input)
    CLOSED = "closed"


OPEN, FINISHING, CLOSED = SessionState


class DohSession:
    """One DNS-over-HTTPS client connection, HTTP/2 or HTTP/1.1 by ALPN."""

    def __init__(
        self,
        server: EncryptedServer,
        handler: Handler,
        transport: TlsServerTransport,
        path: str,
        host: str,
    ) -> None:
        self._server = server
        self._handler = handler
        self._limits: TcpLimits = server.limits
        self._path = path
        self.host = host
        self._loop = asyncio.get_running_loop()
        self.transport = transport
        self.state = OPEN
        alpn = transport.tls.selected_alpn_protocol()
        self._h2 = H2Server(MAX_STREAMS) if alpn == "h2" else None
        self._reader = http.Http1Reader()
        self._slots: deque[list[bytes | None]] = deque()  # HTTP/1.1 answers, in order
        self._records: list[bytes] = []  # responses waiting for the end of this iteration
        self._flush_handle: asyncio.Handle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None  # while ciphertext waits unsent
        self._stall_sent = 0  # the transport's octets sent when the stall timer started
        self._inflight = 0
        self._paused = False  # HTTP/1.1: enough requests read ahead of their answers
        self._request_started = 0.0
        self.last_active = self._loop.time()

    def _to(self, state: SessionState) -> None:
        if self.state is not CLOSED:
            self.state = state

    def start(self) -> None:
        """Serve the client; it leaves ``server.sessions`` when the connection ends."""
        self._server.sessions.add(self)
        self.transport.attach(self._readable, self._writable)
        if self._h2 is not None:
            self._records += self._h2.data_to_send()  # SETTINGS
        if self._server.draining:
            self.shutdown()
        self._flush()
        if self.state is not CLOSED:
            self.transport.want_read(True)

    # -- the transport's callbacks -----------------------------------------------------

    def _readable(self) -> None:
        try:
            data = self.transport.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:  # the client's input ended: answer what it asked, then close
            self.transport.want_read(False)
            self._to(FINISHING)
            self._paused = True
            self._flush()
            return
        self.last_active = self._loop.time()
        if self._h2 is not None:
            self._h2_received(data)
        else:
            self._http1_received(data)

    def _writable(self) -> None:
        self._flush()

    # -- HTTP/2 --------------------------------------------------------------------------

    def _h2_received(self, data: bytes) -> None:
        conn = self._h2
        assert conn is not None
        for event in conn.receive(data):
            if type(event) is Request:
                self._h2_request(event)
            elif type(event) is BodyTooLarge:
                self._h2_reject(event.stream_id, _TOO_LARGE)
            elif type(event) is GoAwayReceived:
                self._to(FINISHING)
            elif type(event) is ConnectionBroken:
                log.debug("closing DoH client %s: %s", self.host, event.reason)
                self._server.stats.dropped["http_protocol"] += 1
                self._to(FINISHING)
        self._records += conn.data_to_send()
        self._flush()

    def _h2_request(self, event: Request) -> None:
        stream_id = event.stream_id
        request = http.dns_request(
            event.method, event.path, event.content_type, event.body, self._path
        )
        if isinstance(request, http.Rejection):
            self._h2_reject(stream_id, request)
            return
        self._resolve(
            request, partial(self._h2_answer, stream_id), partial(self._h2_reject, stream_id)
        )

    def _h2_reject(self, stream_id: int, rejection: http.Rejection) -> None:
        conn = self._h2
        assert conn is not None
        self._server.stats.dropped[f"http_{rejection.status}"] += 1
        fields = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in (*http.rejection_headers(rejection), _SERVER)
        ]
        conn.reject(stream_id, rejection.status, fields, rejection.reason.encode() + b"\n")
        self._queue(conn.data_to_send())

    def _h2_answer(self, stream_id: int, answer: bytes) -> None:
        conn = self._h2
        assert conn is not None
        if conn.answer(stream_id, answer, http.cache_control(answer).encode("latin-1")):
            self._queue(conn.data_to_send())

    # -- HTTP/1.1 ------------------------------------------------------------------------

    def _http1_received(self, data: bytes) -> None:
        was_buffered = self._reader.buffered
        requests, rejection = self._reader.feed(data)
        if self._reader.buffered and (requests or not was_buffered):
            self._request_started = self._loop.time()  # a part-read request's deadline
        for request in requests:
            self._http1_request(request)
        if rejection is not None:
            self._server.stats.dropped[f"http_{rejection.status}"] += 1
            body = rejection.reason.encode() + b"\n"
            slot: list[bytes | None] = [
                http.http1_response(
                    rejection.status, http.rejection_headers(rejection), body, keep_alive=False
                )
            ]
            self._slots.append(slot)
            self._to(FINISHING)
            self._pause()
        elif len(self._slots) >= http.MAX_PIPELINED:
            self._pause()
        self._http1_flush()

    def _http1_request(self, request: http.Http1Request) -> None:
        slot: list[bytes | None] = [None]
        self._slots.append(slot)
        keep_alive = request.keep_alive
        if not keep_alive:
            self._to(FINISHING)
        message = http.dns_request(
            request.method, request.target, request.content_type, request.body, self._path
        )
        if isinstance(message, http.Rejection):
            self._http1_reject(slot, keep_alive, message)
            return
        self._resolve(
            message,
            partial(self._http1_answer, slot, keep_alive),
            partial(self._http1_reject, slot, keep_alive),
        )

    def _http1_reject(
        self, slot: list[bytes | None], keep_alive: bool, rejection: http.Rejection
    ) -> None:
        self._server.stats.dropped[f"http_{rejection.status}"] += 1
        body = rejection.reason.encode() + b"\n"
        slot[0] = http.http1_response(
            rejection.status, http.rejection_headers(rejection), body, keep_alive=keep_alive
        )

    def _http1_answer(self, slot: list[bytes | None], keep_alive: bool, answer: bytes) -> None:
        slot[0] = http.http1_response(
            200, [*http.answer_headers(answer), _SERVER], answer, keep_alive=keep_alive
        )
        self._http1_flush()

    def _http1_flush(self) -> None:
        """The answers ready in order go out; reading resumes when there is room."""
        slots = self._slots
        out = []
        while slots and slots[0][0] is not None:
            response = slots.popleft()[0]
            assert response is not None
            out.append(response)
        self._queue(out)
        if (
            self.state is OPEN
            and self._paused
            and len(slots) < http.MAX_PIPELINED
            and self._reader.state is not http.ReaderState.BROKEN
        ):
            self._paused = False
            self.transport.want_read(True)

    # -- both ----------------------------------------------------------------------------

    def _resolve(
        self,
        message: bytes,
        respond: Callable[[bytes], None],
        reject: Callable[[http.Rejection], None],
    ) -> None:
        asks = client_asks(message) & Asks.PADDING  # keepalive is not for HTTP (RFC 8484 §5.3)
        self._inflight += 1

        def reply(answer: bytes) -> None:
            self._inflight -= 1
            if self.state is CLOSED:
                return
            self.last_active = self._loop.time()
            respond(finish_answer(answer, asks, 0.0) if asks else answer)
            if self._flush_handle is None:
                self._flush_handle = self._loop.call_soon(self._flush_soon)

        try:
            handled = self._handler(message, reply)
        except Exception:
            log.exception("closing DoH client after an unexpected error")
            self._inflight -= 1
            self.close()
            return
        if not handled:  # not DNS at all
            self._inflight -= 1
            reject(http.Rejection(400, "not a DNS query"))

    def _queue(self, records: list[bytes]) -> None:
        """Responses to write at the end of this loop iteration, a TLS record each."""
        if records:
            self._records += records
            if self._flush_handle is None:
                self._flush_handle = self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        self._flush()

    def _flush(self) -> None:
        """Write what is queued; close a client that does not read, or one that is done."""
        if self.state is CLOSED:
            return
        transport = self.transport
        if self._records:
            records, self._records = self._records, []
            try:
                transport.write_records(records)
            except OSError:
                self.close()
                return
            if transport.backlog > self._limits.max_write_buffer:
                self._unread()
                return
            if transport.backlog and self._stall_timer is None:
                self._stall_sent = transport.sent
                self._stall_timer = self._loop.call_later(STALL_TIMEOUT, self._stall_check)
        if self.state is FINISHING and self._done:
            if transport.backlog:
                transport.want_write(True)  # close once the socket took it all
            else:
                self.close()
                return
        transport.want_write(False)

    def _stall_check(self) -> None:
        """Reset a client that took none of its answers for the stall timeout, as a DoT
        or TCP client is."""
        self._stall_timer = None
        transport = self.transport
        if self.state is CLOSED or not transport.backlog:
            return
        if transport.sent == self._stall_sent:
            self._unread()
            return
        self._stall_sent = transport.sent
        self._stall_timer = self._loop.call_later(STALL_TIMEOUT, self._stall_check)

    def _unread(self) -> None:
        log.debug("closing DoH client %s that does not read its answers", self.host)
        self._server.stats.dropped["unread_output"] += 1
        self.close(reset=True)

    @property
    def _done(self) -> bool:
        """Nothing more is owed to the client."""
        if self._inflight:
            return False
        if self._h2 is not None:
            return self._h2.finished or not self._h2.streams
        return not self._slots

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self.transport.want_read(False)

    # -- the server's calls --------------------------------------------------------------

    def expired(self, now: float) -> str | None:
        """Why the sweep should close this session now, or None."""
        # An HTTP/1.1 request that trickles in is a slow frame, as on DNS over TCP.
        if (
            not self._paused
            and self._reader.buffered
            and now - self._request_started > self._limits.frame_timeout
        ):
            return "slow_frame"
        if self._inflight == 0 and now - self.last_active > self._limits.idle_timeout:
            return "idle"
        return None

    def shutdown(self) -> None:
        """GOAWAY (HTTP/2) or close after the answers owed (HTTP/1.1)."""
        if self.state is CLOSED:
            return
        if self._h2 is not None:
            self._h2.shutdown()
            self._records += self._h2.data_to_send()
        self._to(FINISHING)
        self._flush()

    def close(self, reset: bool = False) -> None:
        """End the connection (idempotent); late answers are dropped."""
        if self.state is CLOSED:
            return
        self._to(CLOSED)
        for handle in (self._flush_handle, self._stall_timer):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._stall_timer = None
        self._records.clear()
        self._slots.clear()
        if reset:
            self.transport.reset()
        else:
            self.transport.close()
        self._server.sessions.discard(self)


def serve_doh(
    server: EncryptedServer,
    handler: Handler,
    transport: TlsServerTransport,
    path: str,
    host: str,
) -> DohSession:
    """Start a DoH session for a client whose handshake is done."""
    session = DohSession(server, handler, transport, path, host)
    session.start()
    return session
