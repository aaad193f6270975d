"""Registry client speed against skopeo, pushing and pulling a ~200 MB service package.

Baseline: `skopeo copy` of the same image (the package directory doubles as an OCI layout) to
and from the same kind of registry (Debian's docker-registry on 127.0.0.1). Every push goes
to a fresh registry, so neither tool can skip or mount blobs. One run each; ratios are
ours / skopeo (below 1.0 = we are faster). Also: a second push of the unchanged package
must upload zero blob bytes, and the effect of parallel transfers and chunked uploads.

Run: .venv/bin/python benchmarks/registry.py [--work DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # the registry launcher the tests use

from registry_support import RegistryServer, start_registry  # noqa: E402

from aos_operator.digests import canonical_json  # noqa: E402
from aos_operator.registry import RegistryClient  # noqa: E402

MiB = 1024 * 1024
# Real files make realistic layers: shared libraries, then locale and docs, then Python.
LAYER_SOURCES = [
    (["/usr/lib/x86_64-linux-gnu"], 420 * MiB),
    (["/usr/share/locale", "/usr/share/doc"], 160 * MiB),
    (["/usr/lib/python3"], 60 * MiB),
]


def walk_files(roots: list[str], budget: int) -> Iterator[Path]:
    """Regular files under `roots` in sorted order, until `budget` bytes are taken."""
    taken = 0
    for root in roots:
        for directory, subdirectories, files in os.walk(root):
            subdirectories.sort()
            for name in sorted(files):
                path = Path(directory, name)
                if path.is_symlink() or not path.is_file():
                    continue
                size = path.stat().st_size
                if taken + size > budget:
                    continue
                taken += size
                yield path


def build_layer(roots: list[str], budget: int, destination: Path) -> tuple[str, int, str]:
    """A tar+gzip layer (pigz) of real files; returns (digest, size, diff_id)."""
    temp = destination.with_suffix(".tmp")
    with temp.open("wb") as compressed:
        pigz = subprocess.Popen(["pigz", "-6", "-n", "-c"], stdin=subprocess.PIPE, stdout=compressed)
        diff_hash = hashlib.sha256()

        class Tee:
            def write(self, data: bytes) -> int:
                diff_hash.update(data)
                assert pigz.stdin is not None
                pigz.stdin.write(data)
                return len(data)

        with tarfile.open(fileobj=Tee(), mode="w|", format=tarfile.PAX_FORMAT) as archive:  # type: ignore[call-overload]
            for path in walk_files(roots, budget):
                archive.add(path, arcname=str(path).lstrip("/"), recursive=False)
        assert pigz.stdin is not None
        pigz.stdin.close()
        if pigz.wait() != 0:
            raise RuntimeError("pigz failed")
    digest = "sha256:" + hashlib.sha256(temp.read_bytes()).hexdigest()
    size = temp.stat().st_size
    destination.parent.mkdir(parents=True, exist_ok=True)
    final = destination.parent / digest.split(":")[1]
    temp.rename(final)
    return digest, size, "sha256:" + diff_hash.hexdigest()


def build_package(directory: Path) -> Path:
    """Package directory (manifest.json + blobs) that is also an OCI layout for skopeo."""
    if (directory / "index.json").exists():
        return directory
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layers, diff_ids = [], []
    for index, (roots, budget) in enumerate(LAYER_SOURCES):
        digest, size, diff_id = build_layer(roots, budget, blobs / f"layer{index}")
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size})
        diff_ids.append(diff_id)

    def put(data: bytes, media_type: str) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest.split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    )
    service = canonical_json({"author": "benchmark", "quotas": {"ramLimit": 1 << 28}})
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": put(config, "application/vnd.oci.image.config.v1+json"),
            "aosService": put(service, "application/vnd.aos.service.config.v1+json"),
            "layers": layers,
        }
    )
    (directory / "manifest.json").write_bytes(manifest)
    manifest_descriptor = put(manifest, "application/vnd.oci.image.manifest.v1+json")
    manifest_descriptor["annotations"] = {"org.opencontainers.image.ref.name": "v1"}
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_descriptor]}))
    return directory


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def skopeo(*args: str) -> None:
    subprocess.run(["skopeo", "--insecure-policy", *args], check=True, capture_output=True)


def warm(directory: Path) -> None:
    """Read every file once so both tools start from the same page cache."""
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with path.open("rb") as stream:
                while stream.read(4 * MiB):
                    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", type=Path, default=ROOT / ".cache" / "bench-registry", help="where the package is built and kept"
    )
    args = parser.parse_args()
    package = build_package(args.work / "package")
    warm(package)
    manifest = json.loads((package / "manifest.json").read_text())
    blob_total = sum(item["size"] for item in [manifest["config"], manifest["aosService"], *manifest["layers"]])
    print(f"package: {blob_total / MiB:.1f} MiB of blobs in {len(manifest['layers'])} layers + config + aosService")

    scratch = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    servers: list[RegistryServer] = []

    def fresh_registry() -> RegistryServer:
        server = start_registry(scratch / f"registry{len(servers)}")
        servers.append(server)
        return server

    try:

        def our_push(**options: int) -> tuple[float, RegistryServer, RegistryClient]:
            server = fresh_registry()
            client = RegistryClient(**options)
            seconds = timed(lambda: client.push_package(f"{server.host}/bench/ours:v1", package))
            return seconds, server, client

        push_ours, source, client = our_push()
        uploaded_first = client.stats.blob_bytes_uploaded
        client.close()
        skopeo_target = fresh_registry()
        push_skopeo = timed(
            lambda: skopeo(
                "copy", "--dest-tls-verify=false", f"oci:{package}:v1", f"docker://{skopeo_target.host}/bench/skopeo:v1"
            )
        )

        with RegistryClient() as again:
            push_again = timed(lambda: again.push_package(f"{source.host}/bench/ours:v1", package))
            uploaded_again = again.stats.blob_bytes_uploaded

        with RegistryClient() as puller:
            pull_ours = timed(lambda: puller.pull(f"{source.host}/bench/ours:v1", scratch / "pulled-ours"))
        pull_skopeo = timed(
            lambda: skopeo(
                "copy",
                "--src-tls-verify=false",
                f"docker://{source.host}/bench/ours:v1",
                f"oci:{scratch / 'pulled-skopeo'}:v1",
            )
        )

        push_serial, *_ = our_push(max_workers=1)
        push_whole, *_ = our_push(chunked_threshold=1 << 40)
        with RegistryClient(max_workers=1) as serial_puller:
            pull_serial = timed(lambda: serial_puller.pull(f"{source.host}/bench/ours:v1", scratch / "pulled-serial"))
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    def rate(seconds: float) -> str:
        return f"{seconds:6.2f} s  {blob_total / MiB / seconds:7.1f} MiB/s"

    print(f"push  ours   {rate(push_ours)}   (4 workers, chunks of 64 MiB above 128 MiB)")
    print(f"push  skopeo {rate(push_skopeo)}")
    print(f"push  ratio ours/skopeo: {push_ours / push_skopeo:.2f}")
    print(f"pull  ours   {rate(pull_ours)}   (4 workers)")
    print(f"pull  skopeo {rate(pull_skopeo)}")
    print(f"pull  ratio ours/skopeo: {pull_ours / pull_skopeo:.2f}")
    print(
        f"push again (unchanged): {push_again:.3f} s, blob bytes uploaded: {uploaded_again}"
        f" (first push: {uploaded_first})"
    )
    print(f"push  1 worker / 4 workers: {push_serial / push_ours:.2f}")
    print(f"pull  1 worker / 4 workers: {pull_serial / pull_ours:.2f}")
    print(f"push  single PUT per blob / chunked: {push_whole / push_ours:.2f}")


if __name__ == "__main__":
    main()
