"""Reading the image config and the Aos service config of a package."""

from __future__ import annotations

import pytest

from aos_operator.errors import PackageError
from aos_operator.runtime.service_config import (
    RunParameters,
    parse_duration,
    parse_image_config,
    parse_service_config,
)

WHERE = "service config sha256:abc"


@pytest.mark.parametrize("text, seconds", [
    ("PT1S", 1.0), ("PT0.5S", 0.5), ("PT1M30S", 90.0), ("PT10S", 10.0), ("P1D", 86400.0), ("P1DT3H", 97200.0),
    ("PT0,25S", 0.25), ("1m30s", 90.0), ("500ms", 0.5), (5, 5.0), (2.5, 2.5),
    ("P30D", 30 * 86400.0), ("P290Y", 290 * 365 * 86400.0),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["P", "PT", "P1DT", "10", "abc", "", "-PT1S", True, None, [1],
                                  float("nan"), float("inf"), 1e300, "P300Y", "2562048h"])
def test_bad_durations_name_the_field(text: object) -> None:
    with pytest.raises(PackageError, match=r"runParameters\.startInterval"):
        parse_duration(text, "runParameters.startInterval")


def test_service_config_full() -> None:
    config = parse_service_config({
        "hostname": "cpuload", "sysctl": {"net.core.somaxconn": "256"}, "skipResourceLimits": False,
        "runParameters": {"startInterval": "PT10S", "startBurst": 5, "restartInterval": "PT2S"},
        "quotas": {"cpuDMIPSLimit": 5000, "ramLimit": 209715200, "pidsLimit": 256, "noFileLimit": 1024,
                   "tmpLimit": 32768, "stateLimit": 65536, "storageLimit": 65536, "uploadSpeed": 32},
        "runners": ["runc"], "unknownKey": {"ignored": True},
    }, WHERE)
    assert config.hostname == "cpuload"
    assert config.sysctl == {"net.core.somaxconn": "256"}
    assert config.quotas.cpu_dmips_limit == 5000  # keys match case-insensitively
    assert (config.quotas.ram_limit, config.quotas.pids_limit, config.quotas.no_file_limit) == (209715200, 256, 1024)
    assert (config.quotas.tmp_limit, config.quotas.state_limit, config.quotas.storage_limit) == (32768, 65536, 65536)
    assert config.run_parameters == RunParameters(10.0, 5, 2.0)


def test_service_config_defaults_are_aosedge_defaults() -> None:
    config = parse_service_config({}, WHERE)
    assert config.run_parameters == RunParameters(start_interval=5.0, start_burst=3, restart_interval=1.0)
    assert config.quotas.ram_limit is None and config.hostname is None and not config.skip_resource_limits


@pytest.mark.parametrize("data, field", [
    ({"quotas": {"ramLimit": "64M"}}, "quotas.ramLimit"),
    ({"quotas": {"pidsLimit": -1}}, "quotas.pidsLimit"),
    ({"quotas": {"noFileLimit": True}}, "quotas.noFileLimit"),
    ({"quotas": {"ramLimit": 10**30}}, "quotas.ramLimit"),
    ({"quotas": {"pidsLimit": 5_000_000}}, "quotas.pidsLimit"),
    ({"quotas": {"uploadSpeed": 2**62}}, "quotas.uploadSpeed"),
    ({"quotas": {"downloadSpeed": 2**62}}, "quotas.downloadSpeed"),
    ({"quotas": []}, "quotas"),
    ({"runParameters": {"startBurst": "3"}}, "runParameters.startBurst"),
    ({"runParameters": {"restartInterval": "soon"}}, "runParameters.restartInterval"),
    ({"hostname": "bad host!"}, "hostname"),
    ({"hostname": 5}, "hostname"),
    ({"sysctl": {"a": 1}}, "sysctl"),
    ({"skipResourceLimits": "yes"}, "skipResourceLimits"),
])
def test_bad_service_config_names_blob_and_field(data: dict, field: str) -> None:
    with pytest.raises(PackageError) as caught:
        parse_service_config(data, WHERE)
    assert str(caught.value).startswith(f"{WHERE}.{field}")


def test_service_config_must_be_an_object() -> None:
    with pytest.raises(PackageError, match="expected a JSON object"):
        parse_service_config([1, 2], WHERE)


def test_image_config_reads_what_aosedge_uses() -> None:
    image = parse_image_config({"os": "Linux", "architecture": "amd64", "config": {
        "Entrypoint": ["python3"], "Cmd": ["-u", "main.py"], "WorkingDir": "/app", "Env": ["A=1"],
        "User": "1000", "Volumes": {"/data": {}}, "StopSignal": "SIGINT"}}, "image config")
    assert image.args == ("python3", "-u", "main.py")
    assert (image.working_dir, image.env) == ("/app", ("A=1",))


@pytest.mark.parametrize("data, message", [
    ({"os": "windows", "config": {"Cmd": ["x"]}}, "os: must be linux"),
    ({"config": {"Cmd": ["x"]}}, "os: must be linux"),
    ({"os": "linux", "config": {}}, "neither Entrypoint nor Cmd"),
    ({"os": "linux"}, "neither Entrypoint nor Cmd"),
    ({"os": "linux", "config": {"Cmd": "x"}}, "Cmd: expected a list of strings"),
    ({"os": "linux", "config": {"Cmd": ["x"], "WorkingDir": "app"}}, "WorkingDir: 'app' is not an absolute path"),
    ({"os": "linux", "config": {"Cmd": ["x"], "Env": ["NOEQUALS"]}}, "is not NAME=value"),
    ({"os": "linux", "config": {"Cmd": ["/bin/sh", "-c", "a\0b"]}}, r"Cmd\[2\]: holds a NUL byte"),
    ({"os": "linux", "config": {"Entrypoint": ["x\0"]}}, r"Entrypoint\[0\]: holds a NUL byte"),
])
def test_bad_image_config(data: dict, message: str) -> None:
    with pytest.raises(PackageError, match=message):
        parse_image_config(data, "image config sha256:def")
