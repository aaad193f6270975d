"""The instance network by effect: real runc, real CNI plugins, nftables, dnsmasq and iperf3.

Only addresses of this machine: the test pool is a private range that exists only on the
bridges and in the network namespaces these tests create.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aos_operator.runtime import InstanceIdentity, Phase, Runtime, RuntimeConfig
from aos_operator.runtime.network.model import NetworkConfig
from aos_operator.runtime.supervisor import RECORD_FILE
from tests.integration.runtime_helpers import assert_nothing_left, network_leftovers, process_gone, wait_for_log, wait_until

PYTHON = "/usr/bin/python3"
IPERF3 = "/usr/bin/iperf3"


@pytest.fixture
def network_config(runtime_config: RuntimeConfig) -> RuntimeConfig:
    # Count every byte (AosEdge skips the private ranges, and the test network is one).
    return dataclasses.replace(runtime_config, network=NetworkConfig(pool="10.231.0.0/16", uncounted=()))


@pytest.fixture
def net_runtime(network_config: RuntimeConfig) -> Iterator[Runtime]:
    node_runtime = Runtime(network_config)
    yield node_runtime
    node_runtime.cleanup()


def start_python(runtime: Runtime, make_package: Callable[..., Path], service_id: str, script: str, *,
                 provider: str = "testnet", exposed_ports: tuple[str, ...] = (), index: int = 0,
                 **service: object):
    package = runtime.install(make_package({"app/main.py": script}, cmd=[PYTHON, "-u", "/app/main.py"],
                                           service_config=service, exposed_ports=exposed_ports))
    status = runtime.start(InstanceIdentity(service_id, "subject", index), package, provider=provider)
    assert status.phase == Phase.RUNNING, status
    assert status.ip is not None
    return status


SERVER = """
import socket, sys, time
ports = [int(p) for p in sys.argv[1:]] if len(sys.argv) > 1 else [7000]
servers = []
for port in ports:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(8)
    s.setblocking(False)
    servers.append(s)
print("LISTENING", flush=True)
import select
while True:
    ready, _, _ = select.select(servers, [], [])
    for s in ready:
        conn, peer = s.accept()
        conn.sendall(b"hello from " + socket.gethostname().encode() + b"\\n")
        conn.close()
"""

CLIENT = """
import socket, time, sys
def attempt(host, port):
    try:
        with socket.create_connection((host, port), timeout=2) as c:
            return c.recv(100).decode().strip()
    except OSError as error:
        return f"failed {{type(error).__name__}}"
time.sleep(0.5)
for target in {targets!r}:
    host, port = target.rsplit(":", 1)
    print(f"RESULT {{target}} {{attempt(host, int(port))}}", flush=True)
