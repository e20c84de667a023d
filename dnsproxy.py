#!/usr/bin/env python3
"""``python dnsproxy.py``: the launcher the earliest container ran; the same as ``dns2dot``."""

import sys

from dns2dot.cli import main

if __name__ == "__main__":
    sys.exit(main())
