"""`aosctl` against the real registry: large layers through push, docker's credentials (config
files, credential helpers, login/logout), digest, ls, inspect, pull rules, retries, progress."""

from __future__ import annotations

import base64
import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from registry_support import RegistryServer, free_port, htpasswd_auth

from aos_operator.cli import main
from tests.conftest import EXAMPLES

MiB = 1 << 20


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err


def service_copy(tmp_path: Path, name: str = "svc") -> Path:
    copy = tmp_path / name
    shutil.copytree(EXAMPLES / "hello-world", copy)
    return copy


# --- fix 1: layers over the chunk threshold ----------------------------------------------------


def test_push_of_a_layer_over_128_mib_from_a_directory_an_archive_and_a_layout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, registry: RegistryServer
) -> None:
    service = service_copy(tmp_path)
    with open(service / "src" / "big.bin", "wb") as file:  # incompressible: the gzip layer stays > 128 MiB
        for _ in range(130):
            file.write(os.urandom(MiB))
    cache = str(tmp_path / "cache")
    code, pushed, err = run(capsys, "push", str(service), f"{registry.host}/aos/big-dir:1", "--cache-dir", cache, "-q")
    assert code == 0, err
    digest = pushed.split("@")[1]
    archive, layout = tmp_path / "big.tar", tmp_path / "layout"
    code, built, err = run(capsys, "build", str(service), "-o", str(archive), "--oci-layout", str(layout),
                           "--tag", "1", "--cache-dir", cache)
    assert (code, built) == (0, digest), err
    for source, repository in ((archive, "big-archive"), (layout, "big-layout")):
        code, pushed, err = run(capsys, "push", str(source), f"{registry.host}/aos/{repository}:1", "-q")
        assert (code, pushed) == (0, f"{registry.host}/aos/{repository}:1@{digest}"), err
    pulled = tmp_path / "pulled.tar"
    assert run(capsys, "pull", f"{registry.host}/aos/big-layout:1", "-o", str(pulled))[0] == 0
    assert pulled.read_bytes() == archive.read_bytes(), "the chunked uploads assembled the very layer"


def test_a_damaged_blob_reads_as_an_error_that_names_it_not_as_a_python_object(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, registry: RegistryServer
) -> None:
    layout = tmp_path / "layout"
    assert run(capsys, "build", str(EXAMPLES / "hello-world"), "--oci-layout", str(layout), "--no-cache")[0] == 0
    manifest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    layer = json.loads((layout / "blobs" / "sha256" / manifest.split(":")[1]).read_text())["layers"][0]["digest"]
    blob = layout / "blobs" / "sha256" / layer.split(":")[1]
    blob.write_bytes(blob.read_bytes()[:-10])
    code, _, err = run(capsys, "push", str(layout), f"{registry.host}/aos/damaged:1")
    assert code == 1, err
    assert layer in err and str(layout) in err
    assert "object at 0x" not in err and "_PackageBlob" not in err and "Traceback" not in err


# --- fix 3: docker's own configuration --------------------------------------------------------


@pytest.fixture
def basic_registry(start_registry_server, tmp_path: Path) -> RegistryServer:  # type: ignore[no-untyped-def]
    return start_registry_server("basic", auth=htpasswd_auth(tmp_path / "auth", {"alice": "wonderland"}))


def docker_config(directory: Path, document: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(document))
    return path


def auth_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_without_credentials_the_401_hint_names_login_and_auth(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, basic_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    code, _, err = run(capsys, "push", str(EXAMPLES / "hello-world"), f"{basic_registry.host}/aos/x:1",
                       "--cache-dir", str(tmp_path / "c"))
    assert code == 3 and "HTTP 401" in err
    assert f"aosctl login {basic_registry.host}" in err and "--auth FILE" in err
    assert f"{basic_registry.host}/aos/x:1" in err, "the error names the reference the user gave"


def test_docker_config_from_home_and_from_DOCKER_CONFIG(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, basic_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    docker_config(home / ".docker", {"auths": {basic_registry.host: auth_entry("alice", "wonderland")}})
    reference = f"{basic_registry.host}/aos/home:1"
    code, _, err = run(capsys, "push", str(EXAMPLES / "hello-world"), reference, "--cache-dir", str(tmp_path / "c"))
    assert code == 0, err
    # $DOCKER_CONFIG wins over ~/.docker, as for docker: a wrong password there must be the one used
    docker_config(tmp_path / "elsewhere", {"auths": {basic_registry.host: auth_entry("alice", "wrong")}})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "elsewhere"))
    code, _, err = run(capsys, "digest", reference)
    assert code == 3 and "user 'alice'" in err and "HTTP 401" in err


