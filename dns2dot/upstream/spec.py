"""One upstream as configured, and how long its connections live.

Pure data: ``config`` builds these without loading tornado or ssl.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class UpstreamSpec:
    """One upstream as configured: where, how, and what its certificate must show.

    ``transport`` is ``tls`` (DoT, ``IP[:PORT][#TLS_NAME]``), ``https`` (DoH,
    ``https://IP[:PORT]/PATH[#TLS_NAME]``) or ``plain`` (cleartext DNS over TCP, only
    ever for a forwarding rule that names it).
    """

    host: str
    port: int = 853
    name: str | None = None
    pins: tuple[str, ...] = field(default=())
    transport: str = "tls"
    path: str = "/dns-query"

    @property
    def tls(self) -> bool:
        return self.transport != "plain"

    @property
    def verify_name(self) -> str:
        """What the certificate must match: the TLS name, else the IP address."""
        return self.name or self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.transport == "plain":
            return f"plain://{host}:{self.port}"
        name = f"#{self.name}" if self.name else ""
        if self.transport == "https":
            return f"https://{host}:{self.port}{self.path}{name}"
        return f"{host}:{self.port}{name}"


@dataclass
class Lifecycle:
    """How long upstream connections live. Every field is an option (``--timeout``,
    ``--upstream-idle-timeout``, ``--max-queries-per-connection``): ``Config`` holds
    the defaults, ``proxy.lifecycle`` builds this from it."""

    connect_timeout: float
    idle_timeout: float
    max_queries: int  # per connection, then a fresh one takes over
