"""``--dnssec validate`` with real parts: unbound serves a zone signed here by dnspython
(``auth-zone``, over DoT with a throwaway CA), dns2dot validates in front of it with the
zone's own DS as ``--trust-anchor``, and ``dig`` asks. A secure answer carries AD (and
its RRSIGs with +dnssec), a record changed after signing is SERVFAIL with EDE 6, and
+cd passes it through. See docs/ARCHITECTURE.md, "serve/validation.py".
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.net import LOOPBACK
from support.pki import Pki
from support.proc import Dns2Dot, require_tool, run_dns2dot, running_dns2dot
from support.signed_zone import signed_zone_file
from support.unbound import start_auth_unbound

ZONE = "signed.test."
RECORDS = [
    "www 300 IN A 192.0.2.80",
    "bad 300 IN A 192.0.2.81",
]
# No wildcard here: unbound 1.17's auth-zone answers a wildcard expansion with the
# wildcard's NSEC expanded too (owner = the query name, RRSIG labels one short), which
# proves nothing, so a strict validator calls it bogus. tests/test_dnssec_resolver.py
# covers wildcards against answers as RFC 4035 §3.1.3.3 has them.


@pytest.fixture(scope="module")
def signed(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """unbound serving the signed zone: its ``-u`` spec and the zone's anchor file."""
    directory = tmp_path_factory.mktemp("dnssec")
    text, anchor = signed_zone_file(ZONE, RECORDS, tamper={"bad": "192.0.2.66"})
    anchor_file = directory / "anchor.ds"
    anchor_file.write_text(anchor)
    up = start_auth_unbound(directory / "unbound", pki, {ZONE: text}, f"www.{ZONE}")
    try:
        yield up.spec, anchor_file
    finally:
        up.stop()


@pytest.fixture(scope="module")
def validating(
    pki: Pki, signed: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dns2Dot]:
    spec, anchor_file = signed
    with running_dns2dot(
        tmp_path_factory.mktemp("validating"),
        upstreams=[spec],
        cafile=pki.ca,
        extra=["--dnssec", "validate", "--trust-anchor", str(anchor_file)],
    ) as d:
        yield d


def dig(port: int, *args: str) -> str:
    exe = require_tool("dig")
    out = subprocess.run(
        [exe, f"@{LOOPBACK}", "-p", str(port), "+tries=1", "+time=5", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return out.stdout


def flags(output: str) -> set[str]:
    for line in output.splitlines():
        if line.startswith(";; flags:"):
            return set(line.split(":")[1].split(";")[0].split())
    raise AssertionError(f"no flags line in:\n{output}")


def records(output: str, rtype: str) -> list[str]:
    return [
        line
        for line in output.splitlines()
        if not line.startswith(";") and len(line.split()) > 3 and line.split()[3] == rtype
    ]


def test_secure_answer_has_ad_and_its_signatures_with_dnssec(validating: Dns2Dot) -> None:
    out = dig(validating.port, "+dnssec", f"www.{ZONE}", "A")
    assert "status: NOERROR" in out and "ad" in flags(out), out
    assert records(out, "A") and records(out, "RRSIG"), out


def test_secure_answer_without_dnssec_has_no_signatures(validating: Dns2Dot) -> None:
    out = dig(validating.port, "+adflag", f"www.{ZONE}", "A")
    assert "status: NOERROR" in out and "ad" in flags(out), out
    assert records(out, "A") and not records(out, "RRSIG"), out
    plain = dig(validating.port, "+noadflag", f"www.{ZONE}", "A")
    assert "ad" not in flags(plain) and not records(plain, "RRSIG"), plain


def test_secure_denial(validating: Dns2Dot) -> None:
    nx = dig(validating.port, "+dnssec", f"nope.{ZONE}", "A")
    assert "status: NXDOMAIN" in nx and "ad" in flags(nx), nx
    assert records(nx, "NSEC"), nx
    nx_plain = dig(validating.port, f"nope.{ZONE}", "A")
    assert "status: NXDOMAIN" in nx_plain and not records(nx_plain, "NSEC"), nx_plain
    assert records(nx_plain, "SOA"), nx_plain


def test_tampered_record_is_servfail_with_ede_6(validating: Dns2Dot) -> None:
    out = dig(validating.port, "+dnssec", f"bad.{ZONE}", "A")
    assert "status: SERVFAIL" in out and not records(out, "A"), out
    assert "EDE: 6" in out, out
    assert f"bad.{ZONE}" in validating.stderr() or ZONE in validating.stderr()


def test_cd_passes_the_tampered_answer_through(validating: Dns2Dot) -> None:
    out = dig(validating.port, "+cd", f"bad.{ZONE}", "A")
    assert "status: NOERROR" in out and "ad" not in flags(out), out
    assert any("192.0.2.66" in line for line in records(out, "A")), out


def test_unbound_serves_the_signatures(validating: Dns2Dot) -> None:
    """What the wiring relies on: the auth-zone hands over DNSKEY with its RRSIG."""
    out = dig(validating.port, "+dnssec", ZONE, "DNSKEY")
    assert "status: NOERROR" in out and records(out, "DNSKEY") and records(out, "RRSIG"), out


def test_a_bad_trust_anchor_file_is_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "anchor"
    bad.write_text(f"www.{ZONE} 300 IN A 192.0.2.1\n")
    res = run_dns2dot(["--dnssec", "validate", "--trust-anchor", str(bad)])
    assert res.returncode == 2, res.stderr
    [line] = res.stderr.strip().splitlines()
    assert "--trust-anchor" in line


def test_sighup_turns_validation_on(pki: Pki, signed: tuple[str, Path], tmp_path: Path) -> None:
    spec, anchor_file = signed
    conf = tmp_path / "dns2dot.yml"
    conf.write_text(f'upstreams: ["{spec}"]\ndnssec: "off"\n')
    # The YAML says whether it validates: no DNS2DOT_DNSSEC from the harness over it.
    with running_dns2dot(
        tmp_path, cafile=pki.ca, extra=["-c", str(conf)], env={"DNS2DOT_DNSSEC": None}
    ) as d:
        off = dig(d.port, "+adflag", f"bad.{ZONE}", "A")
        assert "status: NOERROR" in off and "ad" not in flags(off), off
        conf.write_text(
            f'upstreams: ["{spec}"]\ndnssec: validate\ntrust_anchor: ["{anchor_file}"]\n'
        )
        d.proc.send_signal(signal.SIGHUP)
        for _ in range(100):  # bounded: up to 10 s for the reload line
            if "reloaded the configuration" in d.stderr():
                break
            time.sleep(0.1)
        assert "reloaded the configuration" in d.stderr(), d.stderr()
        on = dig(d.port, "+adflag", f"www.{ZONE}", "A")
        assert "status: NOERROR" in on and "ad" in flags(on), on
        bogus = dig(d.port, f"bad.{ZONE}", "A")
        assert "status: SERVFAIL" in bogus, bogus
