"""A real DoT upstream: unbound serving a small static zone over TLS on loopback.

Why: the integration tests must prove dns2dot against a real DoT server (the one
the bench uses), not only against our own fake. Config follows PEERS.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import dns.message
import dns.query
import dns.rcode

from .net import LOOPBACK, free_port
from .pki import TLS_NAME, Pki

ZONE = "example.test."

#: Number of ``n<i>.example.test`` names (for pipelining and dnsperf).
N_NAMES = 1000

#: TXT strings of ``big.example.test``: 40 records of 60 bytes, about 2.9 kB on the
#: wire: more than 512 and more than 1232, less than 4096.
BIG_TXT = [f"record-{i:02d}-" + "x" * 50 for i in range(40)]

#: Static records: name -> {type: [rdata text]}.
RECORDS: dict[str, dict[str, list[str]]] = {
    "a.example.test.": {"A": ["192.0.2.10"], "AAAA": ["2001:db8::10"]},
    "www.example.test.": {"A": ["192.0.2.11"]},
    "example.test.": {"MX": ["10 mail.example.test."], "A": ["192.0.2.1"]},
    "mail.example.test.": {"A": ["192.0.2.25"]},
    "nodata.example.test.": {"A": ["192.0.2.30"]},
    "big.example.test.": {"TXT": [f'"{t}"' for t in BIG_TXT]},
}


def n_address(i: int) -> str:
    """The A address of ``n<i>.example.test``: unique per name, so answers can't be mixed up."""
    return f"10.1.{i >> 8}.{i & 255}"


def _service_lines(
    directory: Path, port: int, pki: Pki, extra: list[str] | None = None
) -> list[str]:
    """The ``server:`` lines every unbound here starts with: DoT on loopback with the
    throwaway CA's certificate, no recursion to the internet. ``extra`` lines go right
    after the DoT service."""
    return [
        "server:",
        '    username: ""',
        '    chroot: ""',
        f'    directory: "{directory}"',
        f'    pidfile: "{directory}/unbound.pid"',
        "    use-syslog: no",
        '    logfile: ""',
        "    verbosity: 1",
        "    num-threads: 1",
        f"    interface: {LOOPBACK}@{port}",
        f"    tls-port: {port}",
        *(extra or []),
        f'    tls-service-key: "{pki.good.key}"',
        f'    tls-service-pem: "{pki.good.cert}"',
        "    do-ip6: no",
        "    access-control: 127.0.0.0/8 allow",
        "    incoming-num-tcp: 1000",
        "    num-queries-per-thread: 4096",
        '    module-config: "iterator"',
        # Never recurse to the internet: anything outside our zones is answered locally.
        '    local-zone: "." static',
    ]


def _config_lines(
    directory: Path, port: int, pki: Pki, extra_service: list[str] | None = None
) -> list[str]:
    """unbound's configuration; ``extra_service`` lines go right after the DoT service."""
    lines = _service_lines(directory, port, pki, extra_service)
    lines.append(f'    local-zone: "{ZONE}" static')
    for name, types in RECORDS.items():
        for rtype, rdatas in types.items():
            for rdata in rdatas:
                lines.append(f"    local-data: '{name} 300 IN {rtype} {rdata}'")
    lines.append(f'    local-data: "{ZONE} 300 IN SOA ns.{ZONE} host.{ZONE} 1 3600 600 86400 300"')
    for i in range(N_NAMES):
        lines.append(f'    local-data: "n{i}.{ZONE} 300 IN A {n_address(i)}"')
    lines += ["remote-control:", "    control-enable: no", ""]
    return lines


def auth_zone_config(directory: Path, port: int, pki: Pki, zones: dict[str, Path]) -> str:
    """unbound's configuration serving ``zones`` (origin -> zone file) as ``auth-zone``
    over DoT on loopback, answering nothing else."""
    lines = _service_lines(directory, port, pki)
    lines += [f'    local-zone: "{origin}" transparent' for origin in zones]
    for origin, path in zones.items():
        lines += [
            "auth-zone:",
            f'    name: "{origin}"',
            f'    zonefile: "{path}"',
            "    for-downstream: yes",
            "    for-upstream: no",
        ]
    lines += ["remote-control:", "    control-enable: no", ""]
    return "\n".join(lines)


def dot_spec(port: int) -> str:
    """The dns2dot ``-u`` value for DoT on loopback: ``127.0.0.1:PORT#dns.test``."""
    return f"{LOOPBACK}:{port}#{TLS_NAME}"


def dot_query(
    pki: Pki, port: int, name: str, rdtype: str = "A", timeout: float = 3.0
) -> dns.message.Message:
    """Ask a DoT server on loopback over verified TLS (dnspython), bypassing dns2dot."""
    return dns.query.tls(
        dns.message.make_query(name, rdtype),
        LOOPBACK,
        port=port,
        timeout=timeout,
        ssl_context=pki.client_context(),
        server_hostname=TLS_NAME,
    )


