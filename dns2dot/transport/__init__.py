"""Moving bytes: TLS contexts, the memory-BIO TLS channel, socket options, the
pipe-mode splice, all on the loop's readiness callbacks (docs/ARCHITECTURE.md).
"""
