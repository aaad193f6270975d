"""The agent's node config (`--node-config`): AosEdge's unit-config node shape, checked as hostile
input against a device root and a group file made in the test."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from aos_operator.errors import ConfigError, InputError
from aos_operator.runtime.node_config import NodeConfig, load_node_config


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    """A device root with two character nodes, a block node, a directory of nodes and a link out."""
    dev = tmp_path / "dev"
    (dev / "media").mkdir(parents=True)
    os.mknod(dev / "cam0", stat.S_IFCHR | 0o660, os.makedev(1, 3))
    os.mknod(dev / "media" / "m0", stat.S_IFCHR | 0o660, os.makedev(1, 5))
    os.mknod(dev / "media" / "m1", stat.S_IFCHR | 0o660, os.makedev(1, 7))
    os.mknod(dev / "disk0", stat.S_IFBLK | 0o660, os.makedev(7, 200))
    (dev / "empty").mkdir()
    (dev / "regular").write_text("not a device")
    (dev / "out").symlink_to("/etc")
    groups = tmp_path / "group"
    groups.write_text("root:x:0:\nvideo:x:44:\naos-vis:x:901:\n")
    source = tmp_path / "vis-socket-dir"
    source.mkdir()
    return {"dev": dev, "group": groups, "source": source, "dir": tmp_path}


def write(host: dict[str, Path], document: object) -> Path:
    path = host["dir"] / "node.yaml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def load(host: dict[str, Path], document: object) -> NodeConfig:
    return load_node_config(write(host, document), dev_root=str(host["dev"]), group_file=host["group"])


def problems(host: dict[str, Path], document: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load(host, document)
    return str(caught.value)


def test_aosedge_unit_config_node_is_read(host: dict[str, Path]) -> None:
    dev = host["dev"]
    config = load(host, {
        "nodeType": "main", "priority": 1,
        "devices": [
            {"name": "camera0", "hostDevices": [f"{dev}/cam0", f"{dev}/media:/dev/media"], "groups": ["video"],
             "sharedCount": 2},
            {"name": "disk", "hostDevices": [f"{dev}/disk0"]},
        ],
        "resources": [
            {"name": "vis", "groups": ["aos-vis"], "envs": ["VIS_URL=wss://wwwivi:8088"],
             "mounts": [{"destination": "/var/run/vis", "source": str(host["source"]), "options": ["bind", "ro"]}],
             "hosts": [{"ip": "10.0.0.100", "hostname": "wwwivi"}]},
        ],
    })
    assert [d.name for d in config.devices] == ["camera0", "disk"]
    assert config.device("camera0").sharedCount == 2
    assert config.device("disk").sharedCount == 0  # absent: any number of instances
    vis = config.resource("vis")
    assert vis.env == ["VIS_URL=wss://wwwivi:8088"]  # protocols' `envs` is read as Go's `env`
    assert vis.mounts[0].type == "bind"
    assert config.resource("nope") is None


def test_every_problem_names_file_line_and_field(host: dict[str, Path]) -> None:
    dev = host["dev"]
    text = f"""devices:
  - name: camera0
    hostDevices:
      - {dev}/regular
      - {dev}/missing
      - {dev}/out/passwd
      - {dev}/empty
      - /etc/passwd
      - {dev}/../etc/passwd
      - "{dev}/cam0:/etc/cam"
    groups: [nosuchgroup]
    sharedCount: -1
