"""Settings from three sources, one table: command line > environment > YAML > default.

Every option is declared once in :data:`OPTIONS`, default included; the argument
parser and its help, the ``DNS2DOT_<OPTION>`` environment variables, the YAML keys and
the defaults of :class:`Config` are all derived from it, so they cannot drift apart.
The classes below (cache policy, upstream lifecycle, TCP limits, answer policy) state
no defaults of their own for what an option sets: ``proxy.py`` builds them from
:class:`Config`. Every parse error is a :class:`ConfigError` whose message names the
setting and says why (exit code 2).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import yaml

from dns2dot.policy.admission import DEFAULT_ALLOW, Network, parse_networks
from dns2dot.policy.rules import name_to_wire
from dns2dot.policy.strategy import STRATEGIES
from dns2dot.protocol.errors import ConfigError
from dns2dot.upstream.spec import UpstreamSpec

DEFAULT_UPSTREAMS = ("1.1.1.1#cloudflare-dns.com", "1.0.0.1#cloudflare-dns.com")
MODES = ("pool", "pipe")


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(f"{what}: '{text}' is not an IP address") from None


def _port(text: str, what: str) -> int:
    port = int(text, 10) if text.isascii() and text.isdigit() else -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what}: '{text}' is not a port number")
    return port


def _split_host_port(text: str, what: str) -> tuple[str, str | None]:
    """``1.2.3.4:53``, ``1.2.3.4``, ``[::1]:53``, ``[::1]`` or a bare IPv6 address."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ConfigError(f"{what}: '{text}' has no closing ']'")
        if rest and not rest.startswith(":"):
            raise ConfigError(f"{what}: '{text}': expected ':PORT' after ']'")
        return host, rest[1:] if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, None


def parse_listen(text: str, what: str = "--listen") -> ListenAddress:
    """``IPv4:PORT`` or ``[IPv6]:PORT`` (port 53 when omitted)."""
    host, port = _split_host_port(text.strip(), what)
    return ListenAddress(_ip(host, what), 53 if port is None else _port(port, what))


def parse_listen_tls(text: str) -> ListenAddress:
    """A DNS-over-TLS listen address: port 853 when omitted (RFC 7858 §3.1)."""
    host, port = _split_host_port(text.strip(), "--listen-tls")
    return ListenAddress(
        _ip(host, "--listen-tls"), 853 if port is None else _port(port, "--listen-tls")
    )


def parse_listen_https(text: str) -> ListenAddress:
    """A DNS-over-HTTPS listen address: port 443 when omitted."""
    host, port = _split_host_port(text.strip(), "--listen-https")
    return ListenAddress(
        _ip(host, "--listen-https"), 443 if port is None else _port(port, "--listen-https")
    )


def parse_https_path(text: str) -> str:
    """The DoH path: absolute, ASCII, no query string or spaces."""
    path = text.strip()
    if not path.startswith("/") or not path.isascii() or any(c in path for c in " ?#\r\n\t"):
        raise ConfigError(f"--https-path: '{text}' is not an absolute path like /dns-query")
    return path


def parse_upstream(
    text: str, *, allow_plain: bool = False, what: str = "--upstream"
) -> UpstreamSpec:
    """``IP[:PORT][#TLS_NAME]``, IPv6 in brackets when a port is given.

    ``plain://IP[:PORT]`` (cleartext DNS over TCP, port 53) only where ``allow_plain``:
    for a forwarding rule that names it explicitly, never as a general upstream.
    """
    text = text.strip()
    if text.startswith("plain://"):
        if not allow_plain:
            raise ConfigError(
                f"{what}: '{text}': cleartext upstreams are allowed only in forwarding rules"
            )
        host, port = _split_host_port(text[len("plain://") :], what)
        return UpstreamSpec(
            _ip(host, what), 53 if port is None else _port(port, what), transport="plain"
        )
    if text.startswith("https://"):
        return _parse_doh(text, what)
    address, _, name = text.partition("#")
    host, port = _split_host_port(address, what)
    return UpstreamSpec(
        host=_ip(host, what),
        port=853 if port is None else _port(port, what),
        name=_tls_name(name, what) if name else None,
    )


