"""The upstreams: their spec, the exchange of one query, the connection kinds (DoT,
DoH, plain) and the pool that spreads queries over them (docs/ARCHITECTURE.md).
"""
