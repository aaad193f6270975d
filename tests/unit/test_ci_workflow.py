"""The GitHub workflow: unit tests first, then the kind end-to-end script; actions pinned."""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

from tests.conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "ci.yaml"


def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job["steps"]


def test_tests_run_before_the_kind_end_to_end_job() -> None:
    jobs = workflow()["jobs"]
    assert any(step.get("run", "").startswith("make test") for step in steps(jobs["test"]))
    assert jobs["e2e"]["needs"] == "test"
    e2e_runs = [step["run"] for step in steps(jobs["e2e"]) if "run" in step]
    scripts = [run for run in e2e_runs if "tests/kind/" in run]
    assert scripts == ["tests/kind/e2e.sh"]
    assert os.access(REPO / scripts[0], os.X_OK)


def test_the_unit_job_runs_on_the_projects_platform() -> None:
    container = workflow()["jobs"]["test"]["container"]
    assert container["image"].startswith("python:3.11-bookworm")
    assert "--privileged" in container["options"]


def test_every_action_is_pinned() -> None:
    for name, job in workflow()["jobs"].items():
        for step in steps(job):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@(v\d+(\.\d+)*|[0-9a-f]{40})", step["uses"]), f"{name}: {step['uses']}"