def _parse_doh(text: str, what: str, bootstrap: str | None = None) -> UpstreamSpec:
    """``https://IP[:PORT][/PATH][#TLS_NAME]``; a host name needs ``bootstrap`` (YAML).

    The TLS name is also the HTTP authority. Without a bootstrap address a name
    cannot be reached without DNS, so on the command line write the IP and put the
    name after ``#``: ``https://1.1.1.1/dns-query#cloudflare-dns.com``.
    """
    rest, _, name = text[len("https://") :].partition("#")
    authority, slash, path = rest.partition("/")
    path = "/" + path if slash else "/dns-query"
    if not path.isascii() or any(c in path for c in " \r\n"):
        raise ConfigError(f"{what}: '{text}': bad path")
    host, port_text = _split_host_port(authority, what)
    port = 443 if port_text is None else _port(port_text, what)
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        address = ""
    if not address:
        if bootstrap is None:
            raise ConfigError(
                f"{what}: '{text}': '{host}' is a name; give its IP: "
                f"https://IP{path}#{host} (or 'bootstrap: IP' in the YAML)"
            )
        if name and name.rstrip(".").lower() != host.rstrip(".").lower():
            raise ConfigError(f"{what}: '{text}': two different names")
        return UpstreamSpec(
            _ip(bootstrap, f"{what} bootstrap"), port, _tls_name(host, what), (), "https", path
        )
    return UpstreamSpec(address, port, _tls_name(name, what) if name else None, (), "https", path)


def _tls_name(name: str, what: str) -> str:
    labels = name.rstrip(".").split(".")
    if (
        not name.isascii()
        or len(name) > 253
        or not all(
            0 < len(label) <= 63 and all(c.isalnum() or c in "-_*" for c in label)
            for label in labels
        )
    ):
        raise ConfigError(f"{what}: '{name}' is not a valid TLS name")
    return name.rstrip(".").lower()


def parse_pin(text: str) -> str:
    """A base64 SHA-256 SPKI pin (RFC 7469 §2.4): 32 bytes once decoded."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"--pin: '{text}' is not a base64 SHA-256 pin")
    return text.strip()


def _positive(kind: Callable[[str], Any], option: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(str(text))
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"--{option}: '{text}' is not a positive number")
        return value

    return parse


def _choice(option: str, choices: Sequence[str]) -> Callable[[str], str]:
    """A parser accepting exactly one of ``choices``."""

    def parse(text: str) -> str:
        if text not in choices:
            raise ConfigError(f"--{option}: '{text}' is not one of {', '.join(choices)}")
        return text

    return parse


def _allow(text: str) -> Network:
    try:
        return parse_networks([text])[0]
    except ValueError as exc:
        raise ConfigError(f"--allow: {exc}") from None


def _non_negative(option: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(str(text), 10)
        except ValueError:
            value = -1
        if value < 0:
            raise ConfigError(f"--{option}: '{text}' is not a whole number >= 0")
        return value

    return parse


def parse_forward(text: str) -> tuple[str, UpstreamSpec]:
    """``ZONE=UPSTREAM``: queries at or below ZONE go to UPSTREAM (DoT, or plain://)."""
    zone, sep, spec = text.partition("=")
    if not sep or not zone.strip():
        raise ConfigError(f"--forward: '{text}' is not ZONE=UPSTREAM")
    try:
        name_to_wire(zone)
    except ValueError as exc:
        raise ConfigError(f"--forward: {exc}") from None
    return zone.strip().rstrip(".").lower(), parse_upstream(
        spec, allow_plain=True, what="--forward"
    )


def _trust_anchor(text: str) -> str:
    """A file of DS or DNSKEY records, read now so that a bad one stops the start."""
    from dns2dot.policy.dnssec.anchors import load_anchor_files  # dnspython: only if asked

    load_anchor_files([text])
    return text


def _insecure_zone(text: str) -> str:
    try:
        name_to_wire(text)
    except ValueError as exc:
        raise ConfigError(f"--insecure: {exc}") from None
    return text.strip().rstrip(".").lower() + "."


def _cafile(text: str) -> str:
    if not os.path.isfile(text):
        raise ConfigError(f"--cafile: {text}: no such file")
    return text


@dataclass(frozen=True)
class Option:
    """One setting: its flags, how to parse one value, and whether it repeats."""

    name: str
    flags: tuple[str, ...]
    parse: Callable[[str], Any] | None  # None: a boolean switch
    help: str
    metavar: str | None = None
    repeatable: bool = False
    yaml_key: str | None = None
    default: Any = None  # the value as Config holds it; the one place it is written
    shown: str | None = None  # how the help shows the default, when not str(default)

    @property
    def env(self) -> str:
        return "DNS2DOT_" + self.name.upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def key(self) -> str:
        return self.yaml_key or self.dest

    @property
    def help_text(self) -> str:
        """The help line, its default rendered from :attr:`default`."""
        shown = self.shown if self.shown is not None else _show(self.default)
        return f"{self.help} (default {shown})" if shown else self.help


def _show(value: Any) -> str:
    """A default as the help shows it: ``3`` for 3.0, lists comma-separated, switches not."""
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)


