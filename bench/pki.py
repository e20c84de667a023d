"""A throwaway CA and a server certificate for the DoT upstream.

Everything is made fresh per run (trustme), so nothing trusted outside the run exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TLS_NAME = "dns.test"


@dataclass(frozen=True)
class Pki:
    """Paths of the files the upstream and the peers read."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path
    name: str = TLS_NAME


def make_pki(directory: Path, name: str = TLS_NAME) -> Pki:
    """Write ca.pem, <name>.pem (leaf + chain) and <name>.key into ``directory``.

    The leaf carries ``name`` both as SAN and as CN, because socat 1.7's ``commonname``
    check and the other peers' SAN checks must all pass against the same certificate.
    """
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - environment problem, said loudly
        raise SystemExit(
            "bench: trustme is not installed: pip install -r bench/requirements.txt"
        ) from exc
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(name, "127.0.0.1", common_name=name)
    pki = Pki(
        ca_pem=directory / "ca.pem",
        cert_pem=directory / f"{name}.pem",
        key_pem=directory / f"{name}.key",
        name=name,
    )
    ca.cert_pem.write_to_path(str(pki.ca_pem))
    leaf.private_key_pem.write_to_path(str(pki.key_pem))
    with open(pki.cert_pem, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    pki.key_pem.chmod(0o600)
    return pki
