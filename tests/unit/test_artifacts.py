"""The image config and the Aos service config: key names and units that AosEdge devices read."""

from __future__ import annotations

from aos_operator.service import image_config, read_config, service_config
from aos_operator.service.loader import parse_config_data
from tests.conftest import CONFIG_CORPUS

# Every key of the service config that AosEdge's service managers parse (reference §2.4).
SERVICE_CONFIG_KEYS = {
    "created", "author", "skipResourceLimits", "hostname", "balancingPolicy", "runners", "runParameters",
    "sysctl", "offlineTTL", "quotas", "requestedResources", "allowedConnections", "devices", "resources",
    "permissions", "alertRules",
}
QUOTA_KEYS = {
    "cpuDmipsLimit", "ramLimit", "pidsLimit", "noFileLimit", "tmpLimit", "stateLimit", "storageLimit",
    "uploadSpeed", "downloadSpeed", "uploadLimit", "downloadLimit",
}


def full_v1():
    result = read_config(CONFIG_CORPUS / "v1" / "valid" / "full.yaml")
    assert result.valid, result.issues
    return result.services[0]


def test_schema_version_1_service_config_in_canonical_units() -> None:
    service = full_v1()
    document = service_config(service, created_epoch=1_700_000_000)
    assert set(document) <= SERVICE_CONFIG_KEYS
    assert document["created"] == "2023-11-14T22:13:20Z"
    assert document["author"] == "Jane Doe <jane@example.com>"
    assert document["skipResourceLimits"] is True  # isResourceLimits: false on a pre-release
    assert document["balancingPolicy"] == "disabled"
    assert document["runners"] == ["crun", "runc"]
    assert document["hostname"] == "my-service"
    assert document["offlineTTL"] == "P7D"
    assert document["runParameters"] == {"startInterval": "PT10S", "startBurst": 5, "restartInterval": "PT1S"}
    assert document["quotas"] == {
        "cpuDmipsLimit": 10000,
        "ramLimit": 128_000_000,
        "stateLimit": 64_000,
        "storageLimit": 1_000_000_000,
        "tmpLimit": 32_000,
        "uploadSpeed": 32,  # 32Kb = 32 kilobits/s
        "downloadSpeed": 66,  # 64Kibits = 65536 bits/s, rounded up to whole kbit/s
        "uploadLimit": 1_000_000_000,
        "downloadLimit": 2_000_000_000,
    }
    assert set(document["quotas"]) <= QUOTA_KEYS
    assert document["requestedResources"] == {"cpu": 1000, "ram": 32_000_000, "storage": 1_000_000, "state": 16_000}
    assert document["allowedConnections"] == {
        "9931560c-be75-4f60-9abf-08297d905332/8087-8088/tcp": {},
        "2efd1506-7b3a-4d1f-9d6b-9b1c3c6f0a11/1515/udp": {},
    }
    assert document["devices"] == [
        {"name": "camera0", "permissions": "rw"},
        {"name": "mic0", "permissions": "r"},
        {"name": "gpu0", "permissions": "rwm"},
    ]
    assert document["resources"] == ["system-dbus", "bluetooth"]
    assert document["permissions"] == {
        "vis": {"Attribute.Body.Vehicle.VIN": "r", "Signal.Doors.*": "rw", "Signal.Cabin.Light": "w"}
    }
    assert document["alertRules"] == {
        "ram": {"minTimeout": "PT5S", "minThreshold": 10, "maxThreshold": 90},
        "cpu": {"minTimeout": "PT1M", "minThreshold": 20, "maxThreshold": 95},
        "upload": {"minTimeout": "PT10S", "minThreshold": 100, "maxThreshold": 200},
        "download": {"minTimeout": "PT10S", "minThreshold": 100, "maxThreshold": 200},
        "partitions": [{"name": "storage", "minTimeout": "PT30S", "minThreshold": 0, "maxThreshold": 1_000_000_000}],
    }


def test_schema_version_1_image_config() -> None:
    service = full_v1()
    document = image_config(service, service.image_for("arm64"))
    assert document == {
        "architecture": "arm64",
        "os": "linux",
        "author": "Jane Doe <jane@example.com>",
        "config": {
            "Cmd": ["python3", "-u", "/srv/main.py", "--port", "8080"],
            "WorkingDir": "/srv",
            "Env": ["LOG_LEVEL=debug", "GREETING=hello world"],
            "ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "8089-8090/tcp": {}},
        },
    }
    assert "Entrypoint" not in document["config"]  # devices run Entrypoint + Cmd; Cmd carries the argv


def test_schema_version_2_per_image_settings_and_extensions() -> None:
    result = read_config(CONFIG_CORPUS / "v2" / "valid" / "extensions.yaml")
    service = result.services[0]
    document = service_config(service)
    assert document["runners"] == ["runc"]
    assert document["sysctl"] == {"net.core.somaxconn": "256"}
    assert document["devices"] == [{"name": "camera0", "permissions": "rw"}]
    assert document["quotas"] == {"ramLimit": 134_217_728, "pidsLimit": 64}
    assert document["requestedResources"] == {"cpu": 1000, "ram": 64 * 2**20}
    assert image_config(service, service.images[0])["config"]["Cmd"] == ["/service", "--verbose"]


def test_schema_version_2_default_runtimes_become_runners() -> None:
    service = read_config(CONFIG_CORPUS / "v2" / "valid" / "minimal.yaml").services[0]
    assert service_config(service)["runners"] == ["runc", "crun"]
    assert service.images[0].source_folder == "hello-world/amd64"


def test_durations_from_seconds_are_canonical_iso() -> None:
    service = read_config(CONFIG_CORPUS / "v2" / "valid" / "duration-forms.yaml").services[0]
    assert service_config(service)["runParameters"] == {"startInterval": "PT10S", "restartInterval": "PT1S"}
    assert service_config(service)["offlineTTL"] == "P1D"


def test_both_dialects_of_one_service_describe_it_the_same() -> None:
    v1_config = {
        "build": {"os": "linux", "arch": "amd64"},
        "publish": {"service_uid": "9931560c-be75-4f60-9abf-08297d905332", "version": "1.0.0"},
        "configuration": {
            "cmd": "/service --port 80",
            "env": ["A=1"],
            "quotas": {"cpu": 2000, "mem": "64M", "storage": "1G", "upload_speed": "8Kb"},
            "exposedPorts": [80],
        },
    }
    v2_config = {
        "schemaVersion": 2,
        "items": [
            {
                "identity": {"id": "9931560c-be75-4f60-9abf-08297d905332", "codename": "svc", "type": "service"},
                "version": "1.0.0",
                "sourceFolder": "src",
                "images": [{"archInfo": {"architecture": "amd64"}, "sourceFolder": "."}],
                "configuration": {
                    "cmd": "/service --port 80",
                    "env": ["A=1"],
                    "quotas": {"cpuLimit": 2000, "ramLimit": "64M", "storageLimit": "1G", "uploadSpeedLimit": "8Kb"},
                    "exposedPorts": [80],
                },
            }
        ],
    }
    first = parse_config_data(v1_config, "v1").services[0]
    second = parse_config_data(v2_config, "v2").services[0]
    assert service_config(first) == service_config(second)
    assert image_config(first, first.images[0]) == image_config(second, second.images[0])
