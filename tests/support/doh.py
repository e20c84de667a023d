"""DNS over HTTPS upstreams for the tests: real unbound serving DoH, and a fake with faults.

Why: dns2dot's DoH transport (RFC 8484 over HTTP/2, or HTTP/1.1 as a fallback) must be
proved against a real server (unbound, the one the bench uses, built with nghttp2) and
against the failures a real server rarely shows on demand: GOAWAY with streams beyond
the last one processed, refused and reset streams, HTTP errors, a wrong content type,
an oversized body, slow or missing answers, and a server that speaks only HTTP/1.1.

- :func:`start_unbound_doh` starts unbound serving the same ``example.test.`` zone as
  :mod:`support.unbound` over DoT *and* DoH (``https-port``) on two free loopback ports,
  and waits until ``kdig +https`` gets an answer.
- :class:`FakeDoh` is an in-process HTTPS server (``h2`` server side, TLS with the test
  PKI, ALPN ``h2`` or ``http/1.1`` only) on its own asyncio loop in a thread. It records
  every request (method, path, headers, body) so tests can check what went on the wire.

Fake modes (``FakeDoh.configure(mode=...)``; ``fault_limit=N`` applies the fault to the
first N requests only, then answers normally):

``normal``        200, ``application/dns-message``, the answer from the fake's table
                  (:func:`support.fake_upstream.answer`), after ``delay`` if ``delay`` > 0
``goaway``        hold the first ``goaway_after`` streams of each of the first
                  ``goaway_connections`` connections (or what came in ``goaway_wait``
                  seconds), answer the first ``goaway_answer`` of them, then send GOAWAY
                  whose last stream ID is the last one answered: the rest were never
                  processed (RFC 9113 §6.8) and must be sent again elsewhere
``refuse``        RST_STREAM REFUSED_STREAM (RFC 9113 §8.7: not processed, safe to retry)
``reset``         RST_STREAM with ``reset_code`` (INTERNAL_ERROR by default)
``status``        HTTP ``status`` (400, 500, 503, ...) with a text body
``content_type``  200 with the right DNS body but content type ``content_type``
``oversized``     200 ``application/dns-message`` with a body of ``oversize`` bytes (> 65535)
``slow``          response headers only after ``delay`` seconds, then the answer
``silent``        read and record, never answer

Requests for another path than ``path`` (constructor, ``/dns-query`` by default) get 404.
``alpn="http/1.1"`` (constructor) makes the server offer only HTTP/1.1 in ALPN and speak
it: ``POST /dns-query`` with ``Content-Length``, keep-alive; the modes ``normal``,
``status``, ``content_type``, ``slow`` and ``silent`` apply there too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import dns.exception
import dns.message
import dns.rcode
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .fake_server import FakeServer
from .fake_upstream import answer as table_answer
from .net import LOOPBACK, free_port
from .pki import TLS_NAME, Pki
from .unbound import (
    _config_lines,
    dot_query,
    dot_spec,
    launch_unbound,
    stop_process,
    unbound_exe,
)

CONTENT_TYPE = "application/dns-message"
DOH_PATH = "/dns-query"

# ---------------------------------------------------------------------------------------
# helpers shared by the tests


def spki_pin(cert_pem: Path) -> str:
    """The base64 SHA-256 of the leaf's SubjectPublicKeyInfo (RFC 7469), as ``--pin`` takes it.

    Computed here with ``cryptography``, independently of dns2dot's own code.
    """
    pem = cert_pem.read_bytes()
    first = pem[: pem.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----")]
    cert = x509.load_pem_x509_certificate(first)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def doh_spec(port: int, path: str = DOH_PATH, name: str = TLS_NAME) -> str:
    """The dns2dot ``-u`` value for a DoH upstream on loopback."""
    return f"https://{LOOPBACK}:{port}{path}#{name}"


_STATUS = re.compile(r"->>HEADER<<- opcode: \w+; status: (\w+)")


def kdig_https(
    pki: Pki, port: int, name: str, rdtype: str = "A", timeout: float = 3.0
) -> subprocess.CompletedProcess[str]:
    """``kdig +https`` straight at a DoH server (verified against the test CA)."""
    exe = shutil.which("kdig")
    if exe is None:
        raise RuntimeError("kdig is not installed (knot-dnsutils): needed to probe DoH")
    argv = [
        exe,
        f"+https={DOH_PATH}",
        f"+tls-ca={pki.ca}",
        f"+tls-hostname={TLS_NAME}",
        "+retry=0",
        f"+time={max(1, int(timeout))}",
        f"@{LOOPBACK}",
        "-p",
        str(port),
        name,
        rdtype,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5, check=False)


# ---------------------------------------------------------------------------------------
# unbound serving DoT and DoH


@dataclass
class UnboundDoh:
    """A running ``unbound -d`` serving ``example.test.`` over DoT and DoH on loopback."""

    dot_port: int
    doh_port: int
    directory: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    pki: Pki
    _log: IO[bytes] | None = field(repr=False, default=None)

    @property
    def doh_spec(self) -> str:
        """``https://127.0.0.1:PORT/dns-query#dns.test``."""
        return doh_spec(self.doh_port)

    @property
    def dot_spec(self) -> str:
        """``127.0.0.1:PORT#dns.test``."""
        return dot_spec(self.dot_port)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kdig(self, name: str, rdtype: str = "A") -> subprocess.CompletedProcess[str]:
        """Ask over DoH with kdig, bypassing dns2dot."""
        return kdig_https(self.pki, self.doh_port, name, rdtype)

    def query_dot(self, name: str, rdtype: str = "A", timeout: float = 3.0) -> dns.message.Message:
        """Ask over DoT with dnspython, bypassing dns2dot."""
        return dot_query(self.pki, self.dot_port, name, rdtype, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL after 5 s."""
        stop_process(self.proc, self._log)
        self._log = None


def unbound_doh_config(directory: Path, pki: Pki, dot_port: int, doh_port: int) -> str:
    """support.unbound's configuration (same zone, same DoT service) plus DoH on ``doh_port``."""
    doh = [
        f"    interface: {LOOPBACK}@{doh_port}",
        f"    https-port: {doh_port}",
        f'    http-endpoint: "{DOH_PATH}"',
    ]
    return "\n".join(_config_lines(directory, dot_port, pki, extra_service=doh))


def start_unbound_doh(
    directory: Path,
    pki: Pki,
    *,
    dot_port: int | None = None,
    doh_port: int | None = None,
    ready_timeout: float = 15.0,
) -> UnboundDoh:
    """Start unbound with DoT and DoH; return once ``kdig +https`` and DoT both answer.

    Raises RuntimeError (which fails the test) if unbound or kdig is missing, or if it
    never answers.
    """
    exe = unbound_exe("the real DoH upstream")
    directory.mkdir(parents=True, exist_ok=True)
    last_error = "not started"
    fixed = dot_port is not None or doh_port is not None
    for _attempt in range(3):  # a port race with another process is possible: retry
        dp = dot_port if dot_port is not None else free_port()
        hp = doh_port if doh_port is not None else free_port()
        config = unbound_doh_config(directory, pki, dp, hp)
        proc, log, log_path = launch_unbound(exe, directory, config, log_mode="ab")
        up = UnboundDoh(dp, hp, directory, proc, log_path, pki, _log=log)
        deadline = time.monotonic() + ready_timeout
        for _ in range(150):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            try:
                res = up.kdig("a.example.test.")
                status = _STATUS.search(res.stdout)
                doh_ok = bool(
                    status and status.group(1) == "NOERROR" and "192.0.2.10" in res.stdout
                )
                if doh_ok and up.query_dot("a.example.test.", timeout=1.0).answer:
                    return up
                last_error = (res.stdout + res.stderr).strip()[-500:] or "no output"
            except (OSError, subprocess.TimeoutExpired, dns.exception.DNSException) as exc:
                last_error = repr(exc)
            time.sleep(0.1)
        up.stop()
        last_error = (
            f"unbound (DoT {dp}, DoH {hp}) did not answer over DoH (exit={proc.poll()}); "
            f"last: {last_error}\n{up.log()[-3000:]}"
        )
        if fixed:
            break
    raise RuntimeError(last_error)


# ---------------------------------------------------------------------------------------
# the fake DoH server

MODES = (
    "normal",
    "goaway",
    "refuse",
    "reset",
    "status",
    "content_type",
    "oversized",
    "slow",
    "silent",
)
HTTP1_MODES = ("normal", "status", "content_type", "slow", "silent")


@dataclass(frozen=True)
class DohRequest:
    """One HTTP request as the fake received it (after TLS)."""

    conn: int
    protocol: str  # "h2" or "http/1.1"
    stream_id: int  # the HTTP/2 stream, or the request's number on an HTTP/1.1 connection
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; HTTP/2 pseudo-headers included
    body: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def msg(self) -> dns.message.Message | None:
        try:
            return dns.message.from_wire(self.body)
        except dns.exception.DNSException:
            return None

    @property
    def dns_id(self) -> int | None:
        """The message ID on the wire (RFC 8484 §4.1: should be 0)."""
        return int.from_bytes(self.body[:2], "big") if len(self.body) >= 2 else None

    @property
    def qname(self) -> str:
        msg = self.msg
        if msg is None or not msg.question:
            return ""
        return msg.question[0].name.to_text()

    @property
    def authority(self) -> str:
        """``:authority`` (HTTP/2) or ``Host`` (HTTP/1.1)."""
        return self.headers.get(":authority") or self.headers.get("host", "")


@dataclass
class _Reply:
    """What to do with one request."""

    kind: str  # "answer", "refuse", "reset", "silent"
    status: int = 200
    content_type: str = CONTENT_TYPE
    body: bytes = b""
    delay: float = 0.0
    reset_code: int = int(h2.errors.ErrorCodes.INTERNAL_ERROR)


class FakeDoh(FakeServer):
    """A fault-injecting DoH server on 127.0.0.1 in a background thread (see module doc).

    Use as a context manager or call :meth:`start` / :meth:`stop`; every public method
    is safe to call from the test thread while it runs.
    """

    LABEL = "fake DoH server"
    THREAD_PREFIX = "fake-doh"
    QUIET_ERRORS = (*FakeServer.QUIET_ERRORS, asyncio.LimitOverrunError)

    def __init__(
        self,
        pki: Pki,
        *,
        mode: str = "normal",
        alpn: str = "h2",
        cert: str = "good",
        max_streams: int = 100,
        port: int = 0,
        path: str = DOH_PATH,
        **settings: object,
    ) -> None:
        if alpn not in ("h2", "http/1.1"):
            raise ValueError(f"alpn must be 'h2' or 'http/1.1', not {alpn!r}")
        super().__init__(port)
        self.pki = pki
        self.alpn = alpn
        self.cert = cert
        self.max_streams = max_streams
        self.path = path
        self._cfg = {
            "mode": "normal",
            "fault_limit": None,
            "delay": 0.0,
            "status": 500,
            "content_type": "text/html",
            "oversize": 70000,
            "reset_code": int(h2.errors.ErrorCodes.INTERNAL_ERROR),
            "goaway_after": 10,
            "goaway_answer": 3,
            "goaway_wait": 0.5,
            "goaway_connections": 1,
        }
        self.configure(mode=mode, **settings)
        self._requests: list[DohRequest] = []
        self._faults = 0
        self._connections = 0
        self._alpn_seen: list[str | None] = []
        self._goaways: list[tuple[int, int]] = []  # (connection, last stream id)
        self._resets_from_client: list[tuple[int, int, int]] = []  # (conn, stream, code)

    # -- configuration -------------------------------------------------------------

    def configure(self, **kw: object) -> None:
        """Change any of: mode, fault_limit, delay, status, content_type, oversize,
        reset_code, goaway_after, goaway_answer, goaway_wait, goaway_connections.
        Changing ``mode`` or ``fault_limit`` restarts the count of faulted requests."""
        unknown = set(kw) - set(self._cfg)
        if unknown:
            raise ValueError(f"unknown fake DoH settings: {sorted(unknown)}")
        modes = MODES if self.alpn == "h2" else HTTP1_MODES
        if "mode" in kw and kw["mode"] not in modes:
            raise ValueError(f"unknown mode {kw['mode']!r} for {self.alpn}; one of {modes}")
        with self._lock:
            self._cfg.update(kw)
            if "mode" in kw or "fault_limit" in kw:
                self._faults = 0

    @property
    def mode(self) -> str:
        return str(self._get("mode"))

    def spec(self, name: str = TLS_NAME) -> str:
        """The dns2dot ``-u`` value: ``https://127.0.0.1:PORT/dns-query#dns.test``."""
        return doh_spec(self.port, self.path, name)

    # -- records -------------------------------------------------------------------

    @property
    def requests(self) -> list[DohRequest]:
        """A copy of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def qnames(self) -> list[str]:
        return [r.qname for r in self.requests]

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        with self._lock:
            return self._connections

    @property
    def alpn_seen(self) -> list[str | None]:
        """The ALPN protocol negotiated on each connection."""
        with self._lock:
            return list(self._alpn_seen)

    @property
    def sni(self) -> list[str | None]:
        with self._lock:
            return list(self._sni)

    @property
    def goaways(self) -> list[tuple[int, int]]:
        """(connection, last stream ID) of every GOAWAY sent."""
        with self._lock:
            return list(self._goaways)

    @property
    def client_resets(self) -> list[tuple[int, int, int]]:
        """(connection, stream, error code) of every RST_STREAM the client sent."""
        with self._lock:
            return list(self._resets_from_client)

    def reset_records(self) -> None:
        with self._lock:
            self._requests.clear()
            self._connections = 0
            self._alpn_seen.clear()
            self._sni.clear()
            self._goaways.clear()
            self._resets_from_client.clear()

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        """True once at least ``n`` requests have arrived, False after ``timeout``."""
        return self._wait_count(lambda: len(self.requests), n, timeout)

    # -- lifecycle -----------------------------------------------------------------

    def _prepare(self) -> None:
        self._context = self.pki.server_context(self.cert)
        self._context.set_alpn_protocols([self.alpn])
        self._record_sni(self._context)

    # -- serving -------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self._connections += 1
            conn = self._connections
        await writer.start_tls(self._context, ssl_handshake_timeout=5)
        sslobj = writer.get_extra_info("ssl_object")
        protocol = sslobj.selected_alpn_protocol() if sslobj is not None else None
        with self._lock:
            self._alpn_seen.append(protocol)
        if self.alpn == "h2":
            await _H2Session(self, conn, reader, writer).serve()
        else:
            await self._serve_http1(conn, reader, writer)

    def _record(self, request: DohRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _decide(self, body: bytes) -> _Reply:
        """The reply to one request, by the current mode (and ``fault_limit``)."""
        with self._lock:
            cfg = dict(self._cfg)
            mode = str(cfg["mode"])
            limit = cfg["fault_limit"]
            if mode not in ("normal", "goaway"):
                if isinstance(limit, int) and self._faults >= limit:
                    mode = "normal"
                else:
                    self._faults += 1
        try:
            query: dns.message.Message | None = dns.message.from_wire(body)
        except dns.exception.DNSException:
            query = None
        if query is None:
            return _Reply("answer", status=400, content_type="text/plain", body=b"not DNS\n")
        good = table_answer(query).to_wire()
        delay = float(cfg["delay"])  # type: ignore[arg-type]
        if mode in ("normal", "goaway"):
            return _Reply("answer", body=good, delay=delay)
        if mode == "slow":
            return _Reply("answer", body=good, delay=delay)
        if mode == "refuse":
            return _Reply("refuse")
        if mode == "reset":
            return _Reply("reset", reset_code=int(cfg["reset_code"]))  # type: ignore[call-overload]
        if mode == "status":
            status = int(cfg["status"])  # type: ignore[call-overload]
            return _Reply("answer", status=status, content_type="text/plain", body=b"error\n")
        if mode == "content_type":
            return _Reply("answer", content_type=str(cfg["content_type"]), body=good)
        if mode == "oversized":
            size = int(cfg["oversize"])  # type: ignore[call-overload]
            return _Reply("answer", body=good + b"\x00" * max(0, size - len(good)))
        return _Reply("silent")

    # -- HTTP/1.1 ------------------------------------------------------------------

    async def _serve_http1(
        self, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        number = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, _, rest = lines[0].partition(" ")
            path, _, version = rest.rpartition(" ")
            if version != "HTTP/1.1":  # e.g. the HTTP/2 preface: not spoken here
                writer.write(
                    b"HTTP/1.1 505 HTTP Version Not Supported\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                return
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or "0")
            body = await reader.readexactly(length) if length else b""
            number += 1
            self._record(DohRequest(conn, "http/1.1", number, method, path, headers, body))
            reply = self._decide(body) if method == "POST" and path == self.path else None
            if reply is None:
                reply = _Reply("answer", status=404, content_type="text/plain", body=b"no\n")
            if reply.kind == "silent":
                continue  # keeps reading: the client waits in vain
            if reply.delay:
                await asyncio.sleep(reply.delay)
            writer.write(
                (
                    f"HTTP/1.1 {reply.status} X\r\nContent-Type: {reply.content_type}\r\n"
                    f"Content-Length: {len(reply.body)}\r\n\r\n"
                ).encode("latin-1")
                + reply.body
            )
            await writer.drain()


class _H2Session:
    """One HTTP/2 connection of the fake: events in, replies (and faults) out."""

    def __init__(
        self,
        fake: FakeDoh,
        conn: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.fake = fake
        self.conn = conn
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.headers: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.unsent: dict[int, bytes] = {}
        self.held: list[int] = []
        self.goaway_sent = False
        self.goaway_timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        with fake._lock:
            limit = int(fake._cfg["goaway_connections"])  # type: ignore[call-overload]
        self.goaway_here = fake.mode == "goaway" and conn <= limit

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def serve(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings(
            {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.fake.max_streams}
        )
        self.flush()
        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                if self.goaway_sent:
                    continue  # frames after our GOAWAY: ignore them
                self.flush()
                return
            for event in events:
                self.on_event(event)
            self.flush()

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.headers[event.stream_id] = {
                str(k).lower(): str(v) for k, v in (event.headers or [])
            }
            self.bodies[event.stream_id] = bytearray()
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            self.bodies.setdefault(event.stream_id, bytearray()).extend(event.data or b"")
            if event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            self.on_request(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            for stream_id in list(self.unsent):
                self.pump(stream_id)
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            self.unsent.pop(event.stream_id, None)
            with self.fake._lock:
                self.fake._resets_from_client.append(
                    (self.conn, event.stream_id, int(event.error_code or 0))
                )

    def on_request(self, stream_id: int) -> None:
        headers = self.headers.pop(stream_id, {})
        body = bytes(self.bodies.pop(stream_id, b""))
        self.fake._record(
            DohRequest(
                self.conn,
                "h2",
                stream_id,
                headers.get(":method", ""),
                headers.get(":path", ""),
                headers,
                body,
            )
        )
        if self.goaway_sent:
            return  # beyond our last stream: never processed
        if self.goaway_here:
            self.held.append(stream_id)
            after = int(self.fake._get("goaway_after"))  # type: ignore[call-overload]
            if len(self.held) >= after:
                self.send_goaway()
            elif self.goaway_timer is None:
                wait = float(self.fake._get("goaway_wait"))  # type: ignore[arg-type]
                self.goaway_timer = self.loop.call_later(wait, self.send_goaway)
            return
        if headers.get(":method") != "POST" or headers.get(":path") != self.fake.path:
            self.respond(stream_id, _Reply("answer", 404, "text/plain", b"no\n"))
            return
        reply = self.fake._decide(body)
        if reply.kind == "silent":
            return
        if reply.delay > 0:
            self.loop.call_later(reply.delay, self.respond_later, stream_id, reply)
        else:
            self.respond(stream_id, reply)

    def send_goaway(self) -> None:
        """Answer the first ``goaway_answer`` held streams, then GOAWAY after the last of them."""
        if self.goaway_sent:
            return
        if self.goaway_timer is not None:
            self.goaway_timer.cancel()
        count = int(self.fake._get("goaway_answer"))  # type: ignore[call-overload]
        answered = self.held[:count]
        for stream_id in answered:
            self.respond(stream_id, self.fake._decide(self.bodies_of(stream_id)))
        last = answered[-1] if answered else 0
        self.h2.close_connection(last_stream_id=last)
        self.goaway_sent = True
        with self.fake._lock:
            self.fake._goaways.append((self.conn, last))
        self.flush()
        # close the connection a little later, as servers do once their streams are done
        self.loop.call_later(2.0, self.writer.close)

    def bodies_of(self, stream_id: int) -> bytes:
        for request in reversed(self.fake.requests):
            if request.conn == self.conn and request.stream_id == stream_id:
                return request.body
        return b""

    def respond_later(self, stream_id: int, reply: _Reply) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            self.respond(stream_id, reply)
        self.flush()

    def respond(self, stream_id: int, reply: _Reply) -> None:
        try:
            if reply.kind == "refuse":
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            if reply.kind == "reset":
                self.h2.reset_stream(stream_id, reply.reset_code)
                return
            self.h2.send_headers(
                stream_id,
                [
                    (":status", str(reply.status)),
                    ("content-type", reply.content_type),
                    ("content-length", str(len(reply.body))),
                    ("cache-control", "max-age=60"),
                ],
            )
            self.unsent[stream_id] = reply.body
            self.pump(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.unsent.pop(stream_id, None)

    def pump(self, stream_id: int) -> None:
        """Send as much of the body as flow control allows; end the stream when done."""
        data = self.unsent.get(stream_id)
        if data is None:
            return
        try:
            while data:
                size = min(
                    self.h2.local_flow_control_window(stream_id),
                    self.h2.max_outbound_frame_size,
                    len(data),
                )
                if size <= 0:
                    break
                self.h2.send_data(stream_id, data[:size])
                data = data[size:]
            if data:
                self.unsent[stream_id] = data
            else:
                self.unsent.pop(stream_id, None)
                self.h2.end_stream(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.unsent.pop(stream_id, None)


#: A factory signature the test fixture hands out.
FakeDohFactory = Callable[..., FakeDoh]
