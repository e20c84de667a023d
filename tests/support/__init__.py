"""Test helpers for dns2dot: PKI, upstreams (real unbound and an in-process fake),
a wire-recording proxy, a dns2dot process runner and small DNS query helpers.

Everything here talks to loopback only, and every wait is bounded in count and time.
"""

from __future__ import annotations

from pathlib import Path

#: Repository root (the directory holding ``dns2dot/`` and ``dnsproxy.py``).
REPO_ROOT: Path = Path(__file__).resolve().parents[2]

__all__ = ["REPO_ROOT"]
