"""Pytest fixtures of the Kubernetes API emulator harness (imported by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import kmock
import pytest
import pytest_asyncio

from tests.harness.control import HarnessClient, HarnessProcess
from tests.harness.emulator import KubeEmulator


@pytest_asyncio.fixture
async def kube() -> AsyncIterator[KubeEmulator]:
    """The emulator on the test's event loop: never block this loop (use asyncio.to_thread)."""
    async with KubeEmulator() as emulator:
        yield emulator
        # Anything but a deliberate Kubernetes error from a test's reaction is an emulator bug.
        bugs = [error for error in emulator.errors if not isinstance(error, kmock.KubernetesError)]
        assert not bugs, f"the API emulator failed while serving: {bugs!r}"


@pytest.fixture
def kube_process() -> Iterator[HarnessClient]:
    """The emulator as a separate process (`python -m tests.harness serve`), driven over HTTP."""
    with HarnessProcess() as client:
        yield client
