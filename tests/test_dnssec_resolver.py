"""``--dnssec validate`` in process: the Resolver, its cache and the validation shell,
with a clock moved by hand and fake upstream connections answering from zones signed
here (tests/support/signed_zone.py) as a resolver asked with DO and CD would. Every
answer case of issue 16: AD for DO and AD clients only when secure, SERVFAIL with the
Extended DNS Error when bogus, CD pass-through, no DNSSEC records for DO-less clients,
local answers and ``plain://`` zones never AD, bogus answers cached briefly and never
served stale, negative trust anchors. See docs/ARCHITECTURE.md, "serve/validation.py".
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from dns.dnssectypes import Algorithm
from dns.rdataclass import IN
from dns.rdtypes.ANY.DS import DS
from hypothesis import given, settings
from hypothesis import strategies as st
from support.signed_zone import NOW, Nsec3Params, World, Zone, anchor_text, name

from dns2dot import metrics
from dns2dot.config import Config, ConfigError, load
from dns2dot.policy.cache import BOGUS_TTL, Cache
from dns2dot.policy.dnssec import Validator, parse_anchors, root_anchors
from dns2dot.policy.rules import build_rules
from dns2dot.policy.strategy import Strategy
from dns2dot.protocol import wire
from dns2dot.proxy import answer_policy, cache_policy, lifecycle, validator
from dns2dot.serve.resolver import SWEEP_INTERVAL, Resolver
from dns2dot.upstream.pool import UpstreamPool
from dns2dot.upstream.spec import UpstreamSpec

TIMEOUT = 2.0
A = int(dns.rdatatype.A)
DS_T = int(dns.rdatatype.DS)
DNSKEY_T = int(dns.rdatatype.DNSKEY)
RRSIG_T = int(dns.rdatatype.RRSIG)
DNSSEC_ONLY = {int(dns.rdatatype.RRSIG), int(dns.rdatatype.NSEC), int(dns.rdatatype.NSEC3)}
Answer = Callable[[dns.message.Message], "dns.message.Message | None"]


def _zone(origin: str, algorithm: Algorithm, **kw: Any) -> Zone:
    zone = Zone(origin, algorithm, **kw)
    zone.add("www 300 IN A 192.0.2.1")
    zone.add("*.wild 300 IN A 192.0.2.2")
    return zone


def _build() -> World:
    root = Zone("test.")
    nsec = _zone("nsec.test.", Algorithm.ED25519)
    nsec3 = _zone("nsec3.test.", Algorithm.RSASHA256, nsec3=Nsec3Params(0, b"\xab"))
    p256 = _zone("p256.test.", Algorithm.ECDSAP256SHA256)
    unsigned = _zone("unsigned.test.", Algorithm.ED25519, signed=False)
    wrongds = _zone("wrongds.test.", Algorithm.ED25519)
    other = Zone("other.test.", Algorithm.ED25519)
    for child in (nsec, nsec3, p256, unsigned):
        root.delegate(child)
    root.delegate(wrongds, [dns.dnssec.make_ds(wrongds.origin, other.dnskey, "SHA256")])
    unsupported = _zone("unsupported.test.", Algorithm.ED25519)
    real = dns.dnssec.make_ds(unsupported.origin, unsupported.dnskey, "SHA256")
    root.delegate(unsupported, [DS(IN, DS_T, real.key_tag, 253, 2, real.digest)])
    zones = [root, nsec, nsec3, p256, unsigned, wrongds, unsupported]
    for zone in zones:
        zone.sign()
    return World(*zones)


WORLD = _build()
ANCHORS = parse_anchors(anchor_text(WORLD.zones[name("test.")]))


class ManualClock:
    """``time`` and ``call_later``, moved only by :meth:`advance`."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, int, Any, tuple[Any, ...]]] = []
        self._seq = 0

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Handle:
        self._seq += 1
        handle = Handle()
        heapq.heappush(self._timers, (self.now + delay, self._seq, handle, (callback, args)))
        return handle

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        for _ in range(100_000):  # bounded
            if not self._timers or self._timers[0][0] > end:
                break
            when, _, handle, (callback, args) = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not handle.cancelled:
                callback(*args)
        self.now = end


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class WorldConnection:
    """A fake upstream connection: keeps what it is sent; ``Harness.pump`` answers it
    from ``WORLD`` (or the harness's override), as a resolver asked with DO and CD."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.pending: dict[int, Any] = {}
        self._next = 1
        HARNESS[0].connections.append(self)

    accepting = property(lambda self: True)
    has_room = property(lambda self: True)
    load = property(lambda self: len(self.pending))

    def send(self, exchange: Any) -> None:
        uid = self._next
        self._next += 1
        self.pending[uid] = exchange
        exchange.legs.append((self, uid))

    def forget(self, uid: int, exchange: Any) -> None:
        if self.pending.get(uid) is exchange:
            del self.pending[uid]

    def idle_since(self, now: float) -> float:
        return 0.0

    def close(self) -> None:
        pass


HARNESS: list[Harness] = []


class Harness:
    """A resolver validating against ``WORLD``'s root, its upstream answering on :meth:`pump`."""

    def __init__(
        self,
        *,
        cache: bool = True,
        anchors: Any = ANCHORS,
        rules: Any = None,
        zone_pools: tuple[UpstreamSpec, ...] = (),
    ) -> None:
        HARNESS[:] = [self]
        self.connections: list[WorldConnection] = []
        self.clock = ManualClock()
        self.override: dict[tuple[str, int], dns.message.Message] = {}
        self.silent = False
        self.asked: list[tuple[str, int, bool, bool]] = []  # name, type, DO, CD
        self.replies: list[dns.message.Message] = []

        def pool(specs: list[UpstreamSpec]) -> UpstreamPool:
            return UpstreamPool(
                specs,
                FakeContexts(),  # type: ignore[arg-type]
                strategy=Strategy("failover"),
                lifecycle=lifecycle(Config()),
                connection_types={"tls": WorldConnection, "plain": WorldConnection},  # type: ignore[dict-item]
                clock=self.clock,
            )

        self.pool = pool([UpstreamSpec("192.0.2.1", 853, "dns.test")])
        config = Config(cache_size=1000)
        self.resolver = Resolver(
            self.pool,
            TIMEOUT,
            max_inflight=100,
            cache=Cache(cache_policy(config)) if cache else None,
            policy=replace(answer_policy(config), stale_after=0.5, prefetch=False),
            rules=rules,
            zone_pools=[pool([spec]) for spec in zone_pools],
            clock=self.clock,
            validator=Validator(anchors),
            wall=lambda: NOW,
        )
        self.resolver.start()

    def ask(
        self,
        qname: str,
        qtype: int = A,
        *,
        do: bool = False,
        ad: bool = False,
        cd: bool = False,
        edns: bool | None = None,
    ) -> dns.message.Message:
        """Ask, let the upstream answer everything, and return the one reply."""
        query = dns.message.make_query(qname, qtype, want_dnssec=do, use_edns=edns or do or None)
        if ad:
            query.flags |= dns.flags.AD
        if cd:
            query.flags |= dns.flags.CD
        before = len(self.replies)
        self.resolver.handle(query.to_wire(), self._reply, "udp")
        self.pump()
        assert len(self.replies) == before + 1, "one answer per query"
        return self.replies[-1]

    def _reply(self, answer: bytes) -> None:
        self.replies.append(dns.message.from_wire(answer))

    def pump(self, rounds: int = 200) -> None:
        """Answer what the upstream holds, and what that makes it ask, until quiet (or
        for ``rounds`` rounds)."""
        for _ in range(rounds):  # bounded
            pending = [(c, uid, x) for c in self.connections for uid, x in c.pending.items()]
            if not pending or self.silent:
                return
            for connection, uid, exchange in pending:
                del connection.pending[uid]
                exchange.legs.remove((connection, uid))
                query = dns.message.from_wire(exchange.upstream_msg)
                qname, qtype = query.question[0].name, query.question[0].rdtype
                self.asked.append(
                    (
                        qname.to_text(),
                        qtype,
                        query.ednsflags & dns.flags.DO != 0,
                        query.flags & dns.flags.CD != 0,
                    )
                )
                answer = self.override.get((qname.to_text().lower(), qtype))
                if answer is None:
                    answer = WORLD.resolve(qname, qtype)
                answer = dns.message.from_wire(answer.to_wire(max_size=65535))
                answer.id = query.id
                answer.question = query.question
                answer.use_edns(0, dns.flags.DO, 1232)
                connection.server.pool.answered(exchange, answer.to_wire(max_size=65535))
        if rounds == 200:
            raise AssertionError("upstream never quiet")

    def fetches(self, qtype: int) -> list[str]:
        return [n for n, t, _, _ in self.asked if t == qtype]