OPTIONS: tuple[Option, ...] = (
    Option(
        "listen",
        ("-l", "--listen"),
        parse_listen,
        "plain-DNS listen address, UDP and TCP, repeatable",
        "ADDR",
        repeatable=True,
        default=(ListenAddress("127.0.0.1", 53),),
    ),
    Option(
        "upstream",
        ("-u", "--upstream"),
        parse_upstream,
        "upstream, repeatable, in order of preference: DoT IP[:PORT][#TLS_NAME] or "
        "DoH https://IP[:PORT]/PATH[#TLS_NAME]",
        "SPEC",
        repeatable=True,
        yaml_key="upstreams",
        default=tuple(parse_upstream(spec) for spec in DEFAULT_UPSTREAMS),
    ),
    Option(
        "pin",
        ("--pin",),
        parse_pin,
        "SPKI SHA-256 pin (base64) required of every upstream without pins of its own, repeatable",
        "BASE64",
        repeatable=True,
        yaml_key="pins",
        default=(),
    ),
    Option("cafile", ("--cafile",), _cafile, "CA bundle", "PATH", shown="certifi's bundle"),
    Option(
        "mode",
        ("--mode",),
        _choice("mode", MODES),
        "TCP handling: pool or pipe",
        "MODE",
        default="pool",
    ),
    Option(
        "timeout",
        ("--timeout",),
        _positive(float, "timeout"),
        "seconds before a query is answered SERVFAIL",
        "SECONDS",
        default=3.0,
    ),
    Option(
        "idle-timeout",
        ("--idle-timeout",),
        _positive(float, "idle-timeout"),
        "seconds an idle TCP client may stay connected",
        "SECONDS",
        default=10.0,
    ),
    Option(
        "max-tcp-clients",
        ("--max-tcp-clients",),
        _positive(int, "max-tcp-clients"),
        "TCP clients connected at once",
        "N",
        default=10000,
    ),
    Option(
        "max-inflight-per-client",
        ("--max-inflight-per-client",),
        _positive(int, "max-inflight-per-client"),
        "unanswered queries per TCP client before it is read no further",
        "N",
        default=256,
    ),
    Option(
        "strategy",
        ("--strategy",),
        _choice("strategy", STRATEGIES),
        "how upstreams share queries: failover, round-robin, fastest, race",
        "NAME",
        default="failover",
    ),
    Option(
        "upstream-idle-timeout",
        ("--upstream-idle-timeout",),
        _positive(float, "upstream-idle-timeout"),
        "seconds before an idle upstream connection is closed",
        "SECONDS",
        default=8.0,  # below the 10 s some public resolvers enforce
    ),
    Option(
        "max-queries-per-connection",
        ("--max-queries-per-connection",),
        _positive(int, "max-queries-per-connection"),
        "queries on one upstream connection before a fresh one takes over",
        "N",
        default=50000,
    ),
    Option(
        "max-inflight",
        ("--max-inflight",),
        _positive(int, "max-inflight"),
        "queries waiting for upstreams at once; more are answered REFUSED",
        "N",
        default=20000,
    ),
    Option(
        "allow",
        ("--allow",),
        _allow,
        "client network (CIDR) to serve, repeatable; others get REFUSED",
        "CIDR",
        repeatable=True,
        default=parse_networks(DEFAULT_ALLOW),
        shown="loopback and private ranges",
    ),
    Option(
        "ratelimit",
        ("--ratelimit",),
        _positive(float, "ratelimit"),
        "UDP queries per second per client /24 or /56; beyond it, TC=1",
        "QPS",
        default=None,
        shown="off",
    ),
    Option(
        "cache-size",
        ("--cache-size",),
        _non_negative("cache-size"),
        "answers kept in the cache, per worker; 0 turns it off",
        "ENTRIES",
        default=10000,
    ),
    Option(
        "cache-min-ttl",
        ("--cache-min-ttl",),
        _non_negative("cache-min-ttl"),
        "lower clamp on cached TTLs, seconds",
        "SECONDS",
        default=0,
    ),
    Option(
        "cache-max-ttl",
        ("--cache-max-ttl",),
        _non_negative("cache-max-ttl"),
        "upper clamp on cached TTLs, seconds",
        "SECONDS",
        default=86400,
    ),
    Option(
        "serve-stale",
        ("--serve-stale",),
        _non_negative("serve-stale"),
        "how long past expiry an answer may be served stale (RFC 8767); 0: never",
        "SECONDS",
        default=86400,
    ),
    Option(
        "no-padding",
        ("--no-padding",),
        None,
        "do not pad queries upstream (RFC 8467)",
        default=False,
    ),
    Option(
        "keep-client-subnet",
        ("--keep-client-subnet",),
        None,
        "forward the clients' EDNS Client Subnet option instead of removing it",
        default=False,
    ),
    Option(
        "forward",
        ("--forward",),
        parse_forward,
        "send a zone to its own upstream: ZONE=IP[:PORT][#NAME] or ZONE=plain://IP[:PORT] "
        "(cleartext, only this way), repeatable",
        "ZONE=UPSTREAM",
        repeatable=True,
        default=(),
    ),
    Option(
        "hosts",
        ("--hosts",),
        str,
        "hosts-format file answered locally (A, AAAA and PTR), repeatable",
        "FILE",
        repeatable=True,
        default=(),
    ),
    Option(
        "blocklist",
        ("--blocklist",),
        str,
        "file of names (one a line, or hosts format) to block, subdomains included, repeatable",
        "FILE",
        repeatable=True,
        yaml_key="blocklists",
        default=(),
    ),
    Option(
        "block-answer",
        ("--block-answer",),
        str,
        "answer for blocked names: nxdomain or an IPv4 and/or IPv6 address",
        "ANSWER",
        repeatable=True,
        default=(),
        shown="nxdomain",
    ),
    Option(
        "metrics",
        ("--metrics",),
        lambda text: parse_listen(text, what="--metrics"),
        "serve Prometheus /metrics, /healthz and /readyz on ADDR",
        "ADDR",
        default=None,
        shown="off",
    ),
    Option(
        "workers",
        ("--workers",),
        _positive(int, "workers"),
        "serving processes sharing the listen addresses (SO_REUSEPORT)",
        "N",
        default=1,
    ),
    Option(
        "grace-period",
        ("--grace-period",),
        _positive(float, "grace-period"),
        "on SIGTERM/SIGINT, seconds to finish queries in flight",
        "SECONDS",
        default=5.0,
    ),
    Option(
        "log-format",
        ("--log-format",),
        _choice("log-format", ("text", "json")),
        "text or json (one object a line)",
        "FORMAT",
        default="text",
    ),
    Option(
        "log-queries",
        ("--log-queries",),
        None,
        "log every query's name, type and outcome (names are private: off unless asked)",
        default=False,
    ),
    Option(
        "listen-tls",
        ("--listen-tls",),
        parse_listen_tls,
        "DNS-over-TLS address for clients (RFC 7858), repeatable; port 853 when ADDR has none",
        "ADDR",
        repeatable=True,
        default=(),
        shown="none",
    ),
    Option(
        "listen-https",
        ("--listen-https",),
        parse_listen_https,
        "DNS-over-HTTPS address for clients (RFC 8484), repeatable; port 443 if ADDR has none",
        "ADDR",
        repeatable=True,
        default=(),
        shown="none",
    ),
    Option(
        "https-path",
        ("--https-path",),
        parse_https_path,
        "path the DNS-over-HTTPS listeners answer on",
        "PATH",
        default="/dns-query",
    ),
    Option(
        "tls-cert",
        ("--tls-cert",),
        str,
        "PEM certificate (chain, leaf first) of the encrypted listeners; re-read on SIGHUP "
        "and when it changes",
        "FILE",
    ),
    Option("tls-key", ("--tls-key",), str, "PEM private key of --tls-cert", "FILE"),
    Option(
        "dnssec",
        ("--dnssec",),
        _choice("dnssec", ("off", "validate")),
        "DNSSEC: validate upstream answers (AD for secure ones, SERVFAIL for bogus), or off",
        "MODE",
        default="validate",
    ),
    Option(
        "trust-anchor",
        ("--trust-anchor",),
        _trust_anchor,
        "DS or DNSKEY records (zone-file format) replacing the built-in root anchors, repeatable",
        "FILE",
        repeatable=True,
        default=(),
        shown="the IANA root KSKs",
    ),
    Option(
        "insecure",
        ("--insecure",),
        _insecure_zone,
        "negative trust anchor (RFC 7646): answers at or below ZONE are not validated, repeatable",
        "ZONE",
        repeatable=True,
        default=(),
        shown="none",
    ),
    Option("config", ("-c", "--config"), str, "YAML file with the same settings", "FILE"),
    Option("verbose", ("-v", "--verbose"), None, "debug logging", default=False),
)
_BY_KEY = {option.key: option for option in OPTIONS}
DEFAULTS: Mapping[str, Any] = {option.dest: option.default for option in OPTIONS}


