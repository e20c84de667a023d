"""The floor of any Python UDP server on this machine: uvloop, no DNS work at all.

Each datagram goes back as it came with QR set, so dnsperf counts it answered. What
dnsperf gets from this bounds what any one CPython process can answer over UDP here,
cache hits included: compare it with unbound's cache-hit rate in the bench report.

    python bench/udp_floor.py 127.0.0.1 5301 &
    dnsperf -s 127.0.0.1 -p 5301 -d bench/results/<run>/work/queries.txt -c 10 -l 10
    kill %1

Loopback only: it refuses any other address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from typing import Any

import uvloop


class Echo(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) >= 3:
            self.transport.sendto(data[:2] + bytes([data[2] | 0x80]) + data[3:], addr)


async def serve(host: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # as dns2dot's shim
    sock.bind((host, port))
    await asyncio.get_running_loop().create_datagram_endpoint(Echo, sock=sock)
    await asyncio.Event().wait()


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    if not ipaddress.ip_address(host).is_loopback:
        sys.exit("udp_floor: loopback addresses only")
    uvloop.run(serve(host, port))


if __name__ == "__main__":
    main()
