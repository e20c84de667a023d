"""``dns2dot check``: try every configured upstream and say what works, as a table.

For each upstream: TCP connect time, TLS version and cipher, the certificate's subject,
issuer and expiry, its SPKI pin (to copy into the YAML), whether name and pins verify,
and one test query's latency. When verification fails, the certificate is fetched
again without verification, only to show the operator what the upstream presents;
nothing is ever sent over that connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import dns.edns
import dns.exception
import dns.message
import dns.rcode

from dns2dot import config as config_module
from dns2dot.config import Config
from dns2dot.policy.strategy import Strategy
from dns2dot.protocol import wire, x509
from dns2dot.protocol.errors import ConfigError, UpstreamTimeoutError
from dns2dot.proxy import CONNECTION_TYPES, lifecycle
from dns2dot.transport import tls
from dns2dot.transport.tls import TlsContexts
from dns2dot.upstream.exchange import Exchange
from dns2dot.upstream.pool import UpstreamPool
from dns2dot.upstream.spec import UpstreamSpec


@dataclass
class CheckResult:
    upstream: str
    ok: bool = False
    connect_ms: float | None = None
    tls_version: str | None = None
    cipher: str | None = None
    alpn: str | None = None
    subject: str | None = None
    issuer: str | None = None
    expires: str | None = None
    pin: str | None = None
    verified: bool = False
    pin_ok: bool | None = None
    query_ms: float | None = None
    rcode: str | None = None
    error: str | None = None


def _name_of(entries: object) -> str | None:
    """commonName (else the whole name) from ``getpeercert()``'s nested tuples."""
    if not isinstance(entries, tuple):
        return None
    pairs = [pair for rdn in entries for pair in rdn]
    common = [value for key, value in pairs if key == "commonName"]
    return common[0] if common else ", ".join(f"{k}={v}" for k, v in pairs) or None


async def _unverified_certificate(spec: UpstreamSpec, timeout: float) -> bytes | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(
                spec.host, spec.port, ssl=context, server_hostname=spec.verify_name
            )
    except (OSError, TimeoutError, ssl.SSLError):
        return None
    sslobj = writer.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True) if sslobj else None
    writer.close()
    return der


async def check_upstream(
    spec: UpstreamSpec, contexts: TlsContexts, timeout: float, qname: str
) -> CheckResult:
    """Connect, handshake and look at the certificate here; then ask one question."""
    context = contexts.for_transport(spec.transport)
    result = CheckResult(str(spec))
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(spec.host, spec.port)
    except (OSError, TimeoutError) as exc:
        result.error = tls.describe_failure(exc)
        return result
    result.connect_ms = (time.perf_counter() - started) * 1000
    try:
        async with asyncio.timeout(timeout):
            await writer.start_tls(context, server_hostname=spec.verify_name)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        writer.close()
        result.error = tls.describe_failure(exc)
        der = await _unverified_certificate(spec, timeout)
        if der is not None:
            _describe_der(result, der)
        return result
    sslobj = writer.get_extra_info("ssl_object")
    result.verified = True
    result.tls_version = sslobj.version()
    result.cipher = sslobj.cipher()[0]
    result.alpn = sslobj.selected_alpn_protocol()
    peer = sslobj.getpeercert()
    result.subject = _name_of(peer.get("subject"))
    result.issuer = _name_of(peer.get("issuer"))
    _describe_der(result, sslobj.getpeercert(binary_form=True))
    if spec.pins:
        result.pin_ok = result.pin in spec.pins
        if not result.pin_ok:
            writer.close()
            result.error = "certificate key matches none of the configured pins"
            return result
    writer.close()
    await _test_query(spec, contexts, timeout, qname, result)
    return result


