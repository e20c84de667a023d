"""A raw TCP relay that records every byte, and a checker that the bytes are pure TLS.

Why: "no query is ever sent in cleartext" is a property of the wire, not of
dns2dot's logs. The relay sits between dns2dot and an upstream; afterwards
:func:`tls_record_problems` walks the client->server bytes record by record.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

from .net import LOOPBACK

#: TLS record content types: change_cipher_spec, alert, handshake, application_data.
TLS_CONTENT_TYPES = frozenset({20, 21, 22, 23})
_MAX_RECORD = 2**14 + 2048


def tls_record_problems(data: bytes) -> list[str]:
    """Everything in ``data`` that is not a TLS record (empty list: all TLS).

    Each record: type 20-23, version 0x03xx, length <= 2^14+2048. The first must be
    a handshake record (the ClientHello). A last record cut short by a closed
    connection is accepted if its header (as far as present) is valid.
    """
    problems: list[str] = []
    i = 0
    first = True
    while i < len(data):
        head = data[i : i + 5]
        ctype = head[0]
        if ctype not in TLS_CONTENT_TYPES:
            problems.append(
                f"offset {i}: content type {ctype} is not TLS (bytes {data[i : i + 16].hex()})"
            )
            break
        if first and ctype != 22:
            problems.append(f"offset {i}: first record is type {ctype}, not a handshake")
        first = False
        if len(head) >= 2 and head[1] != 0x03:
            problems.append(f"offset {i}: version major {head[1]:#x} is not 0x03")
            break
        if len(head) < 5:
            break  # cut short at the very end
        length = int.from_bytes(head[3:5], "big")
        if length > _MAX_RECORD:
            problems.append(f"offset {i}: record length {length} exceeds the TLS maximum")
            break
        i += 5 + length
    return problems


class RecordingProxy:
    """Relay 127.0.0.1:``port`` -> ``target_port``, recording both directions per connection.

    ``upstream_bytes[i]`` holds what the client sent on connection ``i`` (what the
    upstream port received); ``downstream_bytes[i]`` what came back.
    """

    def __init__(self, target_port: int, *, target_host: str = LOOPBACK) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._up: list[bytearray] = []
        self._down: list[bytearray] = []
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="recording-proxy", daemon=True
        )

    def __enter__(self) -> RecordingProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> RecordingProxy:
        """Start accepting."""
        self._accept_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every relayed connection, join the threads."""
        self._stop.set()
        self._accept_thread.join(timeout)
        for t in list(self._threads):
            t.join(timeout)
        self._listener.close()

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return len(self._up)

    @property
    def upstream_bytes(self) -> list[bytes]:
        """Client->upstream bytes of each connection."""
        with self._lock:
            return [bytes(b) for b in self._up]

    @property
    def downstream_bytes(self) -> list[bytes]:
        """Upstream->client bytes of each connection."""
        with self._lock:
            return [bytes(b) for b in self._down]

    def problems(self) -> list[str]:
        """:func:`tls_record_problems` over every connection's client->upstream bytes."""
        out: list[str] = []
        for n, data in enumerate(self.upstream_bytes):
            out += [f"connection {n}: {p}" for p in tls_record_problems(data)]
        return out

    def wait_for_connections(self, n: int, timeout: float = 5.0) -> bool:
        """True once ``n`` connections have been accepted, False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connections >= n:
                return True
            time.sleep(0.02)
        return self.connections >= n

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            up, down = bytearray(), bytearray()
            with self._lock:
                self._up.append(up)
                self._down.append(down)
            t = threading.Thread(target=self._relay, args=(client, up, down), daemon=True)
            self._threads.append(t)
            t.start()

    def _relay(self, client: socket.socket, up: bytearray, down: bytearray) -> None:
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        pairs = {client: (server, up), server: (client, down)}
        open_ends = {client, server}
        try:
            while open_ends and not self._stop.is_set():
                readable, _, _ = select.select(list(open_ends), [], [], 0.1)
                for s in readable:
                    other, sink = pairs[s]
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        open_ends.discard(s)
                        with contextlib.suppress(OSError):
                            other.shutdown(socket.SHUT_WR)
                        if s is server:  # upstream gone: end the relay
                            open_ends.clear()
                        continue
                    with self._lock:
                        sink += data
                    try:
                        other.sendall(data)
                    except OSError:
                        open_ends.clear()
        finally:
            client.close()
            server.close()
