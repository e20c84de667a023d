"""``dns2dot check`` says whether each upstream returns DNSSEC records.

An upstream that strips RRSIGs makes every signed zone bogus under ``--dnssec
validate``, and the operator should hear it from ``check`` rather than from SERVFAILs.
Three upstreams: the in-process fake (its table has no DNSSEC: it strips), the fake
answering from a zone signed in the test (it returns them), and real unbound serving
that signed zone from ``auth-zone`` over DoT.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.rdatatype
import pytest
from support.fake_upstream import FakeUpstream
from support.pki import Pki
from support.proc import run_dns2dot
from support.signed_zone import World, Zone, zone_text
from support.unbound import start_auth_unbound

pytestmark = pytest.mark.integration

STRIPS = "strips DNSSEC records: with --dnssec validate every signed zone would be bogus"
RETURNS = "returns DNSSEC records (RRSIG present)"


def _signed() -> Zone:
    zone = Zone("signed.test.")
    zone.add("www 300 IN A 192.0.2.1")
    return zone.sign()


class SignedFake(FakeUpstream):
    """The fake upstream answering from a signed zone, RRSIGs included, as a resolver
    asked with DO and CD does."""

    def __init__(self, pki: Pki, zone: Zone) -> None:
        super().__init__(pki)
        self.world = World(zone)

    def _write_answer(
        self,
        writer: asyncio.StreamWriter,
        mode: str,
        msg: dns.message.Message | None,
        wire: bytes,
    ) -> None:
        assert msg is not None and msg.question
        question = msg.question[0]
        reply = self.world.resolve(question.name, question.rdtype)
        reply.id = msg.id
        reply.use_edns(0, ednsflags=msg.ednsflags, payload=1232)
        out = reply.to_wire()
        writer.write(struct.pack("!H", len(out)) + out)


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return run_dns2dot(["check", *args], timeout=30)


def test_an_upstream_without_dnssec_records_is_said_to_strip_them(
    fake_upstream: Callable[..., FakeUpstream], pki: Pki
) -> None:
    fake = fake_upstream()
    res = check("-u", fake.spec, "--cafile", str(pki.ca))
    assert res.returncode == 0, res  # only a failure with --dnssec validate
    assert f"dnssec: {STRIPS}" in res.stdout, res.stdout
    asked = [r.msg for r in fake.received if r.msg is not None and r.msg.question]
    probe = [m for m in asked if m.question[0].rdtype == dns.rdatatype.DNSKEY]
    assert probe and probe[0].ednsflags & dns.flags.DO and probe[0].flags & dns.flags.CD
    res = check("--json", "-u", fake.spec, "--cafile", str(pki.ca))
    assert json.loads(res.stdout)[0]["dnssec"] == "stripped", res.stdout


def test_an_upstream_with_rrsigs_is_said_to_return_them(pki: Pki) -> None:
    fake = SignedFake(pki, _signed()).start()
    try:
        for name in ("signed.test.", "www.signed.test."):  # apex DNSKEY; NODATA below it
            res = check("-u", fake.spec, "--cafile", str(pki.ca), "--name", name)
            assert res.returncode == 0, res
            assert f"dnssec: {RETURNS}" in res.stdout, res.stdout
    finally:
        fake.stop()


@pytest.fixture
def signed_unbound(tmp_path: Path, pki: Pki) -> Iterator[str]:
    """unbound serving the signed zone from ``auth-zone`` over DoT; yields its spec."""
    zones = {"signed.test.": zone_text(_signed())}
    up = start_auth_unbound(tmp_path / "unbound", pki, zones, "www.signed.test.")
    try:
        yield up.spec
    finally:
        up.stop()


def test_real_unbound_serving_a_signed_zone_returns_dnssec_records(
    signed_unbound: str, pki: Pki
) -> None:
    res = check("-u", signed_unbound, "--cafile", str(pki.ca), "--name", "signed.test.")
    assert res.returncode == 0, res
    assert f"dnssec: {RETURNS}" in res.stdout, res.stdout
    assert "NOERROR" in res.stdout, res.stdout


class _Validating:
    """A configuration as ``--dnssec validate`` makes it (whether or not this dns2dot
    has the option yet): everything else from ``config``."""

    dnssec = "validate"

    def __init__(self, config: object) -> None:
        self._config = config

    def __getattr__(self, name: str) -> object:
        return getattr(self._config, name)


def test_with_dnssec_validate_an_upstream_that_strips_fails_the_check(
    fake_upstream: Callable[..., FakeUpstream], pki: Pki
) -> None:
    from dns2dot import config as config_module
    from dns2dot.check import run_checks

    fake = fake_upstream()
    config = config_module.load(["-u", fake.spec, "--cafile", str(pki.ca), "--dnssec", "off"])
    plain = asyncio.run(run_checks(config, "."))
    assert plain[0].ok and plain[0].dnssec == "stripped"
    validating = asyncio.run(run_checks(_Validating(config), "."))  # type: ignore[arg-type]
    assert not validating[0].ok and validating[0].error == STRIPS
