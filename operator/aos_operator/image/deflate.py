"""Deterministic, parallel gzip: one gzip member made of independently compressed blocks.

The uncompressed stream is cut every `block_size` bytes, whatever sizes it is written in.
Each block is deflated on its own (in a thread pool; zlib-ng releases the GIL) with the
previous 32 KiB of input as its dictionary and ends with a sync flush, the last one with a
final block; the raw deflate outputs are concatenated behind a fixed gzip header (no name,
mtime 0, no extra flags, OS byte 255) and followed by the CRC-32 and size. For a given
zlib-ng version, level and block size the bytes are the same on every run and machine, and
any gzip reader inflates them (the idea of pigz).

The writer hashes the uncompressed stream (sha256, the layer's diff_id) as it goes; the
compressed bytes go to `output`, which hashes them (the blob store's writer), so one pass
over the data yields both digests.
"""

from __future__ import annotations

import collections
import hashlib
import os
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import zlib_ng.zlib_ng as zlib_ng

# Level 3 of zlib-ng: output within ~2 % of gzip -6 and smaller than umoci's (Go, default
# level), at about 2.5 times the speed of level 6 (benchmarks/build.py).
DEFAULT_LEVEL = 3
DEFAULT_BLOCK_SIZE = 1 << 20
_DICTIONARY_SIZE = 32 * 1024
# gzip header: magic, CM=deflate, FLG=0, MTIME=0, XFL=0, OS=255 (unknown).
GZIP_HEADER = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class Compression:
    """Everything that decides the compressed bytes; part of every layer cache key."""

    level: int = DEFAULT_LEVEL
    block_size: int = DEFAULT_BLOCK_SIZE

    def __post_init__(self) -> None:
        if not 1 <= self.level <= 9:
            raise ValueError(f"compression level {self.level} is outside 1..9")
        if self.block_size < _DICTIONARY_SIZE:
            raise ValueError(f"block size {self.block_size} is below {_DICTIONARY_SIZE}")

    @property
    def identity(self) -> dict[str, object]:
        return {
            "format": "gzip/parallel-deflate-v1",
            "implementation": f"zlib-ng {zlib_ng.ZLIBNG_VERSION}",
            "level": self.level,
            "block_size": self.block_size,
        }


@dataclass(frozen=True)
class StreamDigest:
    uncompressed_digest: str
    uncompressed_size: int


def _deflate_block(block: bytes, dictionary: bytes, level: int, final: bool) -> tuple[bytes, int, int]:
    if dictionary:
        compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -15, 8, zlib_ng.Z_DEFAULT_STRATEGY, dictionary)
    else:
        compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -15, 8, zlib_ng.Z_DEFAULT_STRATEGY)
    flush_mode = zlib_ng.Z_FINISH if final else zlib_ng.Z_SYNC_FLUSH
    return compressor.compress(block) + compressor.flush(flush_mode), zlib_ng.crc32(block), len(block)


class ParallelGzipWriter:
    """Compresses what is written to it into `output`; use as a context manager, then `close()`.

    Memory stays bounded: at most `2 * workers + 1` blocks are in flight.
    """

    def __init__(self, output: Sink, compression: Compression = Compression(), workers: int | None = None) -> None:
        self._output = output
        self._compression = compression
        self._workers = workers or os.cpu_count() or 1
        self._executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="deflate")
        self._pending: collections.deque[Future[tuple[bytes, int, int]]] = collections.deque()
        self._block = bytearray()
        self._dictionary = b""
        self._hash = hashlib.sha256()
        self._size = 0
        self._crc = 0
        self._closed = False
        output.write(GZIP_HEADER)

    def __enter__(self) -> ParallelGzipWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._closed:
            self.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self._size += len(data)
        self._block += data
        block_size = self._compression.block_size
        if len(self._block) >= block_size:
            view = memoryview(self._block)
            start = 0
            while len(self._block) - start >= block_size:
                self._submit(bytes(view[start : start + block_size]), final=False)
                start += block_size
            view.release()
            del self._block[:start]

    def close(self) -> StreamDigest:
        """Flush the last block and the gzip trailer; return the uncompressed stream's digest."""
        self._submit(bytes(self._block), final=True)
        self._block = bytearray()
        while self._pending:
            self._write_next()
        self._output.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        self._closed = True
        self._executor.shutdown()
        return StreamDigest("sha256:" + self._hash.hexdigest(), self._size)

    def abort(self) -> None:
        """Stop without writing more; waits for running blocks so no thread outlives the writer."""
        self._closed = True
        for future in self._pending:
            future.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()

    def _submit(self, block: bytes, *, final: bool) -> None:
        future = self._executor.submit(_deflate_block, block, self._dictionary, self._compression.level, final)
        self._pending.append(future)
        # Blocks before the last are full, so the dictionary is always the previous block's tail.
        self._dictionary = block[-_DICTIONARY_SIZE:]
        while len(self._pending) > 2 * self._workers:
            self._write_next()

    def _write_next(self) -> None:
        compressed, block_crc, block_length = self._pending.popleft().result()
        # Each block's CRC is computed in its worker and folded in here, in stream order.
        self._crc = zlib_ng.crc32_combine(self._crc, block_crc, block_length)
        self._output.write(compressed)
