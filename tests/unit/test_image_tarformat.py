"""Tar entry normalization: the header bytes the layer and the package archive are made of."""

from __future__ import annotations

import io
import tarfile

import pytest

from aos_operator.image import tarformat


def _read_single(header: bytes, data: bytes = b"") -> tarfile.TarInfo:
    stream = header + data + tarformat.padding(len(data)) + tarformat.END_OF_ARCHIVE
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as archive:
        (member,) = archive.getmembers()
        return member


def test_regular_file_header_is_normalized_ustar() -> None:
    header = tarformat.encode_entry("usr/bin/x", tarformat.REGULAR, mode=0o755, mtime=1700000000, size=3)
    assert len(header) == 512
    assert header[257:265] == b"ustar\x0000"
    member = _read_single(header, b"abc")
    assert (member.name, member.size, member.mode, member.mtime) == ("usr/bin/x", 3, 0o755, 1700000000)
    assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
    assert member.isreg() and not member.pax_headers


def test_checksum_is_the_sum_of_the_header_bytes() -> None:
    header = tarformat.encode_entry("etc/hello.cfg", tarformat.REGULAR, mode=0o644, mtime=0, size=10)
    recorded = int(header[148:154], 8)
    assert recorded == sum(header[:148]) + 8 * 32 + sum(header[156:])


def test_directory_gets_a_trailing_slash() -> None:
    header = tarformat.encode_entry("var/empty", tarformat.DIRECTORY, mode=0o755, mtime=5)
    assert header[:10] == b"var/empty/"
    assert _read_single(header).isdir()


def test_symlink_and_hardlink_targets() -> None:
    link = _read_single(tarformat.encode_entry("usr/bin/hello", tarformat.SYMLINK, mode=0o777, mtime=0, linkname="x/y"))
    assert link.issym() and link.linkname == "x/y"
    hard = _read_single(tarformat.encode_entry("b", tarformat.HARDLINK, mode=0o644, mtime=0, linkname="a"))
    assert hard.islnk() and hard.linkname == "a"


@pytest.mark.parametrize("length", [101, 150, 255, 256, 1000, 5000])
def test_long_paths_go_to_a_pax_header(length: int) -> None:
    path = "/".join(["d" * 200] * (length // 201) + ["f" * (length % 201 or 1)])
    header = tarformat.encode_entry(path, tarformat.REGULAR, mode=0o644, mtime=0, size=0)
    assert header[:14] == b"././@PaxHeader"
    member = _read_single(header)
    assert member.name == path
    assert set(member.pax_headers) == {"path"}


def test_long_symlink_target_goes_to_pax_linkpath() -> None:
    target = "../" * 60 + "target"
    member = _read_single(tarformat.encode_entry("l", tarformat.SYMLINK, mode=0o777, mtime=0, linkname=target))
    assert member.linkname == target
    assert set(member.pax_headers) == {"linkpath"}


def test_utf8_names_of_100_bytes_stay_in_ustar() -> None:
    name = "é" * 50  # 100 bytes
    header = tarformat.encode_entry(name, tarformat.REGULAR, mode=0o644, mtime=0)
    assert len(header) == 512
    assert _read_single(header).name == name


@pytest.mark.parametrize("value_length", range(80, 120))
def test_pax_record_length_counts_itself(value_length: int) -> None:
    record = tarformat._pax_record(b"path", b"p" * value_length)
    length, _, rest = record.partition(b" ")
    assert int(length) == len(record)
    assert rest == b"path=" + b"p" * value_length + b"\n"


def test_sizes_from_8_gib_use_a_pax_size_record() -> None:
    size = 8 * 1024**3 + 5
    header = tarformat.encode_entry("big", tarformat.REGULAR, mode=0o644, mtime=0, size=size)
    assert b" size=8589934597\n" in header[512:1024]
    ustar = tarformat.encode_entry("small", tarformat.REGULAR, mode=0o644, mtime=0, size=8 * 1024**3 - 1)
    assert len(ustar) == 512


def test_mtime_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="mtime"):
        tarformat.encode_entry("x", tarformat.REGULAR, mode=0o644, mtime=tarformat.MAX_MTIME + 1)


def test_padding_completes_blocks() -> None:
    assert [len(tarformat.padding(n)) for n in (0, 1, 511, 512, 513)] == [0, 511, 1, 0, 511]
