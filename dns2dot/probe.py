"""``python -m dns2dot.probe``: is the local proxy answering? (the container HEALTHCHECK)

Sends one query for the root's NS records to the first listen address the
configuration names and exits 0 on any DNS answer, SERVFAIL included: the question is
whether dns2dot is alive, not whether the internet is (``dns2dot check`` asks that).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import dns.exception
import dns.message
import dns.query
import dns.rcode

from dns2dot import config as config_module
from dns2dot.protocol.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = config_module.load(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as exc:
        print(f"dns2dot.probe: error: {exc}", file=sys.stderr)
        return 2
    address = config.listen[0]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address.host, address.host)
    query = dns.message.make_query(".", "NS")
    try:
        answer = dns.query.udp(query, host, port=address.port, timeout=config.timeout + 1)
    except (OSError, dns.exception.DNSException) as exc:
        print(f"dns2dot.probe: {address}: no answer ({exc})", file=sys.stderr)
        return 1
    print(f"dns2dot.probe: {address}: answered {dns.rcode.to_text(answer.rcode())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
