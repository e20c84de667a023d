"""Loopback networking helpers: free ports and small DNS clients with timeouts.

Why: tests talk to dns2dot with clients we control byte for byte (raw sockets) as
well as with dnspython; every call here is bounded by a deadline, and nothing
leaves 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import time
from collections.abc import Iterable, Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

LOOPBACK = "127.0.0.1"

_handed_out: set[int] = set()


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dns2dot listens on both).

    Ports already returned in this process are not handed out again, so two
    fixtures started back to back never collide with each other.
    """
    for _ in range(100):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            tcp.bind((LOOPBACK, 0))
            port = int(tcp.getsockname()[1])
            if port in _handed_out:
                continue
            try:
                udp.bind((LOOPBACK, port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
        finally:
            tcp.close()
            udp.close()
    raise RuntimeError("no free UDP+TCP port on 127.0.0.1 after 100 tries")


def make_query(
    name: str,
    rdtype: str = "A",
    *,
    edns: int | None = None,
    payload: int = 1232,
    qid: int | None = None,
) -> dns.message.QueryMessage:
    """A recursive query; ``edns=None`` means no OPT record (plain 512-byte UDP)."""
    q = dns.message.make_query(
        name, rdtype, use_edns=edns if edns is not None else False, payload=payload
    )
    if qid is not None:
        q.id = qid
    return q


def frame(wire: bytes) -> bytes:
    """RFC 1035 4.2.2 / RFC 7858 framing: a two-byte big-endian length, then the message."""
    return struct.pack("!H", len(wire)) + wire


def udp_query(port: int, query: dns.message.Message, timeout: float = 5.0) -> dns.message.Message:
    """Send ``query`` over UDP to 127.0.0.1:``port`` and return the parsed answer.

    dnspython checks the ID and question of the answer for us.
    """
    return dns.query.udp(query, LOOPBACK, port=port, timeout=timeout)


def tcp_query(port: int, query: dns.message.Message, timeout: float = 5.0) -> dns.message.Message:
    """Send ``query`` over a fresh TCP connection and return the parsed answer."""
    return dns.query.tcp(query, LOOPBACK, port=port, timeout=timeout)


def udp_exchange(port: int, wire: bytes, timeout: float = 3.0) -> bytes | None:
    """Send raw bytes as one datagram; return the first datagram back, or None on timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, (LOOPBACK, port))
        try:
            data, _ = s.recvfrom(65535)
        except TimeoutError:
            return None
        return data


class TcpClient:
    """A raw TCP DNS client: write any bytes, read length-prefixed frames with deadlines.

    Why raw: tests need split writes, hundreds of pipelined queries in one send,
    lying length prefixes, and a way to tell "connection closed" from "no answer yet".
    """

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        self.closed_by_peer = False

    def __enter__(self) -> TcpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close our side (idempotent)."""
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        """Write raw bytes (already framed or deliberately broken)."""
        self.sock.sendall(data)

    def send_query(self, query: dns.message.Message) -> None:
        """Write one framed query."""
        self.sock.sendall(frame(query.to_wire()))

    def send_slowly(self, data: bytes, chunk: int = 1, pause: float = 0.002) -> None:
        """Write ``data`` in ``chunk``-byte pieces with a short pause (split writes)."""
        for i in range(0, len(data), chunk):
            self.sock.sendall(data[i : i + chunk])
            time.sleep(pause)

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False on EOF/reset or deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.closed_by_peer:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            self.closed_by_peer = True
            return False
        if not data:
            self.closed_by_peer = True
            return False
        self._buf += data
        return True

    def recv_frame(self, timeout: float = 5.0) -> bytes | None:
        """The next length-prefixed message, or None on EOF or timeout (see ``closed_by_peer``)."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self._buf) >= 2:
                (n,) = struct.unpack("!H", self._buf[:2])
                if len(self._buf) >= 2 + n:
                    msg = bytes(self._buf[2 : 2 + n])
                    del self._buf[: 2 + n]
                    return msg
            if not self._fill(deadline):
                return None

    def recv_frames(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """Up to ``count`` messages, stopping early on EOF or when ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        out: list[bytes] = []
        while len(out) < count:
            msg = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if msg is None:
                break
            out.append(msg)
        return out

    def recv_message(self, timeout: float = 5.0) -> dns.message.Message | None:
        """The next message parsed with dnspython, or None on EOF/timeout."""
        wire = self.recv_frame(timeout)
        return None if wire is None else dns.message.from_wire(wire)

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True if the peer closes (EOF or reset) within ``timeout``; discards any data."""
        deadline = time.monotonic() + timeout
        while not self.closed_by_peer:
            self._buf.clear()
            if not self._fill(deadline) and not self.closed_by_peer:
                return False
        return True


def rcode_text(msg: dns.message.Message) -> str:
    """``NOERROR``, ``SERVFAIL``, ... for assertion messages."""
    return dns.rcode.to_text(msg.rcode())


def a_addresses(msg: dns.message.Message) -> set[str]:
    """All A/AAAA addresses in the answer section."""
    out: set[str] = set()
    for rrset in msg.answer:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            out.update(rd.to_text() for rd in rrset)
    return out


def is_truncated(msg: dns.message.Message) -> bool:
    """Whether TC is set."""
    return bool(msg.flags & dns.flags.TC)


def question_names(msgs: Iterable[dns.message.Message]) -> list[str]:
    """The first question name of each message, as text."""
    return [m.question[0].name.to_text() if m.question else "" for m in msgs]


def udp_many(
    port: int, queries: Iterable[dns.message.Message], timeout: float = 10.0
) -> dict[int, list[bytes]]:
    """Send every query from one UDP socket at once; collect replies by ID until all
    have one or ``timeout`` runs out. Lists longer than one reveal duplicate answers."""
    qs = list(queries)
    got: dict[int, list[bytes]] = {q.id: [] for q in qs}
    if len(got) != len(qs):
        # Two queries under one ID would look like one query answered twice.
        raise ValueError("udp_many needs a distinct ID for every query (pass qid=)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for q in qs:
            s.sendto(q.to_wire(), (LOOPBACK, port))
        deadline = time.monotonic() + timeout
        while any(not v for v in got.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            s.settimeout(remaining)
            try:
                data, _ = s.recvfrom(65535)
            except TimeoutError:
                break
            if len(data) >= 2:
                got.setdefault(int.from_bytes(data[:2], "big"), []).append(data)
        # a short grace period to catch a duplicate answer
        s.settimeout(0.2)
        try:
            for _ in range(1000):
                data, _ = s.recvfrom(65535)
                if len(data) >= 2:
                    got.setdefault(int.from_bytes(data[:2], "big"), []).append(data)
        except TimeoutError:
            pass
    return got


def send_for(sock: socket.socket, data: bytes, seconds: float) -> int:
    """Write as much of ``data`` as the peer takes within ``seconds``; bytes written."""
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + seconds
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_WRITE)
    try:
        while sent < len(data) and time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, min(0.2, deadline - time.monotonic()))):
                continue
            try:
                sent += sock.send(data[sent : sent + 65536])
            except BlockingIOError:
                continue
            except OSError:
                break
    finally:
        sel.close()
    return sent


TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8


def tcp_state(sock: socket.socket) -> int:
    """Linux ``tcpi_state`` (first byte of ``struct tcp_info``), read without reading data."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def wait_peer_closed(sock: socket.socket, timeout: float) -> bool:
    """True once the peer sent FIN or RST, without consuming what it sent (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tcp_state(sock) in (TCP_CLOSE, TCP_CLOSE_WAIT):
            return True
        time.sleep(0.05)
    return tcp_state(sock) in (TCP_CLOSE, TCP_CLOSE_WAIT)


@contextlib.contextmanager
def unread_client(port: int) -> Iterator[socket.socket]:
    """A TCP client connected to ``port`` with a 4 KiB receive buffer, for a test that
    never reads from it: what it is sent piles up at once. Closed on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(3)
        sock.connect((LOOPBACK, port))
        yield sock
    finally:
        sock.close()
