"""The UID/GID pool: per instance and per service, persistent, skipping host IDs."""

from __future__ import annotations

from pathlib import Path

import pytest

from aos_operator.errors import RuntimeFailure
from aos_operator.runtime.ids import IdPool


@pytest.fixture
def pool(tmp_path: Path) -> IdPool:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\nalice:x:5000:5000::/home/alice:/bin/sh\n")
    group = tmp_path / "group"
    group.write_text("root:x:0:\nstaff:x:5001:\n")
    return IdPool(tmp_path / "ids.json", passwd, group, (5000, 5005))


def test_uid_per_instance_skips_host_users_and_persists(pool: IdPool, tmp_path: Path) -> None:
    first = pool.instance_uid("instance-a")
    second = pool.instance_uid("instance-b")
    assert (first, second) == (5001, 5002)  # 5000 is alice
    again = IdPool(pool.path, pool.passwd, pool.group, (5000, 5005))
    assert again.instance_uid("instance-a") == first


def test_gid_per_service_skips_host_groups_and_is_shared(pool: IdPool) -> None:
    assert pool.service_gid("svc") == 5000
    assert pool.service_gid("svc") == 5000
    assert pool.service_gid("other") == 5002  # 5001 is staff


def test_release_makes_an_id_free_again(pool: IdPool) -> None:
    uid = pool.instance_uid("a")
    pool.release_instance("a")
    assert pool.instance_uid("b") == uid
    gid = pool.service_gid("s")
    pool.release_service("s")
    assert pool.service_gid("t") == gid


def test_exhausted_pool_says_so(pool: IdPool) -> None:
    for n in range(5):
        pool.instance_uid(f"i{n}")
    with pytest.raises(RuntimeFailure, match="no free UID left in 5000-5005"):
        pool.instance_uid("one-too-many")


def test_corrupt_pool_file_is_reported(pool: IdPool) -> None:
    pool.path.write_text("{not json")
    with pytest.raises(RuntimeFailure, match="ID pool file is corrupt"):
        pool.instance_uid("a")


def test_both_ids_of_a_start_come_from_one_read_and_match_the_single_calls(pool: IdPool) -> None:
    assert pool.instance_ids("instance-a", "svc") == (5001, 5000)
    assert pool.instance_uid("instance-a") == 5001 and pool.service_gid("svc") == 5000
    assert pool.instance_ids("instance-b", "svc") == (5002, 5000)  # the service's GID is shared
