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
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence

from tornado.netutil import bind_sockets

from dns2dot import check, tls, workers
from dns2dot import config as config_module
from dns2dot.admission import AccessList, Admission, RateLimiter
from dns2dot.cache import Cache, CachePolicy
from dns2dot.config import Config, ListenAddress
from dns2dot.errors import ConfigError, Dns2DotError
from dns2dot.metrics import (
    SNAPSHOT_INTERVAL,
    MetricsServer,
    Snapshot,
    merge,
    read_snapshots,
    write_snapshot,
)
from dns2dot.resolver import AnswerPolicy, Resolver
from dns2dot.rules import build_rules
from dns2dot.strategy import Strategy
from dns2dot.tcp_server import DnsTcpServer, TcpLimits
from dns2dot.udp_server import start_udp, udp_socket
from dns2dot.upstream import Lifecycle, UpstreamPool, UpstreamSpec

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
    # tornado's and asyncio's warnings repeat, less clearly, what dns2dot already says
    # (TLS failures); their errors (an exception in a callback) must still show.
    for name in ("tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)


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


def _bind_error(address: ListenAddress, exc: OSError, option: str = "--listen") -> ListenError:
    where = f"{option} {address}"
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
    addresses: Sequence[ListenAddress], *, reuse_port: bool = False
) -> list[tuple[ListenAddress, list[socket.socket], socket.socket]]:
    """TCP and UDP sockets for every address; port 0 picks one port for both.

    With ``reuse_port`` every worker binds sockets of its own (``SO_REUSEPORT``) and
    the kernel spreads clients across them, UDP included.
    """
    bound: list[tuple[ListenAddress, list[socket.socket], socket.socket]] = []
    try:
        for address in addresses:
            family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
            try:
                tcp = bind_sockets(
                    address.port, address.host, family=family, backlog=1024, reuse_port=reuse_port
                )
                port = tcp[0].getsockname()[1]
                try:
                    udp = udp_socket(address.host, port, reuse_port=reuse_port)
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
    if config.mode == "pipe":
        line += " (tcp mode pipe)"
    if config.workers > 1:
        line += f" ({config.workers} workers)"
    return line


