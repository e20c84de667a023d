"""Throwaway PKI made at test time with trustme.

Why: dns2dot must verify chain, name and validity; the fixtures need one good
certificate and one for each way verification can fail, as PEM files on disk
(unbound and dns2dot read files, not objects).
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

#: The TLS name every good upstream certificate carries.
TLS_NAME = "dns.test"


@dataclass(frozen=True)
class CertFiles:
    """A leaf certificate: chain PEM (leaf first) and private key PEM."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """All PEM files of the test PKI.

    ``ca`` signs ``good`` (dns.test + 127.0.0.1 + ::1), ``wrong_name`` (wrong.test
    only) and ``expired`` (dns.test, validity ended a year ago). ``untrusted_ca``
    signs ``untrusted`` (dns.test + 127.0.0.1); dns2dot is never told about it.
    """

    dir: Path
    ca: Path
    untrusted_ca: Path
    good: CertFiles
    wrong_name: CertFiles
    expired: CertFiles
    untrusted: CertFiles

    def leaf(self, kind: str) -> CertFiles:
        """Return the leaf named ``good``, ``wrong_name``, ``expired`` or ``untrusted``."""
        try:
            return {
                "good": self.good,
                "wrong_name": self.wrong_name,
                "expired": self.expired,
                "untrusted": self.untrusted,
            }[kind]
        except KeyError:
            raise ValueError(f"unknown certificate kind {kind!r}") from None

    def server_context(self, kind: str = "good") -> ssl.SSLContext:
        """A TLS server context presenting the leaf ``kind`` (TLS 1.2+)."""
        files = self.leaf(kind)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(files.cert), str(files.key))
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context trusting only ``ca`` (for probing fixtures)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


def _write_leaf(leaf: trustme.LeafCert, directory: Path, stem: str) -> CertFiles:
    cert = directory / f"{stem}.pem"
    key = directory / f"{stem}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    key.chmod(0o600)
    return CertFiles(cert=cert, key=key)


def make_pki(directory: Path) -> Pki:
    """Create the CA, the second (untrusted) CA and the four leaves under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca = trustme.CA(organization_name="dns2dot test CA")
    other = trustme.CA(organization_name="dns2dot untrusted CA")

    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    other_path = directory / "untrusted-ca.pem"
    other.cert_pem.write_to_path(str(other_path))

    good = ca.issue_cert(TLS_NAME, "127.0.0.1", "::1", common_name=TLS_NAME)
    wrong = ca.issue_cert("wrong.test", common_name="wrong.test")
    expired = ca.issue_cert(
        TLS_NAME,
        "127.0.0.1",
        common_name=TLS_NAME,
        not_before=now - datetime.timedelta(days=730),
        not_after=now - datetime.timedelta(days=365),
    )
    untrusted = other.issue_cert(TLS_NAME, "127.0.0.1", common_name=TLS_NAME)

    return Pki(
        dir=directory,
        ca=ca_path,
        untrusted_ca=other_path,
        good=_write_leaf(good, directory, "dns.test"),
        wrong_name=_write_leaf(wrong, directory, "wrong.test"),
        expired=_write_leaf(expired, directory, "expired"),
        untrusted=_write_leaf(untrusted, directory, "untrusted"),
    )
