"""Shared pytest fixtures and helpers for the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG_CORPUS = REPO / "tests" / "data" / "configs"
EXAMPLES = REPO / "examples"


@pytest.fixture
def hello_world() -> Path:
    return EXAMPLES / "hello-world"


# --- Kubernetes API emulator harness (tests/harness) -------------------------------------------
# `kube`: the emulator on the test's event loop; `kube_process`: the emulator as a subprocess.
from tests.harness.fixtures import kube, kube_process  # noqa: E402,F401
