"""Unit tests for :mod:`dns2dot.x509` (SPKI pins, expiry) and ``check.render_table``.

Certificates are made with trustme (RSA and ECDSA); pins are checked against the
``openssl`` pipeline the README documents, and expiry against what cryptography reads.
Hostile DER must only ever raise :class:`CertificateError`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import shlex
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dns2dot.check import CheckResult, render_table
from dns2dot.protocol import x509
from dns2dot.protocol.errors import Dns2DotError
from dns2dot.protocol.x509 import CertificateError, not_after, spki, spki_pin

UTC = datetime.UTC

# --------------------------------------------------------------------------- helpers


def der_of(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))


def leaf_der(
    key_type: trustme.KeyType = trustme.KeyType.ECDSA,
    *,
    ca_key_type: trustme.KeyType = trustme.KeyType.ECDSA,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> bytes:
    ca = trustme.CA(key_type=ca_key_type)
    leaf = ca.issue_cert("dns.test", not_before=not_before, not_after=not_after, key_type=key_type)
    return der_of(leaf.cert_chain_pems[0].bytes())


def openssl_pin(der: bytes, tmp_path: Path) -> str:
    """The README's pipeline, run by the shell on a PEM file."""
    pem = tmp_path / "cert.pem"
    pem.write_text(ssl.DER_cert_to_PEM_cert(der))
    pipeline = (
        f"openssl x509 -in {shlex.quote(str(pem))} -pubkey -noout"
        " | openssl pkey -pubin -outform der"
        " | openssl dgst -sha256 -binary"
        " | base64"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline],
        capture_output=True,
        check=True,
        timeout=30,
    )
    return done.stdout.decode("ascii").strip()


