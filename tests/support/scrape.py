"""Reading dns2dot's HTTP endpoints: ``/metrics`` (Prometheus text), ``/healthz``, ``/readyz``.

Why: operators watch these, so tests read them the way a scraper does, over HTTP on
loopback, parsed by ``prometheus_client``'s own parser. Snapshots behind ``/metrics``
are refreshed periodically, so comparisons go through :func:`wait_for` (bounded).
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from .net import LOOPBACK

T = TypeVar("T")


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``http://127.0.0.1:PORT/PATH``: (status, body). Connection errors propagate."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


@dataclass(frozen=True)
class Sample:
    """One exposition line: sample name (``dns2dot_queries_total``), labels, value."""

    name: str
    labels: dict[str, str]
    value: float


class Metrics:
    """A parsed ``/metrics`` page."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[Sample] = [
            Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def select(self, name: str, **labels: str) -> list[Sample]:
        """Samples called ``name`` whose labels include ``labels``."""
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def sum(self, name: str, **labels: str) -> float:
        """Sum of :meth:`select` (0 when there is none)."""
        return sum(s.value for s in self.select(name, **labels))

    def by(self, name: str, label: str) -> dict[str, float]:
        """``name`` summed per value of ``label``."""
        out: dict[str, float] = {}
        for s in self.select(name):
            key = s.labels.get(label, "")
            out[key] = out.get(key, 0.0) + s.value
        return out


def scrape(port: int, timeout: float = 5.0) -> Metrics:
    """GET and parse ``/metrics``; a status other than 200 raises AssertionError."""
    status, body = http_get(port, "/metrics", timeout)
    assert status == 200, f"/metrics answered {status}: {body[:200]}"
    return Metrics(body)


def wait_for(
    produce: Callable[[], T], accept: Callable[[T], bool], timeout: float = 5.0, pause: float = 0.1
) -> T:
    """Call ``produce`` until ``accept`` says yes or ``timeout`` runs out; return the last
    value either way (the caller asserts on it, so a failure shows what was seen)."""
    deadline = time.monotonic() + timeout
    value = produce()
    for _ in range(int(timeout / pause) + 2):
        if accept(value) or time.monotonic() >= deadline:
            break
        time.sleep(pause)
        value = produce()
    return value


def wait_for_metrics(port: int, accept: Callable[[Metrics], bool], timeout: float = 5.0) -> Metrics:
    """Scrape until ``accept`` holds (snapshots lag up to half a second), bounded."""
    return wait_for(lambda: scrape(port), accept, timeout)
