"""The command line itself: help for every command and flag, bad values as usage errors (never an
internal error), the error mapping, the output documents, validate's several paths and --strict,
init skeletons, and shell completion generated from the parser."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aos_operator.cli import EXIT_CODES, build_parser, main
from aos_operator.cli.meta import _subcommands
from tests.conftest import CONFIG_CORPUS, EXAMPLES


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


COMMANDS = sorted(_subcommands(build_parser()))


def test_the_command_set() -> None:
    assert COMMANDS == sorted([
        "validate", "schema", "build", "build-layer", "push", "pull", "sign", "inspect", "digest", "ls", "login", "logout",
        "run", "ps", "logs", "stop", "rm", "prune", "permissions", "init", "operator", "agent", "agent-health", "crds",
        "rollout", "version", "completion",
    ])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_and_flag_has_help_and_shows_its_default(command: str) -> None:
    parser = _subcommands(build_parser())[command]
    assert parser.description, f"{command} has no description"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{command} {name}: no help text"
        shows_default = action.default in (None, False, [], ()) or "default" in action.help
        assert shows_default, f"{command} {name}: default {action.default!r} not shown"


def test_help_names_every_input_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert "DIR|ARCHIVE|LAYOUT" in _subcommands(parser)["push"].format_usage()
    run_help = " ".join(_subcommands(parser)["run"].format_help().split())
    assert "3: an instance failed" in run_help and "default: /var/lib/aosctl" in run_help
    assert "default: /run/aosctl" in run_help
    top = parser.format_help()
    for code, _ in EXIT_CODES:
        assert f"  {code} " in top


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["run", "x", "--node-dmips", "0"], "--node-dmips"),
        (["run", "x", "--node-dmips", "many"], "--node-dmips"),
        (["run", "x", "--instances", "0"], "--instances"),
        (["run", "x", "--timeout", "-5"], "--timeout"),
        (["run", "x", "--timeout", "0"], "--timeout"),
        (["run", "x", "--timeout", "nan"], "--timeout"),
        (["run", "x", "--service-id", ""], "--service-id"),
        (["logs", "x", "--tail", "-1"], "--tail"),
        (["stop", "x", "--time", "-1"], "--time"),
        (["agent", "--dmips", "0"], "--dmips"),
        (["agent", "--heartbeat", "0"], "--heartbeat"),
        (["agent", "--lease-namespace", "Aos_System"], "--lease-namespace"),
        (["agent", "--status-report", "0"], "--status-report"),
        (["operator", "--device-grace", "0"], "--device-grace"),
        (["operator", "--resync", "-1"], "--resync"),
        (["operator", "--stop-timeout", "inf"], "--stop-timeout"),
        (["operator", "--namespace", "team-*"], "--namespace"),
        (["operator", "--namespace", "Fleet"], "--namespace"),
        (["validate", "x", "--output", "xml"], "--output"),
        (["init", "x", "--schema", "3"], "--schema"),
        (["completion", "fish"], "shell"),
    ],
)
def test_bad_flag_values_are_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], flag: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert flag in err and "internal error" not in err and "Traceback" not in err
    assert out == ""


def test_operator_without_a_kubeconfig_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "AOS_KUBE_SERVER"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run(capsys, "operator", "--registry", "localhost:5000")
    assert code == 2 and "no kubeconfig" in err and "--kubeconfig" in err and "internal error" not in err
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: 5\n")
    code, _, err = run(capsys, "operator", "--registry", "localhost:5000", "--kubeconfig", str(broken))
    assert code == 2 and str(broken) in err and "internal error" not in err


def test_chart_registry_flag_names_are_the_common_ones() -> None:
    parsed = build_parser().parse_args(["operator", "--registry-insecure", "--registry-ca=/ca", "--registry-auth=/a"])
    assert (parsed.insecure, parsed.ca, parsed.auth) == (True, "/ca", "/a")
    parsed = build_parser().parse_args(["operator", "--insecure", "--ca", "/ca", "--auth", "/a"])
    assert (parsed.insecure, parsed.ca, parsed.auth) == (True, "/ca", "/a")


def test_a_bug_is_an_internal_error_with_its_own_exit_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aos_operator.cli import meta

    def broken() -> dict[str, object]:
        raise KeyError("oops")

    monkeypatch.setattr(meta, "build_information", broken)
    code, out, err = run(capsys, "version")
    assert code == 70 and "internal error: KeyError" in err and "AOSCTL_DEBUG=1" in err and out == ""
    code, out, err = run(capsys, "version", "-o", "json")
    document = json.loads(out)
    assert document["kind"] == "Error" and document["error"]["exitCode"] == 70


def test_documents_have_one_key_style_and_a_schema_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "version", "--output", "json")
    document = json.loads(out)
    assert document["schemaVersion"] == 1 and document["kind"] == "Version" and document["version"]
    code, out, _ = run(capsys, "version", "--output", "yaml")
    assert yaml.safe_load(out)["schemaVersion"] == 1

    def keys(value: object) -> list[str]:
        if isinstance(value, dict):
            return [k for k, v in value.items() for k in [k, *keys(v)]]
        if isinstance(value, list):
            return [k for item in value for k in keys(item)]
        return []

    code, out, _ = run(capsys, "validate", "-o", "json", str(EXAMPLES / "hello-world"))
    document = json.loads(out)
    assert document["kind"] == "ValidationResult" and document["schemaVersion"] == 1
    top = [k for k in document if k not in ("services",)]
    assert all("_" not in key for key in top)


def test_a_body_field_never_hides_the_documents_kind_or_version(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    directory = tmp_path / "svc"
    code, out, err = run(capsys, "init", "--schema", "2", "-o", "json", str(directory))
    document = json.loads(out)
    assert code == 0, err
    assert (document["schemaVersion"], document["kind"], document["configSchemaVersion"]) == (1, "InitResult", 2)
    code, out, err = run(capsys, "inspect", "--no-cache", "-o", "json", str(directory))
    document = json.loads(out)
    assert code == 0, err
    assert (document["schemaVersion"], document["kind"], document["sourceKind"]) == (1, "PackageInfo", "service")
    from aos_operator.cli.output import document as make_document

    with pytest.raises(ValueError, match="may not have"):
        make_document("Thing", {"kind": "other"})


def test_validate_json_for_unreadable_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "validate", "--json", str(tmp_path / "missing"))
    assert code == 2
    document = json.loads(out)
    assert document["valid"] is False and document["unreadable"] is True
    assert "no such file" in document["issues"][0]["message"]


def test_validate_several_paths_and_strict(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = str(EXAMPLES / "hello-world")
    warned = str(CONFIG_CORPUS / "v1" / "valid" / "legacy-cpu-percent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("build: 5\n")
    code, out, err = run(capsys, "validate", good, warned)
    assert code == 0 and out.count(": valid (schema version 1)") == 2
    code, out, err = run(capsys, "validate", "--strict", good, warned)
    assert code == 1 and f"{warned}: invalid with --strict, " in out
    code, out, _ = run(capsys, "validate", good, str(bad), str(tmp_path / "missing"))
    assert code == 2, "the worst result decides the exit code"
    code, out, _ = run(capsys, "validate", "-o", "json", good, str(bad))
    document = json.loads(out)
    assert document["kind"] == "ValidationResults" and document["valid"] is False
    assert [r["valid"] for r in document["results"]] == [True, False]


def test_schema_without_an_argument(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0 and json.loads(out)["$schema"].startswith("https://json-schema.org/")


@pytest.mark.parametrize("schema", ["1", "2"])
def test_init_writes_a_skeleton_that_validates_strictly_and_builds(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, schema: str
) -> None:
    directory = tmp_path / "my-service"
    code, out, _ = run(capsys, "init", "--schema", schema, str(directory))
    assert code == 0 and "meta/config.yaml" in out
    code, out, err = run(capsys, "validate", "--strict", str(directory))
    assert code == 0, err
    assert f"valid (schema version {schema})" in out and "/bin/sh /usr/bin/my-service.sh" in out
    code, digest, err = run(capsys, "build", str(directory), "-o", str(tmp_path / "p.tar"), "--no-cache")
    assert code == 0 and digest.startswith("sha256:"), err
    code, _, err = run(capsys, "init", str(directory))
    assert code == 2 and "not an empty directory" in err


def completions(script: str, words: list[str]) -> list[str]:
    """What the generated bash function offers for the words typed so far (the last is the current)."""
    program = (
        f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\nCOMP_CWORD={len(words) - 1}\n"
        "_aosctl\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return sorted(line for line in done.stdout.splitlines() if line)


def test_bash_completion_from_the_parser(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, script, _ = run(capsys, "completion", "bash")
    assert code == 0
    assert completions(script, ["aosctl", "pu"]) == ["pull", "push"]
    assert "--node-dmips" in completions(script, ["aosctl", "run", "--no"]) or \
        completions(script, ["aosctl", "run", "--no"]) == ["--no-cache", "--no-restart"]
    assert completions(script, ["aosctl", "run", "--node"]) == ["--node-config", "--node-dmips"]
    assert completions(script, ["aosctl", "ps", "--output", ""]) == ["json", "text", "yaml"]
    assert completions(script, ["aosctl", "completion", ""]) == ["bash", "zsh"]
    (tmp_path / "service-dir").mkdir()
    os.chdir(tmp_path)
    assert completions(script, ["aosctl", "validate", "serv"]) == ["service-dir"]


def test_zsh_completion_from_the_parser(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, script, _ = run(capsys, "completion", "zsh")
    assert code == 0 and script.startswith("#compdef aosctl")
    for command in COMMANDS:
        assert f"        {command})" in script
    assert "--node-dmips" in script and ":value:(text json yaml)" in script
    if shutil.which("zsh") is None:
        pytest.fail("zsh is not installed (make system-deps installs it)")
    path = tmp_path / "_aosctl"
    path.write_text(script)
    subprocess.run(["zsh", "-n", str(path)], check=True)
    # load it for real: compinit with only this function, then ask what it defines
    program = f"fpath=({tmp_path} $fpath); autoload -Uz compinit; compinit -u -d {tmp_path}/dump; " \
              "print -r -- ${_comps[aosctl]}"
    done = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True, check=True,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert done.stdout.strip() == "_aosctl"


def test_python_m_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "aos_operator.cli", "version"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and done.stdout.startswith("aosctl ")


# --- config messages (issue 15, items 7, 8, 12) ------------------------------------------------

V1_HEAD = "build:\n  os: linux\n  arch: {arch}\npublish:\n  service_uid: x\n  version: '1.0.0'\nconfiguration:\n  cmd: /bin/app\n"
V2_HEAD = ("schemaVersion: 2\nitems:\n  - identity:\n      codename: hello\n      type: service\n"
           "    version: '1.0.0'\n    images:\n      - archInfo:\n          architecture: {arch}\n"
           "    configuration:\n")


def service_dir(tmp_path: Path, text: str, folder: str | None) -> Path:
    (tmp_path / "svc" / "meta").mkdir(parents=True)
    (tmp_path / "svc" / "meta" / "config.yaml").write_text(text)
    if folder:
        (tmp_path / "svc" / folder).mkdir(parents=True)
    return tmp_path / "svc"


def test_v1_unknown_quota_keys_get_a_suggestion_and_the_list(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(V1_HEAD.format(arch="amd64") + "  quotas:\n    cpuu: 5\n    ram: 5M\n    memory: 5M\n")
    code, _, err = run(capsys, "validate", "--local", str(config))
    assert code == 1
    assert "10: configuration.quotas.cpuu: unknown key (did you mean 'cpu'?); allowed here: cpu, mem" in err
    assert "11: configuration.quotas.ram: unknown key (did you mean 'mem'?)" in err
    assert "12: configuration.quotas.memory: unknown key (did you mean 'mem'?)" in err


def test_v2_unknown_keys_get_a_suggestion_and_a_misspelt_cmd_does_not_build(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    service = service_dir(tmp_path, V2_HEAD.format(arch="amd64") + "      comand: /service\n", "hello/amd64")
    code, _, err = run(capsys, "validate", str(service))
    assert code == 0
    assert "11: items[0].configuration.comand: warning: unknown key, ignored by AosEdge; did you mean 'cmd'?" in err
    assert run(capsys, "validate", "--strict", str(service))[0] == 1
    output = tmp_path / "p.tar"
    code, _, err = run(capsys, "build", str(service), "-o", str(output), "--no-cache")
    assert code == 1 and "has no command (cmd)" in err and not output.exists()


def test_unknown_architecture_is_an_error_at_its_key_and_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    v2 = tmp_path / "v2.yaml"
    v2.write_text(V2_HEAD.format(arch="amd46") + "      cmd: /service\n")
    code, _, err = run(capsys, "validate", str(v2))
    assert code == 1
    assert "v2.yaml:9: items[0].images[0].archInfo.architecture: unknown architecture 'amd46' (did you mean 'amd64'?)" in err
    v1 = tmp_path / "v1.yaml"
    v1.write_text(V1_HEAD.format(arch="amd46"))
    code, _, err = run(capsys, "validate", "--local", str(v1))
    assert code == 1 and "v1.yaml:3: build.arch: unknown architecture 'amd46'" in err


@pytest.mark.parametrize("dialect", [1, 2])
def test_a_missing_source_folder_is_reported_by_validate_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, dialect: int
) -> None:
    text = V1_HEAD.format(arch="amd64") if dialect == 1 else V2_HEAD.format(arch="amd64") + "      cmd: /service\n"
    service = service_dir(tmp_path, text, None)
    code, out, err = run(capsys, "validate", "--local", str(service))
    assert code == 1 and "invalid, 1 error" in out
    # version 2 without sourceFolder: the folder is named by the codename, and the message says so
    key = "build.source_folder" if dialect == 1 else "identity.codename"
    assert key in err and "does not exist" in err
    code, _, err = run(capsys, "build", str(service), "-o", str(tmp_path / "p.tar"))
    assert code == 2 and "source folder does not exist" in err and key in err
    (service / ("src" if dialect == 1 else "hello/amd64")).mkdir(parents=True)
    assert run(capsys, "validate", "--local", str(service))[0] == 0


def test_v2_legacy_string_layers_are_accepted_with_a_warning_as_in_v1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(V2_HEAD.format(arch="amd64") + "      cmd: /service\n      layers:\n        - some-layer\n")
    code, out, err = run(capsys, "validate", "-o", "json", str(config))
    assert code == 0, err
    document = json.loads(out)
    assert document["services"][0]["description"]["layers"][0]["uid"] == "some-layer"
    assert any("legacy form: write `- uid: some-layer`" in issue["message"] for issue in document["issues"])
