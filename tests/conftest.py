"""Shared pytest fixtures and helpers for the whole suite."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG_CORPUS = REPO / "tests" / "data" / "configs"
EXAMPLES = REPO / "examples"


@pytest.fixture
def hello_world() -> Path:
    return EXAMPLES / "hello-world"


# --- image room: example service tree and configs --------------------------------------------


@pytest.fixture
def image_config() -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Cmd": ["python3", "/usr/bin/services/hello_world.py"],
            "WorkingDir": "/",
            "Env": ["PATH=/usr/bin:/bin"],
        },
    }


@pytest.fixture
def service_config() -> dict[str, Any]:
    # The example of reference aos-formats.md §2.4.
    return {
        "created": "2025-01-01T00:00:00Z",
        "author": "Aos Cloud",
        "skipResourceLimits": False,
        "hostname": "cpuload",
        "balancingPolicy": "enabled",
        "runners": ["runc", "crun"],
        "runParameters": {"startInterval": "PT10S", "startBurst": 3, "restartInterval": "PT1S"},
        "offlineTTL": "P7D",
        "sysctl": {"net.core.somaxconn": "256"},
        "quotas": {
            "cpuDmipsLimit": 5000,
            "ramLimit": 209715200,
            "pidsLimit": 256,
            "noFileLimit": 1024,
            "tmpLimit": 32768,
            "stateLimit": 65536,
            "storageLimit": 65536,
            "uploadSpeed": 32,
            "downloadSpeed": 32,
            "uploadLimit": 1000000000,
            "downloadLimit": 1000000000,
        },
        "requestedResources": {"cpu": 2500, "ram": 104857600},
        "allowedConnections": {"9931560c-be75-4f60-9abf-08297d905332/8087-8088/tcp": {}},
        "devices": [{"name": "camera0", "permissions": "rw"}],
        "resources": ["system-dbus"],
        "permissions": {"vis": {"Signal.Doors.*": "rw"}},
        "alertRules": {"ram": {"minTimeout": "PT5S", "minThreshold": 10, "maxThreshold": 90}},
    }


HELLO_WORLD = b'#!/usr/bin/env python3\nimport time\n\nwhile True:\n    print("Hello from AosEdge")\n    time.sleep(5)\n'


def write_example_tree(root: Path) -> Path:
    """The example service's src/ tree: a script, a config file, a symlink and an empty dir."""
    (root / "usr/bin/services").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "var/lib/hello").mkdir(parents=True)
    script = root / "usr/bin/services/hello_world.py"
    script.write_bytes(HELLO_WORLD)
    script.chmod(0o755)
    (root / "etc/hello.cfg").write_text("greeting = Hello\ninterval = 5\n")
    os.symlink("services/hello_world.py", root / "usr/bin/hello")
    return root


def write_generated_tree(root: Path, *, seed: int = 7, files: int = 60) -> Path:
    """A varied tree: nested dirs, text and binary files, long names, hard and symbolic links."""
    rng = random.Random(seed)
    write_example_tree(root)
    for index in range(files):
        directory = root / "opt" / f"d{index % 7}" / f"sub{index % 3}"
        directory.mkdir(parents=True, exist_ok=True)
        words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "aos"]) for _ in range(rng.randint(0, 400)))
        path = directory / f"file{index}.txt"
        path.write_text(words)
        if index % 5 == 0:
            (directory / f"blob{index}.bin").write_bytes(rng.randbytes(rng.randint(0, 70000)))
    long_dir = root / ("l" * 120) / ("m" * 200)
    long_dir.mkdir(parents=True)
    (long_dir / ("n" * 255)).write_bytes(b"deep\n")
    os.link(root / "etc/hello.cfg", root / "opt/hello.cfg.hardlink")
    os.symlink("../../etc/hello.cfg", root / "opt/d0/cfg-link")
    (root / "opt/empty/dir").mkdir(parents=True)
    (root / "opt/unicode-é-файл.txt").write_text("utf-8 name\n")
    return root


@pytest.fixture
def example_tree_factory() -> Callable[[Path], Path]:
    return write_example_tree


@pytest.fixture
def generated_tree_factory() -> Callable[..., Path]:
    return write_generated_tree


@pytest.fixture
def example_tree(tmp_path: Path) -> Path:
    return write_example_tree(tmp_path / "src")


@pytest.fixture
def generated_tree(tmp_path: Path) -> Path:
    return write_generated_tree(tmp_path / "gen")


# --- end of image room ------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# runtime: test service packages made with tarfile (runtime_test_packages.py), for tests that
# need packages the real builder refuses to make (hostile layers, bad digests)
# ---------------------------------------------------------------------------------------------

from tests.runtime_test_packages import FileContent, build_test_package  # noqa: E402


@pytest.fixture
def make_package(tmp_path: Path) -> Callable[..., Path]:
    """build_test_package() into a fresh directory under tmp_path."""
    counter = iter(range(1_000_000))

    def make(files: dict[str, FileContent] | None = None, **options: Any) -> Path:
        return build_test_package(tmp_path / f"package{next(counter)}", files, **options)

    return make

# --------------------------------------------------------------------------- end of runtime section



# --- a real control plane (tools/cluster.py) -------------------------------------------------


@pytest.fixture(scope="session")
def control_plane() -> Any:
    """etcd, kube-apiserver and kube-controller-manager shared by the tests that only need the API
    and the CRDs (crds/ as shipped); the heavier suites start their own."""
    from tests.cluster.install import apply_crds
    from tools.cluster import ControlPlane

    with ControlPlane() as plane:
        apply_crds(plane)
        yield plane
