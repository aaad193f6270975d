"""Image reference parsing."""

from __future__ import annotations

import pytest

from aos_operator.errors import InputError
from aos_operator.registry.reference import Reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("127.0.0.1:5000/aos/svc:v1", "127.0.0.1:5000", "aos/svc", "v1", None),
        (f"127.0.0.1:5000/aos/svc@{DIGEST}", "127.0.0.1:5000", "aos/svc", None, DIGEST),
        (f"registry.example.com/a/b/c:1.0@{DIGEST}", "registry.example.com", "a/b/c", "1.0", DIGEST),
        ("localhost/svc", "localhost", "svc", None, None),
        ("localhost:5000/svc:latest", "localhost:5000", "svc", "latest", None),
        ("[::1]:5000/svc:v2", "[::1]:5000", "svc", "v2", None),
        ("busybox", "docker.io", "library/busybox", None, None),
        ("aos/svc:v1", "docker.io", "aos/svc", "v1", None),
        ("docker.io/busybox:1", "docker.io", "library/busybox", "1", None),
    ],
)
def test_parse(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    reference = Reference.parse(text)
    assert (reference.registry, reference.repository, reference.tag, reference.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


def test_manifest_reference_prefers_digest_then_tag_then_latest() -> None:
    assert Reference.parse(f"h.io/a:v1@{DIGEST}").manifest_reference == DIGEST
    assert Reference.parse("h.io/a:v1").manifest_reference == "v1"
    assert Reference.parse("h.io/a").manifest_reference == "latest"


def test_docker_hub_api_host_and_display() -> None:
    hub = Reference.parse("busybox:1")
    assert hub.api_host == "registry-1.docker.io"
    assert str(hub) == "docker.io/library/busybox:1"
    local = Reference.parse("127.0.0.1:5000/aos/svc:v1").with_digest(DIGEST)
    assert local.api_host == "127.0.0.1:5000"
    assert str(local) == f"127.0.0.1:5000/aos/svc:v1@{DIGEST}"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        (" h.io/a:v1", "surrounding spaces"),
        ("h.io/a@sha256:1234", "not a sha256 digest"),
        ("h.io/a@md5:" + "0" * 32, "not a sha256 digest"),
        ("h.io/UPPER:v1", "repository 'UPPER' is not valid"),
        ("h.io/a:-bad", "tag '-bad' is not valid"),
        ("h.io/a:" + "x" * 129, "is not valid"),
        ("h.io/a//b", "is not valid"),
        ("bad_host.io:99/a", "is not a valid registry"),
    ],
)
def test_bad_references_say_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(InputError, match=complaint):
        Reference.parse(text)
