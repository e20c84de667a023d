"""dns2dot as a DNS-over-HTTPS server for clients (``--listen-https``, RFC 8484), end to end.

Why: browsers and operating systems ask over HTTPS; what they may rely on is RFC
8484 done properly (GET ``?dns=`` and POST ``application/dns-message`` on the
configured path, HTTP/2 by ALPN and HTTP/1.1, ``Cache-Control: max-age`` from the
smallest TTL, the error statuses 400/404/405/413/415, limits on headers, bodies and
concurrent streams, GOAWAY on shutdown), with the same resolver behind it as the
plain listeners. curl, dig +https and dnsperf -m doh drive it, and h2 where frames
must be seen; dns2dot runs as a real process in front of unbound on loopback.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.message
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from support.dnsperf import run_dnsperf
from support.listeners import (
    Listening,
    closed_within,
    listening_dns2dot,
    start_listening,
    tls_connect,
)
from support.net import LOOPBACK, a_addresses, make_query, wait_peer_closed
from support.pki import TLS_NAME, Pki
from support.proc import Dns2Dot, require_tool, start_dns2dot
from support.unbound import N_NAMES, UnboundUpstream

from dns2dot.protocol.doh import encode_header_block
from dns2dot.protocol.http import encode_dns_param
from dns2dot.protocol.http2 import PREFACE, Frame, frame

pytestmark = pytest.mark.integration

CT = "application/dns-message"


@pytest.fixture(scope="module")
def listening(
    unbound: UnboundUpstream, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Listening]:
    directory = tmp_path_factory.mktemp("listen-https")
    with listening_dns2dot(unbound.spec, pki, directory) as listening:
        yield listening


def _curl(
    listening: Listening,
    pki: Pki,
    target: str,
    *args: str,
    http1: bool = False,
    body: Path | None = None,
) -> tuple[int, dict[str, str], bytes, str]:
    """(status, header fields, body, HTTP version) of one curl request."""
    curl = require_tool("curl")
    port = listening.https_port
    argv = [
        curl,
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        str(pki.ca),
        "--resolve",
        f"{TLS_NAME}:{port}:{LOOPBACK}",
        "-D",
        "-",
        "-o",
        "-",
        "-w",
        "\n%{http_version}",
        "--http1.1" if http1 else "--http2",
        *args,
    ]
    if body is not None:
        argv += ["--data-binary", f"@{body}"]
    argv.append(f"https://{TLS_NAME}:{port}{target}")
    out = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    assert out.returncode == 0, (args, out.stderr.decode(errors="replace"))
    raw, _, version = out.stdout.rpartition(b"\n")
    head, _, content = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return status, fields, content, version.decode()


def _query_wire(name: str = "a.example.test", **kw: object) -> bytes:
    q = make_query(name, **kw)  # type: ignore[arg-type]
    q.id = 0  # RFC 8484 §4.1: ID 0 for cache friendliness
    return q.to_wire()


@pytest.mark.parametrize("http1", [False, True], ids=["h2", "http1.1"])
def test_curl_get(listening: Listening, pki: Pki, http1: bool) -> None:
    target = f"/dns-query?dns={encode_dns_param(_query_wire())}"
    status, fields, body, version = _curl(listening, pki, target, http1=http1)
    assert status == 200
    assert version == ("1.1" if http1 else "2")
    assert fields["content-type"] == CT
    assert fields["cache-control"] == "max-age=300"
    answer = dns.message.from_wire(body)
    assert answer.id == 0
    assert a_addresses(answer) == {"192.0.2.10"}


@pytest.mark.parametrize("http1", [False, True], ids=["h2", "http1.1"])
def test_curl_post(listening: Listening, pki: Pki, tmp_path: Path, http1: bool) -> None:
    query = tmp_path / "q.bin"
    query.write_bytes(_query_wire("www.example.test"))
    status, fields, body, _ = _curl(
        listening, pki, "/dns-query", "-H", f"content-type: {CT}", http1=http1, body=query
    )
    assert status == 200
    assert fields["content-type"] == CT
    assert a_addresses(dns.message.from_wire(body)) == {"192.0.2.11"}


@pytest.mark.parametrize("http1", [False, True], ids=["h2", "http1.1"])
def test_curl_error_statuses(listening: Listening, pki: Pki, tmp_path: Path, http1: bool) -> None:
    good = encode_dns_param(_query_wire())
    answer_bits = bytearray(_query_wire())
    answer_bits[2] |= 0x80
    query = tmp_path / "q.bin"
    query.write_bytes(_query_wire())
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x00" * 70000)
    cases = [
        (400, ["/dns-query?dns=%%%"], None),
        (400, ["/dns-query"], None),
        (400, [f"/dns-query?dns={encode_dns_param(b'xyz')}"], None),
        (400, [f"/dns-query?dns={encode_dns_param(bytes(answer_bits))}"], None),
        (404, [f"/other?dns={good}"], None),
        (405, ["/dns-query", "-X", "PUT", "-H", f"content-type: {CT}"], query),
        (405, ["/dns-query", "-X", "DELETE"], None),
        (415, ["/dns-query", "-H", "content-type: text/plain"], query),
        (413, ["/dns-query", "-H", f"content-type: {CT}"], big),
    ]
    for expected, args, body in cases:
        status, fields, _, _ = _curl(listening, pki, args[0], *args[1:], http1=http1, body=body)
        assert status == expected, (args, fields)
        assert fields.get("cache-control") == "no-store", (args, fields)
        if expected == 405:
            assert fields.get("allow") == "GET, POST"
    # The connection survives every one of them: a good request still works.
    status, _, _, _ = _curl(listening, pki, f"/dns-query?dns={good}", http1=http1)
    assert status == 200


def test_http1_header_limit(listening: Listening, pki: Pki) -> None:
    with tls_connect(listening.https_port, pki, alpn=("http/1.1",)) as sock:
        sock.sendall(b"GET /dns-query HTTP/1.1\r\nx: " + b"a" * 20000 + b"\r\n\r\n")
        sock.settimeout(5)
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 431 ")


def test_dig_https(listening: Listening) -> None:
    dig = require_tool("dig")
    for method in ("+https", "+https-get"):
        out = subprocess.run(
            [dig, method, "-p", str(listening.https_port), f"@{LOOPBACK}", "a.example.test"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "192.0.2.10" in out.stdout, out.stdout
        assert "(HTTPS" in out.stdout


def test_padded_query_padded_answer(listening: Listening, pki: Pki) -> None:
    q = make_query("a.example.test", edns=0)
    q.use_edns(0, options=[dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 30)])
    q.id = 0
    status, _, body, _ = _curl(listening, pki, f"/dns-query?dns={encode_dns_param(q.to_wire())}")
    assert status == 200
    assert len(body) % 468 == 0
    assert a_addresses(dns.message.from_wire(body)) == {"192.0.2.10"}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_dnsperf_doh_nothing_lost(listening: Listening, tmp_path: Path, method: str) -> None:
    data = tmp_path / "queries"
    data.write_text("".join(f"n{i}.example.test A\n" for i in range(min(N_NAMES, 300))))
    res = run_dnsperf(
        listening.https_port,
        data,
        runs=10,
        seconds=30,
        clients=10,
        extra=["-m", "doh", "-O", f"doh-method={method}"],
    )
    assert res.sent == res.completed, res.raw
    assert res.lost == 0, res.raw
    assert res.rcodes.get("NOERROR") == res.completed, res.raw


# -- HTTP/2 frames ---------------------------------------------------------------------------


class _H2Client:
    """A bare HTTP/2 client on h2, to see SETTINGS and GOAWAY."""

    def __init__(self, port: int, pki: Pki) -> None:
        self.sock = tls_connect(port, pki, alpn=("h2",))
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.events: list[h2.events.Event] = []

    def get(self, wire: bytes) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", TLS_NAME),
                (":path", f"/dns-query?dns={encode_dns_param(wire)}"),
                ("accept", CT),
            ],
            end_stream=True,
        )
        self.sock.sendall(self.conn.data_to_send())
        return stream_id

    def pump(self, until: type, timeout: float = 8.0) -> list[h2.events.Event]:
        """Read events until one of type ``until`` arrives (or the time is up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(isinstance(e, until) for e in self.events):
                break
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                break
            if not data:
                break
            self.events += self.conn.receive_data(data)
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)
        return self.events

    def close(self) -> None:
        self.sock.close()


