"""Host devices and resources under real runc (as root): what an instance can open, and the
resource env, mounts, groups and hosts it sees; the share limit of a device.

The device nodes are made by the test with mknod in a private device root, the groups in a
private copy of the group database, so nothing of the host's /dev or /etc changes. runc allows
null, zero, full, random, urandom, tty, console, ptmx and tun itself, so the nodes use other
numbers: a copy of /dev/loop-control (opens without privileges) and a number of the kernel's
"local/experimental use" range that no driver holds here, where the devices cgroup's refusal
(EPERM) and its permission (then ENXIO: no driver) tell apart.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from runtime_helpers import assert_nothing_left, probe_report, wait_for_log, wait_for_status

from aos_operator.runtime import InstanceIdentity, Phase, Runtime, RuntimeConfig
from aos_operator.runtime.devices import DeviceUnavailable
from aos_operator.runtime.node_config import load_node_config

pytestmark = pytest.mark.root

PYTHON = "/usr/bin/python3"
DEVICE_GID, RESOURCE_GID = 4242, 4243

PROBE = r'''
import errno, json, os, time

def attempt(path, flags):
    try:
        os.close(os.open(path, flags))
    except OSError as error:
        return errno.errorcode[error.errno]
    return "ok"

def read(path):
    try:
        return open(path).read()
    except OSError as error:
        return errno.errorcode[error.errno]

report = {
    "granted_rw": attempt("/dev/aosloop", os.O_RDWR),
    "granted_r_read": attempt("/dev/aoslocal", os.O_RDONLY),
    "granted_r_write": attempt("/dev/aoslocal", os.O_WRONLY),
    "not_granted": attempt("/dev/aosfull", os.O_RDONLY),
    "groups": os.getgroups(), "uid": os.getuid(),
    "env": os.environ.get("RES_ENV"), "image_env": os.environ.get("FROM_IMAGE"),
    "mounted": read("/opt/res/greeting"), "mount_writable": attempt("/opt/res/new", os.O_WRONLY | os.O_CREAT),
    "hosts": read("/etc/hosts"),
}
print("PROBE " + json.dumps(report), flush=True)
time.sleep(3600)
'''


def _free_local_major() -> int:
    """A character major of the "local/experimental use" ranges that no driver registered."""
    taken = set()
    for line in Path("/proc/devices").read_text().split("Block devices:")[0].splitlines():
        if line.strip()[:1].isdigit():
            taken.add(int(line.split()[0]))
    return next(major for major in [*range(60, 64), *range(120, 128)] if major not in taken)


def _node(path: Path, major: int, minor: int, mode: int, gid: int = 0) -> None:
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
    os.chown(path, 0, gid)
    os.chmod(path, mode)


@pytest.fixture
def device_runtime(runtime_config: RuntimeConfig, tmp_path: Path) -> Runtime:
    dev = tmp_path / "hostdev"
    dev.mkdir()
    loop_control = os.stat("/dev/loop-control").st_rdev
    _node(dev / "aosloop", os.major(loop_control), os.minor(loop_control), 0o660, DEVICE_GID)  # its group only
    _node(dev / "aoslocal", _free_local_major(), 1, 0o666)
    _node(dev / "aosfull", 1, 7, 0o666)  # offered by the node, asked for by no service
    groups = tmp_path / "group"
    groups.write_text(Path("/etc/group").read_text() + f"aos-devtest:x:{DEVICE_GID}:\naos-restest:x:{RESOURCE_GID}:\n")
    shared = tmp_path / "resource-files"
    shared.mkdir()
    (shared / "greeting").write_text("from the node")
    config_file = tmp_path / "node.yaml"
    config_file.write_text(f"""
devices:
  - name: dev-rw
    hostDevices: ["{dev}/aosloop:/dev/aosloop"]
    groups: [aos-devtest]
    sharedCount: 1
  - name: dev-r
    hostDevices: ["{dev}/aoslocal:/dev/aoslocal"]
  - name: dev-unused
    hostDevices: ["{dev}/aosfull:/dev/aosfull"]
resources:
  - name: res
    groups: [aos-restest]
    mounts:
      - {{destination: /opt/res, source: "{shared}", options: [ro]}}
    env: [RES_ENV=from-the-resource, FROM_IMAGE=resource-wins]
    hosts:
      - {{ip: 10.9.8.7, hostname: res-host}}
