"""dns2dot as a DNS-over-TLS server for clients (``--listen-tls``, RFC 7858), end to end.

Why: phones and stub resolvers reach dns2dot over TLS on port 853; the promises are
those of the TCP listener (framing, pipelining, every query answered, --allow) plus
what the README's "Serving your network" section says: TLS 1.2 or newer, ALPN
``dot``, session resumption, answers padded to 468-octet blocks when the query was
padded, RFC 7828 keepalive, a certificate that rotates (SIGHUP, or the files
changing) without dropping a connection, and hostile TLS clients closed within a few
seconds without disturbing anyone. Real clients (kdig, dig, dnsperf) and Python's
ssl drive it; dns2dot runs as a real process in front of unbound on loopback.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import pytest
import trustme
from support.dnsperf import run_dnsperf
from support.listeners import (
    Listening,
    closed_within,
    dot_exchange,
    listening_dns2dot,
    peer_certificate,
    start_listening,
    tls_connect,
)
from support.net import LOOPBACK, a_addresses, free_port, make_query, wait_peer_closed
from support.pki import TLS_NAME, Pki
from support.proc import Dns2Dot, require_tool, run_dns2dot
from support.unbound import N_NAMES, UnboundUpstream, n_address

pytestmark = pytest.mark.integration

HANDSHAKE_LIMIT = 8.0  # the listener's handshake deadline is 3 s; a wait bound, not a timing


@pytest.fixture(scope="module")
def listening(
    unbound: UnboundUpstream, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Listening]:
    directory = tmp_path_factory.mktemp("listen-tls")
    with listening_dns2dot(unbound.spec, pki, directory) as listening:
        yield listening


def test_startup_line_names_the_listeners(listening: Listening) -> None:
    line = listening.proc.startup
    assert f"dot {LOOPBACK}:{listening.tls_port}" in line
    assert f"doh {LOOPBACK}:{listening.https_port}/dns-query" in line


def test_kdig_tls_verified(listening: Listening, pki: Pki) -> None:
    kdig = require_tool("kdig")
    out = subprocess.run(
        [
            kdig,
            "+tls",
            f"+tls-ca={pki.ca}",
            f"+tls-hostname={TLS_NAME}",
            "-p",
            str(listening.tls_port),
            f"@{LOOPBACK}",
            "a.example.test",
            "A",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "status: NOERROR" in out.stdout
    assert "192.0.2.10" in out.stdout
    assert "TLS1.3" in out.stdout or "TLS1.2" in out.stdout


def test_kdig_padding_and_keepalive(listening: Listening, pki: Pki) -> None:
    """A padded query gets a 468-octet answer; the keepalive option says 10 s (100 units)."""
    kdig = require_tool("kdig")
    out = subprocess.run(
        [
            kdig,
            "+tls",
            f"+tls-ca={pki.ca}",
            f"+tls-hostname={TLS_NAME}",
            "-p",
            str(listening.tls_port),
            f"@{LOOPBACK}",
            "a.example.test",
            "+padding",
            "+ednsopt=11",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Received 468 B" in out.stdout, out.stdout
    assert "Option (11): 0064" in out.stdout, out.stdout


def test_dig_tls(listening: Listening) -> None:
    dig = require_tool("dig")
    out = subprocess.run(
        [
            dig,
            "+tls",
            "+keepalive",
            "-p",
            str(listening.tls_port),
            f"@{LOOPBACK}",
            "www.example.test",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "192.0.2.11" in out.stdout
    assert "TCP KEEPALIVE: 10.0 secs" in out.stdout
    assert "(TLS)" in out.stdout


def test_alpn_dot_and_tls12_minimum(listening: Listening, pki: Pki) -> None:
    with tls_connect(listening.tls_port, pki) as sock:
        assert sock.selected_alpn_protocol() == "dot"
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
    old = pki.client_context()
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)):
        tls_connect(listening.tls_port, pki, context=old).close()


def test_session_resumption(listening: Listening, pki: Pki) -> None:
    ctx = pki.client_context()
    with tls_connect(listening.tls_port, pki, context=ctx) as first:
        dot_exchange(first, make_query("a.example.test"))  # TLS 1.3 tickets come after
        session = first.session
    assert session is not None
    with tls_connect(listening.tls_port, pki, context=ctx, session=session) as second:
        assert second.session_reused
        assert a_addresses(dot_exchange(second, make_query("a.example.test"))) == {"192.0.2.10"}


def test_pipelined_queries_on_one_connection(listening: Listening, pki: Pki) -> None:
    count = min(N_NAMES, 200)
    with tls_connect(listening.tls_port, pki) as sock:
        wires = []
        for i in range(count):
            q = make_query(f"n{i}.example.test", qid=i)
            wire = q.to_wire()
            wires.append(len(wire).to_bytes(2, "big") + wire)
        sock.sendall(b"".join(wires))
        seen: dict[int, set[str]] = {}
        for _ in range(count):
            length = int.from_bytes(_recv(sock, 2), "big")
            answer = dns.message.from_wire(_recv(sock, length))
            seen[answer.id] = a_addresses(answer)
    assert seen == {i: {n_address(i)} for i in range(count)}


def _recv(sock: ssl.SSLSocket, count: int) -> bytes:
    from support.listeners import recv_exact

    return recv_exact(sock, count, timeout=10.0)


def test_unpadded_query_unpadded_answer(listening: Listening, pki: Pki) -> None:
    with tls_connect(listening.tls_port, pki) as sock:
        answer = dot_exchange(sock, make_query("a.example.test", edns=0))
    assert all(o.otype != dns.edns.OptionType.PADDING for o in answer.options)


def test_dnsperf_dot_nothing_lost(listening: Listening, tmp_path: Path) -> None:
    data = tmp_path / "queries"
    data.write_text("".join(f"n{i}.example.test A\n" for i in range(min(N_NAMES, 300))))
    res = run_dnsperf(
        listening.tls_port, data, runs=10, seconds=30, clients=10, extra=["-m", "dot"]
    )
    assert res.sent == res.completed, res.raw
    assert res.lost == 0, res.raw
    assert res.rcodes.get("NOERROR") == res.completed, res.raw


# -- hostile clients ---------------------------------------------------------------------------


def test_hostile_clients_closed_others_served(listening: Listening, pki: Pki) -> None:
    """Silent, garbage and trickling clients are closed; a client alongside is served."""
    silent = socket.create_connection((LOOPBACK, listening.tls_port), timeout=5)
    garbage = socket.create_connection((LOOPBACK, listening.tls_port), timeout=5)
    trickle = socket.create_connection((LOOPBACK, listening.tls_port), timeout=5)
    try:
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
        assert closed_within(garbage, HANDSHAKE_LIMIT)
        hello = _client_hello(pki)
        stop = threading.Event()

        def dribble() -> None:
            for byte in hello:
                if stop.wait(0.2):
                    return
                try:
                    trickle.send(bytes([byte]))
                except OSError:
                    return

        thread = threading.Thread(target=dribble, daemon=True)
        thread.start()
        with tls_connect(listening.tls_port, pki) as good:
            answer = dot_exchange(good, make_query("a.example.test"))
            assert a_addresses(answer) == {"192.0.2.10"}
        assert closed_within(silent, HANDSHAKE_LIMIT)
        assert closed_within(trickle, HANDSHAKE_LIMIT)
        stop.set()
        thread.join(timeout=5)
        with tls_connect(listening.tls_port, pki) as good:
            assert a_addresses(dot_exchange(good, make_query("www.example.test"))) == {"192.0.2.11"}
    finally:
        for sock in (silent, garbage, trickle):
            sock.close()
    assert listening.proc.alive


def _client_hello(pki: Pki) -> bytes:
    """The bytes of a real ClientHello (from memory BIOs, nothing sent anywhere)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = pki.client_context().wrap_bio(incoming, outgoing, server_hostname=TLS_NAME)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_garbage_after_handshake_closes_that_client_only(listening: Listening, pki: Pki) -> None:
    with tls_connect(listening.tls_port, pki) as bad, tls_connect(listening.tls_port, pki) as good:
        bad.sendall(b"\x00\x01x")  # a length prefix shorter than a DNS header
        assert closed_within(bad, 5.0)
        assert a_addresses(dot_exchange(good, make_query("a.example.test"))) == {"192.0.2.10"}


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (["--listen-tls", "127.0.0.1:0"], "--tls-cert"),
        (["--listen-https", "127.0.0.1:0", "--tls-cert", "{cert}"], "--tls-key"),
        (
            ["--listen-tls", "127.0.0.1:0", "--tls-cert", "/nonexistent.pem", "--tls-key", "{key}"],
            "--tls-cert",
        ),
        (
            ["--listen-tls", "127.0.0.1:0", "--tls-cert", "{cert}", "--tls-key", "{other_key}"],
            "--tls-key",
        ),
        (
            ["--listen-tls", "127.0.0.1:0", "--tls-cert", "{key}", "--tls-key", "{key}"],
            "--tls-cert",
        ),
        (
            ["--listen-tls", "127.0.0.1:0", "--tls-cert", "{cert}", "--tls-key", "{cert}"],
            "--tls-key",
        ),
        (
            ["--listen-tls", "nowhere:853", "--tls-cert", "{cert}", "--tls-key", "{key}"],
            "--listen-tls",
        ),
        (
            [
                "--listen-https",
                "127.0.0.1:0",
                "--https-path",
                "dns-query",
                "--tls-cert",
                "{cert}",
                "--tls-key",
                "{key}",
            ],
            "--https-path",
        ),
    ],
)
def test_bad_settings_exit_2_naming_them(pki: Pki, args: list[str], setting: str) -> None:
    names = {
        "cert": str(pki.good.cert),
        "key": str(pki.good.key),
        "other_key": str(pki.wrong_name.key),
    }
    argv = ["-l", f"{LOOPBACK}:{free_port()}", *[a.format(**names) for a in args]]
    out = run_dns2dot(argv)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"dns2dot: error: {setting}"), out.stderr


