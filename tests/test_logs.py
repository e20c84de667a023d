"""Unit tests for :mod:`dns2dot.logs`: repeat suppression (clock injected) and JSON lines."""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from collections.abc import Iterator

import pytest

from dns2dot.logs import REPEAT_WINDOW, JsonFormatter, RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def captured(
    request: pytest.FixtureRequest, clock: Clock
) -> Iterator[tuple[logging.Logger, ListHandler]]:
    """A private logger whose handler carries a RepeatFilter on the test's clock."""
    logger = logging.getLogger(f"dns2dot.test_logs.{request.node.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = ListHandler()
    handler.addFilter(RepeatFilter(window=10.0, clock=clock))
    logger.addHandler(handler)
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)


# --------------------------------------------------------------------------- RepeatFilter


def test_same_warning_suppressed_within_window_then_counted(
    captured: tuple[logging.Logger, ListHandler], clock: Clock
) -> None:
    log, handler = captured
    log.warning("upstream %s down", "1.1.1.1")
    for step in (1.0, 2.0, 9.9):
        clock.now = 5000.0 + step
        log.warning("upstream %s down", "1.1.1.1")
    assert handler.messages == ["upstream 1.1.1.1 down"]
    clock.now = 5010.0
    log.warning("upstream %s down", "1.1.1.1")
    assert handler.messages == [
        "upstream 1.1.1.1 down",
        "upstream 1.1.1.1 down (and 3 more like it)",
    ]
    # The window starts again from the last time it was shown, and the count resets.
    clock.now = 5015.0
    log.warning("upstream %s down", "1.1.1.1")
    clock.now = 5020.0
    log.warning("upstream %s down", "1.1.1.1")
    assert handler.messages[2:] == ["upstream 1.1.1.1 down (and 1 more like it)"]
    clock.now = 5040.0
    log.warning("upstream %s down", "1.1.1.1")
    assert handler.messages[3:] == ["upstream 1.1.1.1 down"]


def test_shown_again_after_window_without_repeats(
    captured: tuple[logging.Logger, ListHandler], clock: Clock
) -> None:
    log, handler = captured
    log.error("boom")
    clock.now += 10.0
    log.error("boom")
    assert handler.messages == ["boom", "boom"]


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_info_and_debug_never_suppressed(
    captured: tuple[logging.Logger, ListHandler], level: int
) -> None:
    log, handler = captured
    for _ in range(5):
        log.log(level, "chatty %d", 1)
    assert handler.messages == ["chatty 1"] * 5


@pytest.mark.parametrize("level", [logging.WARNING, logging.ERROR, logging.CRITICAL])
def test_warning_and_above_suppressed(
    captured: tuple[logging.Logger, ListHandler], level: int
) -> None:
    log, handler = captured
    for _ in range(5):
        log.log(level, "loud")
    assert handler.messages == ["loud"]


def test_different_messages_independent(
    captured: tuple[logging.Logger, ListHandler], clock: Clock
) -> None:
    log, handler = captured
    log.warning("upstream %s down", "1.1.1.1")
    log.warning("upstream %s down", "1.0.0.1")  # other arguments: another message
    log.warning("client sent garbage")
    log.warning("upstream %s down", "1.1.1.1")
    log.warning("client sent garbage")
    assert handler.messages == [
        "upstream 1.1.1.1 down",
        "upstream 1.0.0.1 down",
        "client sent garbage",
    ]
    clock.now += 10.0
    log.warning("upstream %s down", "1.0.0.1")
    log.warning("client sent garbage")
    assert handler.messages[3:] == [
        "upstream 1.0.0.1 down",
        "client sent garbage (and 1 more like it)",
    ]


def test_same_message_from_different_loggers_independent(clock: Clock) -> None:
    flt = RepeatFilter(window=10.0, clock=clock)
    one = logging.LogRecord("dns2dot.a", logging.WARNING, __file__, 1, "same", None, None)
    two = logging.LogRecord("dns2dot.b", logging.WARNING, __file__, 1, "same", None, None)
    again = logging.LogRecord("dns2dot.a", logging.WARNING, __file__, 1, "same", None, None)
    assert flt.filter(one)
    assert flt.filter(two)
    assert not flt.filter(again)


def test_suppressed_count_message_keeps_percent_signs(clock: Clock) -> None:
    flt = RepeatFilter(window=10.0, clock=clock)
    first = logging.LogRecord("x", logging.WARNING, __file__, 1, "%d%% lost", (50,), None)
    assert flt.filter(first)
    assert not flt.filter(
        logging.LogRecord("x", logging.WARNING, __file__, 1, "%d%% lost", (50,), None)
    )
    clock.now += 11
    later = logging.LogRecord("x", logging.WARNING, __file__, 1, "%d%% lost", (50,), None)
    assert flt.filter(later)
    assert later.getMessage() == "50% lost (and 1 more like it)"


def test_default_window_and_clock() -> None:
    assert REPEAT_WINDOW == 10.0
    flt = RepeatFilter()
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "once", None, None)
    assert flt.filter(record)
    assert not flt.filter(logging.LogRecord("x", logging.WARNING, __file__, 1, "once", None, None))


# --------------------------------------------------------------------------- JsonFormatter


def json_formatter() -> JsonFormatter:
    formatter = JsonFormatter()
    formatter.converter = time.gmtime  # as setup_logging does
    return formatter


def test_json_formatter_fields() -> None:
    record = logging.LogRecord(
        "dns2dot.upstream", logging.WARNING, __file__, 1, "upstream %s: %s", ("a", "é"), None
    )
    line = json_formatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert set(entry) == {"time", "level", "logger", "message"}
    assert entry["level"] == "warning"
    assert entry["logger"] == "dns2dot.upstream"
    assert entry["message"] == "upstream a: é"
    stamp = datetime.datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.UTC
    )
    created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    assert abs((stamp - created).total_seconds()) < 0.002


@pytest.mark.parametrize(
    ("level", "name"),
    [(logging.DEBUG, "debug"), (logging.INFO, "info"), (logging.ERROR, "error")],
)
def test_json_formatter_levels(level: int, name: str) -> None:
    record = logging.LogRecord("x", level, __file__, 1, "m", None, None)
    assert json.loads(json_formatter().format(record))["level"] == name


def test_json_formatter_escapes_hostile_text() -> None:
    message = 'quote " backslash \\ newline \n tab \t nul \x00 end'
    record = logging.LogRecord("x", logging.INFO, __file__, 1, message, None, None)
    line = json_formatter().format(record)
    assert "\n" not in line
    assert json.loads(line)["message"] == message


def test_json_formatter_exception() -> None:
    try:
        raise ValueError("bad thing")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = json_formatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed"
    assert "ValueError: bad thing" in entry["exception"]
    assert "Traceback" in entry["exception"]