HELPER = """#!/bin/sh
# A docker credential helper for the test: answers get/store/erase from a JSON file.
store={store}
echo "$1" >> {store}.calls
read -r server
case "$1" in
get)
    if [ -f "$store" ] && grep -q "\\"ServerURL\\": \\"$server\\"" "$store"; then cat "$store"; exit 0; fi
    echo "credentials not found in native keychain"; exit 1 ;;
store) printf '%s' "$server" > "$store" ;;
erase) rm -f "$store" ;;
esac
"""


def install_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    store = tmp_path / f"{name}-store.json"
    helper = bin_dir / f"docker-credential-{name}"
    helper.write_text(HELPER.format(store=store))
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return store


@pytest.mark.parametrize("key", ["credHelpers", "credsStore"])
def test_credentials_from_a_credential_helper(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, basic_registry: RegistryServer,
    monkeypatch: pytest.MonkeyPatch, key: str,
) -> None:
    store = install_helper(tmp_path, monkeypatch, "aostest")
    store.write_text(json.dumps({"ServerURL": basic_registry.host, "Username": "alice", "Secret": "wonderland"}))
    setting = {basic_registry.host: "aostest"} if key == "credHelpers" else "aostest"
    config = docker_config(tmp_path / "docker", {"auths": {basic_registry.host: {}}, key: setting})
    reference = f"{basic_registry.host}/aos/helper:1"
    code, _, err = run(capsys, "push", str(EXAMPLES / "hello-world"), reference, "--auth", str(config),
                       "--cache-dir", str(tmp_path / "c"))
    assert code == 0, err
    assert Path(f"{store}.calls").read_text().split() == ["get"], "asked once per registry, then cached"
    store.write_text(json.dumps({"ServerURL": basic_registry.host, "Username": "alice", "Secret": "bad"}))
    code, _, err = run(capsys, "digest", reference, "--auth", str(config))
    assert code == 3 and "HTTP 401" in err, "the helper's answer is what is sent"


def test_login_and_logout_store_credentials_as_docker_does(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, basic_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("wrong\n"))
    code, _, err = run(capsys, "login", basic_registry.host, "-u", "alice", "--password-stdin")
    assert code == 3 and "HTTP 401" in err
    assert not (tmp_path / "docker" / "config.json").exists(), "refused credentials are not stored"
    monkeypatch.setattr(sys, "stdin", io.StringIO("wonderland\n"))
    code, out, err = run(capsys, "login", basic_registry.host, "-u", "alice", "--password-stdin")
    assert (code, out) == (0, "Login Succeeded"), err
    config_path = tmp_path / "docker" / "config.json"
    assert json.loads(config_path.read_text())["auths"][basic_registry.host] == auth_entry("alice", "wonderland")
    assert config_path.stat().st_mode & 0o777 == 0o600
    code, _, err = run(capsys, "push", str(EXAMPLES / "hello-world"), f"{basic_registry.host}/aos/l:1",
                       "--cache-dir", str(tmp_path / "c"))
    assert code == 0, err
    assert run(capsys, "logout", basic_registry.host)[0] == 0
    assert basic_registry.host not in json.loads(config_path.read_text())["auths"]
    assert run(capsys, "digest", f"{basic_registry.host}/aos/l:1")[0] == 3


