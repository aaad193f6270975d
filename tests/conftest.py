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
