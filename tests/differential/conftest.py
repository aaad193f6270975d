"""The oracle: AosEdge's own validator, aos-signer, run in its own virtualenvs (see the Makefile)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

ORACLE = Path(__file__).with_name("signer_oracle.py")
VERSIONS = ("1.17.0", "1.16.0", "2.1.0")


def venv_python(version: str) -> Path:
    root = os.environ.get("AOS_SIGNER_VENVS")
    if not root:
        pytest.fail("AOS_SIGNER_VENVS is not set: run the differential tests through `make test`")
    python = Path(root) / version / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: run `make signer-venvs`")
    return python


Oracle = Callable[[str, Iterable[Path]], dict[Path, dict[str, Any]]]


@pytest.fixture(scope="session")
def signer() -> Oracle:
    """signer(version, paths) -> {path: verdict}, one aos-signer process per call."""

    def run(version: str, paths: Iterable[Path]) -> dict[Path, dict[str, Any]]:
        paths = [Path(path) for path in paths]
        process = subprocess.run(
            [str(venv_python(version)), str(ORACLE)],
            input=json.dumps([str(path) for path in paths]),
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
        verdicts = [json.loads(line) for line in process.stdout.splitlines() if line.strip()]
        assert len(verdicts) == len(paths), process.stderr
        return {Path(verdict["path"]): verdict for verdict in verdicts}

    return run
