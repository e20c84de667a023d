"""Running in-process socket tests on both event loops dns2dot may use.

Why: the splice and the pool session drive sockets from the loop's readiness
callbacks, whose behaviour differs in detail between asyncio's selector loop and
uvloop (what dns2dot runs on), so those tests run on each; every run is bounded.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(loop_name: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """``main()`` on a fresh loop of that name, for at most 30 s."""
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        return runner.run(asyncio.wait_for(main(), 30))


def read_to_end(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until end of stream (blocking, 20 s per read)."""
    sock.settimeout(20)
    parts: list[bytes] = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    return b"".join(parts)