class FakeContexts:
    def for_transport(self, transport: str) -> None:
        return None


def ede(reply: dns.message.Message) -> int | None:
    for option in reply.options:
        if option.otype == dns.edns.EDE:
            return int(option.code)  # type: ignore[attr-defined]
    return None


def dnssec_records(reply: dns.message.Message) -> list[int]:
    return [r.rdtype for r in (*reply.answer, *reply.authority) if r.rdtype in DNSSEC_ONLY]


def has_ad(reply: dns.message.Message) -> bool:
    return bool(reply.flags & dns.flags.AD)


# -- secure and insecure ---------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("qname", ["www.nsec.test.", "www.nsec3.test.", "www.p256.test."])
def test_secure_answer_gets_ad_for_do_and_ad_clients_only(cache: bool, qname: str) -> None:
    h = Harness(cache=cache)
    for _ in range(2):  # the second from the cache, when there is one
        with_do = h.ask(qname, do=True)
        assert with_do.rcode() == dns.rcode.NOERROR and has_ad(with_do)
        assert RRSIG_T in dnssec_records(with_do), "a DO client gets the signatures"
        assert with_do.ednsflags & dns.flags.DO
        with_ad = h.ask(qname, ad=True)
        assert has_ad(with_ad) and not dnssec_records(with_ad)
        plain = h.ask(qname)
        assert not has_ad(plain) and not dnssec_records(plain)
        assert plain.answer[0].to_text() == with_ad.answer[0].to_text()
        edns_no_do = h.ask(qname, edns=True)
        assert not has_ad(edns_no_do) and not edns_no_do.ednsflags & dns.flags.DO
    upstream = [q for q in h.asked if q[1] == A]
    assert upstream and all(do and cd for _, _, do, cd in h.asked), "DO and CD upstream"
    if cache:
        assert len(upstream) == 1, "every client served from the one entry"


