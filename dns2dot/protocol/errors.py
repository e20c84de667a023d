"""One exception hierarchy for the whole package.

The split follows h11: a *remote* error is something a peer (a client or an upstream)
did wrong and is answered or dropped; a *local* error is ours (configuration, TLS
setup) and is reported to the operator.
"""

from __future__ import annotations


class Dns2DotError(Exception):
    """Root of every exception dns2dot raises on purpose."""


class ConfigError(Dns2DotError):
    """A setting is invalid; the message names the setting and says why (exit code 2)."""


class RemoteProtocolError(Dns2DotError):
    """A peer sent bytes that break the DNS protocol."""


class FramingError(RemoteProtocolError):
    """A TCP length prefix that cannot be honoured (zero, or too short for a header)."""


class MessageError(RemoteProtocolError):
    """A DNS message that cannot be parsed at all (shorter than its header)."""


class FormError(RemoteProtocolError):
    """A message whose header is readable but whose body is malformed.

    Carries ``rcode`` so the caller can answer FORMERR, NOTIMP or BADVERS without
    parsing again.
    """

    def __init__(self, message: str, rcode: int = 1) -> None:
        super().__init__(message)
        self.rcode = rcode


class UpstreamError(Dns2DotError):
    """An upstream could not give an answer."""


class UpstreamConnectError(UpstreamError):
    """TCP connect to the upstream failed (refused, unreachable, timed out)."""


class UpstreamTLSError(UpstreamError):
    """The upstream's certificate or TLS handshake failed verification."""


class PinMismatchError(UpstreamTLSError):
    """The upstream's key is not among its configured SPKI pins (RFC 7858 §4.2)."""


class UpstreamClosedError(UpstreamError):
    """The upstream connection closed with queries still in flight."""


class UpstreamTimeoutError(UpstreamError):
    """No answer arrived within the query's deadline."""
