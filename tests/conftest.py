"""Shared fixtures: the test PKI, a real unbound DoT upstream, fake upstreams,
recording proxies and dns2dot processes. Helpers live in ``tests/support``
(importable as ``support.*``: this file puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.fake_upstream import FakeUpstream
from support.pki import Pki, make_pki
from support.proc import Dns2Dot, print_log_tail, start_dns2dot
from support.recorder import RecordingProxy
from support.unbound import UnboundUpstream, start_unbound

# CI (``.ci/run`` sets HYPOTHESIS_PROFILE=ci) draws the same examples on every run, so a
# commit that passed cannot turn red by chance; other runs draw new ones each time and
# keep finding edge cases (each one found is kept as an ``@example`` of its test).
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

_failed_key = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    """Remember whether the test body failed, so teardown can show dns2dot's log."""
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_failed_key] = True
    return report


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA + leaves (good, wrong_name, expired, untrusted) as PEM files, made once."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def unbound(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnboundUpstream]:
    """unbound serving ``example.test.`` over DoT on a free loopback port (one per session)."""
    up = start_unbound(tmp_path_factory.mktemp("unbound"), pki)
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture
def fake_upstream(pki: Pki) -> Iterator[Callable[..., FakeUpstream]]:
    """Factory: ``fake_upstream(cert="good", mode="normal", tls=True, ...)`` -> FakeUpstream.

    Every fake made is stopped at teardown.
    """
    made: list[FakeUpstream] = []

    def make(**kw: Any) -> FakeUpstream:
        f = FakeUpstream(pki, **kw)
        made.append(f)
        return f.start()

    try:
        yield make
    finally:
        for f in made:
            f.stop()


@pytest.fixture
def recording_proxy() -> Iterator[Callable[[int], RecordingProxy]]:
    """Factory: ``recording_proxy(target_port)`` -> started RecordingProxy, stopped at teardown."""
    made: list[RecordingProxy] = []

    def make(target_port: int) -> RecordingProxy:
        p = RecordingProxy(target_port)
        made.append(p)
        return p.start()

    try:
        yield make
    finally:
        for p in made:
            p.stop()


@pytest.fixture
def dns2dot(
    request: pytest.FixtureRequest, pki: Pki, tmp_path: Path
) -> Iterator[Callable[..., Dns2Dot]]:
    """Factory: ``dns2dot(upstreams=[...], mode=None, extra=[...], env=None, ...)`` -> Dns2Dot.

    ``cafile`` defaults to the test CA. Processes are stopped (SIGTERM, then SIGKILL)
    at teardown; if the test failed, the tail of each log is printed.
    """
    started: list[Dns2Dot] = []

    def start(**kw: Any) -> Dns2Dot:
        kw.setdefault("cafile", pki.ca)
        d = start_dns2dot(tmp_path / "dns2dot", **kw)
        started.append(d)
        return d

    try:
        yield start
    finally:
        for d in started:
            code = d.stop()
            if request.node.stash.get(_failed_key, False):
                print_log_tail(d, code, lines=40)
