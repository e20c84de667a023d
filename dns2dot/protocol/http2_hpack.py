"""A reader for the HPACK header blocks (RFC 7541) DoH clients send, sans-IO.

A DoH GET carries its query in a ``:path`` that differs on every request, Huffman-coded
and not indexed by most clients, so no cache of decoded blocks helps with it.
:func:`read_block` reads a block that leaves the dynamic table alone (indexed fields,
literals without indexing or never indexed) with a byte-at-a-time Huffman table built
once (:func:`prepare`, or on first use) from hpack's own code table. Anything else (a
literal to be indexed, a table size update, a malformed block, a header list over the
limit) gives None, and the caller decodes the block with ``hpack.Decoder``, which
changes the table or raises as the RFC says.
"""

from __future__ import annotations

from hpack import HPACKError
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

_EOS = 256
# The byte-at-a-time Huffman table, built once: for decoder state s (an internal node
# of the code tree, 0 the root) and input byte b, _EMIT[s << 8 | b] is what the byte
# completes and _NEXT[s << 8 | b] the state after it, shifted left by 8 (the next
# index but for the byte). EOS or an invalid code leads to a last state that never
# leaves itself. _ACCEPT[s]: whether a string may end in state s (RFC 7541 §5.2: at
# most 7 bits of padding, all ones, i.e. a prefix of EOS).
_EMIT: list[bytes] = []
_NEXT: list[int] = []
_ACCEPT: list[bool] = []
_STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE  # RFC 7541 Appendix A
_STATIC_LENGTH = len(_STATIC)


def _build() -> None:
    """Build the Huffman tables from hpack's code table (about 2^16 entries)."""
    children: list[list[int]] = [[-1, -1]]  # internal nodes; leaves are ~symbol
    for symbol in range(257):
        code, length = REQUEST_CODES[symbol], REQUEST_CODES_LENGTH[symbol]
        node = 0
        for shift in range(length - 1, 0, -1):
            bit = code >> shift & 1
            if children[node][bit] < 0:
                children[node][bit] = len(children)
                children.append([-1, -1])
            node = children[node][bit]
        children[node][code & 1] = ~symbol
    states = len(children)
    # States reachable from the root by ones only, fewer than 8 of them: valid padding.
    accept = [False] * states
    node, ones = 0, 0
    while node >= 0 and ones < 8:
        accept[node] = True
        node = children[node][1]
        ones += 1
    # A nibble at a time first (at most one symbol completes in 4 bits: the shortest
    # code has 5), then each byte as two nibbles.
    nibble_emit: list[bytes] = []
    nibble_next: list[int] = []
    for state in range(states):
        for nibble in range(16):
            node = state
            out = b""
            for shift in (3, 2, 1, 0):
                child = children[node][nibble >> shift & 1]
                if child >= 0:
                    node = child
                    continue
                if ~child == _EOS:
                    node = -1
                    break
                out = bytes((~child,))
                node = 0
            nibble_emit.append(out)
            nibble_next.append(node)
    emits: dict[bytes, bytes] = {}
    emit_table: list[bytes] = []
    next_table: list[int] = []
    for state in range(states):
        base = state << 4
        for high in range(16):
            middle = nibble_next[base | high]
            first = nibble_emit[base | high]
            if middle < 0:
                emit_table += [b""] * 16
                next_table += [-1] * 16
                continue
            middle <<= 4
            for low in range(16):
                key = first + nibble_emit[middle | low]
                emit_table.append(emits.setdefault(key, key))
                next_table.append(nibble_next[middle | low])
    sink = states  # the state after an error
    _ACCEPT.extend([*accept, False])
    _EMIT.extend(emit_table + [b""] * 256)
    _NEXT.extend([(node if node >= 0 else sink) << 8 for node in next_table] + [sink << 8] * 256)


def prepare() -> None:
    """Build the Huffman table now (about 0.1 s) rather than on the first request."""
    if not _EMIT:
        _build()


def huffman_decode(data: bytes | memoryview) -> bytes | None:
    """The string ``data`` Huffman-codes, or None if it is not a valid code."""
    if not _EMIT:
        _build()
    emit, following = _EMIT, _NEXT
    base = 0  # the state, shifted
    parts: list[bytes] = []
    append = parts.append
    for byte in data:
        index = base | byte
        base = following[index]
        append(emit[index])
    return b"".join(parts) if _ACCEPT[base >> 8] else None


def _integer(block: bytes, pos: int, bits: int) -> tuple[int, int]:
    """An HPACK integer with a ``bits``-bit prefix at ``pos`` (RFC 7541 §5.1): (value,
    the position after it); value -1 if it is truncated or longer than 4 octets."""
    limit = (1 << bits) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    size = len(block)
    while pos < size and shift <= 21:
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return -1, pos


def _string(block: bytes, pos: int, size: int) -> tuple[bytes | None, int]:
    """A string literal at ``pos`` (§5.2): (its octets or None if malformed, the end)."""
    if pos >= size:
        return None, pos
    first = block[pos]
    length = first & 0x7F
    if length == 0x7F:
        length, pos = _integer(block, pos, 7)
        if length < 0:
            return None, pos
    else:
        pos += 1
    end = pos + length
    if end > size:
        return None, pos
    if first & 0x80:
        return huffman_decode(block[pos:end]), end
    return block[pos:end], end


def read_block(block: bytes, table: HeaderTable, limit: int) -> list[tuple[bytes, bytes]] | None:
    """The fields of ``block`` if it neither changes ``table`` nor passes ``limit``
    octets (RFC 9113 §6.5.2's size: name, value and 32 per field) and is well formed;
    else None (decode it with ``hpack.Decoder``)."""
    fields: list[tuple[bytes, bytes]] = []
    pos, size, total = 0, len(block), 0
    try:
        while pos < size:
            first = block[pos]
            if first & 0x80:  # indexed field (§6.1)
                index = first & 0x7F
                if index == 0x7F:
                    index, pos = _integer(block, pos, 7)
                else:
                    pos += 1
                if index <= 0:
                    return None
                name, value = (
                    _STATIC[index - 1] if index <= _STATIC_LENGTH else table.get_by_index(index)
                )
            elif first & 0xE0:  # to be indexed (§6.2.1), or a table size update (§6.3)
                return None
            else:  # without indexing (§6.2.2) or never indexed (§6.2.3)
                index = first & 0x0F
                if index == 0x0F:
                    index, pos = _integer(block, pos, 4)
                    if index < 0:
                        return None
                else:
                    pos += 1
                if index:
                    name = (
                        _STATIC[index - 1] if index <= _STATIC_LENGTH else table.get_by_index(index)
                    )[0]
                else:
                    literal, pos = _string(block, pos, size)
                    if literal is None:
                        return None
                    name = literal
                literal, pos = _string(block, pos, size)
                if literal is None:
                    return None
                value = literal
            total += len(name) + len(value) + 32
            if total > limit:
                return None
            fields.append((name, value))
    except (HPACKError, IndexError):  # an index the table does not hold
        return None
    return fields