@dataclass(frozen=True)
class Config:
    """Every setting, parsed. ``Config()`` is what no flag, variable or YAML gives:
    each default comes from :data:`OPTIONS`, and the classes below take their values
    from here (see ``proxy.py``) instead of stating defaults of their own."""

    listen: tuple[ListenAddress, ...] = DEFAULTS["listen"]
    upstreams: tuple[UpstreamSpec, ...] = DEFAULTS["upstream"]
    cafile: str | None = DEFAULTS["cafile"]
    mode: str = DEFAULTS["mode"]
    timeout: float = DEFAULTS["timeout"]
    idle_timeout: float = DEFAULTS["idle_timeout"]
    max_tcp_clients: int = DEFAULTS["max_tcp_clients"]
    max_inflight_per_client: int = DEFAULTS["max_inflight_per_client"]
    workers: int = DEFAULTS["workers"]
    grace_period: float = DEFAULTS["grace_period"]
    log_format: str = DEFAULTS["log_format"]
    log_queries: bool = DEFAULTS["log_queries"]
    metrics: ListenAddress | None = DEFAULTS["metrics"]
    cache_size: int = DEFAULTS["cache_size"]
    cache_min_ttl: int = DEFAULTS["cache_min_ttl"]
    cache_max_ttl: int = DEFAULTS["cache_max_ttl"]
    serve_stale: int = DEFAULTS["serve_stale"]
    no_padding: bool = DEFAULTS["no_padding"]
    keep_client_subnet: bool = DEFAULTS["keep_client_subnet"]
    forward: tuple[tuple[str, UpstreamSpec], ...] = DEFAULTS["forward"]
    hosts: tuple[str, ...] = DEFAULTS["hosts"]
    blocklist: tuple[str, ...] = DEFAULTS["blocklist"]
    block_answer: tuple[str, ...] = DEFAULTS["block_answer"]
    strategy: str = DEFAULTS["strategy"]
    upstream_idle_timeout: float = DEFAULTS["upstream_idle_timeout"]
    max_queries_per_connection: int = DEFAULTS["max_queries_per_connection"]
    max_inflight: int = DEFAULTS["max_inflight"]
    allow: tuple[Network, ...] = DEFAULTS["allow"]
    ratelimit: float | None = DEFAULTS["ratelimit"]
    listen_tls: tuple[ListenAddress, ...] = DEFAULTS["listen_tls"]
    listen_https: tuple[ListenAddress, ...] = DEFAULTS["listen_https"]
    https_path: str = DEFAULTS["https_path"]
    tls_cert: str | None = DEFAULTS["tls_cert"]
    tls_key: str | None = DEFAULTS["tls_key"]
    dnssec: str = DEFAULTS["dnssec"]
    trust_anchor: tuple[str, ...] = DEFAULTS["trust_anchor"]
    insecure: tuple[str, ...] = DEFAULTS["insecure"]
    verbose: bool = DEFAULTS["verbose"]
    config: str | None = DEFAULTS["config"]


