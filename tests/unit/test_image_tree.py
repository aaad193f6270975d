"""Scanning source trees, hostile ones included: every refusal names the path."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from aos_operator.errors import BuildError, InputError
from aos_operator.image.tree import EntryKind, scan_tree


def _kinds(root: Path, **options: str) -> dict[str, tuple[EntryKind, int, str]]:
    tree = scan_tree(root, **options)  # type: ignore[arg-type]
    return {entry.path: (entry.kind, entry.mode, entry.link_target) for entry in tree.entries}


def test_entries_are_sorted_by_path_bytes_with_directories_listed(tmp_path: Path) -> None:
    for name in ("b", "a/x", "a-b", "a/y/z", "é", "Z"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    (tmp_path / "empty").mkdir()
    paths = [entry.path for entry in scan_tree(tmp_path).entries]
    assert paths == ["Z", "a", "a-b", "a/x", "a/y", "a/y/z", "b", "empty", "é"]
    assert paths == sorted(paths, key=lambda p: p.encode())


def test_modes_keep_only_the_executable_bit(tmp_path: Path) -> None:
    for name, mode in (("private", 0o600), ("shared", 0o666), ("script", 0o700), ("group-x", 0o610)):
        (tmp_path / name).write_text(name)
        os.chmod(tmp_path / name, mode)
    (tmp_path / "dir").mkdir(mode=0o700)
    modes = {path: mode for path, (_, mode, _) in _kinds(tmp_path).items()}
    assert modes == {"private": 0o644, "shared": 0o644, "script": 0o755, "group-x": 0o755, "dir": 0o755}


def test_setuid_setgid_sticky_are_dropped_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "su").write_text("x")
    os.chmod(tmp_path / "su", 0o4755)
    (tmp_path / "tmp").mkdir()
    os.chmod(tmp_path / "tmp", 0o1777)
    tree = scan_tree(tmp_path)
    assert {entry.path: entry.mode for entry in tree.entries} == {"su": 0o755, "tmp": 0o755}
    assert len(tree.warnings) == 2
    assert any(str(tmp_path / "su") in warning and "4755" in warning for warning in tree.warnings)


def test_symlink_policy_raise_names_the_link(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    os.symlink("a", tmp_path / "link")
    with pytest.raises(BuildError, match=f"{tmp_path / 'link'}.*'raise'"):
        scan_tree(tmp_path, "raise")


def test_symlink_policy_delete_drops_links_even_escaping_ones(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    os.symlink("a", tmp_path / "inside")
    os.symlink("/etc/passwd", tmp_path / "outside")
    assert list(_kinds(tmp_path, symlinks="delete")) == ["a"]


def test_symlink_policy_copy_keeps_links_as_links(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    os.symlink("lib", tmp_path / "usr/lib64")
    os.symlink("../lib/libmissing.so.1", tmp_path / "usr/lib/libx.so")  # dangling but inside
    os.symlink("../lib64/../lib", tmp_path / "usr/lib/self")  # through a link, stays inside
    kinds = _kinds(tmp_path)
    assert kinds["usr/lib64"] == (EntryKind.SYMLINK, 0o777, "lib")
    assert kinds["usr/lib/libx.so"][2] == "../lib/libmissing.so.1"
    assert kinds["usr/lib/self"][0] is EntryKind.SYMLINK


@pytest.mark.parametrize(
    ("links", "bad", "reason"),
    [
        ({"abs": "/etc/passwd"}, "abs", "absolute"),
        ({"up": "../outside"}, "up", "climbs above"),
        ({"d/up2": "../../x"}, "d/up2", "climbs above"),
        ({"d/chain": "../hop", "hop": "/etc"}, "d/chain", "through hop"),
        ({"d/chain2": "../hop2/../..", "hop2": "d"}, "d/chain2", "climbs above"),
        ({"loop1": "loop2", "loop2": "loop1"}, "loop1", "loop"),
    ],
)
def test_symlinks_leading_outside_are_refused(tmp_path: Path, links: dict[str, str], bad: str, reason: str) -> None:
    (tmp_path / "d").mkdir()
    for link, target in links.items():
        os.symlink(target, tmp_path / link)
    with pytest.raises(BuildError) as caught:
        scan_tree(tmp_path, "copy")
    assert reason in str(caught.value)
    assert f"{tmp_path / bad}: symbolic link" in str(caught.value)


def test_escaping_symlink_is_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_text("secret")
    tree = tmp_path / "tree"
    tree.mkdir()
    os.symlink("../secret", tree / "leak")
    with pytest.raises(BuildError, match="leak"):
        scan_tree(tree, "copy")


def test_hardlinks_inside_the_tree_become_tar_hardlinks(tmp_path: Path) -> None:
    (tmp_path / "b").write_text("same inode")
    os.link(tmp_path / "b", tmp_path / "a")
    os.link(tmp_path / "b", tmp_path / "c")
    kinds = _kinds(tmp_path)
    assert kinds["a"][0] is EntryKind.FILE
    assert kinds["b"] == (EntryKind.HARDLINK, 0o644, "a")
    assert kinds["c"] == (EntryKind.HARDLINK, 0o644, "a")


def test_hardlink_to_a_file_outside_the_tree_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "secret").write_text("outside")
    os.link(tmp_path / "secret", tmp_path / "tree" / "innocent")
    with pytest.raises(BuildError, match=r"innocent.*hard link to a file outside"):
        scan_tree(tmp_path / "tree")


def test_fifo_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(BuildError, match=rf"{tmp_path / 'pipe'}: is a FIFO"):
        scan_tree(tmp_path)


def test_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        with pytest.raises(BuildError, match=r"s\.sock: is a socket"):
            scan_tree(tmp_path)
    finally:
        server.close()


@pytest.mark.root
def test_device_nodes_are_refused(tmp_path: Path) -> None:
    os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(BuildError, match="null: is a character device"):
        scan_tree(tmp_path)


def test_non_utf8_names_are_refused_with_escaped_bytes(tmp_path: Path) -> None:
    os.mkdir(os.fsencode(tmp_path) + b"/bad\xffname")
    with pytest.raises(BuildError, match=r"bad\\xffname: file name is not valid UTF-8"):
        scan_tree(tmp_path)


def test_long_paths_and_255_byte_names_are_kept(tmp_path: Path) -> None:
    deep = tmp_path / ("a" * 255) / ("b" * 255)
    deep.mkdir(parents=True)
    (deep / ("c" * 255)).write_text("deep")
    paths = [entry.path for entry in scan_tree(tmp_path).entries]
    assert paths[-1] == "/".join(["a" * 255, "b" * 255, "c" * 255])


def test_source_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="must be a directory"):
        scan_tree(tmp_path / "file")
    with pytest.raises(InputError, match="cannot read"):
        scan_tree(tmp_path / "missing")


def test_unknown_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="follow"):
        scan_tree(tmp_path, "follow")  # type: ignore[arg-type]


def test_a_tree_deeper_than_a_device_takes_is_refused_at_build(tmp_path: Path) -> None:
    from aos_operator.bounded import MAX_PATH_DEPTH

    deepest = tmp_path.joinpath(*["d"] * MAX_PATH_DEPTH)
    deepest.mkdir(parents=True)
    assert len(scan_tree(tmp_path).entries) == MAX_PATH_DEPTH
    (deepest / "f").write_text("x")
    with pytest.raises(BuildError, match=f"more than {MAX_PATH_DEPTH} levels deep"):
        scan_tree(tmp_path)
