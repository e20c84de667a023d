"""Serving clients: the resolver, the UDP listener and the TCP client sessions
(docs/ARCHITECTURE.md).
"""
