"""Hypothesis mutations of DNS messages, shared by the wire and cache property tests.

Small edits of well-formed messages reach far deeper into a parser than random bytes:
bit flips, bytes set to the values that matter in names (0x00 ends one, 0x3F is the
longest label, 0x40 and 0xC0 are the extended-label and pointer marks), truncation,
insertion, deletion, and rewritten section counts.
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st


@st.composite
def mutated(draw: st.DrawFn, seeds: st.SearchStrategy[bytes], min_ops: int = 1) -> bytes:
    """A message from ``seeds`` after ``min_ops`` to 4 mutations."""
    data = bytearray(draw(seeds))
    for _ in range(draw(st.integers(min_ops, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "count"]))
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(
                st.sampled_from([0x00, 0x3F, 0x40, 0xC0, 0xFF, draw(st.integers(0, 255))])
            )
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "count" and len(data) >= 12:
            field = draw(st.sampled_from([4, 6, 8, 10]))
            struct.pack_into("!H", data, field, draw(st.integers(0, 4)))
    return bytes(data)
