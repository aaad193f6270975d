"""Permissions under real runc: AOS_SECRET in the instance's environment (the process prints it),
the node supervisor's permission socket answering for it, refusing a wrong secret and hostile
requests, the same secret across stop and start, a new one after removal (as root)."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import log_text, wait_for_status, wait_until

from aos_operator.cli import main
from aos_operator.runtime import InstanceIdentity, Phase, Runtime
from aos_operator.runtime.permission_server import SOCKET_FILE, query_permissions
from aos_operator.runtime.permissions import MAX_REQUEST_BYTES

pytestmark = pytest.mark.root

PYTHON = "/usr/bin/python3"
PRINT_SECRET = "import os, time\nprint('secret=' + os.environ.get('AOS_SECRET', 'none'), flush=True)\ntime.sleep(3600)\n"
PERMISSIONS = {"vis": {"Signal.Doors.*": "rw", "Signal.Speed": "r"}, "iam": {"Certificates": "r"}}
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def printed_secret(runtime: Runtime, instance_id: str, occurrence: int = 1) -> str:
    """What the instance's process printed as its AOS_SECRET (the occurrence-th run's line)."""
    def printed() -> list[str]:
        return re.findall(r"secret=(\S+)", log_text(runtime, instance_id))

    wait_until(lambda: len(printed()) >= occurrence, 30.0, f"line {occurrence} of secret= in the log")
    return printed()[occurrence - 1]


def raw_request(run_root: Path, data: bytes, *, close_write: bool = True) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(10)
        connection.connect(str(run_root / SOCKET_FILE))
        if data:
            try:
                connection.sendall(data)
            except BrokenPipeError:
                pass
        if close_write:
            connection.shutdown(socket.SHUT_WR)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = connection.recv(4096)
            if not chunk:
                break
            reply += chunk
    return json.loads(reply)


@pytest.fixture
def started(runtime: Runtime, make_package: Callable[..., Path]) -> tuple[Runtime, InstanceIdentity, InstanceIdentity]:
    """One instance with permissions, one without (it keeps the supervisor alive when the first stops)."""
    with_permissions = runtime.install(make_package({"app/main.py": PRINT_SECRET}, cmd=[PYTHON, "-u", "/app/main.py"],
                                                    service_config={"permissions": PERMISSIONS}))
    without = runtime.install(make_package({"app/main.py": PRINT_SECRET + "\n"}, cmd=[PYTHON, "-u", "/app/main.py"]))
    holder, plain = InstanceIdentity("svc-perm", "subject", 0), InstanceIdentity("svc-plain", "subject", 0)
    assert runtime.start(holder, with_permissions).phase == Phase.RUNNING
    assert runtime.start(plain, without).phase == Phase.RUNNING
    return runtime, holder, plain


def test_the_instance_gets_a_uuid4_secret_and_the_socket_answers_for_it(started) -> None:
    runtime, holder, plain = started
    secret = printed_secret(runtime, holder.instance_id)
    assert UUID4.fullmatch(secret), secret
    assert printed_secret(runtime, plain.instance_id) == "none"  # no permissions, no secret
    run_root = runtime.config.run_root

    answer = query_permissions(run_root, secret, "vis")
    assert answer["ok"] is True
    assert answer["permissions"] == PERMISSIONS["vis"]
    assert answer["instance"] == {"serviceId": "svc-perm", "subjectId": "subject", "instance": 0,
                                  "instanceId": holder.instance_id}
    assert query_permissions(run_root, secret, "iam")["permissions"] == {"Certificates": "r"}
    # AosEdge VIS's decision: a mask with `*`, letters case-insensitive
    assert query_permissions(run_root, secret, "vis", "Signal.Doors.FrontLeft.IsOpen", "w")["allowed"] is True
    assert query_permissions(run_root, secret, "vis", "Signal.Speed", "r")["allowed"] is True
    assert query_permissions(run_root, secret, "vis", "Signal.Speed", "w")["allowed"] is False
    assert query_permissions(run_root, secret, "vis", "Signal.Engine", "r")["allowed"] is False

    wrong = query_permissions(run_root, str(uuid.uuid4()), "vis")
    assert (wrong["ok"], wrong["code"]) == (False, "UnknownSecret") and "permissions" not in wrong
    other_server = query_permissions(run_root, secret, "camera")
    assert (other_server["ok"], other_server["code"]) == (False, "NoPermissions")

    # the socket and every file holding the secret are root's only
    assert stat.S_IMODE(os.stat(run_root / SOCKET_FILE).st_mode) == 0o600
    for path in (runtime.config.state_root / "permissions.json", runtime.data_dir(holder.instance_id) / "config.json",
                 runtime.run_dir(holder.instance_id) / "config.json"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
        assert secret in path.read_text()


def test_hostile_requests_are_refused_and_the_server_keeps_answering(started) -> None:
    runtime, holder, _ = started
    secret = printed_secret(runtime, holder.instance_id)
    run_root = runtime.config.run_root
    cases = {
        b"not json\n": "not one line of JSON",
        b"[1, 2]\n": "must be a JSON object",
        json.dumps({"secret": secret}).encode() + b"\n": "server",
        json.dumps({"secret": secret.upper(), "server": "vis"}).encode() + b"\n": "UUIDv4",
        json.dumps({"secret": secret, "server": "vis", "extra": 1}).encode() + b"\n": "unknown field",
        json.dumps({"secret": secret, "server": "vis", "function": "Signal.Speed"}).encode() + b"\n": "together",
        json.dumps({"secret": secret, "server": "vis", "function": "a", "access": "x"}).encode() + b"\n": "access",
        json.dumps({"secret": secret, "server": "v is"}).encode() + b"\n": "printable",
        json.dumps({"secret": secret, "server": "vis", "version": 2}).encode() + b"\n": "version",
        b"\xff\xfe\n": "not one line of JSON",
        b"x" * (MAX_REQUEST_BYTES + 10) + b"\n": "at most 4096 bytes",
    }
    for data, expected in cases.items():
        answer = raw_request(run_root, data)
        assert answer["ok"] is False and answer["code"] == "BadRequest", (data[:60], answer)
        assert expected in answer["error"], (data[:60], answer)
    # a client that sends half a request and then nothing is answered (refused) at the deadline
    silent = raw_request(run_root, b'{"secret": ', close_write=False)
    assert silent["code"] == "BadRequest" and "within 2 s" in silent["error"]
    # ... and the server still answers a good request afterwards
    assert query_permissions(run_root, secret, "vis")["ok"] is True


def test_the_secret_lasts_while_registered_and_is_refused_while_stopped(started) -> None:
    runtime, holder, _ = started
    run_root = runtime.config.run_root
    secret = printed_secret(runtime, holder.instance_id)
    package = runtime.status(holder.instance_id).package

    runtime.stop(holder.instance_id)
    stopped = query_permissions(run_root, secret, "vis")  # the other instance keeps the server up
    assert (stopped["ok"], stopped["code"]) == (False, "UnknownSecret")
    runtime.start(holder, package)
    assert printed_secret(runtime, holder.instance_id, occurrence=2) == secret  # same identity, same secret
    assert query_permissions(run_root, secret, "vis")["ok"] is True

    runtime.remove(holder.instance_id)  # unregistered with the instance
    assert holder.instance_id not in (runtime.config.state_root / "permissions.json").read_text()
    assert query_permissions(run_root, secret, "vis")["code"] == "UnknownSecret"
    runtime.start(holder, package)
    fresh = printed_secret(runtime, holder.instance_id)
    assert UUID4.fullmatch(fresh) and fresh != secret
    assert query_permissions(run_root, fresh, "vis")["ok"] is True
    assert wait_for_status(runtime, holder.instance_id, lambda s: s.phase == Phase.RUNNING, what="Running")


def test_aosctl_permissions_asks_the_socket(started, capsys: pytest.CaptureFixture[str]) -> None:
    runtime, holder, _ = started
    secret = printed_secret(runtime, holder.instance_id)
    run_dir = str(runtime.config.run_root)
    assert main(["permissions", secret, "vis", "--run-dir", run_dir]) == 0
    out = capsys.readouterr().out
    assert holder.instance_id in out and "Signal.Doors.*" in out and "rw" in out
    assert main(["permissions", secret, "vis", "--function", "Signal.Speed", "--access", "w", "--run-dir", run_dir,
                 "-o", "json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["kind"] == "Permissions" and document["allowed"] is False
    assert main(["permissions", str(uuid.uuid4()), "vis", "--run-dir", run_dir]) == 1
    assert "UnknownSecret" in capsys.readouterr().err
    assert main(["permissions", secret, "vis", "--run-dir", str(runtime.config.run_root / "nowhere")]) == 3
