"""dns2dot's own cost per UDP query, measured in one process: a yardstick for code changes.

The peers' runs (``python -m bench``) share two cores between dnsperf, the upstream and
the server under test, so a 5% change is lost in their noise. This keeps only dns2dot's
side of the work, and keeps it the same every run:

- the client side is a fake datagram transport: the real :class:`UdpShim`, resolver,
  pool and :class:`TlsDotConnection` run, but no client socket (``--path shim``, the
  asyncio path); or, with ``--path batch``, the batched Linux listener on a real
  loopback UDP socket, and a client in this process that sends and reads with the
  same recvmmsg/sendmmsg (its share is included: ``--path echo`` puts the same client
  against a batched echo with no DNS work, the floor that batch's count sits on; the
  shim's fake transport has no client and no I/O at all, so the two paths' counts
  do not compare as they stand);
- the upstream is an OpenSSL server on the other end of a socketpair, in this process,
  answering from precomputed answers to the bench zone (padded to 468 octets, as
  unbound pads); its own CPU time is measured and left out;
- queries go in batches of ``--batch``, the next batch once all are answered;
- ``--cache`` turns the cache on and warms it first: every measured query is a hit on
  the known-query path (none reaches the upstream).

    python -m bench.hotpath                  # CPU microseconds per query, min of rounds
    python -m bench.hotpath --instructions   # instructions per query (valgrind): exact
    python -m bench.hotpath --doh            # the same through a DoH (HTTP/2) upstream
    python -m bench.hotpath --path batch --cache --instructions   # per cache hit
    python -m bench.hotpath --path echo --instructions   # the batch path's I/O floor

A known query's answer is patched with new TTLs when its entry's age in whole seconds
changes, so ``--cache`` counts depend a little on how slowly the run goes (under
valgrind, most hits are a new second for their question, as in the bench's cache
workload, where 77,514 questions are each asked less than once a second).

CPU time still moves 10-20% between runs on a shared machine; the instruction count
(valgrind's cachegrind, two runs of different lengths, the difference divided by the
extra queries) does not, and includes the fake upstream's share (about 15%). Compare
two checkouts with ``--root``. No network at all: the socketpair is a Unix one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.rcode
import dns.rrset

from bench.zone import ZONE, make_names, make_queries

UNBOUND_PAD_BLOCK = 468  # unbound's pad-responses-block-size default
REPO = Path(__file__).resolve().parents[1]
TRAFFIC = 2000  # distinct query lines, built once (not counted: see instructions())


def make_traffic(count: int) -> tuple[list[bytes], dict[bytes, bytes]]:
    """Queries as dnsperf sends them (no EDNS, ID 0), and the upstream's answer to each,
    keyed by the query after its header; answers omit their first two octets (the ID)."""
    names = {name.fqdn: name for name in make_names(2000)}
    lines, _ = make_queries(list(names.values()), count)
    soa = dns.rrset.from_text(
        ZONE, 300, "IN", "SOA", f"ns.{ZONE} hostmaster.{ZONE} 1 3600 600 86400 300"
    )
    queries: list[bytes] = []
    answers: dict[bytes, bytes] = {}
    for line in lines:
        qname, qtype = line.split()
        query = dns.message.make_query(qname, qtype, use_edns=False, id=0)
        msg = query.to_wire()
        queries.append(msg)
        if msg[12:] in answers:
            continue
        response = dns.message.make_response(query)
        name = names.get(qname)
        data = {"A": name.a, "AAAA": name.aaaa, "TXT": []} if name else {}
        if name and qtype == "TXT" and name.txt:
            data["TXT"] = [" ".join(f'"{s}"' for s in name.txt)]
        if name is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        if data.get(qtype):
            response.answer.append(dns.rrset.from_text(qname, 300, "IN", qtype, *data[qtype]))
        else:
            response.authority.append(soa)
        unpadded = len(response.to_wire(max_size=65535)) + 11 + 4  # OPT, empty padding option
        pad = dns.edns.GenericOption(
            dns.edns.OptionType.PADDING, b"\x00" * ((-unpadded) % UNBOUND_PAD_BLOCK)
        )
        response.use_edns(0, 0, 1232, options=[pad])
        answers[msg[12:]] = response.to_wire(max_size=65535)[2:]
    return queries, answers


class FakeUpstream:
    """A DoT server on one end of a socketpair, answering from ``answers``."""

    def __init__(
        self, sock: socket.socket, context: ssl.SSLContext, answers: dict[bytes, bytes]
    ) -> None:
        self.sock = sock
        self.answers = answers
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.buffer = b""
        self.cpu = 0.0  # its own process time: left out of dns2dot's
        asyncio.get_running_loop().add_reader(sock.fileno(), self.readable)

    def readable(self) -> None:
        started = time.process_time()
        try:
            self.incoming.write(self.sock.recv(1 << 20))
        except BlockingIOError:
            return
        try:
            self.tls.do_handshake()
            while chunk := self.tls.read(1 << 20):
                self.buffer += chunk
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        # Framing and the question by hand, not with dns2dot's framing and wire: the fake
        # must cost the same whichever checkout --root measures.
        out = []
        buffer, pos = self.buffer, 0
        while len(buffer) - pos >= 2:
            length = (buffer[pos] << 8) | buffer[pos + 1]
            if len(buffer) - pos - 2 < length:
                break
            query = buffer[pos + 2 : pos + 2 + length]
            pos += 2 + length
            # dns2dot added an OPT (padding) to the query: the question is what is keyed.
            end = 12
            while query[end]:
                end += query[end] + 1
            answer = query[:2] + self.answers[query[12 : end + 5]]
            out.append(len(answer).to_bytes(2, "big") + answer)
        self.buffer = buffer[pos:]
        if out:
            self.tls.write(b"".join(out))
        if pending := self.outgoing.read():
            self.sock.sendall(pending)
        self.cpu += time.process_time() - started


class FakeDohUpstream:
    """A DoH server (HTTP/2 through h2) on one end of a socketpair, answering from
    ``answers``; like :class:`FakeUpstream`, its own CPU time is counted apart."""

    def __init__(
        self, sock: socket.socket, context: ssl.SSLContext, answers: dict[bytes, bytes]
    ) -> None:
        import h2.config
        import h2.connection

        self.sock = sock
        self.answers = answers
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        config = h2.config.H2Configuration(client_side=False, validate_inbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(1 << 30)
        self.bodies: dict[int, bytes] = {}
        self.handshaken = False
        self.cpu = 0.0
        asyncio.get_running_loop().add_reader(sock.fileno(), self.readable)

    def readable(self) -> None:
        import h2.events

        started = time.process_time()
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            return
        self.incoming.write(data)
        plain = b""
        try:
            self.tls.do_handshake()
            self.handshaken = True
            while chunk := self.tls.read(1 << 20):
                plain += chunk
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        conn = self.h2
        for event in conn.receive_data(plain) if plain else ():
            if isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                query = self.bodies.pop(event.stream_id)
                end = 12
                while query[end]:
                    end += query[end] + 1
                answer = b"\0\0" + self.answers[query[12 : end + 5]]
                conn.send_headers(
                    event.stream_id,
                    [
                        (":status", "200"),
                        ("content-type", "application/dns-message"),
                        ("content-length", str(len(answer))),
                    ],
                )
                conn.send_data(event.stream_id, answer, end_stream=True)
        if self.handshaken and (out := conn.data_to_send()):
            self.tls.write(out)
        if pending := self.outgoing.read():
            self.sock.sendall(pending)
        self.cpu += time.process_time() - started


class FakeTransport:
    """The client side of the UDP shim: counts answers, calls back on each."""

    def __init__(self) -> None:
        self.answered = 0
        self.failed = 0  # SERVFAIL or REFUSED: the measurement is void
        self.on_answer: Any = None

    def is_closing(self) -> bool:
        return False

    def sendto(self, data: bytes, addr: Any) -> None:
        self.answered += 1
        if data[3] & 0x0F in (2, 5):
            self.failed += 1
        self.on_answer()


class BatchClient:
    """The client of ``--path batch``: a loopback UDP socket driven like the listener."""

    def __init__(self, port: int, transport: FakeTransport) -> None:
        from dns2dot.transport.datagram import DatagramSocket

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
        self.sock = sock
        self.io = DatagramSocket(sock, pktinfo=False)
        # struct sockaddr_in: family (host order), port, address, zero padding.
        self.server = (
            socket.AF_INET.to_bytes(2, sys.byteorder)
            + port.to_bytes(2, "big")
            + socket.inet_aton("127.0.0.1")
            + bytes(8)
        )
        self.transport = transport
        asyncio.get_running_loop().add_reader(sock.fileno(), self.readable)

    def send(self, msg: bytes) -> None:
        if not self.io.queue(msg, self.server, b""):
            self.io.flush()
            self.io.queue(msg, self.server, b"")

    def flush(self) -> None:
        self.io.flush()

    def readable(self) -> None:
        for _ in range(64):
            got = self.io.receive()
            for data, _, _ in got:
                self.transport.sendto(data, None)
            if len(got) < self.io.batch:
                return


class EchoServer:
    """``--path echo``: the batched client against a server that sends every datagram
    back as it came, with the same recvmmsg/sendmmsg and no DNS work. Its count is the
    floor of the batch path: the client's share and the I/O's, without dns2dot's."""

    def __init__(self, sock: socket.socket) -> None:
        from dns2dot.transport.datagram import DatagramSocket

        self.io = DatagramSocket(sock, pktinfo=False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self.readable)

    def readable(self) -> None:
        io = self.io
        for _ in range(8):
            got = io.receive()
            for data, name, control in got:
                answer = data[:2] + bytes((data[2] | 0x80,)) + data[3:]
                if not io.queue(answer, name, control):
                    io.flush()
                    io.queue(answer, name, control)
            io.flush()
            if len(got) < io.batch:
                return