async def _test_query(
    spec: UpstreamSpec, contexts: TlsContexts, timeout: float, qname: str, result: CheckResult
) -> None:
    """One query through the proxy's own upstream code: DoT or DoH, pins and all."""
    pool = UpstreamPool(
        [spec],
        contexts,
        strategy=Strategy(Config().strategy),  # one upstream: nothing to order
        lifecycle=lifecycle(Config(timeout=timeout)),
        connection_types=CONNECTION_TYPES,
    )
    query = dns.message.make_query(qname, "NS")
    msg = query.to_wire()
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[bytes] = loop.create_future()
    exchange = Exchange(msg, wire.parse_query(msg), answered.set_result, loop.time() + timeout)
    started = time.perf_counter()
    pool.submit(exchange)
    try:
        async with asyncio.timeout(timeout):
            raw = await answered
    except TimeoutError:
        exchange.fail(UpstreamTimeoutError("timed out"))
        raw = b""
    finally:
        pool.close()
    result.query_ms = (time.perf_counter() - started) * 1000
    try:
        answer = dns.message.from_wire(raw)
    except dns.exception.DNSException as exc:
        result.error = f"test query: no usable answer ({exc or 'timed out'})"
        return
    result.rcode = dns.rcode.to_text(answer.rcode())
    if answer.id != query.id:
        result.error = "test query: answer with another ID"
    elif answer.rcode() == dns.rcode.SERVFAIL and not answer.answer:
        ede = [o for o in answer.options if o.otype == dns.edns.EDE]
        result.error = "test query: SERVFAIL" + (f" ({ede[0].text})" if ede else "")
    else:
        result.ok = True


def _describe_der(result: CheckResult, der: bytes) -> None:
    try:
        result.pin = x509.spki_pin(der)
        result.expires = x509.not_after(der).strftime("%Y-%m-%d")
    except x509.CertificateError as exc:
        result.error = result.error or f"certificate: {exc}"


def _cells(r: CheckResult) -> list[str]:
    return [
        r.upstream,
        "ok" if r.ok else "FAIL",
        f"{r.connect_ms:.1f}ms" if r.connect_ms is not None else "-",
        " ".join(filter(None, (r.tls_version, r.cipher, r.alpn))) if r.tls_version else "-",
        r.expires or "-",
        f"{r.query_ms:.1f}ms {r.rcode}" if r.query_ms is not None else "-",
    ]


def render_table(results: Sequence[CheckResult]) -> str:
    """A fixed-width table, then the details of each upstream on lines of their own."""
    header = ["upstream", "status", "connect", "tls", "expires", "query"]
    rows = [header] + [_cells(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    pin_note = {None: "", True: " (matches a configured pin)", False: " (NOT a configured pin)"}
    for r in results:
        lines.append("")
        lines.append(f"{r.upstream}")
        if r.subject or r.issuer:
            lines.append(f"  subject: {r.subject or '-'}")
            lines.append(f"  issuer:  {r.issuer or '-'}")
        lines.append(f"  pin-sha256: {r.pin or '-'}{pin_note[r.pin_ok]}")
        if r.error:
            lines.append(f"  error: {r.error}")
    return "\n".join(line.rstrip() for line in lines)


async def run_checks(config: Config, qname: str) -> list[CheckResult]:
    contexts = TlsContexts(config.cafile)
    return list(
        await asyncio.gather(
            *(check_upstream(spec, contexts, config.timeout, qname) for spec in config.upstreams)
        )
    )


def main(argv: Sequence[str]) -> int:
    """``dns2dot check [--json] [--name NAME] [proxy options]``; exit 1 if any upstream fails."""
    own = argparse.ArgumentParser(prog="dns2dot check", add_help=False)
    own.add_argument("--json", action="store_true", help="print JSON instead of a table")
    own.add_argument("--name", default=".", help="name to ask for NS records (default .)")
    options, rest = own.parse_known_args(list(argv))
    try:
        config = config_module.load(rest)
        results = asyncio.run(run_checks(config, options.name))
    except ConfigError as exc:
        print(f"dns2dot check: error: {exc}", file=sys.stderr)
        return 2
    if options.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(render_table(results))
    return 0 if all(r.ok for r in results) else 1
