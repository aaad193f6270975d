"""Files from untrusted input that are read whole have their size checked before the read: a
sparse 3 GiB config.yaml, docker config.json, package manifest.json or OCI index.json is refused
with its size in the message, and the child's own memory peak (VmHWM) stays far below it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SPARSE_BYTES = 3 * 1024**3
PEAK_LIMIT_BYTES = 150 * 1024 * 1024  # an interpreter with the project imported is about 60 MiB

_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from aos_operator.errors import AosError
    kind, path = sys.argv[1], Path(sys.argv[2])
    try:
        if kind == "config":
            from aos_operator.service import read_config
            read_config(path)
        elif kind == "docker-config":
            from aos_operator.registry import DockerConfig
            DockerConfig.from_file(path)
        elif kind == "package-manifest":
            from aos_operator.registry.layout import read_package
            read_package(path)
        elif kind in ("package-dir", "oci-index"):
            from aos_operator.image import open_package
            open_package(path)
        elif kind == "runtime-package":
            from aos_operator.runtime.package import _PackageDir
            _PackageDir(path)
        message = "accepted"
    except AosError as error:
        message = str(error)
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"message": message, "peak_kib": peak}))
    """
)


def _sparse(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.truncate(SPARSE_BYTES)  # zeros that cost no disk
    return path


@pytest.mark.parametrize(
    ("kind", "make", "expected"),
    [
        ("config", lambda root: _sparse(root / "svc" / "meta" / "config.yaml").parent.parent, "a config.yaml may be at most"),
        ("docker-config", lambda root: _sparse(root / "config.json"), "a registry credentials file may hold"),
        ("package-manifest", lambda root: _sparse(root / "pkg" / "manifest.json").parent, "not a manifest"),
        ("package-dir", lambda root: _sparse(root / "pkg" / "manifest.json").parent, "larger than"),
        ("oci-index", lambda root: (_sparse(root / "layout" / "index.json"), (root / "layout" / "oci-layout").write_text(
            '{"imageLayoutVersion": "1.0.0"}'))[0].parent, "larger than"),
        ("runtime-package", lambda root: _sparse(root / "pkg" / "manifest.json").parent, "the manifest is larger than"),
    ],
)
def test_sparse_multi_gib_file_is_refused_before_it_is_read(tmp_path: Path, kind: str, make, expected: str) -> None:
    target = make(tmp_path)
    process = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, str(target)], capture_output=True, timeout=120, check=False
    )
    assert process.returncode == 0, process.stderr.decode()[-2000:]
    report = json.loads(process.stdout)
    assert expected in report["message"], report["message"]
    assert str(SPARSE_BYTES) in report["message"]
    peak = report["peak_kib"] * 1024
    assert peak < PEAK_LIMIT_BYTES, f"peak {peak / 2**20:.0f} MiB for a {SPARSE_BYTES / 2**30:.0f} GiB file"
    print(f"{kind}: peak {peak / 2**20:.1f} MiB for a {SPARSE_BYTES / 2**30:.0f} GiB sparse file")
