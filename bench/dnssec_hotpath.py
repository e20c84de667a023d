"""The DNSSEC validator's hot path in process: one answer validated over and over with
a warm key cache, per case (signature algorithm, NSEC and NSEC3 denial).

Zones are signed at start with ``tests/support/signed_zone.py`` (dnspython); the
answers are their wire form as a recursive upstream asked with DO and CD returns them,
each in several copies whose TTLs count down as an upstream's cache would, so nothing
keyed on the whole message bytes can help. The first validation of each case fetches
the chain (DS, DNSKEY) from the signed world; the rest run on the key cache alone.

    python -m bench.dnssec_hotpath                   # us per validation, every case
    python -m bench.dnssec_hotpath --profile ed25519 # cProfile of one case
    python -m bench.dnssec_hotpath --instructions    # instructions per validation (valgrind)
    python -m bench.dnssec_hotpath --no-memo         # every answer parsed and its RRSIGs checked

Instructions are counted as in ``bench.hotpath``: cachegrind runs of two lengths,
the difference divided by the difference in validations, so start-up (key making,
signing, imports) cancels out.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.dnssec import signed_zone_support

REPO = Path(__file__).resolve().parents[1]
TTL_COPIES = 16  # copies of each answer with TTLs counting down


@dataclass(frozen=True)
class Case:
    """One answer to validate: a zone signed with ``algorithm`` (``nsec3`` for its
    denial chain), asked ``qname``/``qtype``."""

    zone: str
    algorithm: str
    nsec3: bool
    qname: str
    qtype: str


CASES = {
    "ecdsap256": Case("p256.test.", "ECDSAP256SHA256", False, "www.p256.test.", "A"),
    "rsasha256": Case("rsa.test.", "RSASHA256", False, "www.rsa.test.", "A"),
    "ed25519": Case("ed.test.", "ED25519", False, "www.ed.test.", "A"),
    "nxdomain-nsec": Case("nsec.test.", "ECDSAP256SHA256", False, "nope.nsec.test.", "A"),
    "nxdomain-nsec3": Case("nsec3.test.", "ECDSAP256SHA256", True, "nope.nsec3.test.", "A"),
    "nodata-nsec3": Case("nsec3.test.", "ECDSAP256SHA256", True, "www.nsec3.test.", "TXT"),
}


def prepare(
    case: Case, memo: bool = True, rsa_key: Path | None = None
) -> tuple[Callable[[int], None], list[str]]:
    """A function validating the case's answer ``n`` times on a warm validator, and
    what the first (cold) validation fetched. Without ``memo``, every validation
    parses the answer and checks its signatures (the validator's answer memo is off).
    ``rsa_key`` (PEM) replaces the RSA key the signer would make."""
    sz = signed_zone_support()
    import dns.message
    import dns.rdatatype
    from dns.dnssectypes import Algorithm
    from support.signed_zone import NOW, Nsec3Params, World, Zone, anchor_text, drive

    from dns2dot.policy.dnssec import Done, Security, Validator, parse_anchors

    if rsa_key is not None:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        key = load_pem_private_key(rsa_key.read_bytes(), password=None)
        sz._KEYS[Algorithm.RSASHA256] = sz._KEYS[Algorithm.RSASHA512] = key
    top = Zone("test.")
    child = Zone(
        case.zone,
        Algorithm[case.algorithm],
        nsec3=Nsec3Params(salt=b"\xab\xcd") if case.nsec3 else None,
    )
    for label in ("www", "mail", "ftp", "a.b", "c"):
        child.add(f"{label} 300 IN A 192.0.2.1")
        child.add(f"{label} 300 IN AAAA 2001:db8::1")
    top.delegate(child.sign())
    top.sign()
    world = World(top, child)
    qtype = int(dns.rdatatype.from_text(case.qtype))
    reply = world.resolve(case.qname, qtype)
    copies = []
    for age in range(TTL_COPIES):
        for section in (reply.answer, reply.authority):
            for rrset in section:
                rrset.ttl = 300 - age
        copies.append(reply.to_wire())
    validator = Validator(parse_anchors(anchor_text(top)), memo_entries=4096 if memo else 0)
    first = drive(validator.validate(case.qname, qtype, copies[0], NOW), world.fetch)
    if first.security is Security.BOGUS:
        raise SystemExit(f"dnssec_hotpath: {case.qname} is bogus: {first.reason}")
    fetched = [f"{n} {dns.rdatatype.to_text(t)}" for n, t in world.asked]
    import dns.name

    qname = dns.name.from_text(case.qname)

    def run(n: int) -> None:
        for i in range(n):
            event = validator.validate(qname, qtype, copies[i % TTL_COPIES], NOW).next_event()
            if not isinstance(event, Done) or event.result.security is not first.security:
                raise SystemExit(f"dnssec_hotpath: warm validation of {case.qname}: {event}")

    return run, fetched


def instructions(name: str, extra: list[str]) -> float:
    """Instructions per validation: two cachegrind runs, the difference per validation.

    Both runs load one RSA key made here: making a 2048-bit key takes a number of
    instructions that varies by hundreds of millions from key to key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    handle, key_path = tempfile.mkstemp(suffix=".pem")
    os.write(handle, pem)
    os.close(handle)
    try:
        return _count(name, [*extra, "--rsa-key", key_path])
    finally:
        os.unlink(key_path)


def _count(name: str, extra: list[str]) -> float:
    counts = []
    # Start-up (fresh keys, random signatures) varies by some millions of instructions:
    # the runs differ by enough validations to make that a few hundred per validation.
    sizes = (100, 1100) if "--no-memo" in extra else (500, 10500)
    for size in sizes:
        argv = [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "bench.dnssec_hotpath",
            "--case",
            name,
            "--count",
            str(size),
            "--rounds",
            "1",
            "--quiet",
            *extra,
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True, cwd=REPO)
        found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
        if found is None:
            raise SystemExit(f"dnssec_hotpath: no instruction count from valgrind:\n{done.stderr}")
        counts.append(int(found.group(1).replace(",", "")))
    return (counts[1] - counts[0]) / (sizes[1] - sizes[0])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dnssec_hotpath", description=__doc__)
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="default: all")
    parser.add_argument("--count", type=int, default=2000, help="validations per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instructions", action="store_true", help="count with valgrind")
    parser.add_argument("--profile", choices=sorted(CASES), help="cProfile one case")
    parser.add_argument("--no-memo", action="store_true", help="the validator's memo off")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rsa-key", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile:
        run, _ = prepare(CASES[args.profile], not args.no_memo, args.rsa_key)
        profile = cProfile.Profile()
        profile.runcall(run, args.count)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    extra = ["--no-memo"] if args.no_memo else []
    for name in args.case or list(CASES):
        if args.instructions:
            print(f"{name:16} {instructions(name, extra):>12,.0f} instructions per validation")
            continue
        run, fetched = prepare(CASES[name], not args.no_memo, args.rsa_key)
        rounds = []
        for _ in range(args.rounds):
            start = time.process_time()
            run(args.count)
            rounds.append((time.process_time() - start) / args.count * 1e6)
        rounds.sort()
        if not args.quiet:
            print(
                f"{name:16} median {rounds[len(rounds) // 2]:8.1f} us per validation, "
                f"min {rounds[0]:8.1f} (cold fetches: {', '.join(fetched)})"
            )


if __name__ == "__main__":
    main()
