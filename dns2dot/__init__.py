"""dns2dot: a local forwarder from plain DNS (UDP and TCP) to DNS-over-TLS upstreams."""

__version__ = "0.1.0"
