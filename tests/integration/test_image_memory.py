"""Streaming: building a tree with a 2 GiB file stays far below 200 MB of resident memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

RSS_LIMIT_BYTES = 200 * 1024 * 1024
BIG_FILE_BYTES = 2 * 1024**3

_BUILDER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from aos_operator.image import build_package
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    result = build_package(
        source,
        {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/usr/bin/big"]}},
        {"runners": ["runc"]},
        archive=out / "pkg.tar",
        oci_layout=out / "layout",
        tag="big",
    )
    # VmHWM is the peak of this program's own memory: unlike ru_maxrss it does not include what
    # the forked child shared with the (large) pytest process before exec.
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"uncompressed": result.layer_uncompressed_size, "diff_id": result.diff_id, "peak_kib": peak}))
    """
)


@pytest.mark.slow
def test_two_gib_file_builds_in_bounded_memory(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "usr/share").mkdir(parents=True)
    with open(source / "usr/share/big.img", "wb") as big:
        big.truncate(BIG_FILE_BYTES)  # sparse: zeros that cost no disk
    (source / "usr/share/small.txt").write_text("small\n")
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.run(
        [sys.executable, "-c", _BUILDER, str(source), str(out)], capture_output=True, timeout=900, check=False
    )
    assert process.returncode == 0, process.stderr.decode()
    report = json.loads(process.stdout)
    peak_rss = report["peak_kib"] * 1024
    assert peak_rss < RSS_LIMIT_BYTES, f"peak RSS {peak_rss / 2**20:.0f} MiB"
    assert report["uncompressed"] > BIG_FILE_BYTES
    print(f"peak RSS {peak_rss / 2**20:.1f} MiB for a {BIG_FILE_BYTES / 2**30:.0f} GiB file")
