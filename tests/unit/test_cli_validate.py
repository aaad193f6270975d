"""`aosctl validate` and `aosctl schema`: exit codes, one error per line with FILE:LINE: field, JSON output,
and hostile input that must never crash it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from aos_operator.cli import main
from tests.conftest import CONFIG_CORPUS, EXAMPLES

ERROR_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<field>[\w.\[\]*-]+): (?P<message>.+)$")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_valid_service_directory(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", str(EXAMPLES / "hello-world"))
    assert code == 0
    assert "valid (schema version 1)" in out
    assert "python3 -u /usr/bin/services/hello_world.py" in out
    assert "ram 64 MB" in out and "cpu 5000 DMIPS" in out and "upload speed 32 kbit/s" in out


def test_invalid_config_lists_every_error_as_file_line_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "build:\n  os: linux\n  arch: amd64\n  sign_pkcs12: a.p12\n"
        "publish:\n  service_uid: x\n  tls_pkcs12: a.p12\n  version: '1.0'\n"
        "configuration:\n  cmd: /bin/app\n  quotas:\n    mem: 10X\n    cpu: '5'\n  hostnme: x\n"
    )
    code, out, err = run(capsys, "validate", str(config))
    assert code == 1
    lines = err.strip().splitlines()  # problems are the tool's messages: stderr
    assert len(lines) == 4
    parsed = [ERROR_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m["line"], m["field"]) for m in parsed] == [  # type: ignore[index]
        ("8", "publish.version"),
        ("12", "configuration.quotas.mem"),
        ("13", "configuration.quotas.cpu"),
        ("14", "configuration.hostnme"),
    ]
    assert "did you mean 'hostname'" in err
    assert out.strip() == f"{config}: invalid, 4 errors"  # the verdict is the result: stdout


def test_warnings_do_not_fail(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", str(CONFIG_CORPUS / "v1" / "valid" / "legacy-cpu-percent.yaml"))
    assert code == 0
    assert "warning: quotas.cpu is in DMIPS" in err and "valid (schema version 1)" in out


def test_local_skips_upload_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(CONFIG_CORPUS / "v1" / "invalid" / "no-sign-credentials.yaml")
    assert run(capsys, "validate", path)[0] == 1
    assert run(capsys, "validate", "--local", path)[0] == 0


def test_missing_and_unreadable_inputs_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "validate", str(tmp_path / "nope"))
    assert code == 2 and "no such file" in err
    code, _, err = run(capsys, "validate", str(tmp_path))
    assert code == 2 and "no meta/config.yaml" in err
    dangling = tmp_path / "config.yaml"  # root can read anything: a link to nothing stands for "unreadable"
    dangling.symlink_to(tmp_path / "gone.yaml")
    code, _, err = run(capsys, "validate", str(dangling))
    assert code == 2 and str(dangling) in err


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", "--json", str(CONFIG_CORPUS / "v2" / "valid" / "template.yaml"))
    assert code == 0
    document = json.loads(out)
    assert document["dialect"] == 2 and document["valid"] is True
    service = document["services"][0]
    assert service["serviceConfig"]["quotas"] == {
        "cpuDmipsLimit": 5000,
        "ramLimit": 512 * 2**20,
        "storageLimit": 32 * 2**20,
        "stateLimit": 2**20,
        "tmpLimit": 256 * 2**20,
        "uploadSpeed": 10,
        "downloadSpeed": 10,
        "uploadLimit": 10 * 2**30,
        "downloadLimit": 10 * 2**30,
        "noFileLimit": 1024,
        "pidsLimit": 256,
    }
    assert set(service["imageConfigs"]) == {"linux/amd64", "linux/arm64"}
    assert service["imageConfigs"]["linux/arm64"]["config"]["Cmd"] == ["/app/service"]
    assert service["description"]["images"][0]["source_folder"] == "hello-world/src_x86"


def test_schema_validates_the_examples_and_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema", "config")
    assert code == 0
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in [EXAMPLES / "hello-world" / "meta" / "config.yaml", *sorted(CONFIG_CORPUS.glob("v*/valid/*.yaml"))]:
        data = yaml.safe_load(path.read_text())
        if path.name in ("lax-types.yaml", "duration-forms.yaml"):
            continue  # lax pydantic coercions are beyond what a JSON Schema states
        errors = [error.message for error in validator.iter_errors(data)]
        assert not errors, f"{path}: {errors}"
    # and it catches a typo an editor should underline
    assert list(validator.iter_errors({"build": {}, "publish": {}, "configuration": {"quota": {}}}))


HOSTILE = {
    "not-yaml.yaml": b"{{{{ ]]] : : :\n\t- [",
    "binary.yaml": bytes(range(256)) * 16,
    "latin1.yaml": "configuration:\n  cmd: caf\xe9\n".encode("latin-1"),
    "alias-bomb.yaml": (
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    ).encode(),
    "deep.yaml": b"a: " + b"[" * 100_000 + b"]" * 100_000,
    "huge.yaml": b"# padding\n" * 600_000,
    "list.yaml": b"- 1\n- 2\n",
    "scalar.yaml": b"just a string\n",
    "tabs.yaml": b"build:\n\tos: linux\n",
    "many-docs.yaml": b"a: 1\n---\nb: 2\n",
    "wrong-types.yaml": b"build: 5\npublish: [1]\nconfiguration: true\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_gets_a_clear_error_and_no_traceback(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(HOSTILE[name])
    process = subprocess.run(
        [sys.executable, "-m", "aos_operator.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = process.stdout + process.stderr
    assert process.returncode in (1, 2), output
    assert "Traceback" not in output and "internal error" not in output
    assert str(path) in output, "the message names the file"
