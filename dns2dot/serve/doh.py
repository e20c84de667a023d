"""The DNS-over-HTTPS listener (RFC 8484): HTTP/2 (ALPN ``h2``, through h2) and HTTP/1.1.

A :class:`DohSession` is an ``asyncio.Protocol`` on the TLS transport that
:class:`~dns2dot.transport.server_tls.TlsListener` makes. What a request means is
decided by the pure dns2dot/protocol/http.py (GET ``?dns=``, POST
``application/dns-message``, the error statuses, ``Cache-Control``); this module only
moves bytes between h2 (or :class:`~dns2dot.protocol.http.Http1Reader`) and the
resolver.

Limits: at most ``MAX_STREAMS`` concurrent streams per HTTP/2 connection and
``MAX_HEADER_LIST`` octets of header fields (announced in SETTINGS, enforced by h2);
bodies beyond 65535 octets are answered 413; an HTTP/1.1 client may pipeline up to
``MAX_PIPELINED`` requests, answered in order. On shutdown HTTP/2 clients get a
GOAWAY, and streams already open are still answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

from dns2dot.protocol import http
from dns2dot.protocol.encrypted import Asks, client_asks, finish_answer
from dns2dot.serve.tcp import TcpLimits
from dns2dot.transport.server_tls import reset

if TYPE_CHECKING:
    from dns2dot.serve.tls_clients import EncryptedServer

log = logging.getLogger("dns2dot.doh")

Handler = Callable[[bytes, Callable[[bytes], None]], bool]

MAX_STREAMS = 100  # concurrent streams per HTTP/2 connection
MAX_HEADER_LIST = 16384  # octets of header fields per request (HTTP/2 SETTINGS)
_SERVER = ("server", "dns2dot")
# h2 checks every header field character by character, both ways: a third of the
# CPU per request. A request is judged by the three fields dns2dot reads (:method,
# :path, content-type; dns2dot/protocol/http.py), and our own fields are well-formed.
_H2_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding="utf-8",
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


class _Stream:
    """One HTTP/2 request being read, answered, or waiting for flow control."""

    __slots__ = ("body", "content_type", "method", "path", "pending", "rejected")

    def __init__(self, method: str, path: str, content_type: str | None) -> None:
        self.method = method
        self.path = path
        self.content_type = content_type
        self.body = bytearray()
        self.pending = b""  # response body h2's flow control did not let out yet
        self.rejected = False


class DohSession(asyncio.Protocol):
    """One DNS-over-HTTPS client connection, HTTP/2 or HTTP/1.1 by ALPN."""

    def __init__(
        self,
        server: EncryptedServer,
        handler: Handler,
        limits: TcpLimits,
        path: str,
        host: str,
    ) -> None:
        self._server = server
        self._handler = handler
        self._limits = limits
        self._path = path
        self.host = host
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._h2: h2.connection.H2Connection | None = None
        self._streams: dict[int, _Stream] = {}
        self._reader = http.Http1Reader()
        self._slots: deque[list[bytes | None]] = deque()  # HTTP/1.1 answers, in order
        self._closing_after_answers = False
        self._flush_scheduled = False
        self._records: list[bytes] = []  # answers waiting for the end of this iteration
        self._goaway: int | None = None  # the last stream a GOAWAY we sent lets through
        self._inflight = 0
        self._paused = False
        self._request_started = 0.0
        self.last_active = self._loop.time()

    # -- the transport's callbacks -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._server.sessions.add(self)
        ssl_object = self._transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn == "h2":
            conn = h2.connection.H2Connection(_H2_CONFIG)
            # Huffman-coding our few, short header values costs more (pure Python)
            # than the octets it saves; the static ones are indexed after the first.
            conn.encoder.encode = partial(conn.encoder.encode, huffman=False)  # type: ignore[method-assign]
            conn.local_settings = h2.settings.Settings(
                client=False,
                initial_values={
                    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                    h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
                    h2.settings.SettingCodes.ENABLE_PUSH: 0,
                },
            )
            conn.initiate_connection()
            self._h2 = conn
            self._send_h2()
            if self._server.draining:
                self.shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.sessions.discard(self)
        self._transport = None
        self._streams.clear()
        self._slots.clear()

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        if self._h2 is not None:
            self._h2_received(data)
        else:
            self._http1_received(data)

    def eof_received(self) -> bool | None:
        return None

    # -- HTTP/2 --------------------------------------------------------------------------

    def _h2_received(self, data: bytes) -> None:
        conn = self._h2
        assert conn is not None
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # Broken framing, more than MAX_STREAMS streams at once, oversized headers:
            # h2 stops mid-input (its HPACK state with it), so the connection ends.
            log.debug("closing DoH client %s: %s", self.host, exc)
            self._server.stats.dropped["http_protocol"] += 1
            with contextlib.suppress(h2.exceptions.ProtocolError):
                conn.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            self._send_h2()
            self.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._h2_request(event)
            elif isinstance(event, h2.events.DataReceived):
                self._h2_data(event)
            elif isinstance(event, h2.events.StreamEnded):
                self._h2_ended(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self._streams.pop(event.stream_id, None)
            elif isinstance(event, h2.events.WindowUpdated):
                self._h2_window(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._send_h2()
                self.close()
                return
        self._send_h2()

    def _h2_request(self, event: h2.events.RequestReceived) -> None:
        if self._goaway is not None and event.stream_id > self._goaway:
            assert self._h2 is not None
            self._h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        fields = {str(name): str(value) for name, value in event.headers or ()}
        self._streams[event.stream_id] = _Stream(
            fields.get(":method", ""), fields.get(":path", ""), fields.get("content-type")
        )

    def _h2_data(self, event: h2.events.DataReceived) -> None:
        conn = self._h2
        assert conn is not None
        stream_id = event.stream_id
        if event.flow_controlled_length:
            conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
        stream = self._streams.get(stream_id)
        if stream is None or stream.rejected:
            return
        stream.body += event.data or b""
        if len(stream.body) > http.MAX_BODY:
            stream.rejected = True
            stream.body = bytearray()
            # Answered at once; the rest of the body is read and dropped.
            self._h2_reject(stream_id, http.Rejection(413, "a DNS message is at most 65535 octets"))

    def _h2_ended(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stream.rejected:
            self._streams.pop(stream_id, None)
            return
        request = http.dns_request(
            stream.method, stream.path, stream.content_type, bytes(stream.body), self._path
        )
        stream.body = bytearray()
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
        headers = [(":status", str(rejection.status)), *http.rejection_headers(rejection), _SERVER]
        try:
            conn.send_headers(stream_id, headers)
            self._h2_body(stream_id, rejection.reason.encode() + b"\n")
        except h2.exceptions.StreamClosedError:
            self._streams.pop(stream_id, None)

    def _h2_answer(self, stream_id: int, answer: bytes) -> None:
        conn = self._h2
        if conn is None or self._transport is None or stream_id not in self._streams:
            return  # the client reset the stream or left
        headers = [(":status", "200"), *http.answer_headers(answer), _SERVER]
        try:
            conn.send_headers(stream_id, headers)
            self._h2_body(stream_id, answer)
        except h2.exceptions.StreamClosedError:
            self._streams.pop(stream_id, None)
        # Each answer in a TLS record of its own, the answers of one loop iteration sent
        # together: dnsperf 2.10's DoH client takes one answer per record it reads and
        # leaves the others of that record unread until more bytes arrive.
        data = conn.data_to_send()
        if data:
            self._records.append(data)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush_h2)

    def _flush_h2(self) -> None:
        self._flush_scheduled = False
        self._send_h2()

    def _h2_body(self, stream_id: int, body: bytes) -> None:
        """Send what flow control allows; the rest waits for a WINDOW_UPDATE."""
        conn = self._h2
        assert conn is not None
        frame_size = conn.max_outbound_frame_size
        while body:
            window = conn.local_flow_control_window(stream_id)
            if window <= 0:
                stream = self._streams.get(stream_id)
                if stream is not None:
                    stream.pending = body
                return
            chunk = body[: min(window, frame_size)]
            body = body[len(chunk) :]
            conn.send_data(stream_id, chunk, end_stream=not body)
        self._streams.pop(stream_id, None)

    def _h2_window(self, stream_id: int) -> None:
        ids = [stream_id] if stream_id else list(self._streams)
        for sid in ids:
            stream = self._streams.get(sid)
            if stream is not None and stream.pending:
                body, stream.pending = stream.pending, b""
                try:
                    self._h2_body(sid, body)
                except h2.exceptions.StreamClosedError:
                    self._streams.pop(sid, None)

    def _send_h2(self) -> None:
        conn = self._h2
        if conn is None or self._transport is None:
            return
        data = conn.data_to_send()
        if data:
            self._records.append(data)
        if self._records:  # in the order h2 encoded them: HPACK depends on it
            records, self._records = self._records, []
            self._transport.writelines(records)
            self._check_unread()
        if self._closing_after_answers and self._inflight == 0 and self._transport is not None:
            self._transport.close()

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
            self._closing_after_answers = True
            self._pause()
        elif len(self._slots) >= http.MAX_PIPELINED:
            self._pause()
        self._http1_flush()

    def _http1_request(self, request: http.Http1Request) -> None:
        slot: list[bytes | None] = [None]
        self._slots.append(slot)
        keep_alive = request.keep_alive
        if not keep_alive:
            self._closing_after_answers = True
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
        transport = self._transport
        if transport is None:
            return
        out = []
        while self._slots and self._slots[0][0] is not None:
            response = self._slots.popleft()[0]
            assert response is not None
            out.append(response)
        if out:
            transport.write(b"".join(out))
            self._check_unread()
        if self._transport is None:
            return
        if self._closing_after_answers:
            if not self._slots:
                self._transport.close()
        elif self._paused and len(self._slots) < http.MAX_PIPELINED:
            self._paused = False
            self._transport.resume_reading()

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
            if self._transport is None:
                return
            self.last_active = self._loop.time()
            respond(finish_answer(answer, asks, 0.0) if asks else answer)

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

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _check_unread(self) -> None:
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size() > (
            self._limits.max_write_buffer
        ):
            log.debug("closing DoH client %s that does not read its answers", self.host)
            self._server.stats.dropped["unread_output"] += 1
            reset(transport)
            self._transport = None

    # -- the server's calls --------------------------------------------------------------

    def expired(self, now: float) -> str | None:
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
        """GOAWAY (HTTP/2) or ``Connection: close`` (HTTP/1.1); open requests are answered."""
        if self._transport is None:
            return
        if self._h2 is not None and self._goaway is None:
            # A GOAWAY of our own making: h2's close_connection() would also refuse the
            # answers to the streams still open, which RFC 9113 §6.8 lets us finish.
            self._send_h2()
            self._goaway = self._h2.highest_inbound_stream_id
            frame = hyperframe.frame.GoAwayFrame(0)
            frame.last_stream_id = self._goaway
            frame.error_code = h2.errors.ErrorCodes.NO_ERROR
            self._transport.write(frame.serialize())
        self._closing_after_answers = True
        if self._h2 is not None:
            self._send_h2()  # closes the connection once nothing is in flight
        elif not self._slots:
            self._transport.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._server.sessions.discard(self)
