"""Just enough DER to pin a certificate's key (RFC 7858 §4.2, RFC 7469 §2.4).

A pin is the base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo, the
same string ``openssl x509 -pubkey | openssl pkey -pubin -outform der | openssl dgst
-sha256 -binary | base64`` prints. The ``ssl`` module hands out the certificate as
DER only, and pulling in a full X.509 library for one field is not worth it: this
walks the outer structure of the certificate and nothing more.
"""

from __future__ import annotations

import base64
import datetime
import hashlib

from dns2dot.protocol.errors import CertificateError

__all__ = ["CertificateError", "not_after", "spki", "spki_pin"]


def _read_tlv(der: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the element at ``offset``."""
    if offset + 2 > len(der):
        raise CertificateError("truncated DER")
    tag = der[offset]
    length = der[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or offset + count > len(der):
            raise CertificateError("bad DER length")
        length = int.from_bytes(der[offset : offset + count], "big")
        offset += count
    end = offset + length
    if end > len(der):
        raise CertificateError("truncated DER")
    return tag, offset, end


def _tbs_fields(der: bytes) -> list[tuple[int, int, int]]:
    """The elements of tbsCertificate, each as (tag, element start, element end)."""
    tag, start, _ = _read_tlv(der, 0)
    if tag != 0x30:
        raise CertificateError("certificate is not a SEQUENCE")
    tag, tbs_start, tbs_end = _read_tlv(der, start)
    if tag != 0x30:
        raise CertificateError("tbsCertificate is not a SEQUENCE")
    fields = []
    offset = tbs_start
    while offset < tbs_end:
        tag, _, end = _read_tlv(der, offset)
        fields.append((tag, offset, end))
        offset = end
    if fields and fields[0][0] == 0xA0:  # explicit [0] version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ...
    if len(fields) < 6:
        raise CertificateError("tbsCertificate too short")
    return fields


def spki(der: bytes) -> bytes:
    """The DER of the certificate's SubjectPublicKeyInfo."""
    _, start, end = _tbs_fields(der)[5]
    return der[start:end]


def spki_pin(der: bytes) -> str:
    """The RFC 7469 pin of a DER certificate: base64(SHA-256(SubjectPublicKeyInfo))."""
    return base64.b64encode(hashlib.sha256(spki(der)).digest()).decode("ascii")


def not_after(der: bytes) -> datetime.datetime:
    """The end of the certificate's validity, in UTC (RFC 5280 §4.1.2.5)."""
    _, start, _ = _tbs_fields(der)[3]
    tag, validity_start, validity_end = _read_tlv(der, start)
    if tag != 0x30:
        raise CertificateError("validity is not a SEQUENCE")
    _, _, not_before_end = _read_tlv(der, validity_start)
    if not_before_end >= validity_end:
        raise CertificateError("validity has no notAfter")
    tag, time_start, time_end = _read_tlv(der, not_before_end)
    if tag not in (0x17, 0x18) or time_end > validity_end:
        raise CertificateError("notAfter is not a UTCTime or GeneralizedTime")
    try:
        text = der[time_start:time_end].decode("ascii")
    except UnicodeDecodeError:
        raise CertificateError("notAfter is not ASCII") from None
    try:
        if tag == 0x18:
            moment = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ")
        else:
            moment = datetime.datetime.strptime(text, "%y%m%d%H%M%SZ")
            # RFC 5280 §4.1.2.5.1: two-digit years 50-99 are 19xx, 00-49 are 20xx.
            if int(text[:2]) >= 50 and moment.year >= 2000:
                moment = moment.replace(year=moment.year - 100)
    except ValueError:
        raise CertificateError(f"bad validity time {text!r}") from None
    return moment.replace(tzinfo=datetime.UTC)
