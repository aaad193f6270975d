"""Push and pull service packages against the real registry (docker-registry 2.8), no auth."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
import urllib3
from registry_support import AOS_SERVICE, OCI_MANIFEST, FaultProxy, RegistryServer, make_package

from aos_operator.errors import PackageError, RegistryError
from aos_operator.registry import BytesBlob, FileBlob, RegistryClient


def raw_get(host: str, path: str, **headers: str) -> urllib3.BaseHTTPResponse:
    return urllib3.request("GET", f"http://{host}{path}", headers=headers, retries=False)


def test_push_then_pull_round_trip_keeps_manifest_bytes_and_aos_service(
    registry: RegistryServer, tmp_path: Path
) -> None:
    package = make_package(layer_sizes=(40_000, 70_000))
    with RegistryClient() as client:
        digest = client.push(f"{registry.host}/aos/hello:v1", package.manifest, OCI_MANIFEST, package.sources())
        assert digest == package.digest

        # The registry serves our bytes unchanged, and has every blob, the aosService one included.
        served = raw_get(registry.host, "/v2/aos/hello/manifests/v1", Accept=OCI_MANIFEST)
        assert served.data == package.manifest
        assert served.headers["Docker-Content-Digest"] == digest
        assert json.loads(served.data)["aosService"]["mediaType"] == AOS_SERVICE
        for blob_digest, data in package.blobs.items():
            assert raw_get(registry.host, f"/v2/aos/hello/blobs/{blob_digest}").data == data

        by_tag = client.pull_manifest(f"{registry.host}/aos/hello:v1")
        by_digest = client.pull_manifest(f"{registry.host}/aos/hello@{digest}")
        assert by_tag.data == by_digest.data == package.manifest
        assert by_tag.digest == by_digest.digest == digest
        assert by_tag.media_type == OCI_MANIFEST

        pulled = client.pull(f"{registry.host}/aos/hello@{digest}", tmp_path / "pkg")
        assert pulled.digest == digest
    assert (tmp_path / "pkg" / "manifest.json").read_bytes() == package.manifest
    stored = {f"sha256:{path.name}": path.read_bytes() for path in (tmp_path / "pkg" / "blobs" / "sha256").iterdir()}
    assert stored == package.blobs
    assert package.service_digest in stored


def test_second_push_of_unchanged_package_sends_no_blob_bytes(registry: RegistryServer) -> None:
    package = make_package(layer_sizes=(30_000, 30_001))
    reference = f"{registry.host}/aos/again:v1"
    with RegistryClient() as first:
        first.push(reference, package.manifest, OCI_MANIFEST, package.sources())
        assert first.stats.blob_bytes_uploaded == sum(len(data) for data in package.blobs.values())
    with RegistryClient() as second:
        assert second.push(reference, package.manifest, OCI_MANIFEST, package.sources()) == package.digest
        assert second.stats.blob_bytes_uploaded == 0
        assert second.stats.blobs_present == len(package.blobs)


def test_cross_repository_mount_from_named_repository(registry: RegistryServer, fault_proxy: FaultProxy) -> None:
    package = make_package(layer_sizes=(25_000,))
    with RegistryClient() as client:
        client.push(f"{registry.host}/aos/base:v1", package.manifest, OCI_MANIFEST, package.sources())
    with RegistryClient() as fresh:  # knows nothing about aos/base except what the caller says
        fresh.push(
            f"{fault_proxy.host}/aos/copy:v1",
            package.manifest,
            OCI_MANIFEST,
            package.sources(),
            mount_from=["aos/base"],
        )
        assert fresh.stats.blobs_mounted == len(package.blobs)
        assert fresh.stats.blob_bytes_uploaded == 0
    mounts = fault_proxy.requests("POST", r"/v2/aos/copy/blobs/uploads/\?.*mount=sha256")
    assert len(mounts) == len(package.blobs)
    assert not fault_proxy.requests("PUT", "/blobs/uploads/")
    assert raw_get(registry.host, f"/v2/aos/copy/blobs/{package.layer_digests[0]}").status == 200


def test_mount_candidates_are_remembered_within_the_process(registry: RegistryServer) -> None:
    package = make_package(layer_sizes=(25_000,))
    with RegistryClient() as client:
        client.push(f"{registry.host}/team-a/svc:v1", package.manifest, OCI_MANIFEST, package.sources())
        client.push(f"{registry.host}/team-b/svc:v1", package.manifest, OCI_MANIFEST, package.sources())
        assert client.stats.blobs_uploaded == len(package.blobs)
        assert client.stats.blobs_mounted == len(package.blobs)


def test_mount_candidates_are_the_few_newest_repositories(fault_proxy: FaultProxy) -> None:
    from aos_operator.registry.client import MOUNT_SOURCES
    from aos_operator.registry.reference import parse_reference

    package = make_package(layer_sizes=(1_000,))
    with RegistryClient() as client:
        for number in range(MOUNT_SOURCES + 2):
            client.push(f"{fault_proxy.host}/team-{number}/svc:v1", package.manifest, OCI_MANIFEST, package.sources())
        assert client.stats.blobs_mounted == (MOUNT_SOURCES + 1) * len(package.blobs)
        # A blob pushed elsewhere is mounted without asking first: HEADs only in the first push.
        assert len(fault_proxy.requests("HEAD", "/blobs/sha256:")) == len(package.blobs)
        client.push(f"{fault_proxy.host}/team-0/svc:v2", package.manifest, OCI_MANIFEST, package.sources())
        assert client.stats.blobs_mounted == (MOUNT_SOURCES + 2) * len(package.blobs)  # into a repository that has them: fine
        assert client.pull_manifest(f"{fault_proxy.host}/team-0/svc:v2").data == package.manifest
        target = parse_reference(f"{fault_proxy.host}/team-new/svc:v1")
        newest = ["team-0/svc", *(f"team-{number}/svc" for number in range(MOUNT_SOURCES + 1, 2, -1))]
        assert client._mount_candidates(target, next(iter(package.blobs)), ["team-x/svc"]) == ["team-x/svc", *newest]


def test_failed_mount_falls_back_to_upload(registry: RegistryServer) -> None:
    package = make_package(layer_sizes=(10_000,))
    with RegistryClient() as client:
        client.push(
            f"{registry.host}/aos/target:v1",
            package.manifest,
            OCI_MANIFEST,
            package.sources(),
            mount_from=["aos/nowhere", "aos/empty"],
        )
        assert client.stats.blobs_mounted == 0
        assert client.stats.blobs_uploaded == len(package.blobs)
        assert client.pull_manifest(f"{registry.host}/aos/target:v1").data == package.manifest


def test_chunked_upload_follows_location_and_range(
    registry: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    package = make_package(layer_sizes=(300_000,))
    layer = package.layer_digests[0]
    layer_size = len(package.blobs[layer])
    with RegistryClient(chunk_size=64 * 1024, chunked_threshold=100_000) as client:
        client.push(f"{fault_proxy.host}/aos/chunky:v1", package.manifest, OCI_MANIFEST, package.sources())
        client.pull(f"{registry.host}/aos/chunky:v1", tmp_path / "pkg")
    patches = fault_proxy.requests("PATCH")
    assert len(patches) == -(-layer_size // (64 * 1024))
    ranges = [tuple(int(part) for part in patch.headers["Content-Range"].split("-")) for patch in patches]
    assert ranges[0][0] == 0 and ranges[-1][1] == layer_size - 1
    assert all(after[0] == before[1] + 1 for before, after in zip(ranges, ranges[1:], strict=False))
    # every PATCH used the upload URL the previous answer gave (its _state changes each time)
    states = [patch.path.split("_state=")[1] for patch in patches]
    assert len(set(states)) == len(states)
    assert (tmp_path / "pkg" / "blobs" / "sha256" / layer.split(":")[1]).read_bytes() == package.blobs[layer]


def test_push_package_directory_and_blob_sink(registry: RegistryServer, tmp_path: Path) -> None:
    package = make_package(layer_sizes=(20_000,))
    directory = package.write(tmp_path / "src")
    received: list[bytes] = []
    events: list[str] = []

    class Sink:
        def write(self, data: bytes) -> None:
            received.append(data)

        def restart(self) -> None:
            received.clear()

        def commit(self) -> None:
            events.append("commit")

        def abort(self) -> None:
            events.append("abort")

    with RegistryClient() as client:
        assert client.push_package(f"{registry.host}/aos/dir:v2", directory) == package.digest
        layer = package.layer_digests[0]
        client.pull_blob_into(f"{registry.host}/aos/dir", layer, len(package.blobs[layer]), Sink())
    assert b"".join(received) == package.blobs[layer]
    assert events == ["commit"]


def test_pull_of_unknown_tag_names_the_reference(registry: RegistryServer) -> None:
    with RegistryClient() as client, pytest.raises(RegistryError) as caught:
        client.pull_manifest(f"{registry.host}/aos/missing:v9")
    message = str(caught.value)
    assert f"{registry.host}/aos/missing:v9" in message
    assert "404" in message and "hint:" in message


def test_pull_blob_with_wrong_size_leaves_nothing(registry: RegistryServer, tmp_path: Path) -> None:
    package = make_package(layer_sizes=(20_000,))
    layer = package.layer_digests[0]
    with RegistryClient() as client:
        client.push(f"{registry.host}/aos/size:v1", package.manifest, OCI_MANIFEST, package.sources())
        (tmp_path / "out").mkdir()
        destination = tmp_path / "out" / "layer"
        with pytest.raises(RegistryError, match="more than the 100 bytes"):
            client.pull_blob(f"{registry.host}/aos/size", layer, 100, destination)
        with pytest.raises(RegistryError, match="got .* bytes, the manifest declares"):
            client.pull_blob(f"{registry.host}/aos/size", layer, len(package.blobs[layer]) + 1, destination)
    assert list((tmp_path / "out").iterdir()) == []


def test_push_refuses_missing_or_inconsistent_blob_sources(registry: RegistryServer, tmp_path: Path) -> None:
    package = make_package()
    sources = package.sources()
    del sources[package.service_digest]
    with RegistryClient() as client:
        with pytest.raises(PackageError, match="aosService refers to"):
            client.push(f"{registry.host}/aos/bad:v1", package.manifest, OCI_MANIFEST, sources)
        wrong = package.sources()
        wrong[package.config_digest] = BytesBlob(b"{}")
        with pytest.raises(PackageError, match="config declares"):
            client.push(f"{registry.host}/aos/bad:v1", package.manifest, OCI_MANIFEST, wrong)
        # A file whose content does not match its claimed digest: the registry says so, we name it.
        liar = tmp_path / "liar"
        liar.write_bytes(b"x" * len(package.blobs[package.config_digest]))
        lying = package.sources()
        lying[package.config_digest] = FileBlob(liar, package.config_digest, liar.stat().st_size)
        with pytest.raises(PackageError, match="liar"):
            client.push(f"{registry.host}/aos/bad:v1", package.manifest, OCI_MANIFEST, lying)
    assert raw_get(registry.host, "/v2/aos/bad/manifests/v1").status == 404


def test_one_client_serves_concurrent_threads(registry: RegistryServer, tmp_path: Path) -> None:
    packages = [make_package(name=f"svc{index}", layer_sizes=(30_000, 20_000), seed=index) for index in range(4)]
    errors: list[BaseException] = []
    with RegistryClient(max_workers=2) as client:

        def work(index: int) -> None:
            try:
                reference = f"{registry.host}/aos/svc{index}:v1"
                client.push(reference, packages[index].manifest, OCI_MANIFEST, packages[index].sources())
                client.pull(reference, tmp_path / f"pkg{index}")
            except BaseException as error:  # collected for the main thread's assertion
                errors.append(error)

        threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    for index, package in enumerate(packages):
        manifest = (tmp_path / f"pkg{index}" / "manifest.json").read_bytes()
        assert hashlib.sha256(manifest).hexdigest() == package.digest.split(":")[1]


async def test_usable_from_asyncio_through_to_thread(registry: RegistryServer, tmp_path: Path) -> None:
    import asyncio

    packages = [make_package(name=f"async{index}", seed=index) for index in range(2)]
    with RegistryClient() as client:

        async def push_and_pull(index: int) -> str:
            reference = f"{registry.host}/aos/async{index}:v1"
            await asyncio.to_thread(
                client.push, reference, packages[index].manifest, OCI_MANIFEST, packages[index].sources()
            )
            pulled = await asyncio.to_thread(client.pull, reference, tmp_path / f"pkg{index}")
            return pulled.digest

        digests = await asyncio.gather(push_and_pull(0), push_and_pull(1))
    assert digests == [package.digest for package in packages]


def test_push_refuses_a_media_type_the_manifest_contradicts(registry: RegistryServer) -> None:
    package = make_package()
    docker_type = "application/vnd.docker.distribution.manifest.v2+json"
    with RegistryClient() as client, pytest.raises(PackageError, match="pushed as 'application/vnd.docker"):
        client.push(f"{registry.host}/aos/typed:v1", package.manifest, docker_type, package.sources())
    assert client.stats.blobs_uploaded == 0


def test_pulling_an_index_says_to_pick_a_platform_manifest(registry: RegistryServer, tmp_path: Path) -> None:
    package = make_package()
    index_type = "application/vnd.oci.image.index.v1+json"
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": package.digest, "size": len(package.manifest)}],
        }
    ).encode()
    with RegistryClient() as client:
        client.push(f"{registry.host}/aos/multi:v1", package.manifest, OCI_MANIFEST, package.sources())
        assert client.pull_manifest(f"{registry.host}/aos/multi@{package.digest}").data == package.manifest
        with pytest.raises(PackageError, match="is an image index"):
            client.push(f"{registry.host}/aos/multi:index", index, index_type, {})
        put = urllib3.request(
            "PUT",
            f"http://{registry.host}/v2/aos/multi/manifests/index",
            body=index,
            headers={"Content-Type": index_type},
        )
        assert put.status == 201
        assert client.pull_manifest(f"{registry.host}/aos/multi:index").media_type == index_type
        with pytest.raises(PackageError, match="is an image index") as caught:
            client.pull(f"{registry.host}/aos/multi:index", tmp_path / "pkg")
    assert "platform's image manifest by its digest" in str(caught.value)
