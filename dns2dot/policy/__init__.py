"""Pure policy: the answer cache, local rules, admission, upstream health and order.

The time is passed in; nothing here does I/O (docs/ARCHITECTURE.md, "Layers").
"""
