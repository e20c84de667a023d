"""Pure protocol code: DNS wire format, stream framing, X.509 pins, the errors.

Bytes in, values out: nothing here imports tornado, asyncio, socket or ssl, or reads
a clock (docs/ARCHITECTURE.md, "Layers").
"""
