"""A loopback TCP proxy in front of the API server for one client, to cut that client off the API and back."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, Literal

BlockMode = Literal["reset", "blackhole"]


class ClientProxy:
    """Forward 127.0.0.1:<port> to the emulator until blocked.

    `block("reset")` aborts every open connection (RST) and resets new ones at once, as a host
    whose API endpoint is gone; `block("blackhole")` aborts open connections and then accepts
    new ones but never answers, as a silent network partition (clients see their timeouts).
    `unblock()` forwards again; the listening port never changes.
    """

    def __init__(self, name: str, upstream_host: str, upstream_port: int, host: str = "127.0.0.1",
                 scheme: str = "http") -> None:
        self.name = name
        self.scheme = scheme
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.mode: BlockMode | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections_total = 0
        self.connections_refused = 0
        self.bytes_to_client = 0
        self.bytes_to_upstream = 0

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"proxy {self.name!r} is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def blocked(self) -> bool:
        return self.mode is not None

    async def start(self) -> ClientProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._abort_all()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def block(self, mode: BlockMode = "reset") -> None:
        if mode not in ("reset", "blackhole"):
            raise ValueError(f"unknown block mode {mode!r}: use 'reset' or 'blackhole'")
        self.mode = mode
        self._abort_all()

    def unblock(self) -> None:
        previous, self.mode = self.mode, None
        if previous == "blackhole":
            # Connections held silent by the blackhole would never recover: drop them.
            self._abort_all()

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        if self.mode == "reset":
            self.connections_refused += 1
            _abort(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._writers.add(writer)
        try:
            if self.mode == "blackhole":
                self.connections_refused += 1
                await reader.read()  # hold the connection silently until the client gives up
                return
            await self._forward(reader, writer)
        except asyncio.CancelledError:
            pass  # the proxy is closing: end quietly (asyncio would log the cancelled connection task)
        finally:
            self._connections.discard(task)
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            _abort(writer)
            return
        self._writers.add(upstream_writer)
        try:
            await asyncio.gather(
                _pump(reader, upstream_writer, self._count_up), _pump(upstream_reader, writer, self._count_down),
                return_exceptions=True,
            )
        finally:
            self._writers.discard(upstream_writer)
            if not upstream_writer.is_closing():
                upstream_writer.close()

    def _count_up(self, size: int) -> None:
        self.bytes_to_upstream += size

    def _count_down(self, size: int) -> None:
        self.bytes_to_client += size


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: Callable[[int], None]) -> None:
    try:
        while chunk := await reader.read(65536):
            count(len(chunk))
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        # Half-close so the other direction can finish (HTTP keep-alive ends cleanly).
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), so the peer sees `connection reset`, not a clean EOF."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport = writer.transport
    transport.abort()


class ProxyThread:
    """A ClientProxy on its own event loop in a daemon thread, for synchronous tests.

    `ProxyThread("edge-a", "127.0.0.1", port, scheme="https").start()`; `block()`, `unblock()`,
    `close()` are thread-safe.
    """

    def __init__(self, name: str, upstream_host: str, upstream_port: int, scheme: str = "https") -> None:
        self.proxy = ClientProxy(name, upstream_host, upstream_port, scheme=scheme)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"proxy-{name}", daemon=True)

    @property
    def name(self) -> str:
        return self.proxy.name

    @property
    def url(self) -> str:
        return self.proxy.url

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def start(self) -> ProxyThread:
        self._thread.start()
        self._call(self.proxy.start())
        return self

    def block(self, mode: BlockMode = "reset") -> None:
        async def block() -> None:
            self.proxy.block(mode)
        self._call(block())

    def unblock(self) -> None:
        async def unblock() -> None:
            self.proxy.unblock()
        self._call(unblock())

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self.proxy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
