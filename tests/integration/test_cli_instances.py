"""`aosctl run -d`, `ps`, `logs`, `stop`, `rm`, `prune` and the service IDs of `run`, with real runc."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from aos_operator.cli import main
from aos_operator.cli.common import network_config
from aos_operator.runtime import Runtime, RuntimeConfig
from runtime_helpers import assert_nothing_left

pytestmark = pytest.mark.root


@pytest.fixture
def dirs(tmp_path: Path) -> list[str]:
    if os.geteuid() != 0:
        pytest.fail("these tests run services under runc; CI runs them as root")
    return ["--state-dir", str(tmp_path / "state"), "--run-dir", str(tmp_path / "run"),
            "--cgroup-parent", f"/aosctl-test-{uuid.uuid4().hex[:8]}"]


def runtime_of(dirs: list[str]) -> Runtime:
    options = dict(zip(dirs[::2], dirs[1::2]))
    # the network config aosctl builds from the same directories, so both find the networks' DNS servers
    network = network_config(argparse.Namespace(run_dir=options["--run-dir"]))
    return Runtime(RuntimeConfig(state_root=Path(options["--state-dir"]), run_root=Path(options["--run-dir"]),
                                 cgroup_parent=options["--cgroup-parent"], network=network))  # type: ignore[arg-type]


def aosctl(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aos_operator.cli", *arguments],
                          capture_output=True, text=True, timeout=timeout, check=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def skeleton(tmp_path: Path, name: str, *options: str) -> Path:
    directory = tmp_path / name
    assert main(["init", str(directory), "-q", *options]) == 0
    return directory


def wait_for(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def test_detached_run_then_ps_logs_stop_rm_prune(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, dirs: list[str]
) -> None:
    service = skeleton(tmp_path, "ticker")
    capsys.readouterr()
    process = aosctl("run", str(service), "-d", "-n", "2", *dirs, "--cache-dir", str(tmp_path / "c"))
    assert process.returncode == 0, process.stderr
    instance_ids = process.stdout.split()
    assert len(instance_ids) == 2 and "instance 0: Running" in process.stderr
    runtime = runtime_of(dirs)
    try:
        # the supervisors outlive aosctl: a new aosctl process finds them
        code, out, _ = run(capsys, "ps", *dirs)
        assert code == 0
        header, *rows = out.splitlines()
        assert header.split() == ["INSTANCE", "SERVICE", "INDEX", "PHASE", "RESTARTS", "SINCE", "DIGEST"]
        assert sorted(row.split()[2] for row in rows) == ["0", "1"]
        assert all(row.split()[3] == "Running" for row in rows)
        code, out, _ = run(capsys, "ps", "-o", "json", *dirs)
        document = json.loads(out)
        assert document["schemaVersion"] == 1 and document["kind"] == "InstanceList"
        assert sorted(i["instanceId"] for i in document["instances"]) == sorted(instance_ids)
        assert {i["phase"] for i in document["instances"]} == {"Running"}
        assert all("identity" in i and "serviceId" in i["identity"] for i in document["instances"])

        first = instance_ids[0]
        wait_for(lambda: runtime.log_path(first).exists() and runtime.log_path(first).read_text().count("alive") >= 2)
        code, out, _ = run(capsys, "logs", first[:8], "--tail", "1", *dirs)
        assert code == 0 and out.count("\n") == 1 and "is alive" in out
        code, out, _ = run(capsys, "logs", first, *dirs)
        assert out.startswith("ticker started: service ")

        # logs -f follows until the instance ends (stopped from another thread)
        followed: dict[str, object] = {}

        def follow() -> None:
            followed["result"] = aosctl("logs", "-f", first, *dirs, timeout=60)

        follower = threading.Thread(target=follow)
        follower.start()
        time.sleep(1.5)
        code, out, _ = run(capsys, "stop", first, *dirs)
        assert (code, out.strip()) == (0, first)
        follower.join(60)
        followed_process = followed["result"]
        assert followed_process.returncode == 0  # type: ignore[attr-defined]
        assert "is alive" in followed_process.stdout  # type: ignore[attr-defined]

        code, out, _ = run(capsys, "ps", "-q", *dirs)
        assert out.split() == [instance_ids[1]], "ps shows running instances; the stopped one only with -a"
        assert f"{first[:12]}   " in run(capsys, "ps", "-a", *dirs)[1]
        code, _, err = run(capsys, "rm", instance_ids[1], *dirs)
        assert code == 2 and "still running" in err
        assert run(capsys, "rm", "-f", instance_ids[1], *dirs)[0] == 0
        assert runtime.instance_ids() == [first]
        code, out, err = run(capsys, "prune", *dirs)
        assert code == 0, err
        assert runtime.instance_ids() == [] and runtime.packages.digests() == []
        assert out.strip().startswith("sha256:")
        code, _, err = run(capsys, "logs", first, *dirs)
        assert code == 2 and "no such instance" in err
    finally:
        runtime.cleanup()
    assert_nothing_left(runtime)


def test_packages_without_a_service_id_get_distinct_ones_and_say_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, dirs: list[str]
) -> None:
    archives = []
    for name in ("alpha", "beta"):
        service = skeleton(tmp_path, name)
        archive = tmp_path / f"{name}.tar"
        assert main(["build", str(service), "-o", str(archive), "-q", "--cache-dir", str(tmp_path / "c")]) == 0
        archives.append(archive)
    capsys.readouterr()
    runtime = runtime_of(dirs)
    try:
        seen = []
        for archive in archives:
            process = aosctl("run", str(archive), "-d", *dirs)
            assert process.returncode == 0, process.stderr
            assert "derived from the package's author and command" in process.stderr
            seen.append(process.stdout.strip())
        assert seen[0] != seen[1], "two unrelated packages do not share an instance (and its storage)"
        services = {runtime.status(i).identity.service_id for i in seen}
        assert len(services) == 2 and "local" not in services
        again = aosctl("run", str(archives[0]), "-d", *dirs)
        assert again.stdout.strip() == seen[0], "the same package gets the same ID again"
    finally:
        runtime.cleanup()


def test_sighup_stops_and_cleans_up(tmp_path: Path, dirs: list[str]) -> None:
    service = skeleton(tmp_path, "hangup")
    process = subprocess.Popen(
        [sys.executable, "-m", "aos_operator.cli", "run", str(service), *dirs, "--cache-dir", str(tmp_path / "c")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    runtime = runtime_of(dirs)
    try:
        wait_for(lambda: [s for s in runtime.list() if s.phase.value == "Running"], timeout=60)
        process.send_signal(signal.SIGHUP)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert "instance 0: Stopped" in err and "hangup started" in out
        assert [s.phase.value for s in runtime.list()] == ["Stopped"]
        assert_nothing_left(runtime)
    finally:
        if process.poll() is None:
            process.kill()
        runtime.cleanup()


def test_run_refuses_a_package_for_another_architecture(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                        dirs: list[str]) -> None:
    other = "arm64" if os.uname().machine in ("x86_64", "amd64") else "amd64"
    service = skeleton(tmp_path, "foreign", "--arch", other)
    capsys.readouterr()
    code, _, err = run(capsys, "run", str(service), *dirs, "--cache-dir", str(tmp_path / "c"))
    assert code == 2 and f"built for linux/{other}" in err and "this node is" in err
    assert not (tmp_path / "state" / "packages").exists() or not list((tmp_path / "state" / "packages").iterdir())
