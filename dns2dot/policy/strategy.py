"""Which upstream gets the next query, and when a failed one is tried again.

Pure bookkeeping: it is told the time and the outcomes, and answers with indices into
the configured list of upstreams.

- ``failover``: the configured order; the first healthy upstream takes everything,
  and traffic returns to it as soon as it recovers.
- ``round-robin``: healthy upstreams in turn.
- ``fastest``: the lowest smoothed round-trip time first; one query in
  :data:`EXPLORE_EVERY` goes to another one first, so a recovered or improved
  upstream is noticed.
- ``race``: like failover, but the pool sends every query to the first *two*, and the
  first good answer wins.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

MIN_BACKOFF = 1.0  # seconds (RFC 9520 §3.2: at least one second)
MAX_BACKOFF = 300.0  # seconds (RFC 9520 §3.2: at most five minutes)
RTT_WEIGHT = 0.2  # weight of a new sample in the smoothed round-trip time
EXPLORE_EVERY = 50

STRATEGIES = ("failover", "round-robin", "fastest", "race")


class Health:
    """One upstream's failure record with capped exponential backoff and jitter.

    An upstream is *up* until a failure marks it *down*; when its backoff expires it
    is due for a probe (:meth:`probe_due`), and only a successful probe or connection
    brings it back up. Client queries never wait on a probe.
    """

    __slots__ = ("_random", "down_until", "failures", "probing", "srtt")

    def __init__(self, rand: Callable[[], float] = random.random) -> None:
        self.failures = 0
        self.down_until = 0.0
        self.probing = False
        self.srtt = 0.0  # seconds; 0 until the first answer
        self._random = rand

    @property
    def up(self) -> bool:
        return self.failures == 0

    def probe_due(self, now: float) -> bool:
        return not self.up and not self.probing and now >= self.down_until

    def failed(self, now: float) -> float:
        """Record a failure; return how long the upstream now stays down."""
        self.failures += 1
        self.probing = False
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
        self.probing = False
        return recovered

    def answered(self, rtt: float) -> None:
        """Fold one round-trip time into the smoothed estimate."""
        if self.srtt == 0.0:
            self.srtt = rtt
        else:
            self.srtt += RTT_WEIGHT * (rtt - self.srtt)


class Strategy:
    """Orders the healthy upstreams for one query; see the module docstring. ``name``
    has no default here: the one default is ``--strategy``'s, in the option table."""

    def __init__(self, name: str, rand: Callable[[], float] = random.random) -> None:
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}")
        self.name = name
        self.fanout = 2 if name == "race" else 1
        self._turn = 0
        self._random = rand

    def order(self, healths: Sequence[Health]) -> list[int]:
        """Indices of the upstreams that are up, the one to use first at the front."""
        usable = [i for i, health in enumerate(healths) if health.up]
        if len(usable) < 2 or self.name in ("failover", "race"):
            return usable
        self._turn += 1
        if self.name == "round-robin":
            start = self._turn % len(usable)
            return usable[start:] + usable[:start]
        usable.sort(key=lambda i: healths[i].srtt)
        if self._turn % EXPLORE_EVERY == 0:
            pick = 1 + int(self._random() * (len(usable) - 1))
            usable.insert(0, usable.pop(pick))
        return usable
