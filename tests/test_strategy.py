"""Unit tests for :mod:`dns2dot.strategy`: backoff bookkeeping and upstream ordering,
told the time and a random source, answering with durations and indices."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dns2dot.config import Config
from dns2dot.policy.strategy import (
    EXPLORE_EVERY,
    MAX_BACKOFF,
    MIN_BACKOFF,
    RTT_WEIGHT,
    STRATEGIES,
    Health,
    Strategy,
)


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


def down(health: Health, now: float = 0.0) -> Health:
    health.failed(now)
    return health


# --------------------------------------------------------------------------- Health: backoff


def test_bounds_are_rfc_9520() -> None:
    """RFC 9520 §3.2: failures are remembered for at least 1 s and at most 5 minutes."""
    assert MIN_BACKOFF == 1.0
    assert MAX_BACKOFF == 300.0


def test_new_health_is_up() -> None:
    health = Health()
    assert health.failures == 0
    assert health.up
    assert not health.probe_due(1e9), "an upstream that is up needs no probe"
    assert health.srtt == 0.0


def test_first_failure_backs_off_one_second_without_jitter() -> None:
    health = Health(rand=fixed(0.0))
    assert health.failed(100.0) == 1.0
    assert health.failures == 1
    assert health.down_until == 101.0
    assert not health.up
    assert not health.probe_due(100.0)
    assert not health.probe_due(100.999)
    assert health.probe_due(101.0)


def test_backoff_doubles() -> None:
    health = Health(rand=fixed(0.0))
    delays = [health.failed(0.0) for _ in range(9)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256]


def test_backoff_capped_at_300() -> None:
    health = Health(rand=fixed(0.0))
    delays = [health.failed(0.0) for _ in range(40)]
    assert max(delays) == MAX_BACKOFF
    assert delays[9:] == [MAX_BACKOFF] * 31


def test_backoff_survives_huge_failure_counts() -> None:
    """No overflow however long an upstream stays dead."""
    health = Health(rand=fixed(0.999))
    health.failures = 10**6
    assert health.failed(0.0) == MAX_BACKOFF


@pytest.mark.parametrize("r", [0.0, 0.25, 0.5, 0.999999])
def test_jitter_within_bounds(r: float) -> None:
    """Jitter spreads retries over [backoff, 1.5 x backoff), never below the floor."""
    health = Health(rand=fixed(r))
    for n in range(1, 12):
        base = min(MAX_BACKOFF, 2.0 ** (n - 1))
        delay = health.failed(0.0)
        assert base <= delay <= min(MAX_BACKOFF, base * 1.5)
        assert delay == pytest.approx(min(MAX_BACKOFF, base * (1 + 0.5 * r)))
        assert delay >= MIN_BACKOFF


def test_jitter_uses_the_injected_rand() -> None:
    health = Health(rand=fixed(0.5))
    assert health.failed(10.0) == 1.25
    assert health.down_until == 11.25
    assert health.failed(10.0) == 2.5


def test_jitter_never_exceeds_cap() -> None:
    health = Health(rand=fixed(0.999))
    for _ in range(9):
        health.failed(0.0)
    assert health.failed(0.0) == MAX_BACKOFF  # 256 * 1.4995 is capped
    assert health.failures == 10


def test_default_rand_gives_jittered_delays() -> None:
    delay = Health().failed(0.0)
    assert 1.0 <= delay < 1.5


def test_down_until_follows_latest_failure() -> None:
    health = Health(rand=fixed(0.0))
    health.failed(50.0)
    health.failed(60.0)
    assert health.down_until == 62.0


# --------------------------------------------------------------------------- Health: recovery


def test_succeeded_resets_and_reports_recovery() -> None:
    health = Health(rand=fixed(0.0))
    health.failed(0.0)
    health.failed(1.0)
    assert health.succeeded() is True
    assert health.failures == 0
    assert health.down_until == 0.0
    assert health.up
    assert health.failed(5.0) == 1.0, "backoff starts over after a success"


def test_succeeded_without_failures_is_not_a_recovery() -> None:
    health = Health()
    assert health.succeeded() is False
    assert health.succeeded() is False


def test_probe_due_once_while_probing() -> None:
    """Only one probe at a time; a failed probe backs off further, a good one ends it."""
    health = down(Health(rand=fixed(0.0)), 0.0)
    assert health.probe_due(1.0)
    health.probing = True
    assert not health.probe_due(1.0)
    assert health.failed(1.0) == 2.0
    assert not health.probing
    assert not health.probe_due(2.5)
    assert health.probe_due(3.0)
    health.probing = True
    assert health.succeeded() is True
    assert not health.probing
    assert health.up


def test_answered_smooths_rtt() -> None:
    health = Health()
    health.answered(0.100)
    assert health.srtt == 0.100, "the first sample is taken as is"
    health.answered(0.200)
    assert health.srtt == pytest.approx(0.100 + RTT_WEIGHT * 0.100)
    for _ in range(200):
        health.answered(0.050)
    assert health.srtt == pytest.approx(0.050)


# --------------------------------------------------------------------------- Strategy


def test_strategy_names() -> None:
    assert STRATEGIES == ("failover", "round-robin", "fastest", "race")
    for name in STRATEGIES:
        assert Strategy(name).name == name
    assert Strategy(Config().strategy).name == "failover"  # the default, written once


def test_strategy_unknown_name() -> None:
    with pytest.raises(ValueError):
        Strategy("random")


def test_race_fans_out_to_two() -> None:
    assert Strategy("race").fanout == 2
    assert all(Strategy(name).fanout == 1 for name in ("failover", "round-robin", "fastest"))


@pytest.mark.parametrize("name", ["failover", "race"])
def test_failover_keeps_configured_order(name: str) -> None:
    """The first healthy upstream takes everything (in order of preference)."""
    strategy = Strategy(name)
    healths = [Health(), Health(), Health()]
    for _ in range(5):
        assert strategy.order(healths) == [0, 1, 2]


@pytest.mark.parametrize("name", STRATEGIES)
def test_order_skips_down_upstreams(name: str) -> None:
    strategy = Strategy(name, rand=fixed(0.0))
    healths = [down(Health()), Health(), down(Health()), Health()]
    for _ in range(EXPLORE_EVERY + 1):
        assert sorted(strategy.order(healths)) == [1, 3]


@pytest.mark.parametrize("name", STRATEGIES)
def test_order_all_down_or_empty(name: str) -> None:
    strategy = Strategy(name)
    assert strategy.order([down(Health()), down(Health())]) == []
    assert strategy.order([]) == []


@pytest.mark.parametrize("name", STRATEGIES)
def test_order_single_upstream(name: str) -> None:
    assert Strategy(name).order([Health()]) == [0]


def test_failover_returns_to_first_after_recovery() -> None:
    strategy = Strategy("failover")
    first = down(Health(rand=fixed(0.0)))
    healths = [first, Health()]
    assert strategy.order(healths) == [1]
    first.succeeded()
    assert strategy.order(healths) == [0, 1]


def test_failover_ignores_backoff_expiry_until_success() -> None:
    """Expiry only makes a probe due: client queries never go to a down upstream."""
    strategy = Strategy("failover")
    first = down(Health(rand=fixed(0.0)), 0.0)
    assert first.probe_due(10.0)
    assert strategy.order([first, Health()]) == [1]


def test_round_robin_rotates() -> None:
    strategy = Strategy("round-robin")
    healths = [Health(), Health(), Health()]
    firsts = [strategy.order(healths)[0] for _ in range(6)]
    assert sorted(firsts[:3]) == [0, 1, 2]
    assert firsts[:3] == firsts[3:]
    for _ in range(3):
        order = strategy.order(healths)
        assert sorted(order) == [0, 1, 2]
        start = order[0]
        assert order == [(start + i) % 3 for i in range(3)]


def test_round_robin_over_healthy_only() -> None:
    strategy = Strategy("round-robin")
    healths = [Health(), down(Health()), Health()]
    firsts = {strategy.order(healths)[0] for _ in range(4)}
    assert firsts == {0, 2}


def test_fastest_sorts_by_srtt() -> None:
    strategy = Strategy("fastest", rand=fixed(0.0))
    healths = [Health(), Health(), Health()]
    for health, rtt in zip(healths, [0.300, 0.010, 0.100], strict=True):
        health.answered(rtt)
    orders = [strategy.order(healths) for _ in range(EXPLORE_EVERY - 1)]
    assert all(order == [1, 2, 0] for order in orders)


def test_fastest_explores_every_nth_query() -> None:
    """One query in EXPLORE_EVERY tries another upstream first, so a recovered or
    improved one is noticed."""
    strategy = Strategy("fastest", rand=fixed(0.999))
    healths = [Health(), Health(), Health()]
    for health, rtt in zip(healths, [0.300, 0.010, 0.100], strict=True):
        health.answered(rtt)
    orders = [strategy.order(healths) for _ in range(EXPLORE_EVERY * 2)]
    explored = [i for i, order in enumerate(orders) if order[0] != 1]
    assert explored == [EXPLORE_EVERY - 1, 2 * EXPLORE_EVERY - 1]
    for i in explored:
        assert sorted(orders[i]) == [0, 1, 2]
        assert orders[i][0] == 0  # rand 0.999 picks the last (slowest) one


def test_fastest_untried_upstreams_come_first() -> None:
    """srtt 0 means "no answer yet": such an upstream sorts first and gets tried."""
    strategy = Strategy("fastest", rand=fixed(0.0))
    healths = [Health(), Health()]
    healths[0].answered(0.05)
    assert strategy.order(healths)[0] == 1


# --------------------------------------------------------------------------- hypothesis


@given(
    st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=40),
    st.floats(0.0, 1e9),
)
@settings(max_examples=300, deadline=None)
def test_property_backoff_bounds(randoms: list[float], now: float) -> None:
    values = iter(randoms)
    health = Health(rand=lambda: next(values))
    for n in range(1, len(randoms) + 1):
        delay = health.failed(now)
        base = min(MAX_BACKOFF, 2.0 ** (n - 1))
        assert MIN_BACKOFF <= delay <= MAX_BACKOFF
        assert base <= delay <= base * 1.5
        assert health.down_until == now + delay
    assert health.succeeded() is True
    assert health.up


@given(
    st.sampled_from(STRATEGIES),
    st.lists(st.tuples(st.booleans(), st.floats(0.0, 5.0)), max_size=8),
    st.floats(0.0, 1.0, exclude_max=True),
    st.integers(1, 120),
)
@settings(max_examples=300, deadline=None)
def test_property_order_is_a_permutation_of_the_healthy(
    name: str, spec: list[tuple[bool, float]], r: float, calls: int
) -> None:
    strategy = Strategy(name, rand=fixed(r))
    healths = []
    for is_up, rtt in spec:
        health = Health()
        if rtt:
            health.answered(rtt)
        if not is_up:
            health.failed(0.0)
        healths.append(health)
    healthy = [i for i, (is_up, _) in enumerate(spec) if is_up]
    for _ in range(calls):
        assert sorted(strategy.order(healths)) == healthy