def test_secure_nxdomain_without_do_has_no_denial_records() -> None:
    h = Harness()
    with_do = h.ask("nope.nsec3.test.", do=True)
    assert with_do.rcode() == dns.rcode.NXDOMAIN and has_ad(with_do)
    assert int(dns.rdatatype.NSEC3) in dnssec_records(with_do)
    plain = h.ask("nope.nsec3.test.", ad=True)
    assert plain.rcode() == dns.rcode.NXDOMAIN and has_ad(plain)
    assert not dnssec_records(plain)
    assert [r.rdtype for r in plain.authority] == [dns.rdatatype.SOA]


def test_a_client_asking_for_a_dnssec_type_gets_it() -> None:
    h = Harness()
    reply = h.ask("nsec.test.", DNSKEY_T)
    assert reply.answer and reply.answer[0].rdtype == DNSKEY_T and has_ad(reply) is False


def test_insecure_answer_has_no_ad() -> None:
    h = Harness()
    for reply in (h.ask("www.unsigned.test.", do=True), h.ask("www.unsigned.test.", ad=True)):
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer and not has_ad(reply)


@pytest.mark.parametrize("cache", [True, False])
def test_unsupported_algorithm_is_insecure_with_ede_1(cache: bool) -> None:
    h = Harness(cache=cache)
    for _ in range(2):
        reply = h.ask("www.unsupported.test.", do=True)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer and not has_ad(reply)
        assert ede(reply) == 1
        plain = h.ask("www.unsupported.test.")
        assert plain.rcode() == dns.rcode.NOERROR and plain.edns < 0 and plain.answer


# -- bogus -----------------------------------------------------------------------------


