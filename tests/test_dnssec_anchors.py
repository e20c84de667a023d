"""Trust anchors (built-in root, files, negative anchors) and the key cache."""

from __future__ import annotations

from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdata
import pytest

from dns2dot.policy.dnssec import (
    KeyCache,
    Link,
    LinkKind,
    TrustAnchors,
    load_anchor_files,
    parse_anchors,
    root_anchors,
)
from dns2dot.protocol.errors import ConfigError

KEY = (
    "257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+"
    "KkxLbxILfDLUT0rAK9iUzy1L53eKGQ=="
)


def n(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def test_built_in_root_anchors_are_ianas_ksk_2017_and_ksk_2024() -> None:
    anchors = root_anchors()
    assert list(anchors.anchors) == [dns.name.root]
    ds = {d.key_tag: d for d in anchors.anchors[dns.name.root].ds}
    assert set(ds) == {20326, 38696}
    assert all(d.algorithm == 8 and d.digest_type == 2 for d in ds.values())
    assert ds[20326].digest.hex().upper() == (
        "E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"
    )
    assert ds[38696].digest.hex().upper() == (
        "683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16"
    )
    assert anchors.closest(n("www.example.com.")).zone == dns.name.root  # type: ignore[union-attr]
    assert anchors.negative == frozenset()


# The root zone's two key-signing keys as the root zone publishes them (DNSKEY 257 3 8).
ROOT_KSKS = {
    20326: "AwEAAaz/tAm8yTn4Mfeh5eyI96WSVexTBAvkMgJzkKTOiW1vkIbzxeF3+/4RgWOq7HrxRixHlFlExOLAJr5e"
    "mLvN7SWXgnLh4+B5xQlNVz8Og8kvArMtNROxVQuCaSnIDdD5LKyWbRd2n9WGe2R8PzgCmr3EgVLrjyBxWezF"
    "0jLHwVN8efS3rCj/EWgvIWgb9tarpVUDK/b58Da+sqqls3eNbuv7pr+eoZG+SrDK6nWeL3c6H5Apxz7LjVc1"
    "uTIdsIXxuOLYA4/ilBmSVIzuDWfdRUfhHdY6+cn8HFRm+2hM8AnXGXws9555KrUB5qihylGa8subX2Nn6UwN"
    "R1AkUTV74bU=",
    38696: "AwEAAa96jeuknZlaeSrvyAJj6ZHv28hhOKkx3rLGXVaC6rXTsDc449/cidltpkyGwCJNnOAlFNKF2jBosZBU"
    "5eeHspaQWOmOElZsjICMQMC3aeHbGiShvZsx4wMYSjH8e7Vrhbu6irwCzVBApESjbUdpWWmEnhathWu1jo+s"
    "iFUiRAAxm9qyJNg/wOZqqzL/dL/q8PkcRU5oUKEpUge71M3ej2/7CPqpdVwuMoTvoB+ZOT4YeGyxMvHmbrxl"
    "FzGOHOijtzN+u1TQNatX2XBuzZNQ1K+s2CXkPIZo7s6JgZyvaBevYtxPvYLw4z9mR7K2vaF18UYH9Z9GNUUe"
    "ayffKC73PYc=",
}


def test_built_in_root_anchors_are_the_digests_of_the_root_ksks() -> None:
    """An independent check of the DS text: it hashes the published root KSKs."""
    builtin = {d.key_tag: d for d in root_anchors().anchors[dns.name.root].ds}
    for tag, key in ROOT_KSKS.items():
        dnskey = dns.rdata.from_text("IN", "DNSKEY", f"257 3 8 {key}")
        assert dns.dnssec.key_id(dnskey) == tag  # type: ignore[arg-type]
        made = dns.dnssec.make_ds(dns.name.root, dnskey, "SHA256")
        assert made == builtin[tag]


def test_anchor_file_with_ds_and_dnskey_records() -> None:
    anchors = parse_anchors(
        "; a comment\n"
        "example. 3600 IN DS 12345 13 2 " + "AB" * 32 + "\n"
        f"example. IN DNSKEY {KEY}\n"
        f"sub.example. DNSKEY {KEY}\n"
    )
    assert set(anchors.anchors) == {n("example."), n("sub.example.")}
    assert len(anchors.anchors[n("example.")].ds) == 1
    assert len(anchors.anchors[n("example.")].dnskeys) == 1
    assert anchors.closest(n("a.sub.example.")).zone == n("sub.example.")  # type: ignore[union-attr]
    assert anchors.closest(n("other.example.")).zone == n("example.")  # type: ignore[union-attr]
    assert anchors.closest(n("example.org.")) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "; only a comment\n",
        "example. 3600 IN A 192.0.2.1\n",
        "example. 3600 IN DS not-a-ds\n",
        "example. 3600 CH DS 12345 13 2 " + "AB" * 32 + "\n",
        "\x00\x01 garbage",
    ],
)
def test_bad_anchor_text_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_anchors(text, "--trust-anchor x")


def test_anchor_files_are_merged(tmp_path: Path) -> None:
    first = tmp_path / "a.keys"
    second = tmp_path / "b.keys"
    first.write_text("example. 3600 IN DS 1 13 2 " + "AB" * 32 + "\n")
    second.write_text(f"example. 3600 IN DNSKEY {KEY}\norg. 3600 IN DS 2 8 2 {'CD' * 32}\n")
    anchors = load_anchor_files([first, second])
    assert set(anchors.anchors) == {n("example."), n("org.")}
    merged = anchors.anchors[n("example.")]
    assert len(merged.ds) == 1 and len(merged.dnskeys) == 1
    with pytest.raises(ConfigError, match="missing"):
        load_anchor_files([tmp_path / "missing"])


def test_negative_trust_anchors() -> None:
    anchors = root_anchors().with_negative(["broken.example", n("bad.test.")])
    assert anchors.negative_above(n("www.broken.example.")) == n("broken.example.")
    assert anchors.negative_above(n("broken.example.")) == n("broken.example.")
    assert anchors.negative_above(n("example.")) is None
    assert anchors.negative_above(n("notbroken.example.")) is None
    assert anchors.anchors == root_anchors().anchors
    with pytest.raises(ConfigError, match="--insecure"):
        TrustAnchors().with_negative(["a..b"])


def _link(name: str, expires: float) -> Link:
    return Link(LinkKind.NOT_A_CUT, n(name), expires)


def test_key_cache_expiry_and_bound() -> None:
    cache = KeyCache(max_entries=2)
    cache.put(_link("a.", 10), now=0)
    cache.put(_link("b.", 10), now=0)
    cache.put(_link("gone.", 5), now=5)  # already expired: not kept
    assert len(cache) == 2
    assert cache.get(n("a."), now=1) is not None  # a is now the most recent
    cache.put(_link("c.", 10), now=1)  # evicts b, the least recently used
    assert cache.get(n("b."), now=1) is None
    assert cache.get(n("a."), now=1) is not None
    assert cache.get(n("c."), now=10) is None  # expired at 10
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0
    off = KeyCache(max_entries=0)
    off.put(_link("a.", 10), now=0)
    assert len(off) == 0
