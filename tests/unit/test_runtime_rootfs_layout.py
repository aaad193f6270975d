"""The pure parts of rootfs assembly: what to hide, which mount points, hosts and resolv.conf, the plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from aos_operator.errors import RuntimeFailure
from aos_operator.runtime.rootfs import (
    RootfsPlan,
    _overlay_options,
    hosts_file,
    mount_points,
    resolv_conf,
    whiteout_names,
)


def test_everything_but_the_visible_entries_is_hidden() -> None:
    entries = ["bin", "boot", "etc", "home", "lib", "lib64", "proc", "run", "sbin", "tmp", "usr", "var", "work"]
    assert whiteout_names(entries, ["bin", "sbin", "lib", "lib64", "usr"]) == \
        ["boot", "etc", "home", "proc", "run", "tmp", "var", "work"]


def test_mount_points_for_every_mount_but_not_the_cwd() -> None:
    spec = {
        "process": {"cwd": "/app/work"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=1777"]},
            {"destination": "/storage", "type": "bind", "source": "/host/dir"},
            {"destination": "/state.dat", "type": "bind", "source": "/host/file"},
        ],
    }
    points = mount_points(spec, lambda source: source == "/host/dir")
    assert points == [("proc", True, 0o755), ("state.dat", False, 0o644),
                      ("storage", True, 0o755), ("tmp", True, 0o1777)]


def test_hosts_and_resolv_conf() -> None:
    assert hosts_file(None) == "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    assert hosts_file("svc").endswith("127.0.1.1\tsvc\n")
    assert resolv_conf(["10.0.0.1", "1.1.1.1"]) == "nameserver 10.0.0.1\nnameserver 1.1.1.1\n"
    assert resolv_conf([]) == ""


def test_the_plan_carries_the_aos_layers_and_reads_plans_written_before_them() -> None:
    plan = RootfsPlan("/run/x", "/state/layers/a.g5", aos_layers=("/state/layers/b", "/state/layers/c"))
    assert RootfsPlan.from_json(plan.to_json()) == plan
    older = {key: value for key, value in plan.to_json().items() if key != "aos_layers"}
    assert RootfsPlan.from_json(older).aos_layers == ()


def test_overlay_options_that_do_not_fit_in_a_page_are_refused() -> None:
    layers = [Path("/state/layers") / (f"{n:02d}" * 32) for n in range(60)]
    assert _overlay_options(layers[:16]).startswith("lowerdir=/state/layers/0000")
    with pytest.raises(RuntimeFailure, match="the overlay of 60 layers needs .* bytes of mount options"):
        _overlay_options(layers)