def _without(
    msg: dns.message.Message, drop: Callable[[dns.rrset.RRset], bool]
) -> dns.message.Message:
    copy = dns.message.from_wire(msg.to_wire(max_size=65535))
    copy.answer = [r for r in copy.answer if not drop(r)]
    copy.authority = [r for r in copy.authority if not drop(r)]
    return copy


def _resigned(qname: str, **how: Any) -> dns.message.Message:
    msg = WORLD.resolve(qname, A)
    zone = WORLD.zones[name("nsec.test.")]
    copy = _without(msg, lambda r: r.rdtype == RRSIG_T)
    copy.answer += [zone.sign_rrset(r, **how) for r in list(copy.answer)]  # type: ignore[arg-type]
    return copy


def _stripped(qname: str) -> dns.message.Message:
    return _without(WORLD.resolve(qname, A), lambda r: r.rdtype == RRSIG_T)


def _wildcard_without_proof(qname: str) -> dns.message.Message:
    msg = WORLD.resolve(qname, A)
    assert msg.authority, "the proof is there to remove"
    msg.authority = []
    return msg


BOGUS = {
    "stripped rrsigs": ("www.nsec.test.", lambda q: _stripped(q), 10),
    "expired": (
        "www.nsec.test.",
        lambda q: _resigned(q, inception=NOW - 864000, expiration=NOW - 3600),
        7,
    ),
    "not yet valid": (
        "www.nsec.test.",
        lambda q: _resigned(q, inception=NOW + 3600, expiration=NOW + 864000),
        8,
    ),
    "ds matching no key": ("www.wrongds.test.", None, 9),
    "wrong signer": ("www.nsec.test.", lambda q: _resigned(q, signer=name("nsec3.test.")), 6),
    "wildcard without proof": ("a.wild.nsec.test.", _wildcard_without_proof, 6),
}


