"""One exception hierarchy for the whole package, rooted at :class:`Dns2DotError`.

Three families, by whose fault it is and what happens next:

- :class:`ConfigError` and :class:`ListenError`: the operator's settings or the host;
  reported once, and the process exits.
- :class:`ProtocolError`: bytes from a peer (a client, an upstream, a certificate)
  that break the protocol. Parsers raise these and nothing else for malformed or
  truncated input; the caller answers FORMERR, drops the message or closes the
  connection, and every other client is served on.
- :class:`UpstreamError`: an upstream gave no usable answer; the query is tried
  elsewhere or answered SERVFAIL.
"""

from __future__ import annotations


class Dns2DotError(Exception):
    """Root of every exception dns2dot raises on purpose."""


class ConfigError(Dns2DotError):
    """A setting is invalid; the message names the setting and says why (exit code 2)."""


class ListenError(Dns2DotError):
    """A listen address could not be bound; ``exit_code`` says whose fault it is."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ProtocolError(Dns2DotError):
    """A peer sent bytes that break the protocol (malformed or truncated input)."""


class FramingError(ProtocolError):
    """A TCP length prefix that cannot be honoured (zero, or too short for a header)."""


class MessageError(ProtocolError):
    """A DNS message shorter than its header: there is no ID to answer, so it is dropped."""


class FormError(ProtocolError):
    """A message whose header is readable but whose body is malformed or truncated.

    Carries ``rcode`` so the caller can answer FORMERR, NOTIMP or BADVERS without
    parsing again.
    """

    def __init__(self, message: str, rcode: int = 1) -> None:
        super().__init__(message)
        self.rcode = rcode


class Http2Error(ProtocolError):
    """An HTTP/2 peer broke the protocol: a connection error (RFC 9113 §5.4.1), ended
    with GOAWAY and ``code`` (an ``http2.ErrorCode``)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class CertificateError(ProtocolError):
    """A certificate's DER could not be walked as X.509."""


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
