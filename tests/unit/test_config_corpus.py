"""Every config of the corpus gets the verdict its first line states, with the error on the named field."""

from __future__ import annotations

from pathlib import Path

import pytest

from aos_operator.errors import AosError
from aos_operator.service import read_config
from tests.conftest import CONFIG_CORPUS

CASES = sorted(CONFIG_CORPUS.rglob("*.yaml"))


def expectation(path: Path) -> tuple[bool, str | None]:
    first = path.read_text().splitlines()[0]
    if first.startswith("# valid"):
        return True, None
    assert first.startswith("# invalid:"), f"{path}: first line must be '# valid' or '# invalid: FIELD'"
    return False, first.split(":", 1)[1].strip()


def test_corpus_covers_both_dialects_and_verdicts() -> None:
    kinds = {(path.parent.parent.name, path.parent.name) for path in CASES}
    assert kinds == {("v1", "valid"), ("v1", "invalid"), ("v2", "valid"), ("v2", "invalid")}
    assert len(CASES) >= 100


@pytest.mark.parametrize("path", CASES, ids=lambda path: f"{path.parent.parent.name}/{path.parent.name}/{path.stem}")
def test_corpus_verdict(path: Path) -> None:
    valid, field = expectation(path)
    try:
        result = read_config(path)
    except AosError as error:  # unreadable documents count as invalid
        assert not valid, f"{path}: {error}"
        return
    rendered = "\n".join(issue.render() for issue in result.issues)
    assert result.valid is valid, rendered
    if valid:
        assert result.services, "a valid config describes at least one service"
        return
    assert field is not None
    if field:
        assert field in {issue.field for issue in result.errors}, rendered
    for issue in result.errors:
        assert issue.line is not None, f"every error names a line: {issue.render()}"
        assert issue.message


@pytest.mark.parametrize("name", ["no-sign-credentials", "sign-key-without-certificate", "no-tls-credentials"])
def test_upload_credentials_are_only_needed_for_aos_signer(name: str) -> None:
    path = CONFIG_CORPUS / "v1" / "invalid" / f"{name}.yaml"
    assert not read_config(path).valid
    assert read_config(path, check_upload=False).valid