@pytest.mark.parametrize("case", list(BOGUS))
def test_bogus_is_servfail_with_its_extended_error(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    qname, make, code = BOGUS[case]
    h = Harness()
    if make is not None:
        h.override[(qname, A)] = make(qname)
    for kw in ({"do": True}, {}, {"ad": True}):
        reply = h.ask(qname, edns=True, **kw)
        assert reply.rcode() == dns.rcode.SERVFAIL and not reply.answer and not has_ad(reply)
        if case != "wrong signer":
            assert ede(reply) == code, case
        else:
            assert ede(reply) in (6, 9, 10), case
    no_edns = h.ask(qname)
    assert no_edns.rcode() == dns.rcode.SERVFAIL and no_edns.edns < 0, "no OPT it did not ask for"
    bogus_lines = [r for r in caplog.records if "bogus" in r.getMessage()]
    assert len(bogus_lines) == 1, "one line per validation (the rest came from the cache)"
    assert "test." in bogus_lines[0].getMessage()


def test_cd_client_gets_the_unvalidated_answer() -> None:
    h = Harness()
    h.override[("www.nsec.test.", A)] = _stripped("www.nsec.test.")
    for _ in range(2):  # from upstream, then from the cached bogus entry
        reply = h.ask("www.nsec.test.", cd=True)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer and not has_ad(reply)
        assert reply.flags & dns.flags.CD
    assert h.ask("www.nsec.test.").rcode() == dns.rcode.SERVFAIL
    secure = h.ask("www.p256.test.", cd=True, do=True)
    assert not has_ad(secure) and RRSIG_T in dnssec_records(secure), "CD: no AD, records kept"


def test_bogus_is_cached_briefly_and_never_served_stale() -> None:
    h = Harness()
    h.override[("www.nsec.test.", A)] = _stripped("www.nsec.test.")
    assert h.ask("www.nsec.test.").rcode() == dns.rcode.SERVFAIL
    asked = len(h.fetches(A))
    h.clock.advance(BOGUS_TTL - 5)
    assert h.ask("www.nsec.test.").rcode() == dns.rcode.SERVFAIL
    assert len(h.fetches(A)) == asked, "from the cache"
    h.clock.advance(10)
    h.silent = True  # the upstream stops answering: no stale bogus data instead
    h.resolver.handle(dns.message.make_query("www.nsec.test.", A).to_wire(), h._reply, "udp")
    h.clock.advance(TIMEOUT + 4 * SWEEP_INTERVAL)
    reply = h.replies[-1]
    assert reply.rcode() == dns.rcode.SERVFAIL and not reply.answer


def test_a_secure_entry_is_served_stale() -> None:
    """The contrast to the test above: serve-stale still works for validated entries."""
    h = Harness()
    assert has_ad(h.ask("www.p256.test.", ad=True))
    h.clock.advance(400)
    h.silent = True
    h.resolver.handle(dns.message.make_query("www.p256.test.", A).to_wire(), h._reply, "udp")
    h.clock.advance(1.0)
    reply = h.replies[-1]
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer and not dnssec_records(reply)


def test_negative_trust_anchor_makes_a_broken_zone_insecure() -> None:
    h = Harness(anchors=ANCHORS.with_negative(["wrongds.test."]))
    reply = h.ask("www.wrongds.test.", do=True)
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer and not has_ad(reply)
    assert has_ad(h.ask("www.nsec.test.", do=True)), "the rest is still validated"


def test_an_unrelated_trust_anchor_validates_nothing() -> None:
    """Anchors replace the root's: a chain from elsewhere does not validate."""
    elsewhere = Zone("elsewhere.", Algorithm.ED25519)
    h = Harness(anchors=parse_anchors(anchor_text(elsewhere)))
    reply = h.ask("www.nsec.test.", do=True)
    assert reply.rcode() == dns.rcode.NOERROR and not has_ad(reply)


# -- what is not validated ---------------------------------------------------------------


def test_local_answers_and_plain_zones_never_get_ad(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.9 local.nsec.test\n")
    rules = build_rules(hosts=[str(hosts)], forward_zones=["p256.test"])
    h = Harness(rules=rules, zone_pools=(UpstreamSpec("127.0.0.1", 53, transport="plain"),))
    local = h.ask("local.nsec.test.", do=True, ad=True)
    assert local.answer and not has_ad(local)
    assert not h.asked
    zone = h.ask("www.p256.test.", do=True, ad=True)
    assert zone.rcode() == dns.rcode.NOERROR and not has_ad(zone)
    assert [cd for *_, cd in h.asked] == [False], "the plain:// zone is asked as the client asked"
    assert has_ad(h.ask("www.nsec.test.", ad=True)), "the rest is validated"


def test_fetches_are_shared_and_the_keys_kept() -> None:
    h = Harness(cache=False)
    for qname in ("www.nsec.test.", "a.wild.nsec.test.", "www.nsec.test."):
        h.resolver.handle(dns.message.make_query(qname, A).to_wire(), h._reply, "udp")
    h.pump()
    assert len(h.replies) == 3
    assert sorted(h.fetches(DNSKEY_T)) == ["nsec.test.", "test."], "each once"
    assert h.fetches(DS_T) == ["nsec.test."]
    h.ask("www.nsec.test.")
    assert len(h.fetches(DNSKEY_T)) == 2, "the chain is kept"


def test_a_validation_past_the_deadline_is_servfail_then_cached() -> None:
    h = Harness()
    h.resolver.handle(dns.message.make_query("www.nsec.test.", A).to_wire(), h._reply, "udp")
    h.pump(rounds=1)  # the answer is in; its fetches are not answered yet
    h.clock.advance(TIMEOUT - 0.5)
    h.pump(rounds=1)  # one more step of the chain, then the upstream is slow again
    assert not h.replies
    h.clock.advance(0.5 + 2 * SWEEP_INTERVAL)
    [late] = h.replies
    assert late.rcode() == dns.rcode.SERVFAIL, "within the query's deadline"
    assert h.resolver.inflight == 0
    h.pump()  # the chain completes: the verdict is cached for the next client
    assert len(h.replies) == 1, "answered once"
    assert has_ad(h.ask("www.nsec.test.", ad=True))
    assert len(h.fetches(A)) == 1


def test_failed_fetch_is_bogus_not_silence() -> None:
    h = Harness()
    h.resolver.handle(dns.message.make_query("www.nsec.test.", A).to_wire(), h._reply, "udp")
    h.pump(rounds=1)  # the answer; the fetches it makes are left unanswered
    assert h.connections[0].pending and not h.replies
    h.silent = True
    for _ in range(40):  # bounded: each fetch times out in turn
        h.clock.advance(TIMEOUT + 2 * SWEEP_INTERVAL)
        if h.replies:
            break
    [reply] = h.replies
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert h.resolver.inflight == 0


def test_abort_answers_queries_waiting_on_a_fetch() -> None:
    h = Harness(cache=False)
    h.resolver.handle(dns.message.make_query("www.nsec.test.", A).to_wire(), h._reply, "udp")
    h.pump(rounds=1)  # the answer is in; its validation waits on a fetch
    assert not h.replies
    h.resolver.abort()
    [reply] = h.replies
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert h.resolver.inflight == 0


def test_metrics_count_each_validation_once() -> None:
    h = Harness()
    h.override[("www.nsec.test.", A)] = _stripped("www.nsec.test.")
    for qname in ("www.p256.test.", "www.p256.test.", "www.unsigned.test.", "www.nsec.test."):
        h.ask(qname)
    snap = h.resolver.snapshot()
    assert snap["dnssec"] == {"secure": 1, "insecure": 1, "bogus": 1}
    text = metrics.render(lambda: metrics.merge([snap])).decode()
    assert 'dns2dot_dnssec_answers_total{result="secure"} 1.0' in text
    assert 'dns2dot_dnssec_answers_total{result="bogus"} 1.0' in text


# -- options -----------------------------------------------------------------------------


def test_options(tmp_path: Path) -> None:
    anchor = tmp_path / "anchor"
    anchor.write_text(anchor_text(WORLD.zones[name("test.")]))
    assert Config().dnssec == "validate", "on by default (README, DNSSEC: the bench's 20% rule)"
    default = validator(Config())
    assert default is not None and default.anchors == root_anchors()
    assert validator(Config(dnssec="off")) is None
    config = load(
        ["--dnssec", "validate", "--trust-anchor", str(anchor), "--insecure", "Broken.Test"],
        environ={},
    )
    built = validator(config)
    assert built is not None
    assert list(built.anchors.anchors) == [name("test.")], "the file replaces the root"
    assert built.anchors.negative == {name("broken.test.")}
    from_env = load([], environ={"DNS2DOT_DNSSEC": "validate", "DNS2DOT_INSECURE": "a.test,b.test"})
    assert from_env.dnssec == "validate" and from_env.insecure == ("a.test.", "b.test.")
    root = validator(load(["--dnssec", "validate"], environ={}))
    assert root is not None and list(root.anchors.anchors) == [dns.name.root]
    yaml = tmp_path / "c.yaml"
    yaml.write_text(f"dnssec: validate\ntrust_anchor: [{anchor}]\n")
    assert load(["-c", str(yaml)], environ={}).trust_anchor == (str(anchor),)


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["--dnssec", "on"], "--dnssec"),
        (["--trust-anchor", "/nonexistent/anchor"], "--trust-anchor"),
        (["--trust-anchor", "BAD"], "--trust-anchor"),
        (["--insecure", "a..b"], "--insecure"),
    ],
)
def test_bad_options_name_the_setting(argv: list[str], setting: str, tmp_path: Path) -> None:
    if argv[-1] == "BAD":
        bad = tmp_path / "bad"
        bad.write_text("test. 300 IN A 192.0.2.1\n")
        argv = [argv[0], str(bad)]
    with pytest.raises(ConfigError) as info:
        load(argv, environ={})
    assert str(info.value).startswith(setting) and "\n" not in str(info.value)


