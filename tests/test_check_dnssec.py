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
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.rdatatype
import pytest
from support.fake_upstream import FakeUpstream
from support.net import LOOPBACK, free_port
from support.pki import Pki
from support.proc import run_dns2dot
from support.signed_zone import World, Zone, zone_text
from support.unbound import dot_query, dot_spec, launch_unbound, stop_process, unbound_exe

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
    zone_file = tmp_path / "signed.test.zone"
    zone_file.write_text(zone_text(_signed()))
    port = free_port()
    config = "\n".join(
        [
            "server:",
            '    username: ""',
            '    chroot: ""',
            f'    directory: "{tmp_path}"',
            '    pidfile: ""',
            "    use-syslog: no",
            '    logfile: ""',
            "    num-threads: 1",
            f"    interface: {LOOPBACK}@{port}",
            f"    tls-port: {port}",
            f'    tls-service-key: "{pki.good.key}"',
            f'    tls-service-pem: "{pki.good.cert}"',
            "    do-ip6: no",
            "    access-control: 127.0.0.0/8 allow",
            '    module-config: "iterator"',
            # Never the internet: all but the signed zone is answered locally.
            '    local-zone: "." static',
            '    local-zone: "signed.test." transparent',
            "auth-zone:",
            '    name: "signed.test."',
            f'    zonefile: "{zone_file}"',
            "    for-downstream: yes",
            "    for-upstream: no",
            "remote-control:",
            "    control-enable: no",
            "",
        ]
    )
    proc, log, log_path = launch_unbound(unbound_exe(), tmp_path, config)
    try:
        deadline = time.monotonic() + 15
        for _ in range(150):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            try:
                if dot_query(pki, port, "www.signed.test.", timeout=1.0).answer:
                    break
            except (OSError, dns.exception.DNSException):
                pass
            time.sleep(0.1)
        else:
            raise AssertionError(f"unbound did not serve the zone:\n{log_path.read_text()}")
        assert proc.poll() is None, log_path.read_text()
        yield dot_spec(port)
    finally:
        stop_process(proc, log)


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
    config = config_module.load(["-u", fake.spec, "--cafile", str(pki.ca)])
    plain = asyncio.run(run_checks(config, "."))
    assert plain[0].ok and plain[0].dnssec == "stripped"
    validating = asyncio.run(run_checks(_Validating(config), "."))  # type: ignore[arg-type]
    assert not validating[0].ok and validating[0].error == STRIPS
