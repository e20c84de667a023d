"""Starting and, above all, stopping every process the harness runs.

Each child gets its own process group (so socat's forked children and dnsdist's threads
go with it), a log file, and PR_SET_PDEATHSIG so it dies with the harness even when the
harness itself is killed hard. ``Registry.stop_all`` stops them by pid/pgid, never by
name, and is called from a ``finally`` that SIGTERM/SIGHUP also reach.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class Interrupted(BaseException):
    """Raised in the main thread by SIGTERM/SIGHUP so ``finally`` blocks run."""


class StartError(RuntimeError):
    """A process did not start or did not become ready; the message says why."""


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGTERM the child when the harness goes away."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Proc:
    """One started process, its log and the command that started it."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    argv: list[str]
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The end of the log, for error messages that say why something failed."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_log(self, needle: str, timeout: float) -> float:
        """Wait until ``needle`` appears in the log; return seconds since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if needle in self.log.read_text(errors="replace"):
                    return time.monotonic() - self.started
            if not self.alive():
                raise StartError(
                    f"{self.name} exited with {self.popen.returncode} before printing "
                    f"{needle!r}; log {self.log}:\n{self.log_tail()}"
                )
            time.sleep(0.02)
        raise StartError(
            f"{self.name} did not print {needle!r} within {timeout:.0f}s; "
            f"log {self.log}:\n{self.log_tail()}"
        )


class Registry:
    """Every process the harness started, so that all of them can be stopped."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.history: list[dict[str, object]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        """Start ``argv`` in a new session, stdout and stderr into ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        runs = sum(1 for h in self.history if h["name"] == name)
        log = self.log_dir / (f"{name}.log" if runs == 0 else f"{name}.{runs + 1}.log")
        with open(log, "wb") as out:
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise StartError(f"{name}: cannot run {argv[0]}: {exc}") from exc
        proc = Proc(name=name, popen=popen, log=log, argv=list(argv))
        self.procs.append(proc)
        self.history.append({"name": name, "pid": popen.pid, "argv": list(argv), "log": str(log)})
        return proc

    def run(
        self,
        name: str,
        argv: Sequence[str],
        timeout: float,
        tick: Callable[[], None] | None = None,
        tick_every: float = 1.0,
    ) -> tuple[int, str]:
        """Run a short-lived command (dnsperf) to completion; kill its group past ``timeout``.

        ``tick`` is called about every ``tick_every`` seconds meanwhile (RSS sampling), in
        this thread: the harness starts no threads, so forking children stays safe.
        """
        proc = self.start(name, argv)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    rc = proc.popen.wait(
                        timeout=tick_every if tick else max(0.0, deadline - time.monotonic())
                    )
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        self.stop(proc)
                        text = proc.log.read_text(errors="replace")
                        return -1, text + f"\n[bench] killed after {timeout:.0f}s\n"
                    if tick:
                        tick()
        finally:
            if not proc.alive():
                self._forget(proc)
        return rc, proc.log.read_text(errors="replace")

    def _forget(self, proc: Proc) -> None:
        if proc in self.procs:
            self.procs.remove(proc)

    def stop(self, proc: Proc, grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL it after ``grace`` seconds."""
        pgid = proc.pid  # start_new_session made the child its own group leader
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            try:
                proc.popen.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # the leader may be gone while forked children (socat) linger in the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        self._forget(proc)

    def stop_all(self) -> None:
        """Stop everything still registered, newest first (clients before servers)."""
        for proc in list(reversed(self.procs)):
            self.stop(proc, grace=3.0)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``Interrupted`` (SIGINT already raises)."""

    def handler(signum: int, _frame: object) -> None:
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM/SIGHUP while cleaning up, so a second Ctrl-C cannot leave
    servers running half-stopped; the children are in their own groups, unaffected."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (servers here listen on both)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return int(port)
    raise StartError("no free port pair on 127.0.0.1")


def raise_nofile(wanted: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE toward ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (dns2dot --workers forks), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def tree_rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` plus its descendants, in KiB; None once the process is gone."""
    own = _status_kib(pid, "VmRSS")
    if own is None:
        return None
    return own + sum(_status_kib(k, "VmRSS") or 0 for k in descendants(pid))


def tree_fd_count(pid: int) -> int:
    """Open descriptors of ``pid`` and its descendants (to see accepted connections)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total
