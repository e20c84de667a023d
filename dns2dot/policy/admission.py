"""Who may ask: the access list, and a per-network rate limit against amplification.

Pure: told the client's address and the time, it answers "serve", "refuse" or
"slip". By default only loopback and private networks are served, so a proxy bound to
a public address is not an open resolver.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from enum import Enum

DEFAULT_ALLOW = (
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
)
_CACHE_LIMIT = 65536
_BUCKET_LIMIT = 65536

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Verdict(Enum):
    SERVE = "serve"
    REFUSE = "refuse"  # not on the access list: REFUSED
    SLIP = "slip"  # over the rate limit: an empty TC=1 answer, so real clients use TCP


# The members as module globals: a member read through its Enum class is a Python-level
# lookup (about fifteen times a global's cost on Python 3.11), and this is per datagram.
SERVE, REFUSE, SLIP = Verdict.SERVE, Verdict.REFUSE, Verdict.SLIP


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or bare addresses) to networks; raises ValueError naming the bad one."""
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"'{text}' is not an address or CIDR") from None
    return tuple(networks)


class AccessList:
    """Membership of client addresses in the allowed networks, cached per address."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def allows(self, host: str) -> bool:
        allowed = self._cache.get(host)
        if allowed is None:
            try:
                address = ipaddress.ip_address(host.partition("%")[0])
            except ValueError:
                return False
            mapped = getattr(address, "ipv4_mapped", None)
            if mapped is not None:
                address = mapped
            allowed = any(address in network for network in self.networks)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[host] = allowed
        return allowed


class RateLimiter:
    """A token bucket per /24 (IPv4) or /56 (IPv6): ``qps`` sustained, one second of
    burst (at least one query, so that a rate below 1 still lets some through)."""

    def __init__(self, qps: float) -> None:
        self.qps = qps
        self.burst = max(qps, 1.0)
        self._buckets: dict[str, tuple[float, float]] = {}

    @staticmethod
    def prefix(host: str) -> str:
        if ":" in host:
            return str(ipaddress.IPv6Network((host.partition("%")[0], 56), strict=False))
        return host.rpartition(".")[0]

    def allow(self, host: str, now: float) -> bool:
        key = self.prefix(host)
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.qps)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        if len(self._buckets) >= _BUCKET_LIMIT and key not in self._buckets:
            self._buckets.clear()
        self._buckets[key] = (tokens - 1.0, now)
        return True


class Admission:
    """The access list and the optional rate limit, asked once per datagram or connection."""

    def __init__(
        self,
        access: AccessList,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.access = access
        self.limiter = limiter
        self._clock = clock

    def verdict(self, host: str, *, datagram: bool) -> Verdict:
        if not self.access.allows(host):
            return REFUSE
        # Only datagrams can be spoofed into an amplification; TCP is left alone.
        limiter = self.limiter
        if (
            datagram
            and limiter is not None
            and self._clock is not None
            and not limiter.allow(host, self._clock())
        ):
            return SLIP
        return SERVE
