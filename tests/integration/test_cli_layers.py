"""`aosctl build-layer`, and `--layer DIR|ARCHIVE` of `aosctl build` and `aosctl run`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aos_operator.cli import main
from aos_operator.image import open_package
from tests.conftest import EXAMPLES

LAYERS_ENTRY = """configuration:
  layers:
    - uid: pylibs
      minVersion: "1.0.0"
      maxVersion: "2.0.0"
    - legacy-fonts
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err


@pytest.fixture
def service(tmp_path: Path) -> Path:
    """The example service, its config listing two layers (one in the legacy string form)."""
    copy = tmp_path / "service"
    shutil.copytree(EXAMPLES / "hello-world", copy)
    config = copy / "meta" / "config.yaml"
    config.write_text(config.read_text().replace("configuration:\n", LAYERS_ENTRY, 1))
    return copy


def layer_dir(root: Path, uid: str, version: str) -> Path:
    (root / "src" / "usr" / "lib" / uid).mkdir(parents=True)
    (root / "src" / "usr" / "lib" / uid / "module.py").write_text(f"VERSION = {version!r}\n")
    (root / "layer.yaml").write_text(f"uid: {uid}\nversion: {version}\n")
    return root


def test_build_puts_the_layers_in_the_configs_order_whatever_the_flags_order(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, service: Path
) -> None:
    pylibs = layer_dir(tmp_path / "pylibs", "pylibs", "1.4.0")
    fonts = layer_dir(tmp_path / "fonts", "legacy-fonts", "7.0.0")
    code, digest, err = run(capsys, "build-layer", str(fonts), "-o", str(tmp_path / "fonts.tar"), "--no-cache")
    assert code == 0 and digest.startswith("sha256:"), err
    output = tmp_path / "pkg.tar"
    code, _, err = run(capsys, "build", str(service), "-o", str(output), "--no-cache",
                       "--layer", str(tmp_path / "fonts.tar"), "--layer", str(pylibs))
    assert code == 0, err
    package = open_package(output)
    package.verify()
    layers = json.loads(package.manifest_bytes)["layers"]
    assert [entry["annotations"]["io.aosedge.layer.uid"] for entry in layers[1:]] == ["pylibs", "legacy-fonts"]
    assert layers[2]["digest"] == digest  # the archive's blob, as build-layer printed it
    assert len(package.image_config()["rootfs"]["diff_ids"]) == 3
    code, shown, _ = run(capsys, "inspect", str(output))
    assert code == 0 and f"{digest} " in shown and "aos layer legacy-fonts 7.0.0" in shown
    # the directory and its archive give the same blob: one writer
    code, _, _ = run(capsys, "build", str(service), "-o", str(tmp_path / "again.tar"), "--no-cache",
                     "--layer", str(fonts), "--layer", str(pylibs))
    assert code == 0 and (tmp_path / "again.tar").read_bytes() == output.read_bytes()


@pytest.mark.parametrize(
    ("uid", "version", "message"),
    [
        ("pylibs", "2.0.0", "layer 'pylibs' is version 2.0.0, outside the range >=1.0.0 <2.0.0"),
        ("numpy", "1.0.0", "layer 'numpy' is not one the service lists"),
    ],
)
def test_a_layer_the_config_does_not_accept_is_refused_naming_flag_and_uid(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, service: Path, uid: str, version: str, message: str
) -> None:
    layer = layer_dir(tmp_path / "layer", uid, version)
    output = tmp_path / "pkg.tar"
    code, _, err = run(capsys, "build", str(service), "-o", str(output), "--no-cache", "--layer", str(layer))
    assert code == 2 and f"--layer {layer}: {message}" in err
    assert "Traceback" not in err and not output.exists()


def test_a_missing_layer_is_an_error_once_any_is_given_and_a_warning_without_any(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, service: Path
) -> None:
    pylibs = layer_dir(tmp_path / "pylibs", "pylibs", "1.0.0")
    code, _, err = run(capsys, "build", str(service), "-o", str(tmp_path / "a.tar"), "--no-cache", "--layer", str(pylibs))
    assert code == 2 and "needs layer 'legacy-fonts' (any version)" in err
    code, _, err = run(capsys, "build", str(service), "-o", str(tmp_path / "b.tar"), "--no-cache")
    assert code == 0 and "carries none" in err
    assert len(json.loads(open_package(tmp_path / "b.tar").manifest_bytes)["layers"]) == 1


def test_a_damaged_layer_package_is_refused_with_its_digest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, service: Path
) -> None:
    fonts = layer_dir(tmp_path / "fonts", "legacy-fonts", "1.0.0")
    code, digest, _ = run(capsys, "build-layer", str(fonts), "-o", str(tmp_path / "fonts.tar"), "--no-cache")
    data = bytearray((tmp_path / "fonts.tar").read_bytes())
    data[2048 + 30] ^= 0xFF  # inside the blob, which follows the three directory headers and its own
    (tmp_path / "fonts.tar").write_bytes(bytes(data))
    pylibs = layer_dir(tmp_path / "pylibs", "pylibs", "1.0.0")
    code, _, err = run(capsys, "build", str(service), "-o", str(tmp_path / "pkg.tar"), "--no-cache",
                       "--layer", str(pylibs), "--layer", str(tmp_path / "fonts.tar"))
    assert code != 0 and digest in err and "Traceback" not in err
    assert not (tmp_path / "pkg.tar").exists()


def test_run_refuses_layers_for_a_built_package(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                service: Path) -> None:
    code, _, _ = run(capsys, "build", str(service), "-o", str(tmp_path / "pkg.tar"), "--no-cache")
    layer = layer_dir(tmp_path / "pylibs", "pylibs", "1.0.0")
    code, _, err = run(capsys, "run", str(tmp_path / "pkg.tar"), "--layer", str(layer), "--timeout", "1")
    assert code == 2 and "--layer:" in err and "is a built package" in err


def test_run_passes_its_layers_to_the_build(tmp_path: Path, service: Path) -> None:
    """`aosctl run DIR --layer ...` builds the package that the runtime gets with layers[1..]."""
    from aos_operator.cli import build_parser
    from aos_operator.cli.run import prepare

    pylibs = layer_dir(tmp_path / "pylibs", "pylibs", "1.0.0")
    fonts = layer_dir(tmp_path / "fonts", "legacy-fonts", "1.0.0")
    args = build_parser().parse_args(["run", str(service), "--no-cache", "--layer", str(pylibs), "--layer", str(fonts)])
    (tmp_path / "scratch").mkdir()
    target = prepare(args, tmp_path / "scratch", "amd64")
    package = open_package(target.package_dir)
    package.verify()
    layers = json.loads(package.manifest_bytes)["layers"]
    assert [entry["annotations"]["io.aosedge.layer.uid"] for entry in layers[1:]] == ["pylibs", "legacy-fonts"]
