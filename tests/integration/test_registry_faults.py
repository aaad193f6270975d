"""Faults between the client and the real registry: dropped connections, 5xx, 429, corruption."""

from __future__ import annotations

from pathlib import Path

import pytest
from registry_support import OCI_MANIFEST, Fault, FaultProxy, RegistryServer, make_package

from aos_operator.errors import RegistryError
from aos_operator.registry import RegistryClient, RetryPolicy


def quick_retry(sleeps: list[float], attempts: int = 4) -> RetryPolicy:
    """Backoff of about a millisecond, sleeps recorded (and skipped) instead of waited."""
    return RetryPolicy(attempts=attempts, base_delay=0.001, max_delay=0.01, sleep=sleeps.append)


@pytest.fixture
def pushed(registry: RegistryServer):
    package = make_package(layer_sizes=(400_000,))
    with RegistryClient() as client:
        client.push(f"{registry.host}/aos/faulty:v1", package.manifest, OCI_MANIFEST, package.sources())
    return package


def test_500_then_pass_through_is_retried(fault_proxy: FaultProxy, pushed) -> None:
    fault_proxy.add(Fault("GET", "/manifests/v1", "status", status=500))
    sleeps: list[float] = []
    with RegistryClient(retry=quick_retry(sleeps)) as client:
        manifest = client.pull_manifest(f"{fault_proxy.host}/aos/faulty:v1")
    assert manifest.data == pushed.manifest
    assert [seen.fault for seen in fault_proxy.requests("GET", "/manifests/v1")] == ["status", None]
    assert len(sleeps) == 1


def test_429_honours_retry_after(fault_proxy: FaultProxy, pushed) -> None:
    fault_proxy.add(Fault("HEAD", "/blobs/sha256:", "status", status=429, headers={"Retry-After": "2"}))
    sleeps: list[float] = []
    with RegistryClient(retry=quick_retry(sleeps), max_workers=1) as client:
        client.push(f"{fault_proxy.host}/aos/faulty:v1", pushed.manifest, OCI_MANIFEST, pushed.sources())
        assert client.stats.blob_bytes_uploaded == 0
    # The backoff alone would be about a millisecond: the wait came from Retry-After.
    assert len(sleeps) == 1 and 2.0 <= sleeps[0] < 2.1


