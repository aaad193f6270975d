"""Pure pieces of the registry client: challenges, tokens, retries, manifests, sinks, TLS rules."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from aos_operator.digests import sha256_digest
from aos_operator.errors import PackageError, RegistryError
from aos_operator.registry.auth import Token, TokenCache, parse_challenge, parse_token_response
from aos_operator.registry.content import BytesBlob, FileBlob, FileSink
from aos_operator.registry.manifest import AOS_SERVICE_CONFIG, referenced_blobs
from aos_operator.registry.retry import RetryPolicy, TransientFailure, parse_retry_after
from aos_operator.registry.transport import candidate_schemes, describe_error_body, is_loopback

# -- challenges and tokens ---------------------------------------------------------------


def test_bearer_challenge_with_several_scopes_and_quoted_commas() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope"'
    )
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.params["realm"] == "https://auth.example.com/token"
    assert challenge.params["service"] == "registry.example.com"
    assert challenge.scopes == ("repository:a/b:pull,push", "repository:c:pull")
    assert challenge.params["error"] == "insufficient_scope"


def test_basic_challenge_and_missing_header() -> None:
    challenge = parse_challenge('Basic realm="aos \\"test\\""')
    assert challenge is not None and challenge.scheme == "basic" and challenge.params == {"realm": 'aos "test"'}
    assert challenge.scopes == ()
    assert parse_challenge(None) is None and parse_challenge("") is None


def test_token_response_forms_and_lifetime() -> None:
    assert parse_token_response(b'{"token": "t1", "expires_in": 300}', 100.0) == Token("t1", 400.0)
    assert parse_token_response(b'{"access_token": "t2"}', 100.0) == Token("t2", 160.0)  # default 60 s
    # a hostile lifetime neither escapes as an error nor outlives a day; NaN is no lifetime
    assert parse_token_response(b'{"token": "t", "expires_in": 1' + b"0" * 400 + b"}", 100.0) == Token("t", 86500.0)
    assert parse_token_response(b'{"token": "t", "expires_in": 1e999}', 100.0) == Token("t", 86500.0)
    assert parse_token_response(b'{"token": "t", "expires_in": NaN}', 100.0) == Token("t", 160.0)
    assert parse_token_response(b'{"token": "t", "expires_in": true}', 100.0) == Token("t", 160.0)
    assert parse_token_response(b'{"nothing": 1}', 0.0) is None
    assert parse_token_response(b"<html>", 0.0) is None


def test_token_cache_forgets_tokens_close_to_expiry() -> None:
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    key = cache.key("https://realm", "svc", ["repository:a:pull"])
    assert key == cache.key("https://realm", "svc", ("repository:a:pull",))
    cache.put(key, Token("t", 1100.0))
    assert cache.get(key) == Token("t", 1100.0)
    now[0] = 1095.0  # within the renewal margin
    assert cache.get(key) is None


# -- retries -----------------------------------------------------------------------------


def test_backoff_grows_exponentially_within_jitter_and_cap() -> None:
    low = RetryPolicy(base_delay=1.0, max_delay=10.0, jitter=lambda: 0.0)
    high = RetryPolicy(base_delay=1.0, max_delay=10.0, jitter=lambda: 1.0)
    assert [low.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 5.0]
    assert [high.delay(n) for n in range(5)] == [1.0, 2.0, 4.0, 8.0, 10.0]


def test_retry_after_is_honoured_but_capped() -> None:
    policy = RetryPolicy(base_delay=0.001, max_retry_after=60.0, jitter=lambda: 0.0)
    assert policy.delay(0, retry_after=7.0) == 7.0
    assert policy.delay(0, retry_after=3600.0) == 60.0


def test_parse_retry_after_seconds_and_http_date() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now=lambda: now) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=lambda: now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_run_retries_transient_failures_then_gives_up_naming_the_operation() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=3, base_delay=0.01, sleep=sleeps.append)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientFailure("HTTP 503", retry_after=None)
        return "ok"

    assert policy.run(flaky, "pull x") == "ok" and len(sleeps) == 2

    def broken() -> None:
        raise TransientFailure("connection reset")

    with pytest.raises(RegistryError, match="pull y: gave up after 3 attempts; last failure: connection reset"):
        policy.run(broken, "pull y")


def test_run_does_not_retry_other_errors() -> None:
    calls = []

    def denied() -> None:
        calls.append(1)
        raise RegistryError("denied")

    with pytest.raises(RegistryError, match="denied"):
        RetryPolicy(sleep=lambda _: None).run(denied, "x")
    assert len(calls) == 1


# -- manifests ---------------------------------------------------------------------------


def descriptor(data: bytes, media_type: str = "application/octet-stream") -> dict:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}


def test_referenced_blobs_walks_every_top_level_descriptor() -> None:
    manifest = {
        "schemaVersion": 2,
        "config": descriptor(b"config"),
        "aosService": descriptor(b"service", AOS_SERVICE_CONFIG),
        "layers": [descriptor(b"layer0"), descriptor(b"layer1"), descriptor(b"layer0")],
        "subject": descriptor(b"another manifest"),
        "annotations": {"a": "b"},
    }
    blobs = referenced_blobs(manifest, "m")
    assert [blob.field for blob in blobs] == ["config", "aosService", "layers[0]", "layers[1]"]
    assert blobs[1].media_type == AOS_SERVICE_CONFIG and blobs[1].digest == sha256_digest(b"service")


@pytest.mark.parametrize(
    ("manifest", "complaint"),
    [
        ({"manifests": []}, "is an image index"),
        ({"mediaType": "application/vnd.oci.image.index.v1+json"}, "is an image index"),
        ({"config": {"digest": "sha256:12", "size": 1}}, "config.digest 'sha256:12' is not a sha256 digest"),
        ({"layers": [{"digest": sha256_digest(b"x"), "size": -1}]}, r"layers\[0\].size -1"),
        ({"aosService": {"digest": sha256_digest(b"x"), "size": "1"}}, "aosService.size '1'"),
    ],
)
def test_bad_manifests_name_the_field(manifest: dict, complaint: str) -> None:
    with pytest.raises(PackageError, match=complaint):
        referenced_blobs(manifest, "pkg/manifest.json")


def test_registry_error_bodies_are_summarised() -> None:
    body = json.dumps({"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown to registry"}]}).encode()
    assert describe_error_body(body) == ": BLOB_UNKNOWN: blob unknown to registry"
    assert describe_error_body(b"<html>oops</html>") == ""
    assert describe_error_body(b'{"errors": "no"}') == ""


# -- sources and sinks -------------------------------------------------------------------


def test_file_blob_describes_a_file_by_streaming_hash(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"hello" * 1000)
    blob = FileBlob.from_path(path)
    assert (blob.digest, blob.size) == (sha256_digest(b"hello" * 1000), 5000)
    with blob.open() as stream:
        assert stream.read() == b"hello" * 1000
    assert BytesBlob(b"abc").digest == sha256_digest(b"abc")


def test_file_sink_renames_only_on_commit(tmp_path: Path) -> None:
    destination = tmp_path / "blob"
    sink = FileSink(destination)
    sink.write(b"wrong start")
    sink.restart()
    sink.write(b"right")
    assert not destination.exists()
    sink.commit()
    assert destination.read_bytes() == b"right"
    assert [path.name for path in tmp_path.iterdir()] == ["blob"]


def test_file_sink_abort_leaves_nothing_and_keeps_an_old_file(tmp_path: Path) -> None:
    destination = tmp_path / "blob"
    destination.write_bytes(b"previous")
    sink = FileSink(destination)
    sink.write(b"partial")
    sink.abort()
    assert [path.name for path in tmp_path.iterdir()] == ["blob"]
    assert destination.read_bytes() == b"previous"


# -- TLS and plain HTTP ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("127.8.9.10", True),
        ("localhost:443", True),
        ("[::1]:5000", True),
        ("128.0.0.1:5000", False),
        ("registry.example.com", False),
        ("localhost.example.com", False),
        ("[2001:db8::1]:5000", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_plain_http_only_when_asked_or_local() -> None:
    assert candidate_schemes("registry.example.com", insecure=False) == ["https"]
    assert candidate_schemes("registry.example.com", insecure=True) == ["http"]
    assert candidate_schemes("127.0.0.1:5000", insecure=False) == ["https", "http"]


def test_progress_restarts_the_attempt_count() -> None:
    received = [0]
    failures = [0]

    def flaky_download() -> str:
        if received[0] < 10:
            received[0] += 1  # each try gets a little further, then the link drops
            failures[0] += 1
            raise TransientFailure("connection reset")
        return "done"

    policy = RetryPolicy(attempts=2, base_delay=0.0, sleep=lambda _: None)
    assert policy.run(flaky_download, "pull", progress=lambda: received[0]) == "done"
    assert failures[0] == 10
    with pytest.raises(RegistryError, match="gave up after 2 attempts"):
        policy.run(lambda: (_ for _ in ()).throw(TransientFailure("down")), "pull", progress=lambda: 0)
