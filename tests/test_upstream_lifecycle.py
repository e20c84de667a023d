"""Upstream connections over time: idle close, and TLS session resumption on reconnect.

RFC 7858 §3.4 and RFC 8310 §5 ask clients to reuse connections and resume TLS
sessions; docs/ARCHITECTURE.md asks for an idle close below the 10 s some resolvers enforce.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from support.net import LOOPBACK, free_port, make_query, rcode_text, udp_query
from support.proc import Dns2Dot
from support.scrape import wait_for_metrics
from support.unbound import UnboundUpstream

pytestmark = pytest.mark.integration

Factory = Callable[..., Dns2Dot]
HANDSHAKES = "dns2dot_tls_handshakes_total"


def test_reconnect_after_idle_close_resumes_the_tls_session(
    dns2dot: Factory, unbound: UnboundUpstream
) -> None:
    """The connection is closed after --upstream-idle-timeout; the next query opens a
    new one, and that handshake resumes the first session (TLS 1.3 ticket)."""
    mport = free_port()
    d = dns2dot(
        upstreams=[unbound.spec],
        extra=["--upstream-idle-timeout", "1", "--metrics", f"{LOOPBACK}:{mport}"],
    )
    assert rcode_text(udp_query(d.port, make_query("a.example.test."))) == "NOERROR"
    first = wait_for_metrics(mport, lambda m: m.sum(HANDSHAKES) >= 1)
    assert first.sum(HANDSHAKES, resumed="false") == 1
    time.sleep(2.5)  # past the 1 s idle timeout and the 0.5 s maintenance tick
    assert rcode_text(udp_query(d.port, make_query("www.example.test."))) == "NOERROR"
    after = wait_for_metrics(mport, lambda m: m.sum(HANDSHAKES) >= 2)
    assert after.sum(HANDSHAKES) == 2, after.text
    assert after.sum(HANDSHAKES, resumed="true") == 1, after.text
    assert "session resumed" not in d.stderr()  # that detail is debug-level only