def test_login_with_a_creds_store_stores_in_the_helper(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, basic_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    store = install_helper(tmp_path, monkeypatch, "aosstore")
    config_path = docker_config(tmp_path / "docker", {"credsStore": "aosstore", "auths": {}})
    monkeypatch.setattr(sys, "stdin", io.StringIO("wonderland\n"))
    code, _, err = run(capsys, "login", basic_registry.host, "-u", "alice", "--password-stdin",
                       "--config", str(config_path))
    assert code == 0, err
    assert json.loads(store.read_text()) == {"ServerURL": basic_registry.host, "Username": "alice",
                                             "Secret": "wonderland"}
    assert json.loads(config_path.read_text())["auths"] == {basic_registry.host: {}}, "no secret in the file"
    assert run(capsys, "logout", basic_registry.host, "--config", str(config_path))[0] == 0
    assert not store.exists()


# --- digest, ls, inspect, pull ------------------------------------------------------------------


def test_digest_ls_and_inspect_of_a_reference(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, registry: RegistryServer
) -> None:
    repository = f"{registry.host}/aos/hello"
    code, pushed, _ = run(capsys, "push", str(EXAMPLES / "hello-world"), f"{repository}:1.0.0", "-q",
                          "--cache-dir", str(tmp_path / "c"))
    digest = pushed.split("@")[1]
    assert run(capsys, "push", str(EXAMPLES / "hello-world"), f"{repository}:latest", "-q",
               "--cache-dir", str(tmp_path / "c"))[0] == 0
    assert run(capsys, "digest", f"{repository}:latest") == (0, digest, "")
    assert run(capsys, "ls", repository)[:2] == (0, "1.0.0\nlatest")
    code, out, _ = run(capsys, "ls", repository, "-o", "json")
    assert json.loads(out) == {"schemaVersion": 1, "kind": "TagList", "repository": repository,
                               "tags": ["1.0.0", "latest"]}
    code, out, err = run(capsys, "inspect", f"{repository}:1.0.0")
    assert code == 0, err
    assert f"package    {digest}" in out and "ramLimit 64 MB" in out and "uploadSpeed 32 kbit/s" in out
    code, out, _ = run(capsys, "inspect", f"{repository}:1.0.0", "--output", "yaml")
    import yaml

    document = yaml.safe_load(out)
    assert document["schemaVersion"] == 1 and document["manifestDigest"] == digest
    assert document["serviceConfig"]["quotas"]["ramLimit"] == 64_000_000
    assert document["quotas"]["ramLimit"] == "64 MB"
    code, _, err = run(capsys, "ls", f"{repository}:1.0.0")
    assert code == 2 and "without a tag" in err


def test_pull_refuses_a_non_empty_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, registry: RegistryServer
) -> None:
    reference = f"{registry.host}/aos/hello:1"
    assert run(capsys, "push", str(EXAMPLES / "hello-world"), reference, "-q", "--cache-dir", str(tmp_path / "c"))[0] == 0
    target = tmp_path / "full"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "pull", reference, "-o", str(target))
    assert code == 2 and "not empty" in err
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"], "nothing was merged in"
    resumed = tmp_path / "resumed"
    (resumed / "blobs").mkdir(parents=True)  # what an interrupted pull leaves
    assert run(capsys, "pull", reference, "-o", str(resumed))[0] == 0


@pytest.mark.slow
def test_an_unreachable_registry_says_that_it_retries(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    reference = f"127.0.0.1:{free_port()}/aos/nowhere:1"
    code, _, err = run(capsys, "pull", reference, "-o", str(tmp_path / "x"))
    assert code == 3
    assert "retry 1 of 5" in err and "gave up after 6 attempts" in err
    assert err.count(reference.rsplit(":", 1)[0]) >= 2, "each line names the reference"
    code, _, err = run(capsys, "pull", reference, "-o", str(tmp_path / "y"), "-q")
    assert "retry 1 of 5" not in err and "gave up" in err, "--quiet keeps only the error"


def on_a_terminal(*arguments: str) -> tuple[int, str, str]:
    """Run aosctl with stderr on a pseudo-terminal; returns (exit code, stdout, what the terminal got)."""
    primary, secondary = pty.openpty()
    process = subprocess.run([sys.executable, "-m", "aos_operator.cli", *arguments],
                             stdout=subprocess.PIPE, stderr=secondary, timeout=120, check=False)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    return process.returncode, process.stdout.decode(), b"".join(chunks).decode()


def test_push_and_pull_progress_on_a_terminal(tmp_path: Path, registry: RegistryServer) -> None:
    """stderr a terminal: progress lines are drawn in place; stdout still has only the result."""
    reference = f"{registry.host}/aos/tty:1"
    code, out, terminal = on_a_terminal("push", str(EXAMPLES / "hello-world"), reference,
                                        "--cache-dir", str(tmp_path / "c"))
    assert code == 0, terminal
    assert "\rpush [" in terminal and "scan " in terminal, "build phases and push bytes are drawn in place"
    assert out.strip().startswith(f"{reference}@sha256:")
    code, out, terminal = on_a_terminal("pull", reference, "-o", str(tmp_path / "pulled"))
    assert code == 0, terminal
    assert "\rpull " in terminal and " kB" in terminal and out.strip().startswith("sha256:")
    code, _, terminal = on_a_terminal("pull", reference, "-o", str(tmp_path / "again"), "-q")
    assert code == 0 and "\rpull" not in terminal, "--quiet draws no progress"