def der_len(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + der_len(len(body)) + body


def children(der: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, element start, value start, element end) of each element in der[start:end]."""
    out = []
    offset = start
    while offset < end:
        tag, value_start, value_end = x509._read_tlv(der, offset)
        out.append((tag, offset, value_start, value_end))
        offset = value_end
    return out


def tbs_elements(der: bytes) -> tuple[list[bytes], bytes]:
    """The raw elements of tbsCertificate, and what follows it in the certificate."""
    _, cert_start, cert_end = x509._read_tlv(der, 0)
    _, tbs_start, tbs_end = x509._read_tlv(der, cert_start)
    elements = [der[s:e] for _, s, _, e in children(der, tbs_start, tbs_end)]
    return elements, der[tbs_end:cert_end]


def rebuild(elements: list[bytes], rest: bytes) -> bytes:
    return tlv(0x30, tlv(0x30, b"".join(elements)) + rest)


def with_validity(der: bytes, validity: bytes) -> bytes:
    """The certificate with its validity SEQUENCE replaced (signature left stale)."""
    elements, rest = tbs_elements(der)
    elements[4] = validity  # [0] version, serial, signature, issuer, validity
    return rebuild(elements, rest)


def utc_time(text: str) -> bytes:
    return tlv(0x17, text.encode("latin-1"))


def generalized_time(text: str) -> bytes:
    return tlv(0x18, text.encode("latin-1"))


@pytest.fixture(scope="module")
def ecdsa_der() -> bytes:
    return leaf_der(trustme.KeyType.ECDSA)


@pytest.fixture(scope="module")
def rsa_der() -> bytes:
    return leaf_der(trustme.KeyType.RSA, ca_key_type=trustme.KeyType.RSA)


_SAMPLE = leaf_der()  # for the hypothesis strategies and explicit examples


# --------------------------------------------------------------------------- pins


@pytest.mark.parametrize(
    ("key_type", "ca_key_type"),
    [
        (trustme.KeyType.ECDSA, trustme.KeyType.ECDSA),
        (trustme.KeyType.RSA, trustme.KeyType.RSA),
        (trustme.KeyType.RSA, trustme.KeyType.ECDSA),
        (trustme.KeyType.ECDSA, trustme.KeyType.RSA),
    ],
)
def test_spki_pin_matches_openssl(
    tmp_path: Path, key_type: trustme.KeyType, ca_key_type: trustme.KeyType
) -> None:
    der = leaf_der(key_type, ca_key_type=ca_key_type)
    assert spki_pin(der) == openssl_pin(der, tmp_path)


def test_spki_matches_cryptography(ecdsa_der: bytes, rsa_der: bytes) -> None:
    for der in (ecdsa_der, rsa_der):
        cert = cx509.load_der_x509_certificate(der)
        expected = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert spki(der) == expected
        assert spki_pin(der) == base64.b64encode(hashlib.sha256(expected).digest()).decode()


def test_pin_format(rsa_der: bytes) -> None:
    pin = spki_pin(rsa_der)
    assert len(pin) == 44
    assert pin.endswith("=")
    assert len(base64.b64decode(pin)) == 32


def test_ca_certificate_pin(tmp_path: Path) -> None:
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    der = der_of(ca.cert_pem.bytes())
    assert spki_pin(der) == openssl_pin(der, tmp_path)


def test_pin_differs_per_key_not_per_certificate() -> None:
    ca = trustme.CA()
    one = ca.issue_cert("a.test")
    two = ca.issue_cert("a.test")
    assert spki_pin(der_of(one.cert_chain_pems[0].bytes())) != spki_pin(
        der_of(two.cert_chain_pems[0].bytes())
    )


def test_v1_certificate_without_version_field(ecdsa_der: bytes) -> None:
    elements, rest = tbs_elements(ecdsa_der)
    assert elements[0][0] == 0xA0
    v1 = rebuild(elements[1:], rest)
    assert spki_pin(v1) == spki_pin(ecdsa_der)
    assert not_after(v1) == not_after(ecdsa_der)


# --------------------------------------------------------------------------- not_after


@pytest.mark.parametrize(
    "when",
    [
        datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC),  # UTCTime
        datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),  # last UTCTime year
        datetime.datetime(2050, 1, 1, 0, 0, 0, tzinfo=UTC),  # GeneralizedTime from here
        datetime.datetime(2123, 4, 5, 6, 7, 8, tzinfo=UTC),
    ],
)
@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA])
def test_not_after(when: datetime.datetime, key_type: trustme.KeyType) -> None:
    der = leaf_der(key_type, ca_key_type=key_type, not_after=when)
    got = not_after(der)
    assert got == when
    assert got.tzinfo is not None
    assert got == cx509.load_der_x509_certificate(der).not_valid_after_utc


def test_not_after_default_trustme_cert(ecdsa_der: bytes) -> None:
    assert not_after(ecdsa_der) == cx509.load_der_x509_certificate(ecdsa_der).not_valid_after_utc


def test_not_after_in_the_past() -> None:
    when = datetime.datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
    der = leaf_der(not_before=datetime.datetime(2000, 1, 1, tzinfo=UTC), not_after=when)
    assert not_after(der) == when


def test_not_after_utctime_years_50_to_99_are_19xx() -> None:
    """RFC 5280 §4.1.2.5.1: a UTCTime year YY >= 50 is 19YY. ``strptime('%y')`` maps
    only 69-99 to 19YY, so a certificate that expired in 1960 reads as 2060."""
    when = datetime.datetime(1960, 1, 1, tzinfo=UTC)
    der = leaf_der(not_before=datetime.datetime(1955, 1, 1, tzinfo=UTC), not_after=when)
    assert cx509.load_der_x509_certificate(der).not_valid_after_utc == when
    assert not_after(der) == when


def test_not_after_hand_made_times(ecdsa_der: bytes) -> None:
    start = utc_time("250101000000Z")
    cases = {
        utc_time("491231235959Z"): datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
        utc_time("700101000000Z"): datetime.datetime(1970, 1, 1, tzinfo=UTC),
        generalized_time("20991231235959Z"): datetime.datetime(
            2099, 12, 31, 23, 59, 59, tzinfo=UTC
        ),
        generalized_time("99991231235959Z"): datetime.datetime(
            9999, 12, 31, 23, 59, 59, tzinfo=UTC
        ),
    }
    for end, expected in cases.items():
        der = with_validity(ecdsa_der, tlv(0x30, start + end))
        assert not_after(der) == expected
        assert spki_pin(der) == spki_pin(ecdsa_der)


# --------------------------------------------------------------------------- hostile DER


def raises_certificate_error(der: bytes) -> None:
    for function in (spki_pin, spki, not_after):
        with pytest.raises(CertificateError):
            function(der)


def test_certificate_error_is_a_dns2dot_error() -> None:
    assert issubclass(CertificateError, Dns2DotError)


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30",
        b"\x30\x00",
        b"\x30\x80",  # indefinite length: not DER
        b"\x30\x85\x00\x00\x00\x00\x01",  # a length of more than 4 octets
        b"\x30\x84\xff\xff\xff\xff",  # 4 GiB claimed
        b"\x30\x84\x7f\xff\xff\xff" + b"\x00" * 64,
        b"\x30\x82\x01\x00" + b"\x30" * 10,
        b"\x30\x03\x30\x01",  # inner length beyond the data
        b"\x30\x02\x30\x00",  # empty tbsCertificate
        b"\x31\x02\x30\x00",  # a SET, not a SEQUENCE
        b"\x30\x04\x02\x02\x01\x00",  # tbsCertificate is an INTEGER
        b"\x04\x03abc",
        b"\x00" * 100,
        b"\xff" * 100,
        b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    ],
)
def test_hostile_der(der: bytes) -> None:
    raises_certificate_error(der)


def test_every_truncation(ecdsa_der: bytes) -> None:
    for length in range(len(ecdsa_der)):
        raises_certificate_error(ecdsa_der[:length])


def test_wrong_outer_tags(ecdsa_der: bytes) -> None:
    for offset in (0, 4):  # the certificate and tbsCertificate tags (2-octet lengths)
        assert ecdsa_der[offset] == 0x30
        for tag in (0x00, 0x02, 0x04, 0x31, 0xA0, 0xFF):
            bad = bytearray(ecdsa_der)
            bad[offset] = tag
            raises_certificate_error(bytes(bad))


def test_too_few_tbs_fields(ecdsa_der: bytes) -> None:
    elements, rest = tbs_elements(ecdsa_der)
    for keep in range(0, 6):  # version + at most 5 of the 6 required fields
        raises_certificate_error(rebuild(elements[:keep], rest))


def test_huge_length_inside_tbs(ecdsa_der: bytes) -> None:
    elements, rest = tbs_elements(ecdsa_der)
    elements[1] = b"\x02\x84\x7f\xff\xff\xff\x01"  # serial claims 2 GiB
    raises_certificate_error(rebuild(elements, rest))


@pytest.mark.parametrize(
    "end",
    [
        utc_time("not a time!!"),
        utc_time("991332000000Z"),  # month 13
        generalized_time("20250101000000.5Z"),  # fractional seconds are not DER
        generalized_time("20250101000000+0100"),
        utc_time(""),
        b"\x17\x00",
    ],
)
def test_bad_validity_times(ecdsa_der: bytes, end: bytes) -> None:
    der = with_validity(ecdsa_der, tlv(0x30, utc_time("250101000000Z") + end))
    with pytest.raises(CertificateError):
        not_after(der)
    assert spki_pin(der) == spki_pin(ecdsa_der)  # the pin does not need the validity


def test_validity_missing_not_after(ecdsa_der: bytes) -> None:
    """Without a notAfter, ``not_after`` reads on into the subject (it checks neither
    the tag nor the end of the validity SEQUENCE) and fails with UnicodeDecodeError."""
    with pytest.raises(CertificateError):
        not_after(with_validity(ecdsa_der, tlv(0x30, utc_time("250101000000Z"))))
    with pytest.raises(CertificateError):
        not_after(with_validity(ecdsa_der, tlv(0x30, b"")))


def test_non_ascii_validity_time_is_a_certificate_error(ecdsa_der: bytes) -> None:
    """Reproducer: a notAfter whose text is not ASCII makes ``not_after`` raise
    UnicodeDecodeError, which ``check._describe_der`` does not catch, so ``dns2dot
    check`` against an upstream presenting such a certificate dies with a traceback."""
    der = with_validity(
        ecdsa_der, tlv(0x30, utc_time("250101000000Z") + tlv(0x17, b"\xff50101000000Z"))
    )
    with pytest.raises(CertificateError):
        not_after(der)


# --------------------------------------------------------------------------- hypothesis


@st.composite
def mutated_certificates(draw: st.DrawFn) -> bytes:
    data = bytearray(_SAMPLE)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from([0x00, 0x30, 0x7F, 0x80, 0x84, 0xFF]))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


def only_certificate_errors(der: bytes) -> None:
    for function in (spki_pin, not_after):
        with contextlib.suppress(CertificateError):
            function(der)


@given(st.binary(max_size=600))
@settings(max_examples=1000, deadline=None)
def test_property_random_bytes(der: bytes) -> None:
    only_certificate_errors(der)


@given(
    st.builds(
        lambda inner, tail: tlv(0x30, tlv(0x30, inner) + tail),
        st.binary(max_size=200),
        st.binary(max_size=20),
    )
)
@settings(max_examples=1000, deadline=None)
def test_property_random_sequences(der: bytes) -> None:
    only_certificate_errors(der)


@given(mutated_certificates())
@example(
    with_validity(_SAMPLE, tlv(0x30, utc_time("250101000000Z") + tlv(0x17, b"\xff50101000000Z")))
)
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_mutated_certificates(der: bytes) -> None:
    only_certificate_errors(der)


# --------------------------------------------------------------------------- check table


def results() -> list[CheckResult]:
    return [
        CheckResult(
            "127.0.0.1:8853#dns.test",
            ok=True,
            connect_ms=0.4,
            tls_version="TLSv1.3",
            cipher="TLS_AES_256_GCM_SHA384",
            subject="dns.test",
            issuer="Example CA",
            expires="2036-01-01",
            pin="eBMGaIkGSCYseRfYEN2+rNtWTs2uO6OVtXf6Rz9bezo=",
            verified=True,
            pin_ok=True,
            query_ms=1.23,
            rcode="NOERROR",
        ),
        CheckResult("192.0.2.1:853#down.test", error="connection refused"),
        CheckResult(
            "127.0.0.1:9953#pinned.test",
            connect_ms=12.0,
            tls_version="TLSv1.2",
            cipher="ECDHE-ECDSA-AES128-GCM-SHA256",
            subject="pinned.test",
            issuer="Other CA",
            expires="2030-06-30",
            pin="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            verified=True,
            pin_ok=False,
            error="certificate key matches none of the configured pins",
        ),
        CheckResult(
            "[::1]:853",
            expires="2020-01-01",
            pin="BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=",
            error="certificate verification failed: certificate has expired",
        ),
    ]


def test_render_table_rows() -> None:
    lines = render_table(results()).split("\n")
    header = lines[0]
    assert header.split() == ["upstream", "status", "connect", "tls", "expires", "query"]
    rows = lines[1:5]
    assert rows[0].split() == [
        "127.0.0.1:8853#dns.test",
        "ok",
        "0.4ms",
        "TLSv1.3",
        "TLS_AES_256_GCM_SHA384",
        "2036-01-01",
        "1.2ms",
        "NOERROR",
    ]
    assert rows[1].split() == ["192.0.2.1:853#down.test", "FAIL", "-", "-", "-", "-"]
    assert rows[2].split() == [
        "127.0.0.1:9953#pinned.test",
        "FAIL",
        "12.0ms",
        "TLSv1.2",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "2030-06-30",
        "-",
    ]
    assert rows[3].split() == ["[::1]:853", "FAIL", "-", "-", "2020-01-01", "-"]
    # Fixed width: every column starts where its header does.
    for column in ("status", "connect", "tls", "expires", "query"):
        at = header.index(column)
        for row in rows:
            assert row[at - 2 : at] == "  "
            assert row[at] != " "
    assert lines[5] == ""
    assert all(line == line.rstrip() for line in lines)


def test_render_table_details() -> None:
    text = render_table(results())
    blocks = text.split("\n\n")[1:]
    assert blocks[0].split("\n") == [
        "127.0.0.1:8853#dns.test",
        "  subject: dns.test",
        "  issuer:  Example CA",
        "  pin-sha256: eBMGaIkGSCYseRfYEN2+rNtWTs2uO6OVtXf6Rz9bezo= (matches a configured pin)",
    ]
    assert blocks[1].split("\n") == [
        "192.0.2.1:853#down.test",
        "  pin-sha256: -",
        "  error: connection refused",
    ]
    assert blocks[2].split("\n") == [
        "127.0.0.1:9953#pinned.test",
        "  subject: pinned.test",
        "  issuer:  Other CA",
        "  pin-sha256: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= (NOT a configured pin)",
        "  error: certificate key matches none of the configured pins",
    ]
    assert blocks[3].split("\n") == [
        "[::1]:853",
        "  pin-sha256: BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=",
        "  error: certificate verification failed: certificate has expired",
    ]
    assert len(blocks) == 4


def test_render_table_empty() -> None:
    assert render_table([]).split() == ["upstream", "status", "connect", "tls", "expires", "query"]


def test_render_table_with_a_real_pin(ecdsa_der: bytes) -> None:
    result = CheckResult(
        "127.0.0.1:853#dns.test",
        ok=True,
        pin=spki_pin(ecdsa_der),
        expires=not_after(ecdsa_der).strftime("%Y-%m-%d"),
        pin_ok=True,
    )
    text = render_table([result])
    assert f"  pin-sha256: {spki_pin(ecdsa_der)} (matches a configured pin)" in text
    assert not_after(ecdsa_der).strftime("%Y-%m-%d") in text.split("\n")[1]
