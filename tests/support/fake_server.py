"""The plumbing shared by the in-process fake servers (:mod:`support.fake_upstream`, DoT,
and :mod:`support.doh`, DoH): an asyncio loop in a daemon thread serving TCP on loopback.

A subclass sets :attr:`LABEL` and :attr:`THREAD_PREFIX`, implements :meth:`_handle` (one
accepted connection) and may override :meth:`_prepare` (run on the loop thread before
binding; an exception there fails :meth:`start`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Callable
from typing import Self

from .net import LOOPBACK


class FakeServer:
    """An asyncio TCP server on 127.0.0.1 in a background thread; see the module doc.

    Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    #: How start() errors name the server, e.g. "fake upstream".
    LABEL = "fake server"
    #: The thread name's prefix (the object's id follows).
    THREAD_PREFIX = "fake-server"
    #: Errors that end a connection quietly.
    QUIET_ERRORS: tuple[type[BaseException], ...] = (
        asyncio.CancelledError,
        ConnectionError,
        asyncio.IncompleteReadError,
        ssl.SSLError,
        OSError,
    )

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._lock = threading.Lock()
        self._cfg: dict[str, object] = {}
        self._sni: list[str | None] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    # -- hooks ---------------------------------------------------------------------

    def _prepare(self) -> None:
        """Run on the loop thread before binding."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    # -- helpers for subclasses ----------------------------------------------------

    def _get(self, key: str) -> object:
        with self._lock:
            return self._cfg[key]

    def _record_sni(self, ctx: ssl.SSLContext) -> None:
        """Make ``ctx`` record the SNI of every handshake in ``self._sni``."""

        def on_sni(_obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            with self._lock:
                self._sni.append(name)

        ctx.sni_callback = on_sni

    @staticmethod
    def _wait_count(count: Callable[[], int], n: int, timeout: float) -> bool:
        """True once ``count()`` reaches ``n``, False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if count() >= n:
                return True
            time.sleep(0.02)
        return count() >= n

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> Self:
        """Start the loop thread and bind; returns once the port is listening."""
        self._thread = threading.Thread(
            target=self._run, name=f"{self.THREAD_PREFIX}-{id(self):x}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"{self.LABEL} did not start")
        if self._start_error is not None:
            raise RuntimeError(f"{self.LABEL} failed to start: {self._start_error!r}")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection, stop the loop, join the thread."""
        loop = self._loop
        if loop is None or self._thread is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(timeout)
        self._loop = None

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        assert self._loop is not None
        self._loop.call_later(0.05, self._loop.stop)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._prepare()
            self._server = loop.run_until_complete(
                asyncio.start_server(self._on_connect, LOOPBACK, self.port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.wait(pending, timeout=2))
            finally:
                loop.close()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except self.QUIET_ERRORS:
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.transport.abort()
