"""An in-process DoT upstream with fault modes, for the failure paths unbound won't produce.

Why: dns2dot must survive upstreams that present bad certificates, never answer,
hang up mid-pipeline, answer out of order or with the wrong ID/question, or send
garbage. This server runs its own asyncio loop in a background thread, serves
RFC 7858 on 127.0.0.1:<port>, records every query it receives, and can be
reconfigured (mode, certificate) while running.

Modes (``FakeUpstream.configure(mode=...)``):

``normal``          answer at once from the built-in table (see :func:`answer`)
``silent``          read and record, never answer
``close_after``     answer the first ``close_after`` queries of a connection, then close it
                    on the next one (with anything else pipelined still unanswered)
``reverse``         buffer ``reorder`` queries (or whatever came within ``reorder_wait``)
                    and answer them in reverse order
``wrong_id``        answer with the ID plus one
``wrong_question``  right ID, answer for another name (``other.example.test``)
``garbage``         a frame holding the right ID followed by 0xff bytes (not DNS)
``garbage_raw``     unframed junk bytes on the stream
``slow``            answer correctly after ``delay`` seconds (each query on its own)

Answer shaping (any mode that answers from the table): ``ttl`` sets the TTL of every
record (60 by default); ``soa=True`` puts an SOA for ``example.test.`` in the authority
section of NXDOMAIN and NODATA answers (RFC 2308 negative caching; off by default, so
those answers are not cacheable); ``pad_answers=N`` adds an OPT with an RFC 7830
padding option to every answer, padded to a multiple of N bytes, even when the query
had no OPT (a misbehaving upstream; 0, the default, leaves answers unpadded).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import struct
import time
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from .fake_server import FakeServer
from .net import LOOPBACK
from .pki import TLS_NAME, Pki

MODES = (
    "normal",
    "silent",
    "close_after",
    "reverse",
    "wrong_id",
    "wrong_question",
    "garbage",
    "garbage_raw",
    "slow",
)

_Q_NUM = re.compile(r"^q(\d+)$")

DEFAULT_A = "192.0.2.1"
DEFAULT_AAAA = "2001:db8::1"
OTHER_NAME = "other.example.test."
SOA_ZONE = "example.test."


def fake_address(name: str, default: str = DEFAULT_A) -> str:
    """The fake's A address: ``q<N>.…`` -> 10.2.x.y (unique per N), else ``default``."""
    first = name.split(".", 1)[0].lower()
    m = _Q_NUM.match(first)
    if m:
        n = int(m.group(1))
        return f"10.2.{(n >> 8) & 255}.{n & 255}"
    return default


def soa_rrset(ttl: int = 60) -> dns.rrset.RRset:
    """The SOA of ``example.test.`` that negative answers carry with ``soa=True``;
    TTL and MINIMUM are both ``ttl`` (so the negative TTL is ``ttl``)."""
    return dns.rrset.from_text(
        SOA_ZONE, ttl, "IN", "SOA", f"ns.{SOA_ZONE} host.{SOA_ZONE} 1 3600 600 86400 {ttl}"
    )


def answer(
    query: dns.message.Message,
    a_default: str = DEFAULT_A,
    *,
    ttl: int = 60,
    soa: bool = False,
) -> dns.message.Message:
    """The fake's table: ``nx*`` names -> NXDOMAIN; A -> :func:`fake_address`;
    AAAA -> 2001:db8::1; TXT -> one string; any other type -> NODATA.

    Records carry ``ttl``; with ``soa`` NXDOMAIN and NODATA carry :func:`soa_rrset`."""
    r = dns.message.make_response(query)
    r.flags |= dns.flags.RA
    if not query.question:
        r.set_rcode(dns.rcode.FORMERR)
        return r
    q = query.question[0]
    name = q.name.to_text()
    if name.lower().startswith("nx"):
        r.set_rcode(dns.rcode.NXDOMAIN)
    elif q.rdtype == dns.rdatatype.A:
        r.answer.append(dns.rrset.from_text(q.name, ttl, "IN", "A", fake_address(name, a_default)))
    elif q.rdtype == dns.rdatatype.AAAA:
        r.answer.append(dns.rrset.from_text(q.name, ttl, "IN", "AAAA", DEFAULT_AAAA))
    elif q.rdtype == dns.rdatatype.TXT:
        r.answer.append(dns.rrset.from_text(q.name, ttl, "IN", "TXT", '"fake upstream"'))
    if soa and not r.answer:
        r.authority.append(soa_rrset(ttl))
    return r


