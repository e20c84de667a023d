"""Logging: text or JSON lines on stderr, and no floods of the same line.

Query names are private: they are logged only with ``--log-queries``. A message
repeated within :data:`REPEAT_WINDOW` seconds (an upstream down, a client sending
garbage) is shown once, and the next time it passes, with the count suppressed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

REPEAT_WINDOW = 10.0  # seconds
_MAX_TRACKED = 1024


class RepeatFilter(logging.Filter):
    """Lets a given (logger, message) pair through at most once per window."""

    def __init__(self, window: float = REPEAT_WINDOW, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window = window
        self._clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        now = self._clock()
        last, suppressed = self._seen.get(key, (float("-inf"), 0))
        if now - last < self.window:
            self._seen[key] = (last, suppressed + 1)
            return False
        if len(self._seen) >= _MAX_TRACKED:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if suppressed:
            record.msg = f"{record.getMessage()} (and {suppressed} more like it)"
            record.args = ()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(verbose: bool = False, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(name)s: %(message)s")
    handler.setFormatter(formatter)
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # tornado's and asyncio's warnings repeat, less clearly, what dns2dot already says
    # (TLS failures); their errors (an exception in a callback) must still show.
    for name in ("tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)
    # h2 and hpack log every frame and header at DEBUG: far too much even for -v.
    for name in ("h2", "hpack"):
        logging.getLogger(name).setLevel(logging.WARNING)
