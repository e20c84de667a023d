"""The client side of TLS to upstreams: one strict context, and errors made readable.

Strict means: the chain is verified against the CA bundle (certifi's unless
``--cafile``), the name (or IP address) is verified by OpenSSL during the handshake,
and nothing older than TLS 1.2 is offered (RFC 8310 §8, RFC 7525).
"""

from __future__ import annotations

import ssl

import certifi

from dns2dot.protocol.errors import (
    ConfigError,
    PinMismatchError,
    UpstreamConnectError,
    UpstreamTLSError,
)


def client_context(
    cafile: str | None = None, alpn: tuple[str, ...] | None = None
) -> ssl.SSLContext:
    """A verifying client context; raises :class:`ConfigError` for an unusable CA file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.options |= ssl.OP_NO_COMPRESSION
    path = cafile or certifi.where()
    try:
        context.load_verify_locations(cafile=path)
    except FileNotFoundError:
        raise ConfigError(f"--cafile: {path}: no such file") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"--cafile: {path}: not a usable CA bundle ({exc})") from None
    if not context.get_ca_certs():
        raise ConfigError(f"--cafile: {path}: holds no CA certificate")
    return context


def describe_failure(exc: BaseException) -> str:
    """One line saying why a TLS connection failed, in the words an operator searches for."""
    if isinstance(exc, UpstreamTLSError):
        return str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or str(exc)
        if "Hostname mismatch" in reason or "IP address mismatch" in reason:
            return f"certificate name mismatch ({reason})"
        return f"certificate verification failed: {reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def classify_failure(exc: BaseException) -> type[UpstreamConnectError | UpstreamTLSError]:
    """Whether a connection failure was the network's or TLS verification's."""
    if isinstance(exc, ssl.SSLError | UpstreamTLSError):
        return UpstreamTLSError
    return UpstreamConnectError


def failure_kind(exc: BaseException) -> str:
    """A short label for the metrics: connect, timeout, tls, pin."""
    if isinstance(exc, PinMismatchError):
        return "pin"
    if isinstance(exc, UpstreamTLSError):
        return "tls"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "connect"


class TlsContexts:
    """The client contexts of one configuration: DoT's, and DoH's (which offers h2).

    Shared by every upstream of a transport, so TLS sessions and the CA store are too.
    """

    def __init__(self, cafile: str | None = None) -> None:
        self.dot = client_context(cafile)
        self.doh = client_context(cafile, alpn=("h2", "http/1.1"))

    def for_transport(self, transport: str) -> ssl.SSLContext:
        return self.doh if transport == "https" else self.dot
