"""`aosctl build`, `push` and `pull` on the example service, against the real registry."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from aos_operator.cli import main
from aos_operator.image import open_package
from registry_support import RegistryServer
from tests.conftest import EXAMPLES


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err


def test_build_writes_a_reproducible_package_with_the_generated_configs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    copy = tmp_path / "hello-world"
    shutil.copytree(EXAMPLES / "hello-world", copy)
    for path in copy.rglob("*"):
        path.touch()  # other mtimes must not matter
    first = tmp_path / "a.tar"
    code, digest, _ = run(capsys, "build", str(EXAMPLES / "hello-world"), "-o", str(first), "--no-cache")
    assert code == 0 and digest.startswith("sha256:")
    second = tmp_path / "b.tar"
    code, again, _ = run(capsys, "build", str(copy), "-o", str(second), "--cache-dir", str(tmp_path / "cache"))
    assert (code, again) == (0, digest)
    assert first.read_bytes() == second.read_bytes()

    package = open_package(first)
    package.verify()
    assert package.manifest_digest == digest
    config = package.image_config()
    assert config["config"]["Cmd"] == ["python3", "-u", "/usr/bin/services/hello_world.py"]
    assert config["rootfs"]["diff_ids"][0].startswith("sha256:")
    assert package.service_config()["quotas"]["ramLimit"] == 64_000_000
    listing = subprocess.run(["tar", "-tf", str(first)], capture_output=True, text=True, check=True).stdout
    assert "./manifest.json" in listing.splitlines()


def test_build_of_an_invalid_service_fails_without_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    service = tmp_path / "svc"
    shutil.copytree(EXAMPLES / "hello-world", service)
    config = service / "meta" / "config.yaml"
    config.write_text(config.read_text().replace("mem: 64M", "mem: 64X"))
    output = tmp_path / "out.tar"
    code, _, err = run(capsys, "build", str(service), "-o", str(output))
    assert code == 1 and "configuration.quotas.mem" in err
    assert not output.exists()
    shutil.rmtree(service / "src")
    config.write_text(config.read_text().replace("mem: 64X", "mem: 64M"))
    code, _, err = run(capsys, "build", str(service), "-o", str(output))
    assert code == 2 and "source folder does not exist" in err
    assert not output.exists()


def test_push_and_pull_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path, registry: RegistryServer) -> None:
    reference = f"127.0.0.1:{registry.port}/aos/hello-world:1.0.0"
    code, pushed, _ = run(capsys, "push", str(EXAMPLES / "hello-world"), reference, "--cache-dir", str(tmp_path / "c"))
    assert code == 0
    name, digest = pushed.split("@")
    assert name == reference and digest.startswith("sha256:")

    archive = tmp_path / "pulled.tar"
    code, pulled, _ = run(capsys, "pull", f"127.0.0.1:{registry.port}/aos/hello-world@{digest}", "-o", str(archive))
    assert (code, pulled) == (0, digest)
    built = tmp_path / "built.tar"
    assert run(capsys, "build", str(EXAMPLES / "hello-world"), "-o", str(built), "--cache-dir", str(tmp_path / "c"))[0] == 0
    assert archive.read_bytes() == built.read_bytes(), "pull gives back the very package that was built"

    directory = tmp_path / "pulled"
    assert run(capsys, "pull", reference, "-o", str(directory))[0] == 0
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["aosService"]["mediaType"] == "application/vnd.aos.service.config.v1+json"
    layout = tmp_path / "layout"
    assert run(capsys, "pull", reference, "-o", str(layout), "--oci-layout")[0] == 0
    inspected = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:1.0.0"], capture_output=True, check=True)
    assert json.loads(inspected.stdout) == manifest, "skopeo reads the pulled OCI layout"
    # pushing the archive again to another repository uploads nothing new and gives the same digest
    code, again, _ = run(capsys, "push", str(archive), f"127.0.0.1:{registry.port}/aos/copy:1")
    assert code == 0 and again.endswith(digest)


def test_pull_of_a_missing_reference_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, registry: RegistryServer
) -> None:
    code, _, err = run(capsys, "pull", f"127.0.0.1:{registry.port}/aos/missing:1", "-o", str(tmp_path / "x"))
    assert code == 3 and "not found" in err and "aos/missing" in err
