"""Values from servers and credential files that would reach a header or a URL: refused with
the source named. The rate floor and the limits' own rules, with a fake clock."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from aos_operator.digests import is_digest
from aos_operator.errors import InputError, RegistryError
from aos_operator.registry import DockerConfig, Reference, RegistryLimits
from aos_operator.registry.headers import check_location, check_realm, check_token
from aos_operator.registry.limits import RateFloor
from aos_operator.registry.transport import Transport


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("/v2/a/blobs/uploads/x\r\nX-Injected: 1", "a line break (CR/LF)"),
        ("/v2/a\x00b", "a NUL byte"),
        ("https://other host/x", "a space"),
        ("gopher://host/x", "the scheme 'gopher'"),
        ("https:///x", "no host"),
        ("http://[::1/v2/x", "an unparsable address"),
        ("https://a]b/x", "an unparsable address"),
    ],
)
def test_location_that_is_no_url_is_refused(value: str, problem: str) -> None:
    with pytest.raises(RegistryError, match="Location header") as caught:
        check_location(value, "push r/a:v1")
    assert problem in str(caught.value) and "push r/a:v1" in str(caught.value)
    assert "\r" not in str(caught.value) and "\n" not in str(caught.value).split("\n  hint")[0]


def test_realm_must_be_an_absolute_http_url() -> None:
    with pytest.raises(RegistryError, match="not an absolute http"):
        check_realm("/token", "r:5000", "pull r:5000/a:v1")
    with pytest.raises(RegistryError, match="a line break"):
        check_realm("http://t/token\r\nX: y", "r:5000", "pull r:5000/a:v1")
    assert check_realm("https://auth.example/token", "r:5000", "w") == "https://auth.example/token"


def test_a_long_hostile_token_is_shown_cut() -> None:
    with pytest.raises(RegistryError) as caught:
        check_token("x" * 10_000 + "\n", "https://" + "r" * 10_000, "pull")
    assert len(str(caught.value)) < 600


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"auth": base64.b64encode(b"alice:secret\n").decode()}, "a line break (CR/LF)"),
        ({"auth": base64.b64encode(b"al\x00ice:secret").decode()}, "a NUL byte"),
        ({"username": "alice", "password": "se\rcret"}, "a line break (CR/LF)"),
        ({"username": "alice\x07", "password": "secret"}, "the control character 0x07"),
    ],
)
def test_credentials_with_control_characters_are_refused(tmp_path: Path, entry: dict[str, str], problem: str) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"registry.example:5000": entry}}))
    with pytest.raises(InputError) as caught:
        DockerConfig.from_file(config)
    assert f"{config}: auths.registry.example:5000" in str(caught.value) and problem in str(caught.value)
    secret = base64.b64encode(json.dumps({"auths": {"r:5000": entry}}).encode()).decode()
    with pytest.raises(InputError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        DockerConfig.from_pull_secret({".dockerconfigjson": secret}, "secret aos/pull")


def test_spaces_and_non_ascii_passwords_stay_allowed(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"r:5000": {"username": "alice", "password": "two wörds"}}}))
    assert DockerConfig.from_file(config).credentials_for("r:5000").password == "two wörds"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "reference",
    ["r:5000/aos/a:v1\n", "r:5000/aos/a:v1\n@sha256:" + "0" * 64, "r:5000/aos/a\n:v1", "r:5000/aos/a:t\u00e4g",
     "r:5000/aos/a@sha256:" + "0" * 64 + "\n"],
)
def test_reference_with_a_trailing_newline_or_non_ascii_tag_is_refused(reference: str) -> None:
    with pytest.raises(InputError):
        Reference.parse(reference)


def test_digest_check_is_a_full_match() -> None:
    assert is_digest("sha256:" + "a" * 64)
    assert not is_digest("sha256:" + "a" * 64 + "\n")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_floor_waits_for_the_grace_then_refuses_a_slow_window() -> None:
    limits = RegistryLimits(blob_min_rate=1000, blob_rate_window=10, blob_rate_grace=5)
    clock = Clock()
    floor = RateFloor(limits, "pull r/a@sha256:x", clock)
    received = 0
    for _ in range(19):  # 100 bytes/s: too slow, but still within the grace period
        clock.now += 0.25
        received += 25
        floor.update(received)
    assert clock.now == 4.75
    with pytest.raises(RegistryError, match="below the minimum of 1000 bytes/s"):
        for _ in range(100):
            clock.now += 0.25
            received += 25
            floor.update(received)


def test_rate_floor_forgives_a_stall_the_window_has_forgotten() -> None:
    limits = RegistryLimits(blob_min_rate=1000, blob_rate_window=4, blob_rate_grace=0)
    clock = Clock()
    floor = RateFloor(limits, "pull", clock)
    received = 0
    for _ in range(400):  # 10 000 bytes/s for 40 s
        clock.now += 0.1
        received += 1000
        floor.update(received)
    clock.now += 3.0  # a 3 s stall: 4 s window still averages (1 s x 10 000) / 4 s = 2500 bytes/s
    received += 1000
    floor.update(received)


def test_rate_floor_zero_is_off() -> None:
    clock = Clock()
    floor = RateFloor(RegistryLimits(blob_min_rate=0), "pull", clock)
    clock.now = 1e6
    floor.update(1)


@pytest.mark.parametrize("field", ["request_timeout", "blob_min_rate", "blob_rate_window", "blob_rate_grace"])
def test_limits_refuse_negative_values(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RegistryLimits(**{field: -1})


def test_upload_deadline_grows_with_the_body_at_the_minimum_rate() -> None:
    limits = RegistryLimits(request_timeout=60, blob_min_rate=4096)
    assert limits.upload_timeout(0) == 60
    assert limits.upload_timeout(4096 * 100) == 160
    assert RegistryLimits(blob_min_rate=0).upload_timeout(10) == 0  # no minimum rate: no deadline for a body


def test_insecure_registry_names_a_host_or_a_host_and_port() -> None:
    by_host = Transport(insecure_registries=["127.0.0.2"])
    by_port = Transport(insecure_registries=["127.0.0.2:5001"])
    plain = Transport()
    realm = "http://127.0.0.2:5001/token"
    assert by_host._may_receive_credentials("127.0.0.1:5000", realm)
    assert by_port._may_receive_credentials("127.0.0.1:5000", realm)
    assert not plain._may_receive_credentials("127.0.0.1:5000", realm)
    assert plain._may_receive_credentials("127.0.0.1:5000", "http://127.0.0.1:5001/token")  # the registry's host
    assert plain._may_receive_credentials("127.0.0.1:5000", "https://127.0.0.2/token")  # TLS
    assert not Transport(insecure=True)._may_receive_credentials("127.0.0.1:5000", realm)  # --insecure alone is no opt-in


def test_one_watchdog_thread_expires_deadlines_and_ended_ones_never(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import threading
    import time

    from aos_operator.registry.limits import Deadline

    with Deadline(30.0, "warm-up"):  # the watchdog starts with the first deadline
        pass
    started_threads = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda thread: (started_threads.append(thread), start(thread))[1])
    for _ in range(200):
        with Deadline(30.0, "quick request"):
            pass
    assert started_threads == []  # no thread per request

    ours, theirs = socket.socketpair()
    try:
        ours.settimeout(10)
        started = time.monotonic()
        with Deadline(0.3, "stalled request") as deadline:
            deadline.attach(ours)
            assert ours.recv(1) == b""  # the shut-down socket returns at once, not after 10 s
        assert deadline.expired and time.monotonic() - started < 5
    finally:
        ours.close()
        theirs.close()

    with Deadline(0.2, "finished in time") as quick:
        pass
    later = Deadline(0.4, "still waiting")
    with later:
        time.sleep(0.8)
    assert not quick.expired and later.expired  # an ended deadline is never expired afterwards