def test_connection_dropped_mid_blob_resumes_with_range(fault_proxy: FaultProxy, pushed, tmp_path: Path) -> None:
    layer = pushed.layer_digests[0]
    fault_proxy.add(Fault("GET", f"/blobs/{layer}", "drop-body"))
    sleeps: list[float] = []
    with RegistryClient(retry=quick_retry(sleeps)) as client:
        client.pull(f"{fault_proxy.host}/aos/faulty:v1", tmp_path / "pkg")
        assert client.stats.blob_bytes_downloaded == sum(len(data) for data in pushed.blobs.values())
    gets = fault_proxy.requests("GET", f"/blobs/{layer}")
    assert [seen.fault for seen in gets] == ["drop-body", None]
    offset = int(gets[1].headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset < len(pushed.blobs[layer])
    assert (tmp_path / "pkg" / "blobs" / "sha256" / layer.split(":")[1]).read_bytes() == pushed.blobs[layer]


def test_corrupted_blob_is_detected_and_nothing_is_left(fault_proxy: FaultProxy, pushed, tmp_path: Path) -> None:
    layer = pushed.layer_digests[0]
    fault_proxy.add(Fault("GET", f"/blobs/{layer}", "corrupt"))
    destination = tmp_path / "pkg"
    with RegistryClient(retry=quick_retry([]), max_workers=1) as client, pytest.raises(RegistryError) as caught:
        client.pull(f"{fault_proxy.host}/aos/faulty:v1", destination)
    assert layer in str(caught.value) and "hash to" in str(caught.value)
    blobs = destination / "blobs" / "sha256"
    assert layer.split(":")[1] not in [path.name for path in blobs.iterdir()]
    assert not [path for path in blobs.iterdir() if path.name.endswith(".partial")]
    assert not (destination / "manifest.json").exists()


def test_dropped_upload_restarts_the_upload_session(fault_proxy: FaultProxy, registry: RegistryServer) -> None:
    package = make_package(name="upload", layer_sizes=(200_000,))
    layer_hex = package.layer_digests[0].split(":")[1]
    fault_proxy.add(Fault("PUT", r"/blobs/uploads/.*digest=sha256%3A" + layer_hex, "drop-request"))
    sleeps: list[float] = []
    with RegistryClient(retry=quick_retry(sleeps), max_workers=1) as client:
        digest = client.push(f"{fault_proxy.host}/aos/upload:v1", package.manifest, OCI_MANIFEST, package.sources())
    assert digest == package.digest
    puts = fault_proxy.requests("PUT", "digest=sha256%3A" + layer_hex)
    assert [seen.fault for seen in puts] == ["drop-request", None]
    assert puts[0].path.split("?")[0] != puts[1].path.split("?")[0]  # a new session, not the old one
    assert len(fault_proxy.requests("POST", r"/blobs/uploads/$")) == len(package.blobs) + 1


def test_chunk_failure_restarts_the_chunked_upload(fault_proxy: FaultProxy) -> None:
    package = make_package(name="chunks", layer_sizes=(300_000,))
    fault_proxy.add(Fault("PATCH", "/blobs/uploads/", "status", status=502))
    with RegistryClient(retry=quick_retry([]), chunk_size=100_000, chunked_threshold=150_000) as client:
        client.push(f"{fault_proxy.host}/aos/chunks:v1", package.manifest, OCI_MANIFEST, package.sources())
        assert client.pull_manifest(f"{fault_proxy.host}/aos/chunks:v1").data == package.manifest
    patches = fault_proxy.requests("PATCH")
    assert patches[0].fault == "status"
    assert patches[1].headers["Content-Range"].startswith("0-")  # started over at byte 0


def test_persistent_503_gives_up_with_a_clear_error(fault_proxy: FaultProxy, pushed) -> None:
    fault_proxy.add(Fault("GET", "/manifests/v1", "status", status=503, times=100))
    sleeps: list[float] = []
    with RegistryClient(retry=quick_retry(sleeps, attempts=3)) as client, pytest.raises(RegistryError) as caught:
        client.pull_manifest(f"{fault_proxy.host}/aos/faulty:v1")
    message = str(caught.value)
    assert f"{fault_proxy.host}/aos/faulty:v1" in message
    assert "gave up after 3 attempts" in message and "503" in message
    assert len(sleeps) == 2


def test_link_that_keeps_dropping_still_delivers_while_each_try_gets_further(
    fault_proxy: FaultProxy, pushed, tmp_path: Path
) -> None:
    layer = pushed.layer_digests[0]
    fault_proxy.add(Fault("GET", f"/blobs/{layer}", "drop-body", times=5))
    with RegistryClient(retry=quick_retry([], attempts=2), max_workers=1) as client:
        client.pull(f"{fault_proxy.host}/aos/faulty:v1", tmp_path / "pkg")
    gets = fault_proxy.requests("GET", f"/blobs/{layer}")
    assert [seen.fault for seen in gets] == ["drop-body"] * 5 + [None]
    assert (tmp_path / "pkg" / "blobs" / "sha256" / layer.split(":")[1]).read_bytes() == pushed.blobs[layer]


def test_manifest_pulled_by_digest_is_verified(fault_proxy: FaultProxy, pushed) -> None:
    fault_proxy.add(Fault("GET", f"/manifests/{pushed.digest}", "corrupt"))
    with RegistryClient(retry=quick_retry([])) as client, pytest.raises(RegistryError) as caught:
        client.pull_manifest(f"{fault_proxy.host}/aos/faulty@{pushed.digest}")
    assert "hashes to sha256:" in str(caught.value) and f"not {pushed.digest}" in str(caught.value)


def test_manifest_pulled_by_tag_must_match_the_registry_digest(fault_proxy: FaultProxy, pushed) -> None:
    fault_proxy.add(Fault("GET", "/manifests/v1", "corrupt"))
    with RegistryClient(retry=quick_retry([])) as client, pytest.raises(RegistryError, match="hashes to"):
        client.pull_manifest(f"{fault_proxy.host}/aos/faulty:v1")


def test_push_checks_the_digest_the_registry_reports(fault_proxy: FaultProxy, pushed) -> None:
    wrong = "sha256:" + "0" * 64
    fault_proxy.add(Fault("PUT", "/manifests/v2", "rewrite-headers", headers={"Docker-Content-Digest": wrong}))
    with RegistryClient(retry=quick_retry([])) as client, pytest.raises(RegistryError) as caught:
        client.push(f"{fault_proxy.host}/aos/faulty:v2", pushed.manifest, OCI_MANIFEST, pushed.sources())
    assert f"reports digest {wrong}, we sent {pushed.digest}" in str(caught.value)


def test_403_says_who_lacks_which_right_on_what(fault_proxy: FaultProxy, pushed) -> None:
    fault_proxy.add(Fault("GET", "/manifests/v1", "status", status=403))
    with RegistryClient(retry=quick_retry([])) as client, pytest.raises(RegistryError) as caught:
        client.pull_manifest(f"{fault_proxy.host}/aos/faulty:v1")
    message = str(caught.value)
    reference = f"{fault_proxy.host}/aos/faulty"
    assert f"pull {reference}:v1: anonymous access may not pull {reference} (HTTP 403)" in message
    assert "HTTP 403" in message and "ask the registry's administrator for pull rights" in message