@dataclass
class UnboundUpstream:
    """A running ``unbound -d`` serving DoT on 127.0.0.1:``port`` with the ``dns.test`` cert."""

    port: int
    directory: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    pki: Pki
    _log: IO[bytes] | None = field(repr=False, default=None)

    @property
    def spec(self) -> str:
        """The dns2dot ``-u`` value for this upstream: ``127.0.0.1:PORT#dns.test``."""
        return dot_spec(self.port)

    def query(self, name: str, rdtype: str = "A", timeout: float = 3.0) -> dns.message.Message:
        """Ask unbound directly over verified TLS (dnspython), bypassing dns2dot."""
        return dot_query(self.pki, self.port, name, rdtype, timeout)

    def log(self) -> str:
        """unbound's stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL after 5 s."""
        stop_process(self.proc, self._log)


def stop_process(proc: subprocess.Popen[bytes], log: IO[bytes] | None) -> None:
    """SIGTERM ``proc`` by pid, SIGKILL after 5 s; then close its ``log``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if log is not None:
        log.close()


def unbound_exe(purpose: str = "the real DoT upstream") -> str:
    """The unbound binary; RuntimeError (which fails the test) if it is not installed."""
    exe = shutil.which("unbound")
    if exe is None:
        raise RuntimeError(f"unbound is not installed (needed for {purpose})")
    return exe


def launch_unbound(
    exe: str, directory: Path, config: str, log_mode: str = "wb"
) -> tuple[subprocess.Popen[bytes], IO[bytes], Path]:
    """Write ``directory/unbound.conf`` and start ``unbound -d`` on it, logging to
    ``directory/unbound.log``; returns the process, the open log and its path."""
    conf = directory / "unbound.conf"
    conf.write_text(config)
    log_path = directory / "unbound.log"
    log = open(log_path, log_mode)  # noqa: SIM115 (closed by stop_process())
    proc = subprocess.Popen(
        [exe, "-d", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "LC_ALL": "C"},
    )
    return proc, log, log_path


def start_unbound(
    directory: Path, pki: Pki, port: int | None = None, ready_timeout: float = 15.0
) -> UnboundUpstream:
    """Write the config, start ``unbound -d -c FILE`` and wait until it answers over TLS.

    Raises RuntimeError (which fails the test) if unbound is missing or never answers.
    """
    exe = unbound_exe()
    directory.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for _attempt in range(3):  # a port race with another process is possible: retry
        p = port if port is not None else free_port()
        config = "\n".join(_config_lines(directory, p, pki))
        proc, log, log_path = launch_unbound(exe, directory, config)
        up = UnboundUpstream(
            port=p, directory=directory, proc=proc, log_path=log_path, pki=pki, _log=log
        )
        deadline = time.monotonic() + ready_timeout
        for _ in range(200):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            try:
                r = up.query("a.example.test.", timeout=1.0)
                if r.rcode() == dns.rcode.NOERROR and r.answer:
                    return up
                last_error = RuntimeError(f"unexpected answer from unbound: {r}")
            except Exception as exc:
                last_error = exc
            time.sleep(0.1)
        up.stop()
        last_error = RuntimeError(
            f"unbound did not answer on port {p} (exit={proc.poll()}, "
            f"last error={last_error!r}):\n{up.log()}"
        )
        if port is not None:
            break
    assert last_error is not None
    raise last_error


def start_auth_unbound(
    directory: Path, pki: Pki, zones: dict[str, str], ready_name: str, ready_timeout: float = 15.0
) -> UnboundUpstream:
    """unbound serving ``zones`` (origin -> zone-file text, e.g. signed by dnspython) as
    ``auth-zone`` over DoT on loopback, answering nothing else; waits for ``ready_name``.

    The zones' RRSIGs and NSEC records go to clients that set DO, as from any
    authoritative server. Raises RuntimeError (which fails the test) if it never answers.
    """
    exe = unbound_exe("the signed-zone upstream")
    directory.mkdir(parents=True, exist_ok=True)
    for origin, text in zones.items():
        (directory / f"{origin}zone").write_text(text)
    last: Exception | None = None
    for _attempt in range(3):  # a port race with another process is possible: retry
        port = free_port()
        paths = {origin: directory / f"{origin}zone" for origin in zones}
        config = auth_zone_config(directory, port, pki, paths)
        proc, log, log_path = launch_unbound(exe, directory, config)
        up = UnboundUpstream(
            port=port, directory=directory, proc=proc, log_path=log_path, pki=pki, _log=log
        )
        deadline = time.monotonic() + ready_timeout
        for _ in range(200):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            try:
                if up.query(ready_name, timeout=1.0).answer:
                    return up
            except Exception as exc:
                last = exc
            time.sleep(0.1)
        up.stop()
        last = RuntimeError(f"unbound auth-zone did not answer (last error={last!r}):\n{up.log()}")
    assert last is not None
    raise last
