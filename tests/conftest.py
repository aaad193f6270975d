"""Shared pytest fixtures of the project, one clearly named section per room."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# ---------------------------------------------------------------------------------------------
# runtime: test service packages (runtime_test_packages.py stands in for the image room's
# package builder until it lands)
# ---------------------------------------------------------------------------------------------

from runtime_test_packages import FileContent, build_test_package  # noqa: E402


@pytest.fixture
def make_package(tmp_path: Path) -> Callable[..., Path]:
    """build_test_package() into a fresh directory under tmp_path."""
    counter = iter(range(1_000_000))

    def make(files: dict[str, FileContent] | None = None, **options: Any) -> Path:
        return build_test_package(tmp_path / f"package{next(counter)}", files, **options)

    return make

# --------------------------------------------------------------------------- end of runtime section
