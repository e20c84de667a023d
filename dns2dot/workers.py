"""``--workers N``: several serving processes on the same addresses, supervised.

Every worker binds sockets of its own with ``SO_REUSEPORT`` (UDP too: tornado's
``reuse_port`` is TCP only, see docs/ARCHITECTURE.md), so the kernel spreads clients over the
processes and the GIL stops being the ceiling. The parent only supervises: it forwards
SIGTERM/SIGINT/SIGHUP, restarts a worker that dies (unless they die in a loop), and logs the
startup line once every worker is listening.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from types import FrameType

from dns2dot.config import Config, ListenAddress

log = logging.getLogger("dns2dot")

READY_TIMEOUT = 30.0
RESTART_WINDOW = 30.0  # seconds
MAX_RESTARTS = 5  # within RESTART_WINDOW, before the supervisor gives up

RunWorker = Callable[[Config, int, Callable[[list[ListenAddress]], None]], int]


def fixed_ports(addresses: tuple[ListenAddress, ...]) -> tuple[ListenAddress, ...]:
    """Replace port 0 by a free port, so that every worker binds the same one."""
    fixed = []
    for address in addresses:
        if address.port == 0:
            family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((address.host, 0))
                address = ListenAddress(address.host, probe.getsockname()[1])
        fixed.append(address)
    return tuple(fixed)


def supervise(
    config: Config, run_worker: RunWorker, announce: Callable[[list[ListenAddress]], None]
) -> int:
    """Fork ``config.workers`` workers and look after them until told to stop."""
    config = replace(config, listen=fixed_ports(config.listen))
    ready_read, ready_write = os.pipe()
    children: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(ready_read)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)

                def ready(_: list[ListenAddress]) -> None:
                    os.write(ready_write, b".")

                code = run_worker(config, index, ready)
            finally:
                os._exit(code)
        children[pid] = index

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def reload(signum: int, frame: FrameType | None) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    for index in range(config.workers):
        spawn(index)

    ready = 0
    deadline = time.monotonic() + READY_TIMEOUT
    while ready < config.workers and not stopping:
        readable, _, _ = select.select([ready_read], [], [], 0.2)
        if readable:
            ready += len(os.read(ready_read, config.workers))
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            children.pop(pid, None)
            stop(signal.SIGTERM, None)
            _reap(children)
            code = os.waitstatus_to_exitcode(status)
            return code if code > 0 else 1
        if time.monotonic() > deadline:
            log.error("workers did not start listening within %.0f s", READY_TIMEOUT)
            stop(signal.SIGTERM, None)
            _reap(children)
            return 1
    if not stopping:
        announce(list(config.listen))

    restarts: deque[float] = deque()
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, -1)
        if stopping or index < 0:
            continue
        now = time.monotonic()
        while restarts and now - restarts[0] > RESTART_WINDOW:
            restarts.popleft()
        code = os.waitstatus_to_exitcode(status)
        if len(restarts) >= MAX_RESTARTS:
            log.error("worker %d keeps dying (last exit %s): stopping", index, code)
            stop(signal.SIGTERM, None)
            _reap(children)
            return 1
        restarts.append(now)
        log.warning("worker %d (pid %d) exited with %s: restarting it", index, pid, code)
        spawn(index)
    os.close(ready_read)
    os.close(ready_write)
    return 0


def _reap(children: dict[int, int]) -> None:
    """Wait for the given workers to exit (they were sent SIGTERM), bounded."""
    deadline = time.monotonic() + 10.0
    while children and time.monotonic() < deadline:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid:
            children.pop(pid, None)
        else:
            time.sleep(0.05)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
