"""Run dns2dot as a real process, the way users do.

Why: the CLI contract (startup line, exit codes, env vars, signals) and the real
event loop are only exercised by a subprocess. stderr goes to a file so tests can
assert on log lines after the fact; teardown stops the process and asserts nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import REPO_ROOT
from .net import LOOPBACK, free_port

#: The startup line begins with this (docs/ARCHITECTURE.md, "At start it logs one line ...").
STARTUP_MARK = "dns2dot: udp+tcp"


def base_env(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment for dns2dot: ours minus any DNS2DOT_*/DNSSERVER, plus ``extra``
    (a variable given as None is left unset).

    Why: a stray variable in the developer's shell must not change what a test runs.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNS2DOT_") and k != "DNSSERVER"}
    # The test upstreams serve unsigned zones under a local root that the built-in trust
    # anchors cannot prove: a test validates only where it says so (a --dnssec flag, or
    # DNS2DOT_DNSSEC in ``extra``, or None there to let a YAML ``dnssec:`` count).
    env["DNS2DOT_DNSSEC"] = "off"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def dns2dot_command(args: Sequence[str], launcher: str = "module") -> list[str]:
    """``python -m dns2dot ARGS`` (``module``) or ``python dnsproxy.py ARGS`` (``script``)."""
    if launcher == "module":
        return [sys.executable, "-m", "dns2dot", *args]
    if launcher == "script":
        return [sys.executable, str(REPO_ROOT / "dnsproxy.py"), *args]
    raise ValueError(f"unknown launcher {launcher!r}")


#: The startup line with ``--log-format json`` contains this (the message field's start).
JSON_STARTUP_MARK = '"message": "udp+tcp '


def startup_line(text: str, mark: str = STARTUP_MARK) -> str | None:
    """The startup line in ``text`` (a log line containing ``mark``, by default
    ``dns2dot: udp+tcp``), if any."""
    for line in text.splitlines():
        if mark in line:
            return line
    return None


@dataclass
class Dns2Dot:
    """A running dns2dot process listening on 127.0.0.1:``port`` (UDP and TCP)."""

    port: int
    argv: list[str]
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    startup: str

    def stderr(self) -> str:
        """Everything it logged so far."""
        return self.stderr_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code (no assertions)."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=timeout)
        return self.proc.poll()


def start_dns2dot(
    log_dir: Path,
    *,
    upstreams: Sequence[str] = (),
    cafile: Path | str | None = None,
    mode: str | None = None,
    extra: Sequence[str] = (),
    env: Mapping[str, str | None] | None = None,
    launcher: str = "module",
    listen_port: int | None = None,
    listen_flag: bool = True,
    ready_timeout: float = 10.0,
    startup_mark: str = STARTUP_MARK,
) -> Dns2Dot:
    """Start dns2dot with ``-l 127.0.0.1:PORT``, one ``-u`` per upstream, ``--cafile``,
    ``--mode`` and ``extra`` flags; wait for the startup line (bounded) and return it.

    ``listen_flag=False`` leaves ``-l`` out (the port then comes from ``env``,
    e.g. ``DNS2DOT_LISTEN``; pass the same ``listen_port``).

    ``startup_mark`` is what the startup line contains (:data:`JSON_STARTUP_MARK` with
    ``--log-format json``).

    Raises RuntimeError with the captured stderr if it exits or stays silent.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    last: str = ""
    for attempt in range(3):  # retry only a lost race for a free port
        port = listen_port if listen_port is not None else free_port()
        args = ["-l", f"{LOOPBACK}:{port}"] if listen_flag else []
        for u in upstreams:
            args += ["-u", u]
        if cafile is not None:
            args += ["--cafile", str(cafile)]
        if mode is not None:
            args += ["--mode", mode]
        args += list(extra)
        argv = dns2dot_command(args, launcher)
        stderr_path = log_dir / f"dns2dot-{port}-{attempt}.stderr"
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=base_env(env),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        runner = Dns2Dot(port=port, argv=argv, proc=proc, stderr_path=stderr_path, startup="")
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            line = startup_line(runner.stderr(), startup_mark)
            if line is not None:
                runner.startup = line
                return runner
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        code = runner.stop()
        last = (
            f"dns2dot did not log {startup_mark!r} within {ready_timeout}s "
            f"(exit code {code}); argv={argv}\n--- output ---\n{runner.stderr()}"
        )
        if listen_port is not None or "in use" not in runner.stderr().lower():
            break
    raise RuntimeError(last)


def log_tail(d: Dns2Dot, lines: int = 30) -> str:
    """The last ``lines`` lines of dns2dot's stderr."""
    return "\n".join(d.stderr().splitlines()[-lines:])


def print_log_tail(d: Dns2Dot, code: int | None, lines: int = 30) -> None:
    """Print the tail of dns2dot's log after it exited with ``code`` (shown when a test fails)."""
    print(f"--- dns2dot {d.argv} (exit {code}) log tail ---\n{log_tail(d, lines)}")


@contextlib.contextmanager
def running_dns2dot(log_dir: Path, **kw: Any) -> Iterator[Dns2Dot]:
    """:func:`start_dns2dot` for a shared (e.g. module-scoped) fixture: on exit stop it
    and print the tail of its log."""
    d = start_dns2dot(log_dir, **kw)
    try:
        yield d
    finally:
        print_log_tail(d, d.stop())


def require_tool(name: str) -> str:
    """Path of the external tool ``name``; a missing tool fails the test (never skips)."""
    path = shutil.which(name)
    if path is None:
        import pytest

        pytest.fail(
            f"required tool {name!r} is not installed (apt: dig=bind9-dnsutils, kdig=knot-dnsutils)"
        )
    return path


def run_dns2dot(
    args: Sequence[str],
    *,
    env: Mapping[str, str | None] | None = None,
    launcher: str = "module",
    timeout: float = 10.0,
) -> subprocess.CompletedProcess[str]:
    """Run dns2dot to completion (for configuration errors); killed after ``timeout``.

    A process that is still running at the deadline is killed and reported with
    ``returncode`` None-equivalent ``-9`` so the test fails on the exit code.
    """
    argv = dns2dot_command(args, launcher)
    proc = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        env=base_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
        err += f"\n[test harness: still running after {timeout}s, killed]"
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