_BOOLEANS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
    "": False,
}


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises instead of printing usage and exiting."""

    def error(self, message: str) -> Any:
        raise ConfigError(message)


def build_parser(prog: str = "dns2dot") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Forward plain DNS (UDP and TCP) to DNS-over-TLS or DNS-over-HTTPS upstreams.",
        epilog="Every option also reads DNS2DOT_<OPTION> from the environment.",
    )
    for option in OPTIONS:
        if option.parse is None:
            parser.add_argument(
                *option.flags,
                dest=option.dest,
                action="store_true",
                default=None,
                help=option.help_text,
            )
        elif option.repeatable:
            parser.add_argument(
                *option.flags,
                dest=option.dest,
                action="append",
                metavar=option.metavar,
                help=option.help_text,
            )
        else:
            parser.add_argument(
                *option.flags, dest=option.dest, metavar=option.metavar, help=option.help_text
            )
    return parser


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = environ.get(option.env)
        if raw is None:
            continue
        if option.parse is None:
            if raw.strip().lower() not in _BOOLEANS:
                raise ConfigError(f"{option.env}: '{raw}' is not a boolean")
            values[option.dest] = _BOOLEANS[raw.strip().lower()]
        elif option.repeatable:
            values[option.dest] = [item for item in raw.split(",") if item.strip()]
        else:
            values[option.dest] = raw
    if "upstream" not in values and environ.get("DNSSERVER"):
        values["upstream"] = [environ["DNSSERVER"]]
    return values


def _yaml_upstream(entry: Any, path: str) -> UpstreamSpec:
    if isinstance(entry, str):
        return parse_upstream(entry)
    if not isinstance(entry, dict):
        raise ConfigError(f"--config: {path}: upstreams: each entry is a string or a mapping")
    unknown = set(entry) - {"address", "name", "pins", "bootstrap"}
    if unknown:
        raise ConfigError(f"--config: {path}: upstreams: unknown setting '{sorted(unknown)[0]}'")
    if "address" not in entry:
        raise ConfigError(f"--config: {path}: upstreams: an entry has no 'address'")
    address = str(entry["address"])
    bootstrap = entry.get("bootstrap")
    if bootstrap is not None and not address.startswith("https://"):
        raise ConfigError(f"--config: {path}: upstreams: 'bootstrap' is for https:// upstreams")
    if bootstrap is not None:
        spec = _parse_doh(address, "--config: upstreams", str(bootstrap))
    else:
        spec = parse_upstream(address)
    name = entry.get("name")
    pins = entry.get("pins") or []
    if not isinstance(pins, list) or not all(isinstance(p, str) for p in pins):
        raise ConfigError(f"--config: {path}: upstreams: 'pins' is a list of base64 strings")
    return replace(
        spec,
        name=_tls_name(str(name), "upstreams: name") if name else spec.name,
        pins=tuple(parse_pin(pin) for pin in pins),
    )


def _yaml_rules(rules: Any, path: str) -> dict[str, Any]:
    """The ``rules:`` section: ``forward``, ``hosts``, ``blocklists``, ``block_answer``."""
    where = f"--config: {path}: rules"
    if not isinstance(rules, dict):
        raise ConfigError(f"{where}: must be a mapping")
    values: dict[str, Any] = {}
    for key, value in rules.items():
        if key == "forward":
            if not isinstance(value, list):
                raise ConfigError(f"{where}: forward: a list of {{zone, upstreams}}")
            pairs = []
            for entry in value:
                if not isinstance(entry, dict) or set(entry) - {"zone", "upstreams"}:
                    raise ConfigError(f"{where}: forward: each entry has zone and upstreams")
                upstreams = entry.get("upstreams") or []
                if isinstance(upstreams, str):
                    upstreams = [upstreams]
                if not entry.get("zone") or not upstreams:
                    raise ConfigError(f"{where}: forward: each entry has zone and upstreams")
                pairs += [parse_forward(f"{entry['zone']}={spec}") for spec in upstreams]
            values["forward"] = pairs
        elif key in ("hosts", "blocklists", "block_answer"):
            items = value if isinstance(value, list) else [value]
            values[_BY_KEY[key].dest] = [str(item) for item in items]
        else:
            raise ConfigError(f"{where}: unknown setting '{key}'")
    return values


def _from_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"--config: {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"--config: {path}: the top level must be a mapping")
    values: dict[str, Any] = {}
    rules = document.pop("rules", None)
    if rules is not None:
        values.update(_yaml_rules(rules, path))
    for key, value in document.items():
        option = _BY_KEY.get(str(key).replace("-", "_"))
        if option is None or option.name == "config":
            raise ConfigError(f"--config: {path}: unknown setting '{key}'")
        if option.name == "upstream":
            entries = value if isinstance(value, list) else [value]
            values[option.dest] = [_yaml_upstream(entry, path) for entry in entries]
        elif option.repeatable:
            values[option.dest] = [str(v) for v in (value if isinstance(value, list) else [value])]
        elif option.parse is None:
            if not isinstance(value, bool):
                raise ConfigError(f"--config: {path}: '{key}' must be true or false")
            values[option.dest] = value
        else:
            values[option.dest] = str(value)
    return values


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from the command line, the environment and the YAML."""
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in vars(build_parser().parse_args(list(argv))).items() if v is not None}
    env = _from_environment(environ)
    path = flags.get("config") or env.get("config")
    merged: dict[str, Any] = _from_yaml(path) if path else {}
    merged.update(env)
    merged.update(flags)

    def value(option: Option) -> Any:
        raw = merged.get(option.dest)
        if raw is None or option.parse is None:
            return raw
        if option.repeatable:
            return tuple(item if not isinstance(item, str) else option.parse(item) for item in raw)
        return option.parse(raw)

    parsed = {option.dest: value(option) for option in OPTIONS}
    upstreams = parsed.pop("upstream") or DEFAULTS["upstream"]
    pins = parsed.pop("pin") or ()
    if pins:
        upstreams = tuple(u if u.pins else replace(u, pins=tuple(pins)) for u in upstreams)
    listen = parsed.pop("listen") or DEFAULTS["listen"]
    parsed["allow"] = parsed["allow"] or DEFAULTS["allow"]
    for option in ("listen_tls", "listen_https"):
        if parsed[option]:
            parsed[option] = tuple(dict.fromkeys(parsed[option]))
    if parsed["listen_tls"] or parsed["listen_https"]:
        flag = "--listen-tls" if parsed["listen_tls"] else "--listen-https"
        for option in ("tls_cert", "tls_key"):
            if not parsed[option]:
                name = option.replace("_", "-")
                raise ConfigError(f"--{name}: required by {flag} (a PEM file)")
    settings = {k: v for k, v in parsed.items() if v is not None}
    return Config(listen=tuple(dict.fromkeys(listen)), upstreams=tuple(upstreams), **settings)