def test_h2_settings_limit_streams(listening: Listening, pki: Pki) -> None:
    client = _H2Client(listening.https_port, pki)
    try:
        client.pump(h2.events.RemoteSettingsChanged)
        settings = client.conn.remote_settings
        assert settings.max_concurrent_streams == 100
        assert settings.max_header_list_size == 16384
        stream = client.get(_query_wire())
        events = client.pump(h2.events.StreamEnded)
        assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == stream for e in events)
    finally:
        client.close()


def test_goaway_on_shutdown(
    unbound: UnboundUpstream, pki: Pki, tmp_path: Path, dns2dot: object
) -> None:
    """SIGTERM: an HTTP/2 client gets GOAWAY (NO_ERROR), and its open stream an answer."""
    proc: list[Dns2Dot] = []

    def start(**kw: object) -> Dns2Dot:
        d = start_dns2dot(tmp_path / "log", cafile=pki.ca, **kw)  # type: ignore[arg-type]
        proc.append(d)
        return d

    try:
        listening = start_listening(start, unbound.spec, pki, tmp_path / "certs")
        client = _H2Client(listening.https_port, pki)
        try:
            client.pump(h2.events.RemoteSettingsChanged)
            first = client.get(_query_wire())
            client.pump(h2.events.StreamEnded)
            listening.proc.proc.send_signal(signal.SIGTERM)
            events = client.pump(h2.events.ConnectionTerminated)
            goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
            assert goaway, events
            assert goaway[0].error_code == 0
            assert goaway[0].last_stream_id == first
        finally:
            client.close()
        assert listening.proc.proc.wait(timeout=10) == 0
    finally:
        for d in proc:
            d.stop()


