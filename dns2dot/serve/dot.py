"""The DNS-over-TLS listener (RFC 7858): pool sessions on a server TLS transport.

A DoT client is served by the same :class:`~dns2dot.serve.tcp.PoolSession` as a TCP
client in pool mode (RFC 7766 framing, answers in any order as soon as they are ready,
the in-flight cap, the bound on unread answers, the rules for garbage senders and
non-readers, the idle and slow-frame deadlines: one client policy for every stream
listener), carried by a
:class:`~dns2dot.transport.tls_server_channel.TlsServerTransport` instead of a bare
socket. A client's close_notify or end of stream is a half-close: the queries it sent
are still answered.

Answers carry what the query asked of EDNS: padding to 468-octet blocks and the idle
timeout as edns-tcp-keepalive (see dns2dot/protocol/encrypted.py), through the
session's answer filter.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from dns2dot.protocol.encrypted import client_asks, finish_answer
from dns2dot.serve.tcp import AnswerFilter, PoolSession
from dns2dot.transport.tls_server_channel import TlsServerTransport

if TYPE_CHECKING:
    from dns2dot.serve.tls_clients import EncryptedServer

Handler = Callable[[bytes, Callable[[bytes], None]], bool]


def answer_filter(idle_timeout: float) -> AnswerFilter:
    """Padding and keepalive for each answer whose query asked for them."""

    def change(query: bytes) -> Callable[[bytes], bytes] | None:
        asks = client_asks(query)
        if not asks:
            return None
        return partial(finish_answer, asks=asks, idle_timeout=idle_timeout)

    return change


def serve_dot(
    server: EncryptedServer, handler: Handler, transport: TlsServerTransport
) -> PoolSession:
    """Start a pool session for a DoT client whose handshake is done; it leaves
    ``server.sessions`` when its connection ends."""
    session = PoolSession(
        transport,
        handler,
        server.limits,
        server.stats,
        answer_filter=answer_filter(server.limits.idle_timeout),
    )
    server.sessions.add(session)
    session.start(partial(server.sessions.discard, session))
    return session
