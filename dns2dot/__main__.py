"""``python -m dns2dot``: the same as the ``dns2dot`` command."""

import sys

from dns2dot.cli import main

if __name__ == "__main__":
    sys.exit(main())