print("DONE", flush=True)
time.sleep(3600)
"""


def server_script(*ports: int) -> str:
    return "import sys\nsys.argv = ['x'" + "".join(f", '{p}'" for p in ports) + "]\n" + SERVER


def results(runtime: Runtime, instance_id: str) -> dict[str, str]:
    text = wait_for_log(runtime, instance_id, "DONE")
    return {line.split(" ", 2)[1]: line.split(" ", 2)[2] for line in text.splitlines() if line.startswith("RESULT ")}


def test_two_instances_of_one_network_resolve_each_other_and_connect(net_runtime: Runtime,
                                                                     make_package: Callable[..., Path]) -> None:
    server = start_python(net_runtime, make_package, "svc-beta", server_script(7000), hostname="beta")
    wait_for_log(net_runtime, server.instance_id, "LISTENING")
    script = ("print(open('/etc/hosts').read(), open('/etc/resolv.conf').read(), flush=True)\n"
              + CLIENT.format(targets=["beta:7000", "0.subject.svc-beta:7000", "beta.testnet:7000"]))
    client = start_python(net_runtime, make_package, "svc-alpha", script, hostname="alpha")
    assert client.ip != server.ip
    found = results(net_runtime, client.instance_id)
    assert found == {"beta:7000": "hello from beta", "0.subject.svc-beta:7000": "hello from beta",
                     "beta.testnet:7000": "hello from beta"}
    log = net_runtime.log_path(client.instance_id).read_text()
    record = net_runtime.network.record(client.instance_id)
    assert record is not None
    assert f"{client.ip}\talpha 0.subject.svc-alpha subject.svc-alpha alpha.testnet" in log
    assert f"search testnet\nnameserver {record.gateway}\n" in log


def test_an_instance_reaches_a_server_on_the_host_side_of_the_bridge(net_runtime: Runtime,
                                                                     make_package: Callable[..., Path]) -> None:
    # A first instance creates the bridge; the host-side server listens on its gateway address.
    idle = start_python(net_runtime, make_package, "svc-idle", "import time\ntime.sleep(3600)\n")
    gateway = net_runtime.network.record(idle.instance_id).gateway
    with socket.socket() as listener:
        listener.bind((gateway, 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        client = start_python(net_runtime, make_package, "svc-client", CLIENT.format(targets=[f"{gateway}:{port}"]))
        listener.settimeout(10)
        connection, peer = listener.accept()
        with connection:
            connection.sendall(b"hello from the host\n")
        assert peer[0] == client.ip
        assert results(net_runtime, client.instance_id) == {f"{gateway}:{port}": "hello from the host"}


_IPERF_NOT_YET = ("Connection refused", "Connection reset by peer", "server is busy")


def _iperf(server_ip: str, port: int, reverse: bool, seconds: int = 3) -> float:
    """bits per second from the host-side iperf3 client to (or, reversed, from) the instance."""
    argv = [IPERF3, "-c", server_ip, "-p", str(port), "-t", str(seconds), "-J", "-O", "1"]
    if reverse:
        argv.append("-R")
    # iperf3 -s serves one test at a time: while it closes the previous one a client is refused,
    # reset or told "busy"; those say nothing about the limit, so try again (bounded).
    for _ in range(20):
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        report = json.loads(completed.stdout)
        if not any(word in report.get("error", "") for word in _IPERF_NOT_YET):
            break
        time.sleep(0.5)
    assert "error" not in report, report["error"]
    return float(report["end"]["sum_received"]["bits_per_second"])


IPERF_SERVER = f"import os\nos.execv('{IPERF3}', ['iperf3', '-s', '-p', '5201'])\n"


def _wait_for_port(ip: str, port: int) -> None:
    def accepting() -> bool:
        try:
            socket.create_connection((ip, port), timeout=0.5).close()
            return True
        except OSError:
            return False
    wait_until(accepting, what=f"{ip}:{port} to accept")
    time.sleep(0.3)  # iperf3 takes one connection at a time; let the probe's end pass


def test_bandwidth_limits_each_direction_and_nothing_without_them(net_runtime: Runtime,
                                                                  make_package: Callable[..., Path]) -> None:
    upload_kbits, download_kbits = 4000, 8000
    # iperf3 needs a writable /tmp: the tmpLimit tmpfs
    limited = start_python(net_runtime, make_package, "svc-iperf-limited", IPERF_SERVER,
                           quotas={"uploadSpeed": upload_kbits, "downloadSpeed": download_kbits, "tmpLimit": 1 << 20})
    free = start_python(net_runtime, make_package, "svc-iperf-free", IPERF_SERVER, quotas={"tmpLimit": 1 << 20})
    for status in (limited, free):
        _wait_for_port(status.ip, 5201)
    download = _iperf(limited.ip, 5201, reverse=False)  # host → instance: the instance downloads
    upload = _iperf(limited.ip, 5201, reverse=True)  # instance → host: the instance uploads
    assert abs(download - download_kbits * 1000) <= 0.2 * download_kbits * 1000, download
    assert abs(upload - upload_kbits * 1000) <= 0.2 * upload_kbits * 1000, upload
    unlimited_download = _iperf(free.ip, 5201, reverse=False, seconds=2)
    unlimited_upload = _iperf(free.ip, 5201, reverse=True, seconds=2)
    assert unlimited_download > 5 * download_kbits * 1000, unlimited_download
    assert unlimited_upload > 5 * upload_kbits * 1000, unlimited_upload


def _transfer(ip: str, port: int, send: bool, total: int = 2_000_000, seconds: float = 4.0) -> int:
    """Bytes moved to (send) or from the instance before the connection stalls."""
    moved = 0
    deadline = time.monotonic() + seconds
    with socket.socket() as connection:
        # a small send buffer, so what send() accepted is close to what reached the instance
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        connection.settimeout(3)
        connection.connect((ip, port))
        connection.settimeout(0.5)
        chunk = b"x" * 16384
        while moved < total and time.monotonic() < deadline:
            try:
                if send:
                    moved += connection.send(chunk)
                else:
                    data = connection.recv(65536)
                    if not data:
                        break
                    moved += len(data)
            except TimeoutError:
                continue
    return moved


TRAFFIC_SERVER = """
import socket, threading
def sink(conn):
    while conn.recv(65536):
        pass
def source(conn):
    try:
        while True:
            conn.sendall(b"y" * 65536)
    except OSError:
        pass