# -- the wire helpers, against dnspython ----------------------------------------------------


QUESTIONS = [
    (q, t)
    for q in ("www.nsec.test.", "nope.nsec.test.", "a.wild.nsec.test.", "www.nsec3.test.",
              "nope.nsec3.test.", "nsec.test.", "www.unsigned.test.", "www.wrongds.test.")
    for t in (A, int(dns.rdatatype.TXT), DNSKEY_T, DS_T, RRSIG_T, int(dns.rdatatype.NSEC))
]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(QUESTIONS), st.booleans())
def test_without_dnssec_matches_dnspython(question: tuple[str, int], edns: bool) -> None:
    qname, qtype = question
    msg = WORLD.resolve(qname, qtype)
    if edns:
        msg.use_edns(0, dns.flags.DO, 1232)
    original = msg.to_wire(max_size=65535)
    stripped = dns.message.from_wire(wire.without_dnssec(original, qtype))
    expected = dns.message.from_wire(original)
    for section in ("answer", "authority", "additional"):
        keep = [
            r
            for r in getattr(expected, section)
            if r.rdtype not in DNSSEC_ONLY or r.rdtype == qtype
        ]
        assert getattr(stripped, section) == keep, section
    assert stripped.rcode() == expected.rcode() and stripped.question == expected.question
    assert not stripped.ednsflags & dns.flags.DO
    assert stripped.edns == expected.edns