class StillClock:
    """The resolver's and the listener's clock under ``--cache``: it stands still, so
    a hit finds a new second of age exactly when the driver moves it (``--age cold``:
    one second per pass over the traffic, so every hit patches its TTLs, as in the
    bench's cache workload; ``hot``: never). Without it the count would follow how
    slowly valgrind runs. Everything but ``time`` is the loop's."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.now = loop.time()

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)


async def measure(
    count: int,
    batch: int,
    rounds: int,
    path: str = "shim",
    cache: bool = False,
    doh: bool = False,
    age: str = "cold",
) -> list[tuple[float, float]]:
    """(dns2dot's CPU seconds, the fake upstream's) per round of ``count`` queries."""
    import trustme

    from dns2dot import config
    from dns2dot.cli import tune_gc
    from dns2dot.proxy import Proxy
    from dns2dot.serve.udp import UdpShim
    from dns2dot.transport.channel import TlsChannel
    from dns2dot.upstream import pool as upstream

    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("dns.test").configure_cert(server_context)
    cafile = Path(tempfile.mkdtemp(prefix="hotpath-")) / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    queries, answers = make_traffic(TRAFFIC)  # the same whatever the count: cycled
    fakes: list[FakeUpstream | FakeDohUpstream] = []

    async def open_channel(server: upstream.UpstreamServer) -> TlsChannel:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        fakes.append(FakeUpstream(theirs, server_context, answers))
        channel = TlsChannel(ours, server.context, server.spec.verify_name)
        await channel.handshake()
        return channel

    async def open_doh(server: upstream.UpstreamServer, *, memory_bio: bool = True) -> Any:
        """What ``UpstreamServer._open`` returns, over a socketpair to a fake DoH server
        (a TlsChannel, or a handshaken SSLSocket for a checkout that reads through
        tornado)."""
        from dns2dot.transport.channel import tls_handshake

        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        fakes.append(FakeDohUpstream(theirs, server_context, answers))
        if memory_bio:
            channel = TlsChannel(ours, server.context, server.spec.verify_name)
            await channel.handshake()
            return channel
        tls = server.context.wrap_socket(
            ours, server_hostname=server.spec.verify_name, do_handshake_on_connect=False
        )
        await tls_handshake(tls)
        return tls

    if doh:
        server_context.set_alpn_protocols(["h2"])
        upstream.UpstreamServer._open = open_doh  # type: ignore[method-assign,assignment]
        spec = "https://127.0.0.1:443/dns-query#dns.test"
    else:
        upstream.UpstreamServer.open_channel = open_channel  # type: ignore[method-assign]
        spec = "127.0.0.1:853#dns.test"
    argv = ["-l", "127.0.0.1:0", "-u", spec, "--cafile", str(cafile)]
    argv += ["--timeout", "600"]  # under valgrind on a busy machine, not SERVFAIL at 3 s
    argv += ["--dnssec", "off"]  # the forwarding path, as the peers in the bench forward
    proxy = Proxy(config.load([*argv] if cache else [*argv, "--cache-size", "0"]))
    clock = StillClock(asyncio.get_running_loop())
    if cache:
        proxy.resolver._loop = clock  # type: ignore[assignment]
    proxy.resolver.start()
    transport = FakeTransport()
    if path in ("batch", "echo"):
        from dns2dot.serve.udp import start_udp, udp_socket

        listening = udp_socket("127.0.0.1", 0)
        if path == "batch":
            listener = await start_udp(proxy.resolver, proxy.admission, listening, "127.0.0.1")
            if cache:
                listener._loop = clock  # type: ignore[attr-defined]
        else:
            EchoServer(listening)
        client = BatchClient(listening.getsockname()[1], transport)

        def datagram_received(msg: bytes, _: object) -> None:
            client.send(msg)

        flush = client.flush
    else:
        shim = UdpShim(proxy.resolver, proxy.admission)
        shim.connection_made(transport)  # type: ignore[arg-type]
        datagram_received = shim.datagram_received

        def flush() -> None:
            pass

    loop = asyncio.get_running_loop()
    state = {"sent": 0, "total": 0}
    finished: asyncio.Future[None] = loop.create_future()

    def send_batch() -> None:
        base = state["sent"]
        if base >= state["total"]:
            finished.set_result(None)
            return
        state["sent"] = base + batch  # first: cache hits are answered inside the loop
        for i in range(base, base + batch):
            if cache and age == "cold" and i % len(queries) == 0:
                clock.now += 1.0  # each question is a second older at its next hit
            msg = queries[i % len(queries)]
            datagram_received((i & 0xFFFF).to_bytes(2, "big") + msg[2:], ("127.0.0.1", 9))
        flush()

    def on_answer() -> None:
        if transport.answered == state["sent"]:
            loop.call_soon(send_batch)

    transport.on_answer = on_answer

    async def run(total: int) -> None:
        nonlocal finished
        state.update(sent=0, total=total)
        transport.answered = 0
        finished = loop.create_future()
        send_batch()
        await asyncio.wait_for(finished, 900)  # valgrind on a busy machine is slow

    await run(10 * batch)  # the connection is up, the session kept
    if cache:
        await run(2 * len(queries))  # stored, then known: every later query is a known hit
    tune_gc()
    results = []
    for _ in range(rounds):
        fake_before = sum(f.cpu for f in fakes)
        before = time.process_time()
        await run(count)
        fake = sum(f.cpu for f in fakes) - fake_before
        results.append((time.process_time() - before - fake, fake))
    proxy.upstreams.close()
    if transport.failed:
        raise SystemExit(f"hotpath: {transport.failed} queries failed (SERVFAIL/REFUSED)")
    return results


def instructions(root: Path, batch: int, extra: list[str]) -> float:
    """Instructions per query: valgrind counts two runs; the difference is per query."""
    counts = []
    sizes = (1500, 4500)
    for size in sizes:
        argv = [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "bench.hotpath",
            "--root",
            str(root),
            "--queries",
            str(size),
            "--batch",
            str(batch),
            "--rounds",
            "1",
            *extra,
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True, cwd=REPO)
        found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
        if found is None:
            raise SystemExit(f"hotpath: no instruction count from valgrind:\n{done.stderr}")
        counts.append(int(found.group(1).replace(",", "")))
    return (counts[1] - counts[0]) / (sizes[1] - sizes[0])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--queries", type=int, default=30000, help="per round")
    parser.add_argument("--batch", type=int, default=30, help="queries in flight at once")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--instructions", action="store_true", help="count with valgrind")
    parser.add_argument("--doh", action="store_true", help="through a DoH (HTTP/2) upstream")
    parser.add_argument("--root", type=Path, default=REPO, help="the dns2dot checkout to measure")
    parser.add_argument(
        "--path",
        choices=("shim", "batch", "echo"),
        default="shim",
        help="the asyncio UdpShim with a fake transport, the batched listener on loopback, "
        "or (echo) the batched client against an echo with no DNS work: the batch path's floor",
    )
    parser.add_argument("--cache", action="store_true", help="cache on and warm: hits only")
    parser.add_argument(
        "--age",
        choices=("cold", "hot"),
        default="cold",
        help="with --cache: every hit a new second of age for its question (cold, as in the "
        "bench) or none (hot)",
    )
    args = parser.parse_args()
    extra = (
        ["--path", args.path]
        + (["--cache", "--age", args.age] if args.cache else [])
        + (["--doh"] if args.doh else [])
    )
    if args.instructions:
        per_query = instructions(args.root.resolve(), args.batch, extra)
        what = "per cache hit" if args.cache else "per query (fake upstream included)"
        age = f" --age {args.age}" if args.cache else ""
        print(f"{per_query:,.0f} instructions {what}, --path {args.path}{age}")
        return
    sys.path.insert(0, str(args.root.resolve()))
    import uvloop

    results = uvloop.run(
        measure(args.queries, args.batch, args.rounds, args.path, args.cache, args.doh, args.age)
    )
    ours = sorted(cpu / args.queries * 1e6 for cpu, _ in results)
    fake = min(f for _, f in results) / args.queries * 1e6
    print(
        f"dns2dot CPU per query: min {ours[0]:.2f} us, median {ours[len(ours) // 2]:.2f} us "
        f"(rounds: {' '.join(f'{r:.1f}' for r in ours)}; fake upstream {fake:.2f} us left out)"
    )


if __name__ == "__main__":
    main()
