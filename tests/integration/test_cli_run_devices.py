"""`aosctl run --node-config`: the local loop gives a service the host devices and resources a
node config offers, as the agent does; a bad node config is one clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLES

pytestmark = pytest.mark.root

SCRIPT = """import os
print("device", os.path.exists("/dev/aosnull"), os.access("/dev/aosnull", os.W_OK), flush=True)
print("env", os.environ.get("GREETING"), flush=True)
print("hosts", "10.1.2.3\\tgreeter" in open("/etc/hosts").read(), flush=True)
print("groups", sorted(os.getgroups()), flush=True)
"""


def service_dir(tmp_path: Path, devices: list[dict[str, str]], resources: list[str]) -> Path:
    document = yaml.safe_load((EXAMPLES / "hello-world" / "meta" / "config.yaml").read_text())
    configuration = document["configuration"]
    configuration["cmd"] = "python3 -u /usr/bin/probe.py"
    configuration["devices"] = devices
    configuration["resources"] = resources
    configuration["runParameters"] = {"startInterval": "PT10S", "startBurst": 1, "restartInterval": "PT60S"}
    directory = tmp_path / "service"
    (directory / "meta").mkdir(parents=True)
    (directory / "src" / "usr" / "bin").mkdir(parents=True)
    (directory / "meta" / "config.yaml").write_text(yaml.safe_dump(document))
    (directory / "src" / "usr" / "bin" / "probe.py").write_text(SCRIPT)
    return directory


def node_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return path


NODE = """devices:
  - name: nulldev
    hostDevices: ["/dev/null:/dev/aosnull"]
    groups: [root]
resources:
  - name: greet
    env: [GREETING=hello-from-the-node]
    hosts: [{ip: 10.1.2.3, hostname: greeter}]
"""


def aosctl_run(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.fail("aosctl run needs root; CI runs as root")
    return subprocess.run(
        [sys.executable, "-m", "aos_operator.cli", "run", *arguments, "--no-network",
         "--state-dir", str(tmp_path / "state"), "--run-dir", str(tmp_path / "run"),
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_run_with_a_node_config_gives_the_device_and_the_resource(tmp_path: Path) -> None:
    directory = service_dir(tmp_path, [{"name": "nulldev", "mode": "rw"}], ["greet"])
    process = aosctl_run(tmp_path, str(directory), "--node-config", str(node_config(tmp_path, NODE)), "--timeout", "3")
    assert "device True True" in process.stdout, process.stdout + process.stderr
    assert "env hello-from-the-node" in process.stdout
    assert "hosts True" in process.stdout
    assert "groups [0" in process.stdout  # the device's group, root, resolved against /etc/group
    # without the node config the same service does not start: the node offers nothing
    refused = aosctl_run(tmp_path, str(directory), "--timeout", "3")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "device 'nulldev' is not available on this node" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_bad_node_config_is_one_clear_error(tmp_path: Path) -> None:
    directory = service_dir(tmp_path, [], [])
    bad = node_config(tmp_path, "devices:\n  - name: cam\n    hostDevices: [/dev/no-such-camera]\n")
    process = aosctl_run(tmp_path, str(directory), "--node-config", str(bad), "--timeout", "3")
    assert process.returncode == 1, process.stderr
    assert f"{bad}:3: devices[0].hostDevices[0]: '/dev/no-such-camera' does not exist" in process.stderr
    assert "Traceback" not in process.stderr and not (tmp_path / "state" / "instances").exists()
