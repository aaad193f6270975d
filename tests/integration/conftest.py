"""Fixtures shared by the integration tests (real registry, real runc, real tools)."""

from __future__ import annotations

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
