"""``--workers N``: processes sharing the listen addresses, looked after by a supervisor.

A worker that dies is replaced, the others keep answering meanwhile, and SIGTERM to
the supervisor stops every worker and exits 0.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.net import a_addresses, make_query, udp_query
from support.proc import Dns2Dot
from support.unbound import UnboundUpstream

pytestmark = pytest.mark.integration

Factory = Callable[..., Dns2Dot]


def children(pid: int) -> set[int]:
    """The supervisor's child processes (the workers), from /proc."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()}


def wait_for(condition: Callable[[], bool], what: str, limit: float = 15.0) -> None:
    """Poll ``condition`` (bounded); fail the test with ``what`` if it never holds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} did not happen within {limit} s")
        time.sleep(0.05)


def answers_from_many_ports(port: int, count: int = 40) -> int:
    """How many of ``count`` queries, each from a fresh socket, got the right answer."""
    good = 0
    for i in range(count):
        answer = udp_query(port, make_query(f"n{i}.example.test."), timeout=3)
        good += bool(a_addresses(answer))
    return good


def test_a_killed_worker_is_replaced_and_service_goes_on(
    dns2dot: Factory, unbound: UnboundUpstream
) -> None:
    """SIGKILL one of two workers: the supervisor starts a new one, and queries from many
    source ports (spread over both workers by SO_REUSEPORT) are all answered."""
    d = dns2dot(upstreams=[unbound.spec], extra=["--workers", "2"])
    supervisor = d.proc.pid
    wait_for(lambda: len(children(supervisor)) == 2, "two workers running")
    assert answers_from_many_ports(d.port) == 40
    before = children(supervisor)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: len(children(supervisor)) == 2 and victim not in children(supervisor),
        "a replacement worker",
    )
    # The replacement binds its own SO_REUSEPORT sockets; give it time to listen.
    wait_for(lambda: answers_from_many_ports(d.port, 10) == 10, "answers from every worker")
    assert answers_from_many_ports(d.port) == 40
    assert "restarting it" in d.stderr()
    assert d.alive


def test_sigterm_stops_every_worker_and_exits_0(dns2dot: Factory, unbound: UnboundUpstream) -> None:
    d = dns2dot(upstreams=[unbound.spec], extra=["--workers", "2"])
    supervisor = d.proc.pid
    wait_for(lambda: len(children(supervisor)) == 2, "two workers running")
    workers = children(supervisor)
    assert answers_from_many_ports(d.port, 10) == 10
    assert d.stop() == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
