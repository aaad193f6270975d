"""Host devices and resources into the runtime spec (AosEdge's setDevices / setResources), the
share check, and the service config's `devices` and `resources`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aos_operator.errors import PackageError
from aos_operator.runtime.devices import (
    DeviceUnavailable,
    check_shares,
    hosts_lines,
    resolve_grants,
    share_usage,
)
from aos_operator.runtime.identity import InstanceIdentity
from aos_operator.runtime.node_config import parse_node_config
from aos_operator.runtime.service_config import ImageConfig, ServiceConfig, ServiceDevice, parse_service_config
from aos_operator.runtime.spec import InstanceSetup, NodeFacts, build_runtime_spec

IMAGE = ImageConfig(os="linux", architecture="amd64", entrypoint=("/bin/sh",), cmd=(), working_dir="/",
                    env=("PATH=/bin", "MODE=image", "IMAGE_ONLY=1"))
NODE = NodeFacts(cores=2, dmips=20000)


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    dev = tmp_path / "dev"
    (dev / "media" / "sub").mkdir(parents=True)
    os.mknod(dev / "cam0", stat.S_IFCHR | 0o660, os.makedev(81, 0))
    os.chown(dev / "cam0", 0, 44)
    os.chmod(dev / "cam0", 0o660)  # past the umask
    os.mknod(dev / "media" / "m0", stat.S_IFCHR | 0o600, os.makedev(212, 0))
    os.mknod(dev / "media" / "sub" / "m1", stat.S_IFBLK | 0o640, os.makedev(7, 9))
    (dev / "media" / "not-a-device").write_text("")
    (dev / "cam-link").symlink_to(dev / "cam0")
    groups = tmp_path / "group"
    groups.write_text("root:x:0:\nvideo:x:44:\naos-vis:x:901:\n")
    (tmp_path / "vis").mkdir()
    return {"dev": dev, "group": groups, "dir": tmp_path}


def node_config(host: dict[str, Path]):  # type: ignore[no-untyped-def]
    dev = host["dev"]
    return parse_node_config({
        "devices": [
            {"name": "camera0", "hostDevices": [f"{dev}/cam-link:/dev/video0"], "groups": ["video"], "sharedCount": 1},
            {"name": "media", "hostDevices": [f"{dev}/media:/dev/media", f"{dev}/cam0:/dev/video0"]},
        ],
        "resources": [
            {"name": "vis", "groups": ["aos-vis", "video"], "env": ["MODE=vis", "VIS_URL=wss://wwwivi:8088"],
             "mounts": [{"destination": "/var/run/vis", "source": str(host["dir"] / "vis"), "options": ["ro"]},
                        {"destination": "/data", "source": "/", "options": ["rbind"]}],
             "hosts": [{"ip": "10.0.0.100", "hostname": "wwwivi"}]},
            {"name": "data2", "mounts": [{"destination": "/data", "source": str(host["dir"]), "type": "bind"}],
             "env": ["VIS_URL=override"]},
        ],
    }, "node.yaml", dev_root=str(dev), group_file=host["group"])


def spec_with(host: dict[str, Path], devices: list[ServiceDevice], resources: list[str],
              env_overrides: tuple[str, ...] = ()) -> dict:
    grants = resolve_grants(devices, resources, node_config(host), group_file=host["group"], dev_root=str(host["dev"]))
    setup = InstanceSetup(identity=InstanceIdentity("svc", "subj", 0), uid=5001, gid=5002, rootfs="/r",
                          cgroups_path="/aos/x", env_overrides=env_overrides, grants=grants)
    return build_runtime_spec(IMAGE, ServiceConfig(devices=tuple(devices), resources=tuple(resources)), setup, NODE)


def test_devices_become_nodes_and_cgroup_rules_with_the_service_letters(host: dict[str, Path]) -> None:
    spec = spec_with(host, [ServiceDevice("camera0", "rw"), ServiceDevice("media", "r")], [])
    nodes = {node["path"]: node for node in spec["linux"]["devices"]}
    # the link is followed inside the device root; mode and owner come from the host node
    assert nodes["/dev/video0"] == {"path": "/dev/video0", "type": "c", "major": 81, "minor": 0, "fileMode": 0o660,
                                    "uid": 0, "gid": 44}
    # a directory maps every node under it, prefix replaced; non-devices are skipped
    assert nodes["/dev/media/m0"]["major"] == 212 and nodes["/dev/media/m0"]["fileMode"] == 0o600
    assert nodes["/dev/media/sub/m1"]["type"] == "b" and nodes["/dev/media/sub/m1"]["minor"] == 9
    assert set(nodes) == {"/dev/video0", "/dev/media/m0", "/dev/media/sub/m1"}  # the duplicate path is skipped
    rules = spec["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}  # deny all first, then the grants
    assert {"allow": True, "type": "c", "major": 81, "minor": 0, "access": "rw"} in rules
    assert {"allow": True, "type": "c", "major": 212, "minor": 0, "access": "r"} in rules
    assert {"allow": True, "type": "b", "major": 7, "minor": 9, "access": "r"} in rules
    assert len(rules) == 4
    assert spec["process"]["user"]["additionalGids"] == [44]


def test_resources_give_groups_mounts_env_and_hosts(host: dict[str, Path]) -> None:
    spec = spec_with(host, [ServiceDevice("camera0", "r")], ["vis", "data2"], env_overrides=("MODE=override",))
    assert spec["process"]["user"]["additionalGids"] == [44, 901]  # device and resource groups, once each
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/var/run/vis"] == {"destination": "/var/run/vis", "type": "bind", "source": str(host["dir"] / "vis"),
                                      "options": ["bind", "ro", "nosuid", "nodev"]}
    assert mounts["/data"]["source"] == str(host["dir"])  # the later mount of the same destination replaces
    assert [m["destination"] for m in spec["mounts"]].count("/data") == 1
    env = spec["process"]["env"]
    assert "IMAGE_ONLY=1" in env and "VIS_URL=override" in env  # resource env after the image's, in order
    assert "MODE=override" in env and not any(e in env for e in ("MODE=vis", "MODE=image"))  # overrides still win
    grants = resolve_grants([], ["vis"], node_config(host), group_file=host["group"], dev_root=str(host["dev"]))
    assert hosts_lines(grants) == "10.0.0.100\twwwivi\n"


def test_no_devices_no_change(host: dict[str, Path]) -> None:
    spec = spec_with(host, [], [])
    assert "devices" not in spec["linux"] and "additionalGids" not in spec["process"]["user"]
    assert spec["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def test_unknown_names_and_vanished_nodes_are_refused(host: dict[str, Path]) -> None:
    config = node_config(host)
    with pytest.raises(DeviceUnavailable, match="device 'camera9' is not available on this node .*camera0, media"):
        resolve_grants([ServiceDevice("camera9", "r")], [], config, group_file=host["group"], dev_root=str(host["dev"]))
    with pytest.raises(DeviceUnavailable, match="resource 'dbus' is not available"):
        resolve_grants([], ["dbus"], config, group_file=host["group"], dev_root=str(host["dev"]))
    (host["dev"] / "cam0").unlink()  # the node config was checked at start; the host changed since
    with pytest.raises(DeviceUnavailable, match="does not exist"):
        resolve_grants([ServiceDevice("camera0", "r")], [], config, group_file=host["group"], dev_root=str(host["dev"]))
    host["group"].write_text("root:x:0:\n")
    with pytest.raises(DeviceUnavailable, match="group 'aos-vis' does not exist"):
        resolve_grants([], ["vis"], config, group_file=host["group"], dev_root=str(host["dev"]))


def test_shares(host: dict[str, Path]) -> None:
    config = node_config(host)
    camera = [ServiceDevice("camera0", "r")]
    check_shares(camera, config, [], "i-1")  # sharedCount 1, none in use
    with pytest.raises(DeviceUnavailable, match="device 'camera0' has no free share: 1 of its sharedCount 1"):
        check_shares(camera, config, [camera], "i-2")
    media = [ServiceDevice("media", "r")]
    check_shares(media, config, [media] * 50, "i-3")  # sharedCount 0: any number
    assert share_usage(config, [camera, media, media, []]) == {"camera0": 1, "media": 2}


def test_service_config_devices_and_resources() -> None:
    config = parse_service_config({"devices": [{"name": "camera0", "permissions": "rw"}], "resources": ["vis"]}, "sc")
    assert config.devices == (ServiceDevice("camera0", "rw"),) and config.resources == ("vis",)
    for bad in ("", "rwx", "rr", "rwmr"):
        with pytest.raises(PackageError, match=r"sc\.devices\[0\]\.permissions: expected cgroup access letters"):
            parse_service_config({"devices": [{"name": "c", "permissions": bad}]}, "sc")
    with pytest.raises(PackageError, match=r"sc\.devices: expected a list"):
        parse_service_config({"devices": {"name": "c"}}, "sc")
    with pytest.raises(PackageError, match=r"sc\.resources: expected a list of strings"):
        parse_service_config({"resources": [1]}, "sc")