"""
    message = problems(host, text)
    path = str(host["dir"] / "node.yaml")
    assert f"{path}:12: devices[0].sharedCount:" in message  # pydantic's checks come first, with lines
    message = problems(host, text.replace("sharedCount: -1", "sharedCount: 1"))
    lines = message.splitlines()
    assert f"{path}:4: devices[0].hostDevices[0]: " in lines[0] and "not a character or block device" in lines[0]
    assert f"{path}:5: devices[0].hostDevices[1]: " in lines[1] and "does not exist" in lines[1]
    assert "outside" in lines[2]  # a link out of the device root
    assert "without character or block device nodes" in lines[3]
    assert f"is not under {dev}" in lines[4]
    assert "not a clean path" in lines[5]
    assert "container path '/etc/cam' is not under /dev" in lines[6]
    assert f"{path}:11: devices[0].groups[0]: group 'nosuchgroup' does not exist" in lines[7]
    assert len(lines) == 8


def test_resource_problems(host: dict[str, Path]) -> None:
    message = problems(host, {"resources": [
        {"name": "vis", "env": ["OK=1", "AOS_SECRET=x", "NOEQUALS", "BAD=a\nb"],
         "mounts": [{"destination": "/proc/x", "source": "/nope/missing"},
                    {"destination": "relative", "source": "relative"},
                    {"destination": "/data", "source": str(host["source"]), "options": ["ro,exec"]}],
         "hosts": [{"ip": "300.1.1.1", "hostname": "ok"}, {"ip": "::1", "hostname": "-bad"}],
         "groups": ["aos-vis", "missing"]},
        {"name": "vis"},
        {"name": "bad name/../x"},
    ]})
    for expected in ("resources[0].groups[1]: group 'missing'", "resources[0].mounts[0].destination: '/proc/x' is the runtime's own",
                     "resources[0].mounts[0].source: '/nope/missing' does not exist", "resources[0].mounts[1].destination: 'relative' is not an absolute",
                     "resources[0].mounts[1].source: 'relative' is not an absolute", "resources[0].mounts[2].options[0]: 'ro,exec' is not a mount option",
                     "resources[0].env[1]: AOS_SECRET is reserved", "resources[0].env[2]: 'NOEQUALS' is not NAME=value",
                     "resources[0].env[3]: the value of BAD contains", "resources[0].hosts[0].ip: '300.1.1.1' is not an IP",
                     "resources[0].hosts[1].hostname: '-bad' is not a valid host name", "resources[1].name: 'vis' is declared twice",
                     "resources[2].name: 'bad name/../x' is not a name"):
        assert expected in message, expected


def test_unknown_keys_and_wrong_types_are_refused(host: dict[str, Path]) -> None:
    assert "devices[0].hostDevice: unknown key" in problems(host, {"devices": [{"name": "a", "hostDevice": ["/dev/x"]}]})
    assert "devices[0].hostDevices: Field required" in problems(host, {"devices": [{"name": "a"}]})
    assert "resources[0].env[0]: Input should be a valid string" in problems(host, {"resources": [{"name": "a", "env": [1]}]})
    assert "sharedCount: Input should be a valid integer" in problems(
        host, {"devices": [{"name": "a", "hostDevices": [f"{host['dev']}/cam0"], "sharedCount": "2"}]})
    assert "a node config is a mapping" in problems(host, "- just\n- a list\n")
    assert "unknown key" in problems(host, {"device": []})


def test_unreadable_huge_or_broken_files(host: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="cannot read the node config"):
        load_node_config(host["dir"] / "missing.yaml")
    big = host["dir"] / "big.yaml"
    big.write_text("# " + "x" * 300_000)
    with pytest.raises(InputError, match="at most 262144 bytes"):
        load_node_config(big)
    with pytest.raises(InputError, match=r"node\.yaml:3: not valid YAML"):
        load(host, "devices:\n  - [unclosed\n")
    assert load(host, "").devices == []  # an empty file offers nothing


def test_the_chart_example_has_the_models_shape() -> None:
    """What the chart's schema lets through (tests/data/chart-all-values.yaml) is what the agent's models read."""
    values = yaml.safe_load((Path(__file__).parents[1] / "data" / "chart-all-values.yaml").read_text())
    config = NodeConfig.model_validate(values["agent"]["nodeConfig"])
    assert config.device("camera0").sharedCount == 2 and config.resource("vis").hosts[0].hostname == "wwwivi"
