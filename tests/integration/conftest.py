"""Fixtures for integration tests: real registry, real runc, real tools."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------
# runtime: a Runtime on private directories, a private cgroup parent and its own runc root
# (helpers for these tests are in runtime_helpers.py)
# ---------------------------------------------------------------------------------------------

from aos_operator.runtime import Runtime, RuntimeConfig  # noqa: E402


@pytest.fixture
def runtime_config(tmp_path: Path) -> RuntimeConfig:
    if os.geteuid() != 0:
        pytest.fail("runtime integration tests need root (runc, mounts, cgroups); CI runs them as root")
    return RuntimeConfig(
        state_root=tmp_path / "state",
        run_root=tmp_path / "run",
        cgroup_parent=f"/aos-test-{uuid.uuid4().hex[:8]}",
        log_max_bytes=256 * 1024,
        stop_timeout=20.0,
    )


@pytest.fixture
def runtime(runtime_config: RuntimeConfig) -> Iterator[Runtime]:
    node_runtime = Runtime(runtime_config)
    yield node_runtime
    node_runtime.cleanup()

# --------------------------------------------------------------------------- end of runtime section
