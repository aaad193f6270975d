"""The parallel gzip writer: valid gzip, deterministic whatever the write sizes, workers or run."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import threading

import pytest

from aos_operator.image.deflate import GZIP_HEADER, Compression, ParallelGzipWriter

BLOCK = 64 * 1024


def _sample(size: int, seed: int = 3) -> bytes:
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(1, 12)) for _ in range(300)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) if rng.random() < 0.9 else rng.randbytes(64)
    return bytes(out[:size])


def _compress(data: bytes, *, chunk: int, workers: int = 2, compression: Compression | None = None) -> tuple[bytes, str]:
    out = io.BytesIO()
    with ParallelGzipWriter(out, compression or Compression(6, BLOCK), workers=workers) as writer:
        for start in range(0, len(data), chunk):
            writer.write(data[start : start + chunk])
        digest = writer.close()
    return out.getvalue(), digest.uncompressed_digest


def test_round_trips_and_hashes_the_uncompressed_stream() -> None:
    data = _sample(5 * BLOCK + 123)
    compressed, digest = _compress(data, chunk=10_000)
    assert gzip.decompress(compressed) == data
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK])
def test_block_boundaries(size: int) -> None:
    data = _sample(size)
    compressed, _ = _compress(data, chunk=4096)
    assert gzip.decompress(compressed) == data
    trailer = compressed[-8:]
    assert int.from_bytes(trailer[4:], "little") == size


def test_same_bytes_whatever_the_write_sizes_and_worker_count() -> None:
    data = _sample(7 * BLOCK + 999)
    outputs = {
        _compress(data, chunk=chunk, workers=workers)[0]
        for chunk in (1, 511, 4096, BLOCK, 3 * BLOCK + 7, len(data))
        for workers in (1, 2, 5)
        if chunk > 1 or workers == 1
    }
    assert len(outputs) == 1


def test_fixed_gzip_header() -> None:
    compressed, _ = _compress(b"hello", chunk=5)
    assert compressed.startswith(GZIP_HEADER)
    assert compressed[3] == 0  # no FNAME, FEXTRA, FCOMMENT
    assert compressed[4:8] == b"\0\0\0\0"  # mtime 0
    assert compressed[9] == 255


def test_level_and_block_size_change_the_bytes_and_the_identity() -> None:
    data = _sample(4 * BLOCK)
    level1, _ = _compress(data, chunk=BLOCK, compression=Compression(1, BLOCK))
    level6, _ = _compress(data, chunk=BLOCK, compression=Compression(6, BLOCK))
    assert level1 != level6
    assert gzip.decompress(level1) == gzip.decompress(level6) == data
    assert Compression(1, BLOCK).identity != Compression(6, BLOCK).identity
    assert "zlib-ng" in str(Compression().identity["implementation"])


@pytest.mark.parametrize("bad", [{"level": 0}, {"level": 10}, {"block_size": 1000}])
def test_invalid_settings_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Compression(**bad)


def test_abort_stops_every_worker() -> None:
    before = threading.active_count()
    with pytest.raises(RuntimeError):
        with ParallelGzipWriter(io.BytesIO(), Compression(6, BLOCK), workers=3) as writer:
            writer.write(_sample(10 * BLOCK))
            raise RuntimeError("source failed")
    assert threading.active_count() == before
