"""What one serving process counts, in plain ints: cheap enough for every query.

The counters live here, beside the listeners and the resolver that bump them;
:mod:`dns2dot.metrics` turns their snapshots into Prometheus text.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

# Seconds; from a cache hit on loopback to a query that timed out.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

Snapshot = dict[str, Any]


class Stats:
    """What one serving process counts. Only plain ints: cheap enough for every query."""

    def __init__(self) -> None:
        self.queries: Counter[tuple[str, int, int]] = Counter()
        self.latency: dict[str, list[float]] = {}
        self.dropped: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._at_once: dict[tuple[str, int, int], list[int]] = {}  # see at_once()

    def answered(self, transport: str, qtype: int, rcode: int, seconds: float) -> None:
        self.queries[(transport, qtype, rcode)] += 1
        buckets = self.latency.get(transport)
        if buckets is None:
            buckets = self.latency[transport] = [0.0] * (len(BUCKETS) + 3)
        buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        buckets[-2] += seconds
        buckets[-1] += 1

    def at_once(self, key: tuple[str, int, int]) -> list[int]:
        """The counter for answers made without waiting (cache hits) under ``key``
        (transport, qtype, rcode): the caller keeps it and adds 1 to its one item per
        answer, an int add instead of :meth:`answered`'s work; :meth:`fold` moves the
        counts into ``queries`` and ``latency`` (at 0 seconds)."""
        cell = self._at_once.get(key)
        if cell is None:
            cell = self._at_once[key] = [0]
        return cell

    def fold(self) -> None:
        """Move what the :meth:`at_once` counters hold into ``queries`` and ``latency``."""
        for key, cell in self._at_once.items():
            count = cell[0]
            if count:
                cell[0] = 0
                self.queries[key] += count
                buckets = self.latency.get(key[0])
                if buckets is None:
                    buckets = self.latency[key[0]] = [0.0] * (len(BUCKETS) + 3)
                buckets[0] += count
                buckets[-1] += count

    def snapshot(self, **gauges: Any) -> Snapshot:
        """A JSON-able copy of the counters, plus the gauges the caller reads off live objects."""
        self.fold()
        return {
            "queries": [[t, q, r, n] for (t, q, r), n in self.queries.items()],
            "latency": {transport: list(b) for transport, b in self.latency.items()},
            "dropped": dict(self.dropped),
            "refused": dict(self.refused),
            **gauges,
        }
