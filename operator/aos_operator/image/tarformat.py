"""Deterministic tar headers: POSIX ustar, plus a pax extended header only where ustar cannot hold a value.

One format for every tar the project writes (the rootfs layer and the package archive):
- ustar headers (magic "ustar\\0", version "00"), uid = gid = 0, empty uname/gname,
  device numbers 0, mtime given by the caller;
- a pax extended header (typeflag 'x', named "././@PaxHeader") is added only for a path or
  link target longer than 100 bytes or a size of 8 GiB or more; it carries only those
  records, never atime/ctime;
- directory names end with "/"; data is padded to 512 bytes; the archive ends with two zero
  blocks and no further record padding (as Go's archive/tar writes it).
"""

from __future__ import annotations

BLOCK_SIZE = 512
END_OF_ARCHIVE = bytes(2 * BLOCK_SIZE)

REGULAR = b"0"
HARDLINK = b"1"
SYMLINK = b"2"
DIRECTORY = b"5"
PAX_HEADER = b"x"

_NAME_FIELD = 100
_OCTAL_SIZE_LIMIT = 8**11  # an 11-digit octal field holds values below 8 GiB
MAX_MTIME = _OCTAL_SIZE_LIMIT - 1
_PAX_HEADER_NAME = b"././@PaxHeader"


def padding(size: int) -> bytes:
    """The zero bytes that complete a member of `size` bytes to a whole block."""
    return bytes(-size % BLOCK_SIZE)


def encode_entry(
    path: str,
    typeflag: bytes,
    *,
    mode: int,
    mtime: int,
    size: int = 0,
    linkname: str = "",
) -> bytes:
    """Header block(s) of one member: a pax header first when needed, then the ustar header.

    `path` is relative and '/'-separated; a directory's trailing '/' is added here.
    """
    if not 0 <= mtime <= MAX_MTIME:
        raise ValueError(f"mtime {mtime} is outside 0..{MAX_MTIME}")
    name = path.encode("utf-8") + (b"/" if typeflag == DIRECTORY else b"")
    link = linkname.encode("utf-8")
    records = b""
    if len(name) > _NAME_FIELD:
        records += _pax_record(b"path", name)
    if len(link) > _NAME_FIELD:
        records += _pax_record(b"linkpath", link)
    if size >= _OCTAL_SIZE_LIMIT:
        records += _pax_record(b"size", str(size).encode())
    header = b""
    if records:
        header = _ustar(_PAX_HEADER_NAME, PAX_HEADER, 0o644, len(records), mtime, b"")
        header += records + padding(len(records))
    ustar_size = size if size < _OCTAL_SIZE_LIMIT else 0
    return header + _ustar(name[:_NAME_FIELD], typeflag, mode, ustar_size, mtime, link[:_NAME_FIELD])


def _pax_record(key: bytes, value: bytes) -> bytes:
    # A record is "<length> <key>=<value>\n" where <length> counts its own digits too.
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(body) + len(str(length)) != length:
        length = len(body) + len(str(length))
    return str(length).encode() + body


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _ustar(name: bytes, typeflag: bytes, mode: int, size: int, mtime: int, linkname: bytes) -> bytes:
    fields = [
        name.ljust(100, b"\0"),
        _octal(mode, 8),
        _octal(0, 8),  # uid
        _octal(0, 8),  # gid
        _octal(size, 12),
        _octal(mtime, 12),
        b" " * 8,  # checksum placeholder, as the checksum is computed
        typeflag,
        linkname.ljust(100, b"\0"),
        b"ustar\0",
        b"00",
        bytes(32),  # uname
        bytes(32),  # gname
        _octal(0, 8),  # devmajor
        _octal(0, 8),  # devminor
        bytes(155),  # prefix (unused: long names go to pax)
        bytes(12),
    ]
    block = bytearray(b"".join(fields))
    assert len(block) == BLOCK_SIZE
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)
