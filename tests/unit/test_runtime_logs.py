"""Capped service logs and following them across rotation."""

from __future__ import annotations

from pathlib import Path

from aos_operator.runtime.logs import CappedLog, LogFollower


def test_log_never_exceeds_twice_the_cap_and_keeps_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "service.log"
    log = CappedLog(path, max_bytes=100)
    for n in range(1000):
        log.write(f"line {n:04d}\n".encode())
    log.close()
    rotated = path.with_name("service.log.1")
    assert path.stat().st_size <= 100 and rotated.stat().st_size <= 100
    assert (rotated.read_bytes() + path.read_bytes()).endswith(b"line 0999\n")
    assert b"line 0000" not in rotated.read_bytes() + path.read_bytes()


def test_a_single_write_larger_than_the_cap_is_split(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "service.log", max_bytes=10)
    log.write(b"x" * 35)
    log.close()
    assert (tmp_path / "service.log").read_bytes() == b"x" * 5
    assert (tmp_path / "service.log.1").read_bytes() == b"x" * 10


def test_reopened_log_continues_counting(tmp_path: Path) -> None:
    path = tmp_path / "service.log"
    CappedLog(path, 20).write(b"a" * 15)
    second = CappedLog(path, 20)
    second.write(b"b" * 10)
    assert path.read_bytes() == b"b" * 5 and path.with_name("service.log.1").read_bytes() == b"a" * 15 + b"b" * 5


def test_follower_reads_everything_new_across_rotations(tmp_path: Path) -> None:
    path = tmp_path / "service.log"
    log = CappedLog(path, max_bytes=64)
    log.write(b"old output before the follower\n")
    follower = LogFollower(path)
    seen = b""
    expected = b""
    for n in range(200):
        line = f"line {n}\n".encode()
        log.write(line)
        expected += line
        if n % 7 == 0:
            seen += follower.read()
    seen += follower.read()
    assert seen == expected


def test_follower_of_a_log_that_does_not_exist_yet(tmp_path: Path) -> None:
    follower = LogFollower(tmp_path / "service.log")
    assert follower.read() == b""
    CappedLog(tmp_path / "service.log").write(b"first\n")
    assert follower.read() == b"first\n"