async def serve(
    config: Config,
    stop: asyncio.Event,
    *,
    reuse_port: bool = False,
    on_ready: Callable[[list[ListenAddress]], None] | None = None,
    snapshot_file: tuple[str, str] | None = None,
) -> None:
    """Run the proxy until ``stop`` is set; then close everything it opened.

    Metrics: a process of its own serves ``--metrics`` itself; a worker instead writes
    its snapshot to ``snapshot_file`` (directory, name) for the supervisor to serve.
    """
    context = tls.client_context(config.cafile)
    bound = bind_listeners(config.listen, reuse_port=reuse_port)
    loop = asyncio.get_running_loop()
    pool = UpstreamPool(
        list(config.upstreams),
        context,
        strategy=Strategy(config.strategy),
        lifecycle=Lifecycle(
            connect_timeout=config.timeout,
            idle_timeout=config.upstream_idle_timeout,
            max_queries=config.max_queries_per_connection,
        ),
    )
    cache = None
    if config.cache_size:
        cache = Cache(
            CachePolicy(
                max_entries=config.cache_size,
                min_ttl=config.cache_min_ttl,
                max_ttl=config.cache_max_ttl,
                stale_ttl=config.serve_stale,
            )
        )
    zones: dict[str, list[UpstreamSpec]] = {}
    for zone, spec in config.forward:
        zones.setdefault(zone, []).append(spec)
    rules = build_rules(
        hosts=config.hosts,
        blocklists=config.blocklist,
        block_answer=config.block_answer,
        forward_zones=list(zones),
    )
    zone_pools = [
        UpstreamPool(specs, context, strategy=Strategy("failover"), lifecycle=pool.lifecycle)
        for specs in zones.values()
    ]
    resolver = Resolver(
        pool,
        config.timeout,
        max_inflight=config.max_inflight,
        cache=cache,
        policy=AnswerPolicy(
            pad_block=0 if config.no_padding else 128,
            keep_client_subnet=config.keep_client_subnet,
        ),
        rules=rules,
        zone_pools=zone_pools,
    )
    admission = Admission(
        AccessList(config.allow),
        RateLimiter(config.ratelimit) if config.ratelimit else None,
        clock=loop.time,
    )
    limits = TcpLimits(
        idle_timeout=config.idle_timeout,
        max_clients=config.max_tcp_clients,
        max_inflight=config.max_inflight_per_client,
    )
    tcp_server = DnsTcpServer(resolver, pool, admission, config.mode, limits)
    transports: list[asyncio.DatagramTransport] = []
    resolver.start()
    tcp_server.start_sweeping()
    latest: list[Snapshot] = []
    publisher: asyncio.TimerHandle | None = None

    def publish() -> None:
        nonlocal publisher
        snap = resolver.snapshot()
        snap["tcp_clients"] = len(tcp_server.sessions)
        latest[:] = [snap]
        if snapshot_file is not None:
            write_snapshot(*snapshot_file, snap)
        publisher = loop.call_later(SNAPSHOT_INTERVAL, publish)

    metrics_server: MetricsServer | None = None
    if config.metrics is not None or snapshot_file is not None:
        publish()
    if config.metrics is not None and snapshot_file is None:
        metrics_server = start_metrics(config.metrics, lambda: merge(latest))
    try:
        for _, tcp_sockets, udp_sock in bound:
            tcp_server.add_sockets(tcp_sockets)
            transport, _ = await start_udp(resolver, admission, udp_sock)
            transports.append(transport)
        listening = [address for address, _, _ in bound]
        if on_ready is None:
            log.info("%s", startup_line(config, listening))
        else:
            on_ready(listening)
        await stop.wait()
    finally:
        if publisher is not None:
            publisher.cancel()
        if metrics_server is not None:
            metrics_server.stop()
        tcp_server.stop()
        for transport in transports:
            transport.close()
        resolver.stop()
        for upstream_pool in (pool, *zone_pools):
            upstream_pool.close()


def start_metrics(address: ListenAddress, source: Callable[[], Snapshot]) -> MetricsServer:
    try:
        return MetricsServer(address.host, address.port, source).start()
    except OSError as exc:
        raise _bind_error(address, exc, option="--metrics") from None


def run_process(
    config: Config,
    *,
    reuse_port: bool = False,
    on_ready: Callable[[list[ListenAddress]], None] | None = None,
    snapshot_file: tuple[str, str] | None = None,
) -> int:
    """Run one serving process until SIGTERM or SIGINT; return its exit code."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(
            config, stop, reuse_port=reuse_port, on_ready=on_ready, snapshot_file=snapshot_file
        )

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run())
    except ListenError as exc:
        print(f"dns2dot: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"dns2dot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


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
    if config.workers > 1:
        return run_workers(config)
    return run_process(config)


def run_workers(config: Config) -> int:
    """Supervise ``--workers`` processes; serve their summed metrics from here."""
    snapshots = tempfile.mkdtemp(prefix="dns2dot-metrics-")
    metrics_server: MetricsServer | None = None
    try:
        if config.metrics is not None:
            try:
                metrics_server = start_metrics(
                    config.metrics, lambda: merge(read_snapshots(snapshots))
                )
            except ListenError as exc:
                print(f"dns2dot: error: {exc}", file=sys.stderr)
                return exc.exit_code
        return workers.supervise(
            config,
            lambda worker_config, index, on_ready: run_process(
                worker_config,
                reuse_port=True,
                on_ready=on_ready,
                snapshot_file=(snapshots, f"worker-{index}"),
            ),
            lambda listening: log.info("%s", startup_line(config, listening)),
        )
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        shutil.rmtree(snapshots, ignore_errors=True)
