"""Streaming: pushing and pulling a blob far larger than the memory budget stays within it.

A subprocess (its own peak RSS) pushes a 320 MiB sparse file twice (single PUT and chunked
PATCH) and pulls it back; its peak RSS must stay under 120 MiB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from registry_support import RegistryServer

BLOB_MIB = 320
RSS_BUDGET_MIB = 120

SCRIPT = """
import json, sys
from pathlib import Path
from aos_operator.digests import canonical_json
from aos_operator.registry import BytesBlob, FileBlob, RegistryClient

host, work = sys.argv[1], Path(sys.argv[2])
big = work / "big.bin"
with big.open("wb") as stream:
    stream.truncate({blob_mib} * 1024 * 1024)  # sparse: costs no disk or memory to make
layer = FileBlob.from_path(big)
config = BytesBlob(canonical_json({{"architecture": "amd64", "os": "linux", "config": {{}}}}))
service = BytesBlob(canonical_json({{"author": "memory test"}}))
def descriptor(media_type, blob):
    return {{"mediaType": media_type, "digest": blob.digest, "size": blob.size}}
manifest = canonical_json({{
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": descriptor("application/vnd.oci.image.config.v1+json", config),
    "aosService": descriptor("application/vnd.aos.service.config.v1+json", service),
    "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
}})
blobs = {{blob.digest: blob for blob in (config, service, layer)}}
media_type = "application/vnd.oci.image.manifest.v1+json"
with RegistryClient(chunked_threshold=1 << 40) as whole:
    whole.push(host + "/aos/big-put:v1", manifest, media_type, blobs)
with RegistryClient(chunk_size=64 << 20, chunked_threshold=100 << 20) as chunked:
    chunked.push(host + "/aos/big-patch:v1", manifest, media_type, blobs)
with RegistryClient() as puller:
    puller.pull(host + "/aos/big-patch:v1", work / "pulled")
    downloaded = puller.stats.blob_bytes_downloaded
pulled = work / "pulled" / "blobs" / "sha256" / layer.digest.split(":")[1]
print(json.dumps({{
    # this program's own peak (VmHWM); ru_maxrss would count what the fork shared with pytest
    "max_rss_kib": next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")),
    "uploaded": whole.stats.blob_bytes_uploaded + chunked.stats.blob_bytes_uploaded,
    "downloaded": downloaded,
    "pulled_size": pulled.stat().st_size,
    "layer_size": layer.size,
}}))
"""


@pytest.mark.slow
def test_large_blob_push_and_pull_stay_within_memory_budget(registry: RegistryServer, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(blob_mib=BLOB_MIB), registry.host, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    blob = BLOB_MIB * 1024 * 1024
    assert report["layer_size"] == report["pulled_size"] == blob
    assert report["uploaded"] >= 2 * blob
    assert report["downloaded"] >= blob
    assert report["max_rss_kib"] < RSS_BUDGET_MIB * 1024, report
    print(f"peak {report['max_rss_kib'] / 1024:.1f} MiB")
