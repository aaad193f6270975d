"""The Dockerfile, checked statically (no Docker engine here): pinned bases, the same Python in both
stages, a small runtime stage with runc and no compilers, the chart's non-root user, the entry point,
and a build context that holds what the build copies and nothing else."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field

import pytest
import yaml

from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPILER_PACKAGES = re.compile(r"^(gcc|g\+\+|cpp|clang|build-essential|make|cmake|rustc|cargo|golang.*|.*-dev)$")


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [instruction for instruction in self.instructions if instruction.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions grouped by stage; continuation lines joined, comments and directives dropped."""
    stages: list[Stage] = []
    logical, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1].rstrip() + " "
            continue
        logical += stripped
        keyword, _, arguments = logical.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip(), start)
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            words = [word for word in words if not word.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"Dockerfile:{start}: {instruction.keyword} before the first FROM"
            stages[-1].instructions.append(instruction)
        logical = ""
    assert not logical, "Dockerfile ends inside a continued line"
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def apt_installed(stage: Stage) -> list[str]:
    packages = []
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;", run.arguments):
            words = shlex.split(command)
            if "apt-get" in words and "install" in words:
                packages += [word for word in words[words.index("install") + 1 :] if not word.startswith("-")]
    return packages


def test_parser_reads_stages_and_continuations() -> None:
    parsed = parse_dockerfile("FROM a:1 AS one\n# c\nRUN x \\\n    # inner\n    && y\nFROM b:2\nUSER 1\n")
    assert [(stage.base, stage.name) for stage in parsed] == [("a:1", "one"), ("b:2", None)]
    assert parsed[0].instructions == [Instruction("RUN", "x && y", 3)]


def test_base_images_are_pinned_and_the_same_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    for stage in stages:
        image, _, tag = stage.base.rpartition(":")
        assert image and tag and "$" not in stage.base, f"{stage.base}: pin the base image by tag"
        assert tag != "latest" and "/" not in tag
    # The virtualenv copied from the build stage links to that stage's interpreter.
    assert stages[0].base == stages[-1].base
    assert stages[-1].base.startswith(("python:3.11-", "debian:bookworm"))


def test_the_build_stage_builds_a_wheel_into_a_virtualenv(stages: list[Stage]) -> None:
    build = stages[0]
    runs = " ".join(run.arguments for run in build.all("RUN"))
    assert "pip wheel" in runs and "python -m venv /opt/aos" in runs
    runtime = stages[-1]
    copies = [copy.arguments.split() for copy in runtime.all("COPY")]
    assert [f"--from={build.name}", "/opt/aos", "/opt/aos"] in copies
    env = " ".join(instruction.arguments for instruction in runtime.all("ENV"))
    assert "PATH=/opt/aos/bin:$PATH" in env


def test_runtime_stage_has_runc_and_no_compilers(stages: list[Stage]) -> None:
    runtime = stages[-1]
    packages = apt_installed(runtime)
    assert "runc" in packages
    assert [package for package in packages if COMPILER_PACKAGES.match(package)] == []
    install_runs = [run.arguments for run in runtime.all("RUN") if "apt-get install" in run.arguments]
    assert all("--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run for run in install_runs)


def test_runtime_user_is_the_charts_non_root_operator_user(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "the runtime stage must set USER"
    user, _, group = users[-1].arguments.partition(":")
    assert user.isdigit() and int(user) > 0, "a numeric non-root uid, so runAsNonRoot can verify it"
    values = yaml.safe_load((REPO / "charts" / "aos-operator" / "values.yaml").read_text())
    assert int(user) == values["operator"]["securityContext"]["runAsUser"]
    assert group.isdigit() and int(group) == values["operator"]["securityContext"]["runAsGroup"]
    created = " ".join(run.arguments for run in stages[-1].all("RUN"))
    assert f"--uid {user}" in created and f"--gid {group}" in created


def test_entrypoint_is_aosctl_in_exec_form(stages: list[Stage]) -> None:
    (entrypoint,) = stages[-1].all("ENTRYPOINT")
    assert json.loads(entrypoint.arguments) == ["aosctl"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "aosctl" in scripts


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last matching pattern wins)."""
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        # A pattern matches the path or a directory above it; "**/" lets the match start at any depth.
        starts = range(len(parts)) if pattern.startswith("**/") else [0]
        target = pattern.removeprefix("**/")
        candidates = ["/".join(parts[start:end]) for start in starts for end in range(start + 1, len(parts) + 1)]
        if any(fnmatch.fnmatchcase(candidate, target) for candidate in candidates):
            excluded = not negated
    return excluded


def test_build_context_holds_what_the_build_copies_and_not_the_venv(stages: list[Stage]) -> None:
    sources = []
    for stage in stages:
        for copy in stage.all("COPY"):
            words = copy.arguments.split()
            if any(word.startswith("--from") for word in words):
                continue
            sources += [word.rstrip("/") for word in words[:-1] if not word.startswith("--")]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file"
        assert not dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in sources, "the wheel build reads the readme named in pyproject.toml"
    for unwanted in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "operator/aos_operator/__pycache__/cli.cpython-311.pyc"):
        assert dockerignore_excludes(unwanted), unwanted
    assert not dockerignore_excludes("operator/aos_operator/cli.py")