""")
    node_config = load_node_config(config_file, dev_root=str(dev), group_file=groups)
    runtime = Runtime(replace(runtime_config, node_config=node_config, dev_root=str(dev), group_file=groups))
    yield runtime
    runtime.cleanup()


SERVICE = {"devices": [{"name": "dev-rw", "permissions": "rw"}, {"name": "dev-r", "permissions": "r"}],
           "resources": ["res"]}


def test_granted_devices_open_others_do_not_and_resources_are_visible(
        device_runtime: Runtime, make_package: Callable[..., Path]) -> None:
    package = device_runtime.install(make_package({"app/probe.py": PROBE}, cmd=[PYTHON, "-u", "/app/probe.py"],
                                                  env=["FROM_IMAGE=image"], service_config=SERVICE))
    identity = InstanceIdentity("svc-devices", "subject", 0)
    device_runtime.start(identity, package)
    report = probe_report(wait_for_log(device_runtime, identity.instance_id, "PROBE "))
    assert report["uid"] >= 5000  # not root: the device group is what lets it open /dev/aosloop
    assert report["granted_rw"] == "ok"
    assert report["granted_r_read"] == "ENXIO"  # past the devices cgroup; no driver has the number
    assert report["granted_r_write"] == "EPERM"  # the devices cgroup allows only "r"
    assert report["not_granted"] == "ENOENT"  # not in the container's /dev at all
    assert DEVICE_GID in report["groups"] and RESOURCE_GID in report["groups"]
    assert report["env"] == "from-the-resource" and report["image_env"] == "resource-wins"
    assert report["mounted"] == "from the node" and report["mount_writable"] == "EROFS"
    assert "10.9.8.7\tres-host" in report["hosts"] and "localhost" in report["hosts"]


def test_without_the_group_the_node_cannot_be_opened(device_runtime: Runtime, make_package: Callable[..., Path]) -> None:
    """The same node, granted rw by the cgroup, but the instance is not in its group: the group
    from the node config is what opens it (the check above is not passing for another reason)."""
    config = device_runtime.config.node_config
    without_group = config.model_copy(update={"devices": [config.devices[0].model_copy(update={"groups": []})]})
    runtime = Runtime(replace(device_runtime.config, node_config=without_group))
    package = runtime.install(make_package({"app/probe.py": PROBE}, cmd=[PYTHON, "-u", "/app/probe.py"],
                                           service_config={"devices": [{"name": "dev-rw", "permissions": "rw"}]}))
    identity = InstanceIdentity("svc-no-group", "subject", 0)
    try:
        runtime.start(identity, package)
        report = probe_report(wait_for_log(runtime, identity.instance_id, "PROBE "))
        assert report["granted_rw"] == "EACCES" and DEVICE_GID not in report["groups"]
    finally:
        runtime.cleanup()


def test_a_device_with_every_share_in_use_refuses_the_start(device_runtime: Runtime,
                                                            make_package: Callable[..., Path]) -> None:
    package = device_runtime.install(make_package({"app/main.py": "import time\nprint('up', flush=True)\ntime.sleep(3600)\n"},
                                                  cmd=[PYTHON, "-u", "/app/main.py"],
                                                  service_config={"devices": [{"name": "dev-rw", "permissions": "r"}]}))
    first, second = InstanceIdentity("svc-share", "subject", 0), InstanceIdentity("svc-share", "subject", 1)
    device_runtime.start(first, package)
    wait_for_log(device_runtime, first.instance_id, "up")
    with pytest.raises(DeviceUnavailable, match="device 'dev-rw' has no free share: 1 of its sharedCount 1 are in use"):
        device_runtime.start(second, package)
    assert device_runtime.device_usage() == {"dev-rw": 1, "dev-r": 0, "dev-unused": 0}
    assert not device_runtime.data_dir(second.instance_id).exists()  # refused before anything was written
    assert device_runtime.status(first.instance_id).phase == Phase.RUNNING  # what runs keeps running
    device_runtime.stop(first.instance_id)  # the share is free again
    device_runtime.start(second, package)
    wait_for_status(device_runtime, second.instance_id, lambda s: s.phase == Phase.RUNNING, what="Running")
    device_runtime.cleanup()
    assert_nothing_left(device_runtime)


def test_a_device_the_node_does_not_offer_refuses_the_start(device_runtime: Runtime,
                                                            make_package: Callable[..., Path]) -> None:
    package = device_runtime.install(make_package({"app/main.py": "print('never')\n"}, cmd=[PYTHON, "/app/main.py"],
                                                  service_config={"devices": [{"name": "camera9", "permissions": "r"}],
                                                                  "resources": ["res"]}))
    identity = InstanceIdentity("svc-missing", "subject", 0)
    with pytest.raises(DeviceUnavailable, match="device 'camera9' is not available on this node"):
        device_runtime.start(identity, package)
    assert not device_runtime.data_dir(identity.instance_id).exists()


def test_the_agent_reports_a_used_up_device_and_retries(device_runtime: Runtime, make_package: Callable[..., Path],
                                                       tmp_path: Path) -> None:
    """The agent's core turns the refusal into the instance's status: Failed, NoAvailableDevice,
    a message naming the device (the Kubernetes loop retries that reason with backoff)."""
    from aos_operator.agent.core import Desired, DeviceAgent
    from aos_operator.agent.loop import RETRIED_REASONS

    package = device_runtime.install(make_package({"app/main.py": "import time\nprint('up', flush=True)\ntime.sleep(3600)\n"},
                                                  cmd=[PYTHON, "-u", "/app/main.py"],
                                                  service_config={"devices": [{"name": "dev-rw", "permissions": "r"}]}))
    agent = DeviceAgent(device_runtime, None, tmp_path / "pulls")  # type: ignore[arg-type]  # installed: no pulls

    def desired(index: int) -> Desired:
        identity = InstanceIdentity("svc-agent-share", "subject", index)
        return Desired(identity.service_id, identity.subject_id, index, f"registry.invalid/x@{package.digest}",
                       package.digest, identity.instance_id)

    reports: list[object] = []
    assert agent.converge(desired(0), reports.append).phase == "Starting"
    outcome = agent.converge(desired(1), reports.append)
    assert (outcome.phase, outcome.reason) == ("Failed", "NoAvailableDevice")
    assert "device 'dev-rw' has no free share: 1 of its sharedCount 1 are in use" in outcome.message
    assert "NoAvailableDevice" in RETRIED_REASONS
    assert device_runtime.device_usage()["dev-rw"] == 1
