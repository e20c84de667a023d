"""Which upstream gets the next query, and when a failed one is tried again.

Pure bookkeeping: it is told the time and the outcomes, and answers with indices.
The failover order is the configured order (RFC 9250-style "in order of preference"):
the first healthy upstream takes everything, and traffic returns to it as soon as its
backoff expires and a connection succeeds.
"""

from __future__ import annotations

import random
from collections.abc import Callable

MIN_BACKOFF = 1.0  # seconds (RFC 9520 §3.2: at least one second)
MAX_BACKOFF = 300.0  # seconds (RFC 9520 §3.2: at most five minutes)


class Health:
    """One upstream's failure record with capped exponential backoff and jitter."""

    __slots__ = ("_random", "down_until", "failures")

    def __init__(self, rand: Callable[[], float] = random.random) -> None:
        self.failures = 0
        self.down_until = 0.0
        self._random = rand

    def usable(self, now: float) -> bool:
        return now >= self.down_until

    def failed(self, now: float) -> float:
        """Record a failure; return how long the upstream now stays down."""
        self.failures += 1
        backoff = min(MAX_BACKOFF, MIN_BACKOFF * 2 ** min(self.failures - 1, 16))
        # Jitter in [backoff, 1.5 * backoff): spreads the retries of many instances
        # without ever going below the RFC 9520 floor.
        delay: float = min(MAX_BACKOFF, backoff * (1.0 + 0.5 * self._random()))
        self.down_until = now + delay
        return delay

    def succeeded(self) -> bool:
        """Record a success; return True if this ends a run of failures."""
        recovered = self.failures > 0
        self.failures = 0
        self.down_until = 0.0
        return recovered


def failover_order(healths: list[Health], now: float) -> list[int]:
    """Indices of the usable upstreams, most preferred first."""
    return [i for i, health in enumerate(healths) if health.usable(now)]