@dataclass(frozen=True)
class Received:
    """One query as it arrived at the fake (after TLS): connection number, bytes, parsed form."""

    conn: int
    wire: bytes
    msg: dns.message.Message | None
    at: float = field(default_factory=time.monotonic)

    @property
    def qname(self) -> str:
        """First question name, or '' if unparseable/empty."""
        if self.msg is None or not self.msg.question:
            return ""
        return self.msg.question[0].name.to_text()


class FakeUpstream(FakeServer):
    """A fault-injecting DoT server on 127.0.0.1 running in a background thread.

    Use as a context manager or call :meth:`start` / :meth:`stop`. All public
    methods are safe to call from the test thread while it runs.
    """

    LABEL = "fake upstream"
    THREAD_PREFIX = "fake-upstream"

    def __init__(
        self,
        pki: Pki,
        *,
        cert: str = "good",
        mode: str = "normal",
        tls: bool = True,
        a_default: str = DEFAULT_A,
        close_after: int = 5,
        reorder: int = 8,
        reorder_wait: float = 0.5,
        delay: float = 1.0,
        port: int = 0,
        ttl: int = 60,
        soa: bool = False,
        pad_answers: int = 0,
    ) -> None:
        super().__init__(port)
        self.pki = pki
        self.tls = tls
        self.configure(
            cert=cert,
            mode=mode,
            a_default=a_default,
            close_after=close_after,
            reorder=reorder,
            reorder_wait=reorder_wait,
            delay=delay,
            ttl=ttl,
            soa=soa,
            pad_answers=pad_answers,
        )
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._received: list[Received] = []
        self._connections = 0
        self._handshakes_ok = 0
        self._handshake_errors: list[str] = []
        self._tls_versions: list[str] = []

    # -- configuration -------------------------------------------------------------

    def configure(self, **kw: object) -> None:
        """Change ``mode``, ``cert`` (good/wrong_name/expired/untrusted), ``a_default``,
        ``close_after``, ``reorder``, ``reorder_wait``, ``delay``, ``ttl``, ``soa`` or
        ``pad_answers``; applies to the next query (``cert``: to the next connection)."""
        allowed = {
            "cert",
            "mode",
            "a_default",
            "close_after",
            "reorder",
            "reorder_wait",
            "delay",
            "ttl",
            "soa",
            "pad_answers",
        }
        unknown = set(kw) - allowed
        if unknown:
            raise ValueError(f"unknown fake upstream settings: {sorted(unknown)}")
        if "mode" in kw and kw["mode"] not in MODES:
            raise ValueError(f"unknown mode {kw['mode']!r}; one of {MODES}")
        if "cert" in kw:
            self.pki.leaf(str(kw["cert"]))  # validates the name
        with self._lock:
            self._cfg.update(kw)

    @property
    def mode(self) -> str:
        """The current fault mode."""
        return str(self._get("mode"))

    @property
    def spec(self) -> str:
        """The dns2dot ``-u`` value: ``127.0.0.1:PORT#dns.test``."""
        return f"{LOOPBACK}:{self.port}#{TLS_NAME}"

    # -- records -------------------------------------------------------------------

    @property
    def received(self) -> list[Received]:
        """A copy of every query received so far, in arrival order."""
        with self._lock:
            return list(self._received)

    def query_names(self) -> list[str]:
        """Question names of every query received so far."""
        return [r.qname for r in self.received]

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (before TLS)."""
        with self._lock:
            return self._connections

    @property
    def handshakes_ok(self) -> int:
        """TLS handshakes completed so far."""
        with self._lock:
            return self._handshakes_ok

    @property
    def handshake_errors(self) -> list[str]:
        """Server-side reasons of failed handshakes (e.g. the client rejected our cert)."""
        with self._lock:
            return list(self._handshake_errors)

    @property
    def sni(self) -> list[str | None]:
        """The SNI each TLS client sent (None when it sent none)."""
        with self._lock:
            return list(self._sni)

    @property
    def tls_versions(self) -> list[str]:
        """Negotiated TLS version of each completed handshake (e.g. 'TLSv1.3')."""
        with self._lock:
            return list(self._tls_versions)

    def reset_records(self) -> None:
        """Forget what was recorded (queries, connections, handshakes)."""
        with self._lock:
            self._received.clear()
            self._connections = 0
            self._handshakes_ok = 0
            self._handshake_errors.clear()
            self._sni.clear()
            self._tls_versions.clear()

    def wait_for_queries(self, n: int, timeout: float = 5.0) -> bool:
        """True once at least ``n`` queries have arrived, False after ``timeout``."""
        return self._wait_count(lambda: len(self.received), n, timeout)

    # -- serving -------------------------------------------------------------------

    def _context(self, kind: str) -> ssl.SSLContext:
        ctx = self._contexts.get(kind)
        if ctx is None:
            ctx = self.pki.server_context(kind)
            self._record_sni(ctx)
            self._contexts[kind] = ctx
        return ctx

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self._connections += 1
            conn = self._connections
        if self.tls:
            try:
                await writer.start_tls(
                    self._context(str(self._get("cert"))), ssl_handshake_timeout=5
                )
            except Exception as exc:
                with self._lock:
                    self._handshake_errors.append(repr(exc))
                return
            sslobj = writer.get_extra_info("ssl_object")
            with self._lock:
                self._handshakes_ok += 1
                if sslobj is not None:
                    self._tls_versions.append(str(sslobj.version()))
        served = 0
        held: list[tuple[int, dns.message.Message | None, bytes]] = []
        flush_handle: asyncio.TimerHandle | None = None

        def flush() -> None:
            nonlocal flush_handle
            if flush_handle is not None:
                flush_handle.cancel()
                flush_handle = None
            for _qid, msg, wire in reversed(held):
                self._write_answer(writer, "normal", msg, wire)
            held.clear()

        while True:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
            wire = await reader.readexactly(n)
            try:
                msg: dns.message.Message | None = dns.message.from_wire(wire)
            except dns.exception.DNSException:
                msg = None
            with self._lock:
                self._received.append(Received(conn=conn, wire=wire, msg=msg))
            mode = self.mode
            if mode == "silent":
                continue
            if mode == "close_after":
                if served >= int(self._get("close_after")):  # type: ignore[call-overload]
                    writer.transport.abort()
                    return
                served += 1
                self._write_answer(writer, "normal", msg, wire)
            elif mode == "reverse":
                held.append((len(held), msg, wire))
                if len(held) >= int(self._get("reorder")):  # type: ignore[call-overload]
                    flush()
                elif flush_handle is None:
                    flush_handle = asyncio.get_running_loop().call_later(
                        float(self._get("reorder_wait")),  # type: ignore[arg-type]
                        flush,
                    )
            elif mode == "slow":
                asyncio.get_running_loop().call_later(
                    float(self._get("delay")),  # type: ignore[arg-type]
                    self._write_answer,
                    writer,
                    "normal",
                    msg,
                    wire,
                )
            else:
                self._write_answer(writer, mode, msg, wire)

    def _write_answer(
        self, writer: asyncio.StreamWriter, mode: str, msg: dns.message.Message | None, wire: bytes
    ) -> None:
        if writer.is_closing():
            return
        qid = wire[:2] if len(wire) >= 2 else b"\x00\x00"
        if mode == "garbage_raw":
            writer.write(b"\x00\x05HTTP/1.1 400 Bad Request\r\n\r\n" + b"\xff" * 64)
            return
        if mode == "garbage":
            out = qid + b"\xff" * 30
        elif msg is None:
            # Unparseable query: FORMERR with its ID, as a real server would.
            out = qid + b"\x81\x01" + b"\x00" * 8
        else:
            shape = {
                "ttl": int(self._get("ttl")),  # type: ignore[call-overload]
                "soa": bool(self._get("soa")),
            }
            r = answer(msg, str(self._get("a_default")), **shape)
            if mode == "wrong_id":
                r.id = (msg.id + 1) & 0xFFFF
            elif mode == "wrong_question":
                other = dns.message.make_query(
                    OTHER_NAME, msg.question[0].rdtype if msg.question else "A"
                )
                other.id = msg.id
                r = answer(other, str(self._get("a_default")), **shape)
            pad = int(self._get("pad_answers"))  # type: ignore[call-overload]
            if pad > 0:
                r.use_edns(0, ednsflags=max(msg.ednsflags, 0), payload=1232, pad=pad)
            out = r.to_wire()
        writer.write(struct.pack("!H", len(out)) + out)