def serve(port, handler):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()
threading.Thread(target=serve, args=(7100, sink), daemon=True).start()
print("LISTENING", flush=True)
serve(7101, source)
"""


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_traffic_limit_stops_that_direction_and_the_status_says_so(net_runtime: Runtime,
                                                                   make_package: Callable[..., Path],
                                                                   direction: str) -> None:
    limit = 300_000
    status = start_python(net_runtime, make_package, f"svc-traffic-{direction}", TRAFFIC_SERVER,
                          quotas={f"{direction}Limit": limit})
    wait_for_log(net_runtime, status.instance_id, "LISTENING")
    _wait_for_port(status.ip, 7100)
    assert net_runtime.status(status.instance_id).traffic_blocked == ()
    # download: the host sends to the instance's sink; upload: the instance's source sends to the host
    port, send = (7100, True) if direction == "download" else (7101, False)
    moved = _transfer(status.ip, port, send)
    assert moved < 1_000_000  # stopped well before the 2 MB the other side would move
    time.sleep(1.1)  # the runtime reads the counters at most once a second
    blocked = net_runtime.status(status.instance_id)
    assert blocked.traffic_blocked == (direction,)
    assert f"{direction}Limit of {limit} bytes per day used up" in blocked.traffic_message
    # still stopped: a new connection moves nothing in that direction
    if direction == "download":
        with pytest.raises(OSError):
            _transfer(status.ip, 7100, True, seconds=2)
    else:
        with pytest.raises(OSError):
            _transfer(status.ip, 7101, False, seconds=2)


def test_firewall_between_networks_follows_exposed_ports_and_allowed_connections(
        net_runtime: Runtime, make_package: Callable[..., Path]) -> None:
    server = start_python(net_runtime, make_package, "svc-server", server_script(8080, 9090, 9091),
                          provider="net-a", exposed_ports=("8080/tcp", "9090-9091/udp"))
    wait_for_log(net_runtime, server.instance_id, "LISTENING")
    neighbour = start_python(net_runtime, make_package, "svc-neighbour",
                             CLIENT.format(targets=[f"{server.ip}:9091"]), provider="net-a")
    targets = [f"{server.ip}:8080", f"{server.ip}:9091", f"{server.ip}:9090"]
    allowed = start_python(net_runtime, make_package, "svc-allowed", CLIENT.format(targets=targets),
                           provider="net-b", allowedConnections={"svc-server/8080/tcp": {},
                                                                 "svc-server/9091": {}})
    other = start_python(net_runtime, make_package, "svc-other", CLIENT.format(targets=targets[:1]),
                         provider="net-b")
    # the same network: any port
    assert results(net_runtime, neighbour.instance_id) == {f"{server.ip}:9091": "hello from runc"}
    # another network: only exposed ports listed in allowedConnections (9091/tcp is not exposed:
    # the exposed range is udp)
    assert results(net_runtime, allowed.instance_id) == {
        f"{server.ip}:8080": "hello from runc", f"{server.ip}:9091": "failed TimeoutError",
        f"{server.ip}:9090": "failed TimeoutError"}
    assert results(net_runtime, other.instance_id) == {f"{server.ip}:8080": "failed TimeoutError"}
    # one network per provider
    assert net_runtime.network.record(allowed.instance_id).subnet != net_runtime.network.record(
        server.instance_id).subnet


def test_nothing_left_after_stop_crash_and_agent_restart(network_config: RuntimeConfig,
                                                         make_package: Callable[..., Path]) -> None:
    providers = ("testnet", "other")
    runtime = Runtime(network_config)
    try:
        first = start_python(runtime, make_package, "svc-one", server_script(7000),
                             quotas={"downloadLimit": 10_000_000, "uploadSpeed": 1000})
        second = start_python(runtime, make_package, "svc-two", "import time\ntime.sleep(3600)\n",
                              provider="other")
        record = runtime.network.record(first.instance_id)
        assert Path(record.netns).exists()
        assert network_leftovers(runtime, providers) != []
        # a crash of the service: the restart policy starts it again in the same netns
        os.kill(first.pid, signal.SIGKILL)
        wait_until(lambda: runtime.status(first.instance_id).restarts >= 1
                   and runtime.status(first.instance_id).phase == Phase.RUNNING, what="the restart")
        assert runtime.network.record(first.instance_id) == record
        restarted = runtime.status(first.instance_id)
        assert restarted.pid != first.pid
        assert os.stat(f"/proc/{restarted.pid}/ns/net").st_ino == os.stat(record.netns).st_ino, \
            "the restarted container joined the instance's named netns"
        # the agent restarts: a new Runtime adopts the instances with their network (the node
        # supervisor that runs them is another process and keeps running)
        supervisor = json.loads((network_config.run_root / RECORD_FILE).read_text())["pid"]
        assert supervisor > 0
        adopted = Runtime(network_config)
        adopted.recover()
        assert adopted.network.record(first.instance_id) == record
        assert adopted.status(first.instance_id).ip == record.ip
        wait_for_log(adopted, first.instance_id, "LISTENING")
        with socket.create_connection((record.ip, 7000), timeout=5) as connection:
            assert connection.recv(100).startswith(b"hello from")
        # the node supervisor dies: recover() starts a new one, which adopts both; same networks
        second_record = adopted.network.record(second.instance_id)
        os.kill(supervisor, signal.SIGKILL)
        wait_until(lambda: process_gone(supervisor), what="the supervisor to die")
        adopted.recover()
        assert adopted.network.record(first.instance_id) == record
        assert adopted.network.record(second.instance_id) == second_record
        assert adopted.status(second.instance_id).phase == Phase.RUNNING
        assert adopted.status(second.instance_id).ip == second_record.ip
        adopted.stop(first.instance_id)
        assert all(record.ip not in line for line in network_leftovers(adopted, providers))
        adopted.remove(second.instance_id)
        assert network_leftovers(adopted, providers) == []
        assert_nothing_left(adopted)
    finally:
        last = Runtime(network_config)
        last.recover()
        last.cleanup()


def test_a_network_left_by_a_lost_runtime_is_swept(network_config: RuntimeConfig,
                                                   make_package: Callable[..., Path]) -> None:
    runtime = Runtime(network_config)
    status = start_python(runtime, make_package, "svc-swept", "import time\ntime.sleep(3600)\n")
    # the instance's record goes (its data was deleted) while its netns, bridge and DNS stay
    runtime.stop(status.instance_id)
    assert network_leftovers(runtime, ("testnet",)) == []
    unknown = runtime.network.setup(instance_id=str(uuid.uuid4()), service_id="svc-ghost", subject_id="s",
                                    index=0, provider="testnet",
                                    service=runtime.packages.get(status.package).service_config,
                                    image=runtime.packages.get(status.package).image_config)
    assert Path(unknown.netns).exists()
    Runtime(network_config).recover()  # knows no such instance
    assert network_leftovers(runtime, ("testnet",)) == []


def test_without_the_network_an_instance_has_loopback_only(runtime_config: RuntimeConfig,
                                                           make_package: Callable[..., Path]) -> None:
    runtime = Runtime(dataclasses.replace(runtime_config, network=NetworkConfig(enabled=False)))
    try:
        package = runtime.install(make_package({"app/main.py": LINKS}, cmd=[PYTHON, "-u", "/app/main.py"]))
        status = runtime.start(InstanceIdentity("svc-offline", "subject", 0), package)
        assert "LINKS ['lo']" in wait_for_log(runtime, status.instance_id, "LINKS")
        assert runtime.status(status.instance_id).ip is None
        assert runtime.network.records() == []
        assert network_leftovers(runtime) == []
    finally:
        runtime.cleanup()


LINKS = "import os, time\nprint('LINKS', sorted(os.listdir('/sys/class/net')), flush=True)\ntime.sleep(3600)\n"


class RecordingHook:
    """A hook of the caller's, after the network hook: sees the spec with the instance's netns."""

    def __init__(self) -> None:
        self.namespaces: list[str | None] = []
        self.torn_down: list[str] = []

    def setup(self, identity: InstanceIdentity, spec: dict[str, object]) -> None:
        found = [ns.get("path") for ns in spec["linux"]["namespaces"] if ns["type"] == "network"]  # type: ignore[index]
        self.namespaces += found

    def teardown(self, instance_id: str) -> None:
        self.torn_down.append(instance_id)


def test_the_network_is_an_instance_hook_before_the_callers(network_config: RuntimeConfig,
                                                            make_package: Callable[..., Path]) -> None:
    hook = RecordingHook()
    runtime = Runtime(network_config, hooks=[hook])
    try:
        status = start_python(runtime, make_package, "svc-hooked", "import time\ntime.sleep(3600)\n")
        record = runtime.network.record(status.instance_id)
        assert hook.namespaces == [record.netns]
        spec = json.loads((runtime.data_dir(status.instance_id) / "config.json").read_text())
        assert [ns.get("path") for ns in spec["linux"]["namespaces"] if ns["type"] == "network"] == [record.netns]
        runtime.remove(status.instance_id)
        assert hook.torn_down == [status.instance_id]
        assert network_leftovers(runtime, ("testnet",)) == []
    finally:
        runtime.cleanup()
