"""The content-addressed blob store: verified streaming writes, nothing partial left behind."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from aos_operator.digests import sha256_digest
from aos_operator.errors import PackageError
from aos_operator.image.store import BlobStore


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_put_bytes_names_the_blob_by_its_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    blob = store.put_bytes(b"hello")
    assert blob.digest == sha256_digest(b"hello") and blob.size == 5
    assert blob.path == tmp_path / "sha256" / hashlib.sha256(b"hello").hexdigest()
    assert blob.path.read_bytes() == b"hello"
    assert store.has(blob.digest) and store.has(blob.digest, 5) and not store.has(blob.digest, 6)
    assert store.get(blob.digest) == blob
    assert _files(tmp_path) == [f"sha256/{blob.digest[7:]}"]


def test_put_stream_from_file_and_from_chunks(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = bytes(range(256)) * 10000
    digest = sha256_digest(data)
    assert store.put_stream(io.BytesIO(data), digest, len(data)).digest == digest
    assert store.put_stream([data[:100], data[100:]], digest).path.read_bytes() == data


def test_wrong_digest_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    claimed = sha256_digest(b"what the registry promised")
    with pytest.raises(PackageError, match=f"blob {claimed}: content has digest {sha256_digest(b'tampered')}"):
        store.put_stream([b"tampered"], claimed)
    assert not store.has(claimed)
    assert _files(tmp_path) == []


def test_wrong_size_is_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(PackageError, match="got 3 bytes, expected 4"):
        store.put_stream([b"abc"], sha256_digest(b"abc"), 4)
    assert _files(tmp_path) == []


def test_a_failing_source_leaves_no_temp_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)

    def broken() -> object:
        yield b"partial"
        raise ConnectionError("network went away")

    with pytest.raises(ConnectionError):
        store.put_stream(broken())  # type: ignore[arg-type]
    assert _files(tmp_path) == []


def test_missing_blob_is_a_clear_error(tmp_path: Path) -> None:
    digest = sha256_digest(b"absent")
    with pytest.raises(PackageError, match=f"blob {digest} is not in the store"):
        BlobStore(tmp_path).get(digest)
    with pytest.raises(ValueError, match="not a sha256 digest"):
        BlobStore(tmp_path).path("md5:abc")