def test_settings_from_environment_and_yaml(
    unbound: UnboundUpstream, pki: Pki, dns2dot: Callable[..., Dns2Dot], tmp_path: Path
) -> None:
    tls_port, https_port = free_port(), free_port()
    config = tmp_path / "dns2dot.yml"
    config.write_text(
        f"listen_https: ['{LOOPBACK}:{https_port}']\nhttps_path: /q\ntls_cert: {pki.good.cert}\n"
    )
    d = dns2dot(
        upstreams=[unbound.spec],
        extra=["-c", str(config)],
        env={"DNS2DOT_LISTEN_TLS": f"{LOOPBACK}:{tls_port}", "DNS2DOT_TLS_KEY": str(pki.good.key)},
    )
    assert f"dot {LOOPBACK}:{tls_port}" in d.startup
    assert f"doh {LOOPBACK}:{https_port}/q" in d.startup
    with tls_connect(tls_port, pki) as sock:
        assert a_addresses(dot_exchange(sock, make_query("a.example.test"))) == {"192.0.2.10"}


def test_allow_applies(
    unbound: UnboundUpstream, pki: Pki, dns2dot: Callable[..., Dns2Dot], tmp_path: Path
) -> None:
    listening = start_listening(
        dns2dot, unbound.spec, pki, tmp_path / "certs", extra=["--allow", "10.0.0.0/8"]
    )
    with tls_connect(listening.tls_port, pki) as sock:
        answer = dot_exchange(sock, make_query("a.example.test"))
    assert answer.rcode() == dns.rcode.REFUSED


