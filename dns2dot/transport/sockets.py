"""Socket options shared by every connection kind, and the plain socket transport."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable

_RESET = struct.pack("ii", 1, 0)  # struct linger for SO_LINGER: on, 0 s (close resets)


def reset_on_close(sock: socket.socket) -> None:
    """Make closing ``sock`` a reset (SO_LINGER 0): for a client that stopped reading,
    whose FIN would wait behind bytes it never takes."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)


class SocketTransport:
    """A connected non-blocking socket driven by the loop's readiness callbacks.

    What a client session needs of its connection, and no more: read what is there,
    write what the socket takes, ask to be called when it is readable or writable,
    close or reset. A TLS server channel can offer the same methods, so a session does
    not care which it has (docs/ARCHITECTURE.md, "transport").
    """

    __slots__ = ("_fd", "_loop", "_on_readable", "_on_writable", "_reading", "_writing", "sock")

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_readable: Callable[[], None],
        on_writable: Callable[[], None],
    ) -> None:
        self.sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._on_readable = on_readable
        self._on_writable = on_writable
        self._reading = False  # the loop's interest, mirrored: add/remove only on change
        self._writing = False

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def recv(self, size: int) -> bytes:
        """What the socket holds, up to ``size`` bytes; ``b""`` at end of stream.

        Raises ``BlockingIOError`` when there is nothing yet, ``OSError`` on a broken
        connection.
        """
        return self.sock.recv(size)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Write what the socket takes now; how many bytes it took. Raises ``OSError``
        on a broken connection."""
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0

    def want_read(self, on: bool) -> None:
        if on is not self._reading and self._fd >= 0:
            self._reading = on
            if on:
                self._loop.add_reader(self._fd, self._on_readable)
            else:
                self._loop.remove_reader(self._fd)

    def want_write(self, on: bool) -> None:
        if on is not self._writing and self._fd >= 0:
            self._writing = on
            if on:
                self._loop.add_writer(self._fd, self._on_writable)
            else:
                self._loop.remove_writer(self._fd)

    def close(self) -> None:
        """Stop watching and close (idempotent): a FIN after what the kernel holds."""
        if self._fd >= 0:
            self.want_read(False)
            self.want_write(False)
            self._fd = -1
        self.sock.close()

    def reset(self) -> None:
        """Close with a reset (SO_LINGER 0), dropping what the kernel holds unsent."""
        if self._fd >= 0:
            reset_on_close(self.sock)
        self.close()
