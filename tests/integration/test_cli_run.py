"""`aosctl run` on the example service: built from its directory, run under runc, stopped, cleaned up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES

pytestmark = pytest.mark.root


def aosctl_run(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.fail("aosctl run needs root; CI runs as root")
    return subprocess.run(
        [sys.executable, "-m", "aos_operator.cli", "run", *arguments,
         "--state-dir", str(tmp_path / "state"), "--run-dir", str(tmp_path / "run"),
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_run_builds_runs_and_cleans_up(tmp_path: Path) -> None:
    process = aosctl_run(tmp_path, str(EXAMPLES / "hello-world"), "--timeout", "4", "--instances", "2")
    assert process.returncode == 0, process.stderr
    out, err = process.stdout, process.stderr
    # aosctl's own lines are messages (stderr); the service's output is the result (stdout)
    assert "aosctl: limit memory: 64000000 bytes" in err and "limit memory" not in out
    assert "CFS quota" in err
    assert "aosctl: service ID 0c3f6b8e-5a47-4a4b-9d8b-6f1c2b7e4a10 (the config's service ID)" in err
    assert "[0] Hello from an AosEdge service (instance 0, run 1)" in out
    assert "[1] Hello from an AosEdge service (instance 1, run 1)" in out
    assert "Hello" not in err
    assert "instance 1: Stopped" in err
    mounts = Path("/proc/mounts").read_text()
    assert str(tmp_path) not in mounts, "no mount is left behind"
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    assert str(tmp_path) not in loops, "no loop device is left behind"
    # storage persists for the same instance identity: a second run counts on
    again = aosctl_run(tmp_path, str(EXAMPLES / "hello-world"), "--timeout", "3")
    assert "(instance 0, run 2)" in again.stdout, again.stdout + again.stderr


def test_run_refuses_a_missing_target(tmp_path: Path) -> None:
    process = aosctl_run(tmp_path, "no-such-dir")
    assert process.returncode == 2
    assert "no such file or directory" in process.stderr and "Traceback" not in process.stderr


def test_quiet_run_prints_only_the_service_output_and_json_gives_a_document(tmp_path: Path) -> None:
    process = aosctl_run(tmp_path, str(EXAMPLES / "hello-world"), "--timeout", "3", "--quiet")
    assert process.returncode == 0, process.stderr
    assert "Hello from an AosEdge service" in process.stdout
    assert "limit memory" not in process.stderr and "service ID" not in process.stderr
    process = aosctl_run(tmp_path, str(EXAMPLES / "hello-world"), "--timeout", "3", "-o", "json")
    document = json.loads(process.stdout)
    assert document["kind"] == "RunResult" and document["interrupted"] is True
    assert document["serviceId"] == "0c3f6b8e-5a47-4a4b-9d8b-6f1c2b7e4a10"
    assert document["instances"][0]["phase"] == "Stopped"
    assert "Hello from an AosEdge service" in process.stderr, "with a document on stdout the output moves to stderr"
