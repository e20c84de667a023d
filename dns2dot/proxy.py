"""One serving process, assembled from a :class:`~dns2dot.config.Config`.

:class:`Proxy` binds the listeners, builds the upstream pools, rules, cache and
resolver, and knows how to reload them (SIGHUP: a new configuration replaces the old
one without dropping client connections or the cache), how to drain (SIGTERM: stop
accepting, finish what is in flight within a grace period) and how to close.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from tornado.netutil import bind_sockets

from dns2dot.config import Config, ListenAddress
from dns2dot.metrics import Snapshot, Stats
from dns2dot.policy.admission import AccessList, Admission, RateLimiter, Verdict
from dns2dot.policy.cache import Cache, CachePolicy
from dns2dot.policy.rules import RuleSet, build_rules
from dns2dot.policy.strategy import Strategy
from dns2dot.protocol import wire
from dns2dot.protocol.errors import ListenError
from dns2dot.serve.resolver import AnswerPolicy, Resolver, refuse
from dns2dot.serve.tcp import DnsTcpServer, TcpLimits
from dns2dot.serve.tls_clients import EncryptedListeners, Handler
from dns2dot.serve.udp import UdpListener, start_udp, udp_socket
from dns2dot.transport.tls import TlsContexts
from dns2dot.upstream.connection import UpstreamConnection
from dns2dot.upstream.doh import DohConnection
from dns2dot.upstream.pool import DEFAULT_CONNECTION_TYPES, UpstreamPool
from dns2dot.upstream.spec import Lifecycle, UpstreamSpec

if TYPE_CHECKING:
    from dns2dot.policy.dnssec import Validator

log = logging.getLogger("dns2dot")

ENCRYPTED_SETTINGS = ("listen_tls", "listen_https", "https_path", "tls_cert", "tls_key")
DRAIN_POLL = 0.05  # seconds between checks while draining
CONNECTION_TYPES: dict[str, type[UpstreamConnection]] = {
    **DEFAULT_CONNECTION_TYPES,
    "https": DohConnection,
}


def bind_error(address: ListenAddress, exc: OSError, option: str = "--listen") -> ListenError:
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


@dataclass
class Listener:
    address: ListenAddress
    tcp: list[socket.socket]
    udp: socket.socket


def bind_listeners(
    addresses: Sequence[ListenAddress], *, reuse_port: bool = False
) -> list[Listener]:
    """TCP and UDP sockets for every address; port 0 picks one port for both.

    With ``reuse_port`` every worker binds sockets of its own (``SO_REUSEPORT``) and
    the kernel spreads clients across them, UDP included.
    """
    bound: list[Listener] = []
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
                raise bind_error(address, exc) from None
            bound.append(Listener(ListenAddress(address.host, port), tcp, udp))
    except ListenError:
        for listener in bound:
            for sock in [*listener.tcp, listener.udp]:
                sock.close()
        raise
    return bound


# The classes below state no defaults for what the options set: built here from Config.


def cache_policy(config: Config) -> CachePolicy:
    return CachePolicy(
        max_entries=config.cache_size,
        min_ttl=config.cache_min_ttl,
        max_ttl=config.cache_max_ttl,
        stale_ttl=config.serve_stale,
    )


def answer_policy(config: Config) -> AnswerPolicy:
    return AnswerPolicy(
        pad_block=0 if config.no_padding else wire.PAD_BLOCK,
        keep_client_subnet=config.keep_client_subnet,
    )


def validator(config: Config) -> Validator | None:
    """The DNSSEC validator of ``--dnssec validate`` (None when off): the
    ``--trust-anchor`` files, else the built-in IANA root anchors, with the
    ``--insecure`` zones as negative trust anchors."""
    if config.dnssec != "validate":
        return None
    from dns2dot.policy.dnssec import Validator, load_anchor_files, root_anchors

    anchors = load_anchor_files(config.trust_anchor) if config.trust_anchor else root_anchors()
    return Validator(anchors.with_negative(config.insecure))


def lifecycle(config: Config) -> Lifecycle:
    return Lifecycle(
        connect_timeout=config.timeout,
        idle_timeout=config.upstream_idle_timeout,
        max_queries=config.max_queries_per_connection,
    )


def tcp_limits(config: Config) -> TcpLimits:
    return TcpLimits(
        idle_timeout=config.idle_timeout,
        max_clients=config.max_tcp_clients,
        max_inflight=config.max_inflight_per_client,
    )


class Upstreams:
    """The main pool, the rules, and the pools of the zones the rules forward."""

    def __init__(self, config: Config, contexts: TlsContexts) -> None:
        upstream_lifecycle = lifecycle(config)
        zones: dict[str, list[UpstreamSpec]] = {}
        for zone, spec in config.forward:
            zones.setdefault(zone, []).append(spec)
        self.rules: RuleSet = build_rules(
            hosts=config.hosts,
            blocklists=config.blocklist,
            block_answer=config.block_answer,
            forward_zones=list(zones),
        )
        self.pool = UpstreamPool(
            list(config.upstreams),
            contexts,
            strategy=Strategy(config.strategy),
            lifecycle=upstream_lifecycle,
            connection_types=CONNECTION_TYPES,
        )
        self.zone_pools = [
            UpstreamPool(
                specs,
                contexts,
                strategy=Strategy("failover"),
                lifecycle=upstream_lifecycle,
                connection_types=CONNECTION_TYPES,
            )
            for specs in zones.values()
        ]

    def close(self) -> None:
        for pool in (self.pool, *self.zone_pools):
            pool.close()


class Proxy:
    """The listeners, upstreams, cache and resolver of one process."""

    def __init__(self, config: Config, *, reuse_port: bool = False) -> None:
        self.config = config
        self._loop = asyncio.get_running_loop()
        self.upstreams = Upstreams(config, TlsContexts(config.cafile))
        self.listeners = bind_listeners(config.listen, reuse_port=reuse_port)
        self.stats = Stats()
        self.resolver = Resolver(
            self.upstreams.pool,
            config.timeout,
            max_inflight=config.max_inflight,
            cache=Cache(cache_policy(config)) if config.cache_size else None,
            policy=answer_policy(config),
            rules=self.upstreams.rules,
            zone_pools=self.upstreams.zone_pools,
            stats=self.stats,
            validator=validator(config),
        )
        self.resolver.log_queries = config.log_queries
        self.admission = Admission(
            AccessList(config.allow),
            RateLimiter(config.ratelimit) if config.ratelimit else None,
            clock=self._loop.time,
        )
        self.limits = tcp_limits(config)
        self.tcp_server = DnsTcpServer(
            self.resolver, self.upstreams.pool, self.admission, config.mode, self.limits
        )
        self.udp: list[UdpListener] = []
        self.encrypted: EncryptedListeners | None = None
        if config.listen_tls or config.listen_https:
            assert config.tls_cert is not None and config.tls_key is not None  # load() checks
            self.encrypted = EncryptedListeners(
                dot=config.listen_tls,
                doh=config.listen_https,
                https_path=config.https_path,
                cert=config.tls_cert,
                key=config.tls_key,
                limits=self.limits,
                stats=self.stats,
                handler=self._encrypted_handler,
                bind_error=lambda address, exc, option: bind_error(
                    ListenAddress(address.host, address.port), exc, option
                ),
                reuse_port=reuse_port,
            )

    def _encrypted_handler(self, host: str, transport: str) -> Handler:
        """How a DoT or DoH client's queries are answered: resolved, or REFUSED (--allow)."""
        if self.admission.verdict(host, datagram=False) is not Verdict.SERVE:
            self.stats.refused["acl"] += 1
            return refuse
        return partial(self.resolver.handle, transport=transport)

    def encrypted_addresses(self) -> list[tuple[str, ListenAddress]]:
        """("dot" or "doh", address) of every encrypted listener, ports resolved."""
        if self.encrypted is None:
            return []
        return [
            (kind, ListenAddress(host, port)) for kind, host, port in self.encrypted.addresses()
        ]

    async def start(self) -> list[ListenAddress]:
        """Start serving; return the addresses (port 0 resolved)."""
        self.resolver.start()
        self.tcp_server.start_sweeping()
        for listener in self.listeners:
            self.tcp_server.add_sockets(listener.tcp)
            udp = await start_udp(
                self.resolver, self.admission, listener.udp, listener.address.host
            )
            self.udp.append(udp)
        if self.encrypted is not None:
            self.encrypted.start()
        return [listener.address for listener in self.listeners]

    def reload(self, config: Config) -> None:
        """Apply a new configuration; raises (keeping the old one) if it cannot be built.

        Client connections and the cache survive. Listen addresses, the TCP mode,
        workers and the metrics address are fixed for the life of the process.
        """
        fixed = [
            name
            for name in ("listen", "mode", "workers", "metrics", *ENCRYPTED_SETTINGS)
            if getattr(config, name) != getattr(self.config, name)
        ]
        if fixed:
            log.warning("reload: %s only change on restart", ", ".join(fixed))
        upstreams = Upstreams(config, TlsContexts(config.cafile))  # may raise: nothing changed
        new_validator = validator(config)  # may raise; re-reads the trust anchor files
        if self.encrypted is not None:
            self.encrypted.certificates.reload()  # a broken pair is logged, the old one kept
        old = self.upstreams
        self.upstreams = upstreams
        resolver = self.resolver
        resolver.pool = upstreams.pool
        resolver.zone_pools = upstreams.zone_pools
        resolver.rules = upstreams.rules if not upstreams.rules.empty else None
        resolver.timeout = config.timeout
        resolver.max_inflight = config.max_inflight
        resolver.policy = answer_policy(config)
        resolver.log_queries = config.log_queries
        resolver.validator = new_validator
        if not config.cache_size:
            resolver.cache = None
        elif resolver.cache is None:
            resolver.cache = Cache(cache_policy(config))
        else:
            resolver.cache.policy = cache_policy(config)
        self.tcp_server.pool = upstreams.pool
        self.admission.access = AccessList(config.allow)
        self.admission.limiter = RateLimiter(config.ratelimit) if config.ratelimit else None
        self.limits.idle_timeout = config.idle_timeout
        self.limits.max_clients = config.max_tcp_clients
        self.limits.max_inflight = config.max_inflight_per_client
        # Queries already on the old upstreams finish there (or time out) first.
        self._loop.call_later(max(config.timeout, self.config.timeout) + 1.0, old.close)
        self.config = config

    async def drain(self, grace: float) -> None:
        """Stop taking new work, then wait up to ``grace`` seconds for queries in flight."""
        self.tcp_server.stop_accepting()
        if self.encrypted is not None:
            self.encrypted.stop_accepting()  # HTTP/2 clients get a GOAWAY
        for udp in self.udp:
            udp.draining = True
        deadline = self._loop.time() + grace
        while self.resolver.inflight and self._loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL)
        for pool in (self.upstreams.pool, *self.upstreams.zone_pools):
            pool.closing = True
        self.resolver.abort()  # what is still waiting gets SERVFAIL, not silence
        await asyncio.sleep(DRAIN_POLL)  # let those answers be written

    def close(self) -> None:
        self.tcp_server.stop()
        if self.encrypted is not None:
            self.encrypted.close()
        for udp in self.udp:
            udp.close()
        self.resolver.stop()
        self.upstreams.close()

    def snapshot(self) -> Snapshot:
        snap = self.resolver.snapshot()
        snap["tcp_clients"] = len(self.tcp_server.sessions) + (
            self.encrypted.clients if self.encrypted is not None else 0
        )
        return snap
