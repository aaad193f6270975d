"""Hostile service directories for `validate` and `build`: a source folder that leads out of the
service directory, by its config key or through a link on disk, is refused with the key named,
and nothing outside the scratch dirs is read into a layer or written."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from aos_operator.cli import main
from aos_operator.errors import BuildError
from aos_operator.image.tree import resolve_source_folder, scan_tree

V1 = """\
publisher: {{author: a, company: c}}
build: {{os: linux, arch: x86_64, source_folder: {folder}}}
publish: {{service_uid: 00000000-0000-0000-0000-000000000001, version: 1.0.0}}
configuration: {{cmd: /bin/true, quotas: {{mem: 64M}}}}
"""

V2 = """\
schemaVersion: 2
items:
  - identity: {{id: 00000000-0000-0000-0000-000000000002, codename: {codename}, type: service}}
    version: 1.0.0
{item_folder}    images:
      - archInfo: {{architecture: amd64}}
        osInfo: {{os: linux}}
{image_folder}    configuration: {{cmd: /bin/true, quotas: {{ramLimit: 64MB}}}}
"""


def _fingerprint(directory: Path) -> dict[str, str]:
    """Every path under `directory` with its kind and content hash: a canary's state."""
    state: dict[str, str] = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root, name)
            relative = str(path.relative_to(directory))
            if path.is_symlink():
                state[relative] = "link " + os.readlink(path)
            elif path.is_file():
                state[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                state[relative] = "dir"
    return state


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    """A service directory and, beside it, a canary directory holding a secret."""
    canary = tmp_path / "canary"
    (canary / "etc").mkdir(parents=True)
    (canary / "etc" / "shadow").write_text("root:secret\n")
    service = tmp_path / "service"
    (service / "meta").mkdir(parents=True)
    return service, canary


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _validate_and_build(capsys: pytest.CaptureFixture[str], service: Path, canary: Path, work: Path) -> str:
    """Run validate and build; both must refuse; the canary and the work dir stay as they were."""
    before = _fingerprint(canary)
    work.mkdir(exist_ok=True)
    code, validate_out = run(capsys, "validate", "--local", str(service))
    assert code == 1, validate_out
    output = work / "out.tar"
    code, build_out = run(capsys, "build", "--no-cache", "-q", "-o", str(output), str(service))
    assert code == 1, build_out
    assert "Traceback" not in validate_out + build_out
    assert list(work.iterdir()) == []  # no archive, no half output, no temp file
    assert _fingerprint(canary) == before
    return validate_out + "\n" + build_out


@pytest.mark.parametrize("folder", ["../canary/etc", "src/../../canary", "/etc", '"src\\n"'])
def test_v1_source_folder_out_of_the_service_dir_is_refused(
    capsys: pytest.CaptureFixture[str], scene: tuple[Path, Path], tmp_path: Path, folder: str
) -> None:
    service, canary = scene
    (service / "src").mkdir()
    (service / "meta" / "config.yaml").write_text(V1.format(folder=folder))
    output = _validate_and_build(capsys, service, canary, tmp_path / "work")
    assert "build.source_folder:" in output
    assert "relative path inside the service directory" in output


@pytest.mark.parametrize(
    ("codename", "item_folder", "image_folder", "key"),
    [
        ("svc", "    sourceFolder: ../canary\n", "", "items[0].sourceFolder"),
        ("svc", "    sourceFolder: ok\n", "        sourceFolder: ../../canary\n", "items[0].images[0].sourceFolder"),
        ("svc", "", "        path: /etc\n", "items[0].images[0].path"),
        ("'..'", "", "", "items[0].identity.codename"),
    ],
)
def test_v2_source_folder_keys_out_of_the_service_dir_are_refused(
    capsys: pytest.CaptureFixture[str],
    scene: tuple[Path, Path],
    tmp_path: Path,
    codename: str,
    item_folder: str,
    image_folder: str,
    key: str,
) -> None:
    service, canary = scene
    (service / "meta" / "config.yaml").write_text(
        V2.format(codename=codename, item_folder=item_folder, image_folder=image_folder)
    )
    output = _validate_and_build(capsys, service, canary, tmp_path / "work")
    assert f"{key}:" in output
    assert "inside the service directory" in output


@pytest.mark.parametrize(
    ("make_link", "problem"),
    [
        (lambda service, canary: (service / "src").symlink_to(canary / "etc"), "points outside"),
        (lambda service, canary: (service / "src").symlink_to("../canary/etc"), "climbs out"),
        # a chain: src -> a (inside) -> ../canary (out)
        (
            lambda service, canary: ((service / "a").symlink_to("../canary"), (service / "src").symlink_to("a/etc")),
            "climbs out",
        ),
        # a link in the middle of the path: src is a real folder path whose parent is a link out
        (
            lambda service, canary: (service / "up").symlink_to(".."),
            "climbs out",
        ),
        (lambda service, canary: (service / "src").symlink_to("src"), "loop"),
    ],
)
def test_source_folder_that_is_a_link_out_is_refused(
    capsys: pytest.CaptureFixture[str], scene: tuple[Path, Path], tmp_path: Path, make_link, problem: str
) -> None:
    service, canary = scene
    make_link(service, canary)
    folder = "up/canary/etc" if (service / "up").is_symlink() else "src"
    (service / "meta" / "config.yaml").write_text(V1.format(folder=folder))
    output = _validate_and_build(capsys, service, canary, tmp_path / "work")
    assert "build.source_folder:" in output
    assert problem in output
    assert "does not follow it" in output or "reads only files inside it" in output


def test_source_folder_link_that_stays_inside_is_built_from_its_real_directory(
    capsys: pytest.CaptureFixture[str], scene: tuple[Path, Path], tmp_path: Path
) -> None:
    service, _ = scene
    (service / "build" / "rootfs").mkdir(parents=True)
    (service / "build" / "rootfs" / "app").write_text("app\n")
    (service / "src").symlink_to("build/rootfs")
    (service / "meta" / "config.yaml").write_text(V1.format(folder="src"))
    assert resolve_source_folder(service, "src", "build.source_folder") == (service / "build" / "rootfs").resolve()
    code, out = run(capsys, "validate", "--local", str(service))
    assert code == 0, out
    code, out = run(capsys, "build", "--no-cache", "-q", "-o", str(tmp_path / "ok.tar"), str(service))
    assert code == 0, out
    assert (tmp_path / "ok.tar").is_file()


def test_tree_walk_does_not_follow_a_top_level_link(scene: tuple[Path, Path]) -> None:
    service, canary = scene
    (service / "src").symlink_to(canary)
    with pytest.raises(BuildError, match="is a symbolic link; the build does not follow it"):
        scan_tree(service / "src")


@pytest.mark.parametrize("dialect", [1, 2])
def test_a_megabyte_key_is_cut_in_the_message(capsys: pytest.CaptureFixture[str], tmp_path: Path, dialect: int) -> None:
    key = "k" * 1_000_000
    if dialect == 1:
        text = (
            "publisher: {author: a, company: c}\nbuild: {os: linux, arch: x86_64}\n"
            "publish: {service_uid: x, version: 1.0.0}\nconfiguration:\n  cmd: /bin/true\n"
            f"  ? {key}\n  : 1\n"
        )
    else:
        text = V2.format(codename="svc", item_folder=f"    ? {key}\n    : 1\n", image_folder="")
    config = tmp_path / "config.yaml"
    config.write_text(text)
    code, output = run(capsys, "validate", "--local", str(config))
    assert code == (1 if dialect == 1 else 0), output[:500]
    line = next(line for line in output.splitlines() if "unknown key" in line)
    assert "kkkk..." in line  # cut, with an ellipsis
    assert len(line) < 700
    assert len(output) < 4000
