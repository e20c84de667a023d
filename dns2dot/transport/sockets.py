"""Socket options shared by every connection kind."""

from __future__ import annotations

import contextlib
import socket
import struct

_RESET = struct.pack("ii", 1, 0)  # struct linger for SO_LINGER: on, 0 s (close resets)


def reset_on_close(sock: socket.socket) -> None:
    """Make closing ``sock`` a reset (SO_LINGER 0): for a client that stopped reading,
    whose FIN would wait behind bytes it never takes."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
