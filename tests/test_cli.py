"""The serving process's own settings that no listener test can see from outside."""

from __future__ import annotations

import json
import subprocess
import sys


def test_tune_gc_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    """Run in a child process: the collector's settings are global to the interpreter."""
    code = (
        "import gc, json\n"
        "from dns2dot.cli import GC_YOUNG_THRESHOLD, tune_gc\n"
        "before = gc.get_threshold()\n"
        "tune_gc()\n"
        "after = gc.get_threshold()\n"
        "print(json.dumps([GC_YOUNG_THRESHOLD, before, after, gc.get_freeze_count()]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    threshold, before, after, frozen = json.loads(out)
    assert after == [threshold, *before[1:]]
    assert threshold > before[0]
    # Every module dns2dot imported is out of the collector's way.
    assert frozen > 10_000