# -- rotation ----------------------------------------------------------------------------------


def _new_leaf(directory: Path) -> tuple[bytes, bytes, trustme.CA]:
    ca = trustme.CA(organization_name="dns2dot rotated CA")
    leaf = ca.issue_cert(TLS_NAME, "127.0.0.1", common_name=TLS_NAME)
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    return chain, leaf.private_key_pem.bytes(), ca


def _replace(path: Path, data: bytes) -> None:
    """Replace a file the way certbot and cert-manager do: a new file renamed over it."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _wait_for_certificate(port: int, ctx_pki: Pki, ca: Path, want_change_from: bytes) -> bytes:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ctx = ssl.create_default_context(cafile=str(ca))
        try:
            with (
                socket.create_connection((LOOPBACK, port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname=TLS_NAME) as sock,
            ):
                der = sock.getpeercert(binary_form=True)
                if der is not None and der != want_change_from:
                    return der
        except ssl.SSLError:
            pass  # still the old certificate (another CA)
        time.sleep(0.2)
    raise AssertionError("the new certificate was not served within 15 s")


def test_rotation_on_file_change_under_load(
    unbound: UnboundUpstream, pki: Pki, dns2dot: Callable[..., Dns2Dot], tmp_path: Path
) -> None:
    """New files are picked up; an open connection keeps working; no query is lost."""
    listening = start_listening(dns2dot, unbound.spec, pki, tmp_path / "certs")
    before = peer_certificate(listening.tls_port, pki)
    errors: list[str] = []
    answered = [0]
    stop = threading.Event()

    def load() -> None:
        try:
            with tls_connect(listening.tls_port, pki) as sock:
                i = 0
                while not stop.is_set() and i < 100000:
                    q = make_query(f"n{i % N_NAMES}.example.test", qid=i % 65536)
                    answer = dot_exchange(sock, q)
                    if a_addresses(answer) != {n_address(i % N_NAMES)}:
                        errors.append(f"query {i}: {answer}")
                    answered[0] += 1
                    i += 1
        except Exception as exc:
            errors.append(repr(exc))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        chain, key, ca = _new_leaf(tmp_path)
        ca_file = tmp_path / "rotated-ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        _replace(listening.key, key)
        _replace(listening.cert, chain)
        after = _wait_for_certificate(listening.tls_port, pki, ca_file, before)
        assert after != before
        count = answered[0]
        deadline = time.monotonic() + 10
        while answered[0] < count + 50 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not errors, errors[:5]
    assert answered[0] > 50
    assert "loaded the TLS certificate again" in listening.proc.stderr()


def test_sighup_with_a_broken_pair_keeps_the_old_one(
    unbound: UnboundUpstream, pki: Pki, dns2dot: Callable[..., Dns2Dot], tmp_path: Path
) -> None:
    listening = start_listening(dns2dot, unbound.spec, pki, tmp_path / "certs")
    before = peer_certificate(listening.tls_port, pki)
    shutil.copyfile(pki.wrong_name.key, listening.key)  # no longer matches the certificate
    listening.proc.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload failed" not in listening.proc.stderr() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = listening.proc.stderr()
    assert "TLS certificate reload failed, keeping the one in use: --tls-key" in log, log
    assert peer_certificate(listening.tls_port, pki) == before
    with tls_connect(listening.tls_port, pki) as sock:
        assert a_addresses(dot_exchange(sock, make_query("a.example.test"))) == {"192.0.2.10"}
    # A good pair again, and SIGHUP: loaded.
    shutil.copyfile(pki.good.key, listening.key)
    listening.proc.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "loaded the TLS certificate again" not in listening.proc.stderr() and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert "loaded the TLS certificate again" in listening.proc.stderr()
    assert listening.proc.alive


def test_idle_client_closed(
    unbound: UnboundUpstream, pki: Pki, dns2dot: Callable[..., Dns2Dot], tmp_path: Path
) -> None:
    """--idle-timeout applies to DoT clients as to TCP ones; a busy client stays."""
    listening = start_listening(
        dns2dot, unbound.spec, pki, tmp_path / "certs", extra=["--idle-timeout", "1"]
    )
    with tls_connect(listening.tls_port, pki) as idle, tls_connect(listening.tls_port, pki) as busy:
        dot_exchange(idle, make_query("a.example.test"))
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # busy keeps asking, well within the timeout
            assert a_addresses(dot_exchange(busy, make_query("a.example.test"))) == {"192.0.2.10"}
            time.sleep(0.2)
        assert closed_within(idle, 5.0)
        assert a_addresses(dot_exchange(busy, make_query("www.example.test"))) == {"192.0.2.11"}


def test_h2_protocol_error_closes_that_client_only(listening: Listening, pki: Pki) -> None:
    with tls_connect(listening.https_port, pki, alpn=("h2",)) as bad:
        settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
        data_on_stream_0 = b"\x00\x00\x04\x00\x00\x00\x00\x00\x00junk"  # PROTOCOL_ERROR
        bad.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings + data_on_stream_0)
        assert closed_within(bad, 5.0)
    with tls_connect(listening.tls_port, pki) as good:
        assert a_addresses(dot_exchange(good, make_query("a.example.test"))) == {"192.0.2.10"}


def test_max_clients_applies(
    unbound: UnboundUpstream, pki: Pki, dns2dot: Callable[..., Dns2Dot], tmp_path: Path
) -> None:
    """--max-tcp-clients bounds each encrypted listener; a handshake under way counts."""
    listening = start_listening(
        dns2dot, unbound.spec, pki, tmp_path / "certs", extra=["--max-tcp-clients", "2"]
    )
    first = tls_connect(listening.tls_port, pki)
    silent = socket.create_connection((LOOPBACK, listening.tls_port), timeout=5)  # handshaking
    try:
        time.sleep(0.3)  # let dns2dot accept the silent one
        third = socket.create_connection((LOOPBACK, listening.tls_port), timeout=5)
        with third:
            assert closed_within(third, 5.0)
        assert a_addresses(dot_exchange(first, make_query("a.example.test"))) == {"192.0.2.10"}
    finally:
        first.close()
        silent.close()
    for _ in range(50):  # room again once dns2dot has seen them go: 10 s at most
        try:
            with tls_connect(listening.tls_port, pki) as again:
                answer = dot_exchange(again, make_query("www.example.test"))
            break
        except (ssl.SSLError, OSError):
            time.sleep(0.2)
    else:
        pytest.fail("no room for a new client after 50 tries")
    assert a_addresses(answer) == {"192.0.2.11"}


def test_client_that_does_not_read_is_reset(
    unbound: UnboundUpstream, pki: Pki, dns2dot: Callable[..., Dns2Dot], tmp_path: Path
) -> None:
    """A DoT client that sends queries and reads no answers is reset (its answers are
    dropped) once idle; another client is served meanwhile."""
    listening = start_listening(
        dns2dot, unbound.spec, pki, tmp_path / "certs", extra=["--idle-timeout", "2"]
    )
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(2)
    raw.connect((LOOPBACK, listening.tls_port))
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["dot"])
    with ctx.wrap_socket(raw, server_hostname=TLS_NAME) as sock:
        wire = make_query("big.example.test", "TXT", edns=0, payload=4096).to_wire()
        batch = (len(wire).to_bytes(2, "big") + wire) * 100
        reset = False
        for _ in range(20):  # 2000 answers of about 3 kB, none read
            try:
                sock.sendall(batch)
            except TimeoutError:
                break  # dns2dot stopped reading it: answers are piling up
            except OSError:
                reset = True
                break
        with tls_connect(listening.tls_port, pki) as good:
            answer = dot_exchange(good, make_query("a.example.test"))
            assert a_addresses(answer) == {"192.0.2.10"}
        reset = reset or wait_peer_closed(sock, 15.0)
        assert reset, "a client that reads nothing was kept"
