"""``python -m bench.hotpath --doh``: the yardstick for the DoH upstream's own cost.

Why: the DoH path's speed is measured with it (an in-process HTTP/2 server on a
socketpair); this proves it runs the real path end to end. No timing is asserted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_hotpath_measures_the_doh_path() -> None:
    """Every query is answered through DohConnection (it exits non-zero if any failed)."""
    argv = [sys.executable, "-m", "bench.hotpath", "--doh", "--queries", "600", "--rounds", "2"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"dns2dot CPU per query: min [\d.]+ us", proc.stdout), proc.stdout
