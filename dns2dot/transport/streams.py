"""Reading tornado streams in bulk: the one place dns2dot reads a socket past tornado.

An upstream writes one TLS record per answer and ``SSL_read`` returns one record per
call, so with tornado's ``read_bytes`` alone every answer cost a Future, a fresh
buffer and a dozen calls: about 20% of the CPU per query (UDP cache off: 25.5 to
20.6 µs a query, 34k to 43k q/s under dnsperf; pipe mode 45k to 58k). After a
``read_bytes`` that emptied tornado's buffer, :func:`read_more` takes what else the
socket already holds through the stream's own ``read_from_fd`` (tornado's hook for
exactly this read), and errors end the stream the way tornado would.

Order is the one hazard: an idle tornado stream reads into its own buffer by itself
(to notice a close), so bytes read past it could overtake bytes it holds. Tornado has
no public way to ask, so :func:`read_more` looks at its buffer size and reads past it
only when that is known to be zero; if a tornado release renames it, dns2dot is only
slower (tests/test_streams.py would show that), never wrong.
"""

from __future__ import annotations

from tornado.iostream import IOStream, SSLIOStream, StreamClosedError

# tornado allocates and zeroes a buffer of a stream's read_chunk_size for every read.
# One TLS record carries at most 16 KiB, so a larger one only costs the memset (pipe
# mode: +5% q/s against tornado's default 64 KiB); it still holds hundreds of queries.
READ_CHUNK = 16384 + 256
# Reads taken past tornado per call: bounded, so one busy stream cannot starve the rest.
MAX_MORE_READS = 64
# One scratch buffer for every stream of the process: read_more never awaits while
# it holds bytes there, and a buffer per stream would cost 16 KiB per idle pipe client.
_scratch = bytearray(READ_CHUNK)


async def read_all(stream: IOStream) -> bytes:
    """Wait for data; return everything tornado has buffered, leaving its buffer empty.

    Raises :class:`tornado.iostream.StreamClosedError` once the stream is closed, also
    for a socket or TLS error that tornado met in a read made at once and raised as it
    was (it closed the stream first, keeping the error).
    """
    try:
        return await stream.read_bytes(stream.max_buffer_size, partial=True)
    except OSError as exc:  # ssl.SSLError included
        raise StreamClosedError(real_error=exc) from exc


async def read_available(stream: IOStream) -> bytes:
    """Wait for data; return it with whatever else the socket already holds.

    How every stream in dns2dot is read: :func:`read_more` right after
    :func:`read_all`, nothing awaited in between.
    """
    return read_more(stream, await read_all(stream))


def read_more(stream: IOStream, data: bytes) -> bytes:
    """``data`` (just returned by :func:`read_all`) and what the socket holds now.

    Nothing is read past tornado unless its buffer is known to be empty (see the
    module docstring). At end of stream or on an error the stream is closed, with
    the error kept as tornado keeps it, and the next :func:`read_all` raises
    ``StreamClosedError``.
    """
    if not isinstance(stream, SSLIOStream) or getattr(stream, "_read_buffer_size", None) != 0:
        # A plain socket hands over everything it has in one read: another would only
        # come back empty, a wasted system call.
        return data
    parts: list[bytes | bytearray] = [data]
    for _ in range(MAX_MORE_READS):
        try:
            count = stream.read_from_fd(_scratch)
        except OSError as exc:  # ssl.SSLError included
            stream.close(exc_info=exc)
            break
        if count is None:  # nothing more for now
            break
        if count == 0:
            stream.close()
            break
        parts.append(_scratch[:count])
    return data if len(parts) == 1 else b"".join(parts)
