"""``dns2dot check``: try every configured upstream and say what works, as a table.

For each upstream: TCP connect time, TLS version and cipher, the certificate's subject,
issuer and expiry, its SPKI pin (to copy into the YAML), whether name and pins verify,
one test query's latency, and whether the upstream hands over DNSSEC records (RRSIGs
for a signed name asked with DO and CD: one that strips them would make every signed
zone bogus under ``--dnssec validate``). When verification fails, the certificate is fetched
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
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

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
    dnssec: str | None = None  # DnssecRecords value: "rrsig", "stripped"; None: not asked
    error: str | None = None


class DnssecRecords:
    """What the DNSSEC probe found (``CheckResult.dnssec``) and how it is said."""

    RETURNED = "rrsig"
    STRIPPED = "stripped"
    SAY = {
        RETURNED: "returns DNSSEC records (RRSIG present)",
        STRIPPED: "strips DNSSEC records: with --dnssec validate every signed zone would be bogus",
    }


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


async def _ask(pool: UpstreamPool, query: dns.message.Message, timeout: float) -> bytes:
    """``query``'s answer through ``pool``, or b"" if none came within ``timeout``."""
    msg = query.to_wire()
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[bytes] = loop.create_future()
    exchange = Exchange(msg, wire.parse_query(msg), answered.set_result, loop.time() + timeout)
    pool.submit(exchange)
    try:
        async with asyncio.timeout(timeout):
            return await answered
    except TimeoutError:
        exchange.fail(UpstreamTimeoutError("timed out"))
        return b""


async def _test_query(
    spec: UpstreamSpec, contexts: TlsContexts, timeout: float, qname: str, result: CheckResult
) -> None:
    """One query through the proxy's own upstream code: DoT or DoH, pins and all; then,
    if it worked, the DNSSEC probe."""
    pool = UpstreamPool(
        [spec],
        contexts,
        strategy=Strategy(Config().strategy),  # one upstream: nothing to order
        lifecycle=lifecycle(Config(timeout=timeout)),
        connection_types=CONNECTION_TYPES,
    )
    try:
        query = dns.message.make_query(qname, "NS")
        started = time.perf_counter()
        raw = await _ask(pool, query, timeout)
        result.query_ms = (time.perf_counter() - started) * 1000
        _judge_answer(result, query, raw)
        if result.ok:
            await _dnssec_probe(pool, timeout, qname, result)
    finally:
        pool.close()


def _judge_answer(result: CheckResult, query: dns.message.Message, raw: bytes) -> None:
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


async def _dnssec_probe(
    pool: UpstreamPool, timeout: float, qname: str, result: CheckResult
) -> None:
    """Ask ``qname`` DNSKEY with DO and CD, as the validator asks: a signed zone answers
    with RRSIGs (over the DNSKEY RRset, or over the NSEC/NSEC3 and SOA of a NODATA
    answer below the apex); none at all means the upstream strips them."""
    query = dns.message.make_query(qname, "DNSKEY", want_dnssec=True, payload=1232)
    query.flags |= dns.flags.CD
    raw = await _ask(pool, query, timeout)
    try:
        answer = dns.message.from_wire(raw)
    except dns.exception.DNSException:
        return  # no verdict: the test query above already worked, so say nothing
    if answer.id != query.id or answer.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return
    signed = any(r.rdtype == dns.rdatatype.RRSIG for r in (*answer.answer, *answer.authority))
    result.dnssec = DnssecRecords.RETURNED if signed else DnssecRecords.STRIPPED


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
        if r.dnssec is not None:
            lines.append(f"  dnssec: {DnssecRecords.SAY[r.dnssec]}")
        if r.error:
            lines.append(f"  error: {r.error}")
    return "\n".join(line.rstrip() for line in lines)


async def run_checks(config: Config, qname: str) -> list[CheckResult]:
    """Check every upstream; with ``--dnssec validate``, one that strips DNSSEC records
    fails the check."""
    contexts = TlsContexts(config.cafile)
    results = list(
        await asyncio.gather(
            *(check_upstream(spec, contexts, config.timeout, qname) for spec in config.upstreams)
        )
    )
    mode = getattr(config, "dnssec", "off")  # the option may be an enum of strings
    if getattr(mode, "value", mode) == "validate":
        for result in results:
            if result.dnssec == DnssecRecords.STRIPPED:
                result.ok = False
                result.error = result.error or DnssecRecords.SAY[DnssecRecords.STRIPPED]
    return results


def main(argv: Sequence[str]) -> int:
    """``dns2dot check [--json] [--name NAME] [proxy options]``; exit 1 if any upstream fails."""
    own = argparse.ArgumentParser(prog="dns2dot check", add_help=False)
    own.add_argument("--json", action="store_true", help="print JSON instead of a table")
    own.add_argument(
        "--name",
        default=".",
        help="name to ask for NS records, and for DNSKEY with DO to see whether the "
        "upstream returns DNSSEC records (a name in a signed zone; default .)",
    )
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
