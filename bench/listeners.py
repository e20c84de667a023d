"""The encrypted-listener cells: DoT and DoH served to clients, each forwarding to the
same DoT upstream with its cache off.

dns2dot's ``--listen-tls`` and ``--listen-https`` against dnsdist's ``addTLSLocal`` and
``addDOHLocal`` frontends and unbound's ``tls-port`` and ``https-port`` service, driven
by ``dnsperf -m dot`` and ``-m doh`` (GET, dnsperf's default) in the same run. Each
server listens for one kind only, so that a cell has one port; a plain listener on
a port of its own is there because dnsdist and dns2dot always have one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import peers
from .pki import Pki
from .procs import Registry, StartError, free_port

LISTENER_ORDER = (
    "dnsdist-dot-frontend",
    "unbound-dot-service",
    "dns2dot-dot-listener",
    "dnsdist-doh-frontend",
    "unbound-doh-service",
    "dns2dot-doh-listener",
)
LISTENER_KEYS = frozenset(LISTENER_ORDER)
_LABELS = {
    "dnsdist-dot-frontend": "dnsdist addTLSLocal",
    "unbound-dot-service": "unbound tls-port",
    "dns2dot-dot-listener": "dns2dot --listen-tls",
    "dnsdist-doh-frontend": "dnsdist addDOHLocal",
    "unbound-doh-service": "unbound https-port",
    "dns2dot-doh-listener": "dns2dot --listen-https",
}


def kind_of(key: str) -> str:
    """``dot`` or ``doh``: what the listener of ``key`` serves."""
    return "doh" if "-doh-" in key else "dot"


def _dnsdist_conf(pki: Pki, plain: int, port: int, uport: int, check_name: str, kind: str) -> str:
    """dnsdist as in peers.py (``maxInFlight=100``) with one TLS or DoH frontend."""
    if kind == "dot":
        frontend = (
            f'addTLSLocal("127.0.0.1:{port}", "{pki.cert_pem}", "{pki.key_pem}", '
            f'{{provider="openssl", maxInFlight=100}})'
        )
    else:
        frontend = (
            f'addDOHLocal("127.0.0.1:{port}", "{pki.cert_pem}", "{pki.key_pem}", '
            f'"{peers.DOH_PATH}")'
        )
    return f"""setSecurityPollSuffix("")
setLocal("127.0.0.1:{plain}", {{maxInFlight=100}})
{frontend}
setACL({{"127.0.0.0/8"}})
newServer({{address="127.0.0.1:{uport}", tls="openssl", subjectName="{pki.name}",
           caStore="{pki.ca_pem}", validateCertificates=true, checkName="{check_name}"}})
"""


def _unbound_conf(work: Path, pki: Pki, plain: int, port: int, uport: int, kind: str) -> str:
    """peers.py's unbound forwarder (caches at 0), also serving DoT or DoH on ``port``."""
    base = peers._forwarder_conf(work, pki, plain, uport)
    service = "tls-port" if kind == "dot" else "https-port"
    extra = (
        f"interface: 127.0.0.1@{plain}\n"
        f"    interface: 127.0.0.1@{port}\n"
        f"    {service}: {port}\n"
        f'    tls-service-key: "{pki.key_pem}"\n'
        f'    tls-service-pem: "{pki.cert_pem}"'
    )
    return base.replace(f"interface: 127.0.0.1@{plain}", extra, 1)


def start_listener(
    registry: Registry,
    work: Path,
    pki: Pki,
    uport: int,
    probe_name: str,
    key: str,
    *,
    dns2dot_args: list[str],
    root: Path = peers.REPO,
) -> peers.Server:
    """The server of one listener cell, started and probed over its one transport."""
    kind = kind_of(key)
    plain, port = free_port(), free_port()
    server = peers.Server(key, _LABELS[key], (kind,), port)
    if key.startswith("dnsdist"):
        conf = work / f"{key}.conf"
        conf.write_text(_dnsdist_conf(pki, plain, port, uport, probe_name, kind))
        argv = ["dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)]
        return peers._launch(registry, server, argv, probe_name, pki)
    if key.startswith("unbound"):
        conf = work / f"{key}.conf"
        conf.write_text(_unbound_conf(work, pki, plain, port, uport, kind))
        return peers._launch(registry, server, ["unbound", "-d", "-c", str(conf)], probe_name, pki)
    option = "--listen-tls" if kind == "dot" else "--listen-https"
    argv = [
        sys.executable,
        "-m",
        "dns2dot",
        "-l",
        f"127.0.0.1:{plain}",
        option,
        f"127.0.0.1:{port}",
        "--tls-cert",
        str(pki.cert_pem),
        "--tls-key",
        str(pki.key_pem),
        "-u",
        f"127.0.0.1:{uport}#{pki.name}",
        "--cafile",
        str(pki.ca_pem),
        *dns2dot_args,
    ]
    server.argv = argv
    missing = peers.dns2dot_available(root)
    if missing:
        server.error = missing
        return server
    env = peers.dns2dot_environment(root)
    try:
        server.proc = registry.start(key, argv, cwd=root, env=env)
        server.ready_s = server.proc.wait_for_log(peers.DNS2DOT_READY, peers.START_TIMEOUT)
    except StartError as exc:
        server.error = str(exc)
        return server
    return peers._await(server, probe_name, pki)
