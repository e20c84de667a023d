"""The floor of any Python UDP server on this machine: uvloop, no DNS work at all.

Each datagram goes back as it came with QR set, so dnsperf counts it answered. What
dnsperf gets from this bounds what any one CPython process can answer over UDP here,
cache hits included: compare it with unbound's cache-hit rate in the bench report.
With ``--batch`` it reads and answers through dns2dot's recvmmsg/sendmmsg layer
(``dns2dot.transport.datagram``, what the UDP listener uses on Linux) instead of
uvloop's per-datagram ``sendto``: the floor of the batched path.

    python bench/udp_floor.py 127.0.0.1 5301 [--batch] &
    dnsperf -s 127.0.0.1 -p 5301 -d bench/results/<run>/work/queries.txt -c 10 -l 10
    kill %1

Loopback only: it refuses any other address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from pathlib import Path
from typing import Any

import uvloop


class Echo(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) >= 3:
            self.transport.sendto(data[:2] + bytes([data[2] | 0x80]) + data[3:], addr)


def batched_echo(sock: socket.socket) -> None:
    """Echo through recvmmsg/sendmmsg on the loop's readiness callback."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from dns2dot.transport.datagram import DatagramSocket

    io = DatagramSocket(sock, pktinfo=False)

    def readable() -> None:
        for _ in range(8):
            got = io.receive()
            for data, name, control in got:
                if len(data) >= 3:
                    io.queue(data[:2] + bytes([data[2] | 0x80]) + data[3:], name, control)
            io.flush()
            if len(got) < io.batch:
                return

    asyncio.get_running_loop().add_reader(sock.fileno(), readable)


async def serve(host: str, port: int, batch: bool) -> None:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # as dns2dot's listener
    sock.bind((host, port))
    sock.setblocking(False)
    if batch:
        batched_echo(sock)
    else:
        await asyncio.get_running_loop().create_datagram_endpoint(Echo, sock=sock)
    await asyncio.Event().wait()


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    if not ipaddress.ip_address(host).is_loopback:
        sys.exit("udp_floor: loopback addresses only")
    uvloop.run(serve(host, port, "--batch" in sys.argv[3:]))


if __name__ == "__main__":
    main()