@pytest.mark.parametrize("edns", [False, True])
def test_dnssec_query_sets_do_and_cd(edns: bool) -> None:
    query = dns.message.make_query("www.nsec.test.", A, use_edns=0 if edns else None)
    asked = dns.message.from_wire(wire.dnssec_query(query.to_wire()))
    assert asked.flags & dns.flags.CD and asked.ednsflags & dns.flags.DO
    assert asked.question == query.question and asked.id == query.id


@pytest.mark.parametrize("padding", [0, 40])
def test_with_ede_adds_the_option(padding: int) -> None:
    msg = WORLD.resolve("www.nsec.test.", A)
    options = [dns.edns.GenericOption(dns.edns.PADDING, b"\x00" * padding)] if padding else []
    msg.use_edns(0, dns.flags.DO, 1232, options=options)
    got = dns.message.from_wire(wire.with_ede(msg.to_wire(), 1, "Unsupported DNSKEY Algorithm"))
    assert ede(got) == 1 and got.answer == msg.answer and got.ednsflags == msg.ednsflags
    assert len(got.options) == len(options) + 1
    msg.use_edns(False)
    assert wire.with_ede(msg.to_wire(), 1) == msg.to_wire(), "no OPT: none added"


@pytest.mark.parametrize(
    "shape",
    [
        {"do": True},
        {"ad": True},
        {},
        {"edns": True},
        {"cd": True, "do": True},
        {"cd": True},
    ],
)
@pytest.mark.parametrize("qname", ["www.nsec3.test.", "nope.nsec.test."])
def test_a_repeated_query_served_by_its_bytes_gets_its_own_view(
    shape: dict[str, bool], qname: str
) -> None:
    """The cache's known-query path (a query repeated in the same bytes, answered without
    a parse, TTLs patched in place each second) serves each client the view the long
    way gives it: DO or DO-less, AD or not, TTLs counting down in the records it gets."""
    h = Harness()
    first = h.ask(qname, **shape)
    ttls = {(r.name, r.rdtype): r.ttl for r in (*first.answer, *first.authority)}
    for second in range(1, 5):  # the first repeat is remembered, the next ones known
        h.clock.advance(1.0)
        again = h.ask(qname, **shape)
        assert again.rcode() == first.rcode()
        assert has_ad(again) == has_ad(first)
        assert dnssec_records(again) == dnssec_records(first)
        assert [r.to_text().split()[3:] for r in again.answer] == [
            r.to_text().split()[3:] for r in first.answer
        ]
        for record in (*again.answer, *again.authority):
            assert record.ttl == max(ttls[(record.name, record.rdtype)] - second, 0)
    assert len(h.fetches(A)) == 1, "every repeat from the cache"


@pytest.mark.parametrize("cd", [False, True])
def test_a_repeated_query_for_a_bogus_answer_stays_refused(cd: bool) -> None:
    h = Harness()
    h.override[("www.nsec.test.", A)] = _stripped("www.nsec.test.")
    for _ in range(4):
        reply = h.ask("www.nsec.test.", cd=cd, edns=True)  # EDNS: room for the EDE
        h.clock.advance(1.0)
        if cd:
            assert reply.rcode() == dns.rcode.NOERROR and reply.answer and not has_ad(reply)
        else:
            assert reply.rcode() == dns.rcode.SERVFAIL and not reply.answer
            assert ede(reply) == 10
    assert len(h.fetches(A)) == 1
