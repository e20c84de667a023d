"""The ``dns2dot`` command: configuration in, listeners up, signals handled.

Exit codes (DESIGN.md): 0 after a clean stop, 2 for bad configuration with a one-line
message naming the setting, 1 for anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import signal
import socket
import sys
from collections.abc import Callable, Sequence

from tornado.netutil import bind_sockets

from dns2dot import check, tls
from dns2dot import config as config_module
from dns2dot.config import Config, ListenAddress
from dns2dot.errors import ConfigError, Dns2DotError
from dns2dot.resolver import Resolver
from dns2dot.tcp_server import DnsTcpServer, TcpLimits
from dns2dot.udp_server import start_udp, udp_socket
from dns2dot.upstream import UpstreamPool

log = logging.getLogger("dns2dot")


class ListenError(Dns2DotError):
    """A listen address could not be bound; ``exit_code`` says whose fault it is."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # tornado and asyncio repeat, less clearly, what dns2dot already says.
    for name in ("tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def raise_file_limit() -> None:
    """Allow as many sockets as the hard limit does: each TCP client holds one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop where the platform has it: about three times the datagram rate."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _bind_error(address: ListenAddress, exc: OSError) -> ListenError:
    where = f"--listen {address}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ListenError(
            f"{where}: permission denied; ports below 1024 need root or "
            f"CAP_NET_BIND_SERVICE, or listen on a port above 1024 (e.g. -l {address.host}:5353)",
            2,
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ListenError(f"{where}: no such address on this host", 2)
    if exc.errno == errno.EADDRINUSE:
        return ListenError(f"{where}: address already in use", 1)
    return ListenError(f"{where}: {exc.strerror or exc}", 1)


def bind_listeners(
    addresses: Sequence[ListenAddress],
) -> list[tuple[ListenAddress, list[socket.socket], socket.socket]]:
    """TCP and UDP sockets for every address; port 0 picks one port for both."""
    bound: list[tuple[ListenAddress, list[socket.socket], socket.socket]] = []
    try:
        for address in addresses:
            family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
            try:
                tcp = bind_sockets(address.port, address.host, family=family, backlog=1024)
                port = tcp[0].getsockname()[1]
                try:
                    udp = udp_socket(address.host, port)
                except OSError:
                    for sock in tcp:
                        sock.close()
                    raise
            except OSError as exc:
                raise _bind_error(address, exc) from None
            bound.append((ListenAddress(address.host, port), tcp, udp))
    except ListenError:
        for _, tcp, udp in bound:
            for sock in [*tcp, udp]:
                sock.close()
        raise
    return bound


def startup_line(config: Config, listening: Sequence[ListenAddress]) -> str:
    upstreams = ", ".join(str(spec) for spec in config.upstreams)
    line = f"udp+tcp {', '.join(map(str, listening))} -> tls {upstreams}"
    return line + (" (tcp mode pipe)" if config.mode == "pipe" else "")


async def serve(config: Config, stop: asyncio.Event) -> None:
    """Run the proxy until ``stop`` is set; then close everything it opened."""
    context = tls.client_context(config.cafile)
    bound = bind_listeners(config.listen)
    pool = UpstreamPool(list(config.upstreams), context, connect_timeout=config.timeout)
    resolver = Resolver(pool, config.timeout)
    limits = TcpLimits(
        idle_timeout=config.idle_timeout,
        max_clients=config.max_tcp_clients,
        max_inflight=config.max_inflight_per_client,
    )
    tcp_server = DnsTcpServer(resolver, pool, config.mode, limits)
    transports: list[asyncio.DatagramTransport] = []
    resolver.start()
    tcp_server.start_sweeping()
    try:
        for _, tcp_sockets, udp_sock in bound:
            tcp_server.add_sockets(tcp_sockets)
            transport, _ = await start_udp(resolver, udp_sock)
            transports.append(transport)
        log.info("%s", startup_line(config, [address for address, _, _ in bound]))
        await stop.wait()
        log.info("stopping")
    finally:
        tcp_server.stop()
        for transport in transports:
            transport.close()
        resolver.stop()
        pool.close()


async def _main(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(config, stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["check"]:
        return check.main(args[1:])
    try:
        config = config_module.load(args)
        tls.client_context(config.cafile)  # a bad CA bundle is a configuration error
    except ConfigError as exc:
        print(f"dns2dot: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.verbose)
    raise_file_limit()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_main(config))
    except ListenError as exc:
        print(f"dns2dot: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"dns2dot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
