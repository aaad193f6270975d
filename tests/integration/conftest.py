"""Fixtures shared by the integration tests (real registry, real runc, real tools)."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# ---- registry fixtures (registry room) ------------------------------------------------
from registry_support import FaultProxy, RegistryServer, CertificateAuthority, TokenServer, make_tls, start_registry


@pytest.fixture
def start_registry_server(tmp_path: Path) -> Iterator[Callable[..., RegistryServer]]:
    """Start docker-registry instances (options: auth=..., tls=...); all stop at teardown."""
    started: list[RegistryServer] = []

    def start(name: str = "registry", **options: Any) -> RegistryServer:
        server = start_registry(tmp_path / name, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def registry(start_registry_server: Callable[..., RegistryServer]) -> RegistryServer:
    """A registry without auth, plain HTTP on 127.0.0.1."""
    return start_registry_server()


@pytest.fixture
def fault_proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(registry.port)
    yield proxy
    proxy.stop()


@pytest.fixture
def certificate_authority(tmp_path: Path) -> CertificateAuthority:
    return make_tls(tmp_path / "tls")


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path / "token", {"pusher": "push-secret"})
    yield server
    server.stop()


# ---- end of registry fixtures ---------------------------------------------------------


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
        # RLIMIT_NPROC counts every process of a UID on the machine: a window of the pool of its
        # own keeps another test's instance (same first UID, 5000) out of this test's count
        id_range=_private_id_window(),
    )


def _private_id_window() -> tuple[int, int]:
    start = 5000 + 50 * random.randrange(100)
    return start, start + 50


@pytest.fixture
def runtime(runtime_config: RuntimeConfig) -> Iterator[Runtime]:
    node_runtime = Runtime(runtime_config)
    yield node_runtime
    node_runtime.cleanup()

# --------------------------------------------------------------------------- end of runtime section
