"""Configurations and launchers for the DoT and DoH upstreams, the peers and dns2dot.

The configurations are the ones in shared/PEERS.md (the fair, working setups the figures
there came from), with three loopback-only additions: socat binds 127.0.0.1, dnsdist's
security polling is off, and the upstreams refuse every name outside the bench zone, so
no query can ever leave the machine; and two documented dnsdist tunings (see
:func:`_dnsdist_conf`). The DoH upstream is a second unbound serving the
same zone with ``https-port`` (PEERS.md, "For DoH as well"); dnsdist reaches it with
``dohPath`` and dns2dot with ``-u https://127.0.0.1:PORT/dns-query#dns.test``. For the
cache workload the unbound forwarder runs with its cache on (PEERS.md's three
``*-cache-size: 0`` lines dropped, the caches sized to hold the zone, remote-control on
loopback for its counters).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .pki import Pki
from .probe import ProbeError, wait_answering
from .procs import Proc, Registry, StartError, free_port
from .zone import ZoneFiles

REPO = Path(__file__).resolve().parent.parent
DNS2DOT_READY = "dns2dot: udp+tcp"
DOH_PATH = "/dns-query"
START_TIMEOUT = 30.0


@dataclass
class Server:
    """A started (or failed) server: where it listens and what it speaks."""

    key: str
    label: str
    transports: tuple[str, ...]
    port: int
    proc: Proc | None = None
    error: str | None = None
    ready_s: float | None = None
    argv: list[str] = field(default_factory=list)
    # cache hits and misses so far, for servers started with their cache on (None: unknown)
    counts: Callable[[], tuple[int, int] | None] | None = None
    # seconds to wait after a run before ``counts`` reflects it
    counts_settle: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.proc is not None and self.proc.alive()

    def summary(self) -> dict[str, object]:
        return {
            "key": self.key,
            "label": self.label,
            "transports": list(self.transports),
            "port": self.port,
            "pid": self.proc.pid if self.proc else None,
            "ready_s": self.ready_s,
            "error": self.error,
            "argv": self.argv,
            "log": str(self.proc.log) if self.proc else None,
        }


def _upstream_conf(work: Path, pki: Pki, zone: ZoneFiles, port: int, *, https: bool = False) -> str:
    """unbound serving the zone over DoT on ``port`` (PEERS.md), or over DoH with ``https``
    (``https-port``: HTTP/2 at ``/dns-query``; Debian's unbound is built with nghttp2)."""
    service = f"https-port: {port}" if https else f"tls-port: {port}"
    return f"""server:
    username: ""
    chroot: ""
    directory: "{work}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    num-threads: 1
    interface: 127.0.0.1@{port}
    {service}
    tls-service-key: "{pki.key_pem}"
    tls-service-pem: "{pki.cert_pem}"
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    incoming-num-tcp: 1000
    num-queries-per-thread: 4096
    module-config: "iterator"
    # loopback only: nothing outside the bench zone is ever looked up
    local-zone: "." refuse
remote-control:
    control-enable: no
include: "{zone.local_data}"
"""


# unbound's default caches (4 MB each) hold about a quarter of the bench zone's answers:
# with them the cache workload would measure unbound mostly on misses. Sized like
# dns2dot's --cache-size there, both caches hold every answer of the default zone.
FWD_CACHE_LINES = (
    "msg-cache-size: 64m",
    "rrset-cache-size: 128m",
)


def _forwarder_conf(
    work: Path, pki: Pki, port: int, uport: int, *, cache: bool = False, control_port: int = 0
) -> str:
    """PEERS.md's unbound forwarder: caches at 0, or with ``cache`` the three
    ``*-cache-size: 0`` lines dropped, the caches sized to hold the zone and
    remote-control on ``control_port`` (loopback, no certificates) for its hit counters."""
    if cache:
        caches = "\n    ".join(FWD_CACHE_LINES)
        control = f"""control-enable: yes
    control-interface: 127.0.0.1
    control-port: {control_port}
    control-use-cert: no"""
    else:
        caches = "msg-cache-size: 0\n    rrset-cache-size: 0\n    key-cache-size: 0"
        control = "control-enable: no"
    return f"""server:
    username: ""
    chroot: ""
    directory: "{work}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    num-threads: 1
    interface: 127.0.0.1@{port}
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    incoming-num-tcp: 1000
    num-queries-per-thread: 4096
    module-config: "iterator"
    tls-cert-bundle: "{pki.ca_pem}"
    do-not-query-localhost: no
    local-zone: "test." nodefault
    {caches}
remote-control:
    {control}
forward-zone:
    name: "."
    forward-tls-upstream: yes
    forward-addr: 127.0.0.1@{uport}#{pki.name}
"""


def validating_forwarder_conf(
    work: Path, pki: Pki, port: int, uport: int, anchor: Path, *, cache: str = "off"
) -> str:
    """unbound as a validating forwarder (the dnssec workload's peer): the validator
    with ``anchor`` as its trust anchor file, forwarding over DoT to ``uport``.

    ``cache`` "off": the message and RRset caches at 0 (unbound keeps the smallest it
    can), no negative cache and no aggressive use of NSEC (RFC 8198), so every answer's
    signatures are checked again; "rrset": only the message cache at 0 (validated RRsets
    are kept with their verdict, which is what dns2dot's memo of validated answers
    does); "on": the throughput forwarder's cache sizes. The key cache stays on in all
    three, as dns2dot's does: the chain of trust is not an answer."""
    caches = {
        "off": "msg-cache-size: 0\n    rrset-cache-size: 0\n    neg-cache-size: 0\n"
        "    aggressive-nsec: no",
        "rrset": "msg-cache-size: 0\n    neg-cache-size: 0\n    aggressive-nsec: no",
        "on": "\n    ".join(FWD_CACHE_LINES),
    }[cache]
    return f"""server:
    username: ""
    chroot: ""
    directory: "{work}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    num-threads: 1
    interface: 127.0.0.1@{port}
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    incoming-num-tcp: 1000
    num-queries-per-thread: 4096
    module-config: "validator iterator"
    trust-anchor-file: "{anchor}"
    tls-cert-bundle: "{pki.ca_pem}"
    do-not-query-localhost: no
    local-zone: "test." nodefault
    {caches}
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-tls-upstream: yes
    forward-addr: 127.0.0.1@{uport}#{pki.name}
"""


def _stubby_conf(pki: Pki, port: int, uport: int) -> str:
    return f"""resolution_type: GETDNS_RESOLUTION_STUB
dns_transport_list: [GETDNS_TRANSPORT_TLS]
tls_authentication: GETDNS_AUTHENTICATION_REQUIRED
tls_query_padding_blocksize: 128
edns_client_subnet_private: 1
idle_timeout: 10000
tls_ca_file: "{pki.ca_pem}"
listen_addresses: [127.0.0.1@{port}]
upstream_recursive_servers:
  - address_data: 127.0.0.1
    tls_port: {uport}
    tls_auth_name: "{pki.name}"
"""


def _dnsdist_conf(
    pki: Pki, port: int, uport: int, check_name: str, doh_path: str | None = None
) -> str:
    """PEERS.md's dnsdist; with ``doh_path`` the backend is DoH (dnsdist 1.7 ``dohPath``).

    Two documented tunings on top, so dnsdist is not measured below what a user would
    get from it. ``maxInFlight`` lets a TCP client's queries be answered out of order
    (dnsdist's "out-of-order" guide; without it dnsdist works one query at a time per
    client connection, which with a DoH backend meant 230 q/s). For a DoH backend,
    four outgoing DoH workers (``setOutgoingDoHWorkerThreads``, 1.7's tuning reference):
    dnsdist 1.7 sets no TCP_NODELAY on its backend connections (pdns PR #11734, in 1.8.0),
    so each DoH round trip waits ~40 ms on Nagle and a delayed ACK, and more connections
    are its only way around that (UDP 2.1k -> 3.5k, TCP 2.3k -> 2.8k q/s on this machine).
    """
    doh = f', dohPath="{doh_path}"' if doh_path else ""
    workers = "setOutgoingDoHWorkerThreads(4)\n" if doh_path else ""
    return f"""setSecurityPollSuffix("")
{workers}setLocal("127.0.0.1:{port}", {{maxInFlight=100}})
setACL({{"127.0.0.0/8"}})
newServer({{address="127.0.0.1:{uport}", tls="openssl", subjectName="{pki.name}",
           caStore="{pki.ca_pem}", validateCertificates=true, checkName="{check_name}"{doh}}})
"""


def _await(server: Server, probe_name: str, pki: Pki, timeout: float = START_TIMEOUT) -> Server:
    """Probe each transport the server speaks; any failure is recorded, loudly."""
    assert server.proc is not None
    proc = server.proc
    try:
        waited = 0.0
        for transport in server.transports:
            waited += wait_answering(
                transport,
                server.port,
                probe_name,
                timeout,
                ca=pki.ca_pem,
                tls_name=pki.name,
                alive=proc.alive,
            )
        server.ready_s = waited
    except ProbeError as exc:
        server.error = f"{server.label} does not answer: {exc}; log {proc.log}:\n{proc.log_tail()}"
    return server


def _launch(
    registry: Registry,
    server: Server,
    argv: list[str],
    probe_name: str,
    pki: Pki,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    server.argv = argv
    try:
        server.proc = registry.start(server.key, argv, cwd=cwd, env=env)
    except StartError as exc:
        server.error = str(exc)
        return server
    return _await(server, probe_name, pki)


def start_upstream(
    registry: Registry,
    work: Path,
    pki: Pki,
    zone: ZoneFiles,
    port: int | None = None,
    key: str = "upstream",
    *,
    https: bool = False,
) -> Server:
    """unbound serving the zone over DoT (the ceiling, and everyone's upstream), or
    with ``https`` over DoH (the DoH ceiling, and the DoH peers' upstream)."""
    port = port or free_port()
    conf = work / f"{key}.conf"
    conf.write_text(_upstream_conf(work, pki, zone, port, https=https))
    if https:
        server = Server(key, "unbound DoH upstream", ("doh",), port)
    else:
        server = Server(key, "unbound DoT upstream", ("dot",), port)
    return _launch(registry, server, ["unbound", "-d", "-c", str(conf)], zone.probe_name, pki)


def doh_url(pki: Pki, port: int) -> str:
    """The DoH upstream's URL as dnsperf takes it (``-O doh-uri=``): name, port and path."""
    return f"https://{pki.name}:{port}{DOH_PATH}"


def start_socat(registry: Registry, work: Path, pki: Pki, uport: int, probe_name: str) -> Server:
    """socat tcp-listen,fork -> openssl: a process and a TLS handshake per connection.

    ``nodelay`` on both sides (PEERS.md's line has none): dns2dot sets TCP_NODELAY on
    both of its sockets, so socat gets the same, never Nagle's delays."""
    port = free_port()
    argv = [
        "socat",
        f"tcp-listen:{port},bind=127.0.0.1,reuseaddr,fork,nodelay",
        f"openssl:127.0.0.1:{uport},cafile={pki.ca_pem},commonname={pki.name},nodelay",
    ]
    return _launch(registry, Server("socat", "socat", ("tcp",), port), argv, probe_name, pki)


def start_stubby(registry: Registry, work: Path, pki: Pki, uport: int, probe_name: str) -> Server:
    port = free_port()
    conf = work / "stubby.yml"
    conf.write_text(_stubby_conf(pki, port, uport))
    server = Server("stubby", "stubby", ("udp", "tcp"), port)
    return _launch(registry, server, ["stubby", "-C", str(conf)], probe_name, pki)


def start_unbound_forwarder(
    registry: Registry, work: Path, pki: Pki, uport: int, probe_name: str
) -> Server:
    """unbound with forward-tls-upstream and its caches at 0 (the cache-off comparison)."""
    port = free_port()
    conf = work / "unbound-fwd.conf"
    conf.write_text(_forwarder_conf(work, pki, port, uport))
    server = Server("unbound-fwd", "unbound fwd (cache off)", ("udp", "tcp"), port)
    return _launch(registry, server, ["unbound", "-d", "-c", str(conf)], probe_name, pki)


def start_unbound_forwarder_cached(
    registry: Registry, work: Path, pki: Pki, uport: int, probe_name: str
) -> Server:
    """The same forwarder with its cache on (the cache-hit comparison); its hit counters
    come from ``unbound-control stats_noreset``."""
    port = free_port()
    conf = work / "unbound-fwd-cache.conf"
    conf.write_text(_forwarder_conf(work, pki, port, uport, cache=True, control_port=free_port()))
    server = Server("unbound-fwd-cache", "unbound fwd (cache on)", ("udp", "tcp"), port)
    server.counts = lambda: unbound_cache_counts(conf)
    return _launch(registry, server, ["unbound", "-d", "-c", str(conf)], probe_name, pki)


def unbound_cache_counts(conf: Path) -> tuple[int, int] | None:
    """unbound's cache hits and misses since it started (None if unbound-control fails)."""
    try:
        res = subprocess.run(
            ["unbound-control", "-c", str(conf), "stats_noreset"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    stats = dict(ln.split("=", 1) for ln in res.stdout.splitlines() if "=" in ln)
    try:
        return int(stats["total.num.cachehits"]), int(stats["total.num.cachemiss"])
    except (KeyError, ValueError):
        return None


def dns2dot_cache_counts(metrics_port: int) -> tuple[int, int] | None:
    """dns2dot's cache hits and misses from its Prometheus endpoint (None if unreachable).

    dns2dot refreshes what it exposes twice a second: read it a second after a run.
    """
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("dns2dot_cache_hits_total", "dns2dot_cache_misses_total"):
            with contextlib.suppress(ValueError):
                found[name] = int(float(value))
    if len(found) != 2:
        return None
    return found["dns2dot_cache_hits_total"], found["dns2dot_cache_misses_total"]


def start_dnsdist(
    registry: Registry,
    work: Path,
    pki: Pki,
    uport: int,
    probe_name: str,
    *,
    doh_path: str | None = None,
    key: str = "dnsdist",
    label: str = "dnsdist",
) -> Server:
    """dnsdist with one DoT backend, or a DoH one with ``doh_path``."""
    port = free_port()
    conf = work / f"{key}.conf"
    conf.write_text(_dnsdist_conf(pki, port, uport, probe_name, doh_path))
    server = Server(key, label, ("udp", "tcp"), port)
    argv = ["dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)]
    return _launch(registry, server, argv, probe_name, pki)


def dns2dot_available(root: Path) -> str | None:
    """None if ``python -m dns2dot`` can run from ``root``, else why not."""
    if not (root / "dns2dot" / "__main__.py").exists():
        return f"{root / 'dns2dot' / '__main__.py'} does not exist (dns2dot not written yet?)"
    return None


def dns2dot_environment(root: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a dns2dot the bench starts: the caller's without ``DNS2DOT_*``
    or ``DNSSERVER`` (only the command line configures it), plus ``extra``.

    The bench's upstreams serve unsigned zones under a local root that the built-in
    trust anchors cannot prove, so dns2dot validates only where a workload says so
    (``--dnssec`` on its command line wins over ``DNS2DOT_DNSSEC=off`` here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DNS2DOT_", "DNSSERVER"))}
    env["DNS2DOT_DNSSEC"] = "off"
    env.update(extra or {})
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(root))
    return env


def start_dns2dot(
    registry: Registry,
    pki: Pki,
    uport: int,
    probe_name: str,
    *,
    mode: str,
    extra_args: list[str],
    key: str,
    root: Path = REPO,
    probe: bool = True,
    upstream: str | None = None,
    label: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Server:
    """``python -m dns2dot`` run from ``root`` (this checkout by default, or another one to
    compare); ready once it prints its startup line. ``env``: variables for it alone
    (``--dns2dot-env``), on top of the caller's environment without its ``DNS2DOT_*``.

    With ``probe=False`` nothing is queried, so the first query the caller sends is the
    one that pays for the upstream TLS handshake (the cold-start workload).
    ``upstream`` replaces the ``-u`` value (default: the DoT upstream on ``uport``).
    """
    port = free_port()
    transports = ("udp", "tcp") if mode == "pool" else ("tcp",)
    label = label or ("dns2dot" if mode == "pool" else "dns2dot pipe")
    server = Server(key, label, transports, port)
    argv = [
        sys.executable,
        "-m",
        "dns2dot",
        "-l",
        f"127.0.0.1:{port}",
        "-u",
        upstream or f"127.0.0.1:{uport}#{pki.name}",
        "--cafile",
        str(pki.ca_pem),
        "--mode",
        mode,
        *extra_args,
    ]
    server.argv = argv
    missing = dns2dot_available(root)
    if missing:
        server.error = missing
        return server
    try:
        server.proc = registry.start(key, argv, cwd=root, env=dns2dot_environment(root, env))
        server.ready_s = server.proc.wait_for_log(DNS2DOT_READY, START_TIMEOUT)
    except StartError as exc:
        server.error = str(exc)
        return server
    return _await(server, probe_name, pki) if probe else server


def tool_versions() -> dict[str, str]:
    """One line per tool, for the JSON (a figure means little without its versions)."""
    cmds = {
        "unbound": ["unbound", "-V"],
        "dnsperf": ["dnsperf", "-h"],
        "socat": ["socat", "-V"],
        "stubby": ["stubby", "-V"],
        "dnsdist": ["dnsdist", "--version"],
        "python": [sys.executable, "--version"],
    }
    out: dict[str, str] = {}
    for tool, argv in cmds.items():
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            out[tool] = f"unavailable: {exc}"
            continue
        lines = [
            ln.strip()
            for ln in (res.stdout + res.stderr).splitlines()
            if "ersion" in ln or ln.startswith(("Stubby", "dnsdist", "Python"))
        ]
        out[tool] = lines[0] if lines else "?"
    try:
        import tornado

        out["tornado"] = tornado.version
    except ImportError:
        out["tornado"] = "not installed"
    return out
