"""The ``dns2dot`` command: configuration in, listeners up, signals handled.

Exit codes (docs/ARCHITECTURE.md): 0 after a clean stop, 2 for bad configuration with a one-line
message naming the setting, 1 for anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence

from dns2dot import check, workers
from dns2dot import config as config_module
from dns2dot.config import Config, ListenAddress
from dns2dot.logs import setup_logging
from dns2dot.metrics import (
    SNAPSHOT_INTERVAL,
    MetricsServer,
    Snapshot,
    merge,
    read_snapshots,
    write_snapshot,
)
from dns2dot.protocol.errors import ConfigError, ListenError
from dns2dot.proxy import Proxy, bind_error
from dns2dot.transport import server_tls, tls

log = logging.getLogger("dns2dot")

# A young-generation collection every this many net allocations, not CPython's 700.
GC_YOUNG_THRESHOLD = 50_000


def raise_file_limit() -> None:
    """Allow as many sockets as the hard limit does: each TCP client holds one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def tune_gc() -> None:
    """Collect cycles rarely and never rescan what startup made.

    A forwarder's per-query objects die by reference count within milliseconds; with
    CPython's default threshold (700 allocations) the queries in flight would be
    promoted and rescanned over and over. Few cycles are made per query, so a higher
    threshold costs little memory; modules and configuration are frozen out of the
    collections entirely.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop where the platform has it: its datagram path is far faster than asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def startup_line(
    config: Config,
    listening: Sequence[ListenAddress],
    encrypted: Sequence[tuple[str, ListenAddress]] = (),
) -> str:
    if all(spec.transport == "tls" for spec in config.upstreams):
        upstreams = "tls " + ", ".join(str(spec) for spec in config.upstreams)
    else:  # DoH upstreams say https:// themselves
        upstreams = ", ".join(
            f"tls {spec}" if spec.transport == "tls" else str(spec) for spec in config.upstreams
        )
    served = ", ".join(map(str, listening))
    if not encrypted:  # the supervisor of --workers: the addresses as configured
        encrypted = [("dot", a) for a in config.listen_tls] + [
            ("doh", a) for a in config.listen_https
        ]
    for kind, address in encrypted:
        served += f", {kind} {address}" + (config.https_path if kind == "doh" else "")
    line = f"udp+tcp {served} -> {upstreams}"
    if config.mode == "pipe":
        line += " (tcp mode pipe)"
    if config.workers > 1:
        line += f" ({config.workers} workers)"
    return line


async def serve(
    config: Config,
    args: Sequence[str],
    *,
    reuse_port: bool = False,
    on_ready: Callable[[list[ListenAddress]], None] | None = None,
    snapshot_file: tuple[str, str] | None = None,
) -> None:
    """Run one proxy until SIGTERM or SIGINT; SIGHUP reloads ``args`` (the YAML).

    Metrics: a process of its own serves ``--metrics`` itself; a worker instead writes
    its snapshot to ``snapshot_file`` (directory, name) for the supervisor to serve.
    """
    loop = asyncio.get_running_loop()
    proxy = Proxy(config, reuse_port=reuse_port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload(proxy, args))
    latest: list[Snapshot] = []
    publisher: asyncio.TimerHandle | None = None

    def publish() -> None:
        nonlocal publisher
        snap = proxy.snapshot()
        latest[:] = [snap]
        if snapshot_file is not None:
            write_snapshot(*snapshot_file, snap)
        publisher = loop.call_later(SNAPSHOT_INTERVAL, publish)

    metrics_server: MetricsServer | None = None
    try:
        if config.metrics is not None or snapshot_file is not None:
            publish()
        if config.metrics is not None and snapshot_file is None:
            metrics_server = start_metrics(config.metrics, lambda: merge(latest))
        listening = await proxy.start()
        tune_gc()
        if on_ready is None:
            log.info("%s", startup_line(config, listening, proxy.encrypted_addresses()))
        else:
            on_ready(listening)
        await stop.wait()
        log.info("stopping: finishing queries in flight (up to %.1f s)", config.grace_period)
        await proxy.drain(config.grace_period)
    finally:
        if publisher is not None:
            publisher.cancel()
        if metrics_server is not None:
            metrics_server.stop()
        proxy.close()


def reload(proxy: Proxy, args: Sequence[str]) -> None:
    """SIGHUP: read the configuration again; a broken one is reported and ignored."""
    try:
        config = config_module.load(args)
        proxy.reload(config)
    except ConfigError as exc:
        log.error("reload failed, keeping the running configuration: %s", exc)
        return
    log.info("reloaded the configuration%s", f" from {config.config}" if config.config else "")


def start_metrics(address: ListenAddress, source: Callable[[], Snapshot]) -> MetricsServer:
    try:
        return MetricsServer(address.host, address.port, source).start()
    except OSError as exc:
        raise bind_error(address, exc, option="--metrics") from None


def run_process(
    config: Config,
    args: Sequence[str],
    *,
    reuse_port: bool = False,
    on_ready: Callable[[list[ListenAddress]], None] | None = None,
    snapshot_file: tuple[str, str] | None = None,
) -> int:
    """Run one serving process until SIGTERM or SIGINT; return its exit code."""
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(
                serve(
                    config,
                    args,
                    reuse_port=reuse_port,
                    on_ready=on_ready,
                    snapshot_file=snapshot_file,
                )
            )
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
        if config.tls_cert and config.tls_key and (config.listen_tls or config.listen_https):
            server_tls.Certificates(config.tls_cert, config.tls_key)  # so is a bad pair
    except ConfigError as exc:
        print(f"dns2dot: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.verbose, config.log_format)
    raise_file_limit()
    if config.workers > 1:
        return run_workers(config, args)
    return run_process(config, args)


def run_workers(config: Config, args: Sequence[str]) -> int:
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
                args,
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