def test_one_answer_per_tls_record(listening: Listening, pki: Pki) -> None:
    """Answers ready together still go out one TLS record each: dnsperf 2.10's DoH client
    takes one answer per record it reads and strands the rest of a record (its queries
    then time out). Python's ssl returns at most one record per recv, which shows it."""
    client = _H2Client(listening.https_port, pki)
    try:
        client.pump(h2.events.RemoteSettingsChanged)
        streams = set()
        for i in range(20):
            stream_id = client.conn.get_next_available_stream_id()
            client.conn.send_headers(
                stream_id,
                [
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":authority", TLS_NAME),
                    (
                        ":path",
                        f"/dns-query?dns={encode_dns_param(_query_wire(f'n{i}.example.test'))}",
                    ),
                ],
                end_stream=True,
            )
            streams.add(stream_id)
        client.sock.sendall(client.conn.data_to_send())  # all 20 in one write
        ended: set[int] = set()
        deadline = time.monotonic() + 10
        while ended != streams and time.monotonic() < deadline:
            client.sock.settimeout(max(0.05, deadline - time.monotonic()))
            record = client.sock.recv(65536)
            assert record
            events = client.conn.receive_data(record)
            finished = [e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)]
            assert len(finished) <= 1, f"{len(finished)} answers in one TLS record"
            ended.update(finished)
            client.sock.sendall(client.conn.data_to_send())
        assert ended == streams
    finally:
        client.close()


def test_http1_request_trickling_in_is_closed(listening: Listening, pki: Pki) -> None:
    """A request head sent a byte at a time is closed after the frame deadline (5 s),
    though every byte refreshes the idle timer; another client is served meanwhile."""
    wire = _query_wire()
    request = f"GET /dns-query?dns={encode_dns_param(wire)} HTTP/1.1\r\nhost: x\r\n".encode()
    with tls_connect(listening.https_port, pki, alpn=("http/1.1",)) as slow:
        closed = False
        deadline = time.monotonic() + 15
        for byte in request * 10:
            if time.monotonic() > deadline:
                break
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            slow.settimeout(0.3)
            try:
                if not slow.recv(4096):
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed, "a request trickling in for 15 s was not closed"
    status, _, _, _ = _curl(listening, pki, f"/dns-query?dns={encode_dns_param(wire)}")
    assert status == 200


# -- hostile clients on the HTTPS port (the same TLS transport as DoT) ------------------------


def test_hostile_handshakes_closed_others_served(listening: Listening, pki: Pki) -> None:
    """A silent client, garbage instead of a ClientHello and a ClientHello trickled byte
    by byte are each closed within seconds; a good client is served meanwhile."""
    port = listening.https_port
    hello = bytes.fromhex("16030100a5010000a10303") + bytes(32)  # the start of a ClientHello
    with (
        socket.create_connection((LOOPBACK, port), timeout=5) as silent,
        socket.create_connection((LOOPBACK, port), timeout=5) as garbage,
        socket.create_connection((LOOPBACK, port), timeout=5) as trickle,
    ):
        garbage.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)
        target = f"/dns-query?dns={encode_dns_param(_query_wire())}"
        status, _, _, _ = _curl(listening, pki, target)
        assert status == 200
        closed = False
        deadline = time.monotonic() + 10
        for byte in hello:
            if time.monotonic() > deadline:
                break
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
        assert closed or closed_within(trickle, 5.0), "a trickled ClientHello was kept"
        assert closed_within(silent, 5.0)
        assert closed_within(garbage, 5.0)
    status, _, _, _ = _curl(listening, pki, target)
    assert status == 200


def test_h2_client_that_does_not_read_is_reset(listening: Listening, pki: Pki) -> None:
    """An HTTP/2 client that asks and asks and reads no answer is reset (its answers
    taken by nothing for the stall timeout); another client is served meanwhile."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(2)
    raw.connect((LOOPBACK, listening.https_port))
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["h2"])
    with ctx.wrap_socket(raw, server_hostname=TLS_NAME) as sock:
        path = f"/dns-query?dns={encode_dns_param(_query_wire())}".encode()
        block = encode_header_block(
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"), (b":path", path)]
        )
        sock.sendall(PREFACE + frame(Frame.SETTINGS, 0, 0))
        reset = False
        stream_id = 1
        for _ in range(400):  # up to 40,000 requests of which none is read
            batch = b"".join(
                frame(Frame.HEADERS, 0x5, stream_id + 2 * i, block) for i in range(100)
            )
            stream_id += 200
            try:
                sock.sendall(batch)
            except TimeoutError:
                break  # dns2dot stopped reading it: answers are piling up
            except OSError:
                reset = True
                break
        status, _, _, _ = _curl(listening, pki, path.decode())
        assert status == 200
        reset = reset or wait_peer_closed(sock, 15.0)
        assert reset, "an HTTP/2 client that reads nothing was kept"
