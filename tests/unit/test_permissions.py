"""Permissions, pure parts: the service config's map checked, AosEdge's path-mask match, the
socket protocol's request checks, and AOS_SECRET in the runtime spec (runtime/permissions.py,
runtime/spec.py). The socket under real runc: tests/integration/test_runtime_permissions.py."""

from __future__ import annotations

import json
import uuid

import pytest

from aos_operator.errors import PackageError
from aos_operator.runtime.identity import InstanceIdentity
from aos_operator.runtime.permissions import (
    MAX_REQUEST_BYTES,
    BadRequest,
    allowed,
    mask_matches,
    parse_permissions,
    parse_request,
)
from aos_operator.runtime.service_config import ImageConfig, ServiceConfig, parse_service_config
from aos_operator.runtime.spec import InstanceSetup, NodeFacts, build_runtime_spec

SECRET = str(uuid.uuid4())


@pytest.mark.parametrize(("mask", "function", "expected"), [
    ("Signal.Doors.*", "Signal.Doors.FrontLeft", True),
    ("Signal.Doors.*", "Signal.Doors.FrontLeft.IsOpen", True),
    ("Signal.Doors.*", "Signal.Doors", False),  # `*` stands for at least one segment
    ("Signal.Doors", "Signal.Doors.FrontLeft", True),  # below what the mask names
    ("Signal.Doors", "Signal.Door", False),
    ("Signal.*.IsOpen", "Signal.Doors.FrontLeft.IsOpen", True),
    ("Signal.*.IsOpen", "Signal.Doors.FrontLeft.IsLocked", False),
    ("signal.doors", "Signal.Doors", False),  # segments compare exactly
    ("*", "Anything.At.All", True),
])
def test_path_masks_match_as_aosedge_vis_does(mask: str, function: str, expected: bool) -> None:
    assert mask_matches(mask, function) is expected


def test_a_mask_of_many_stars_against_a_long_path_is_decided() -> None:
    assert mask_matches(".".join(["*"] * 100) + ".x", ".".join(["a"] * 120)) is False


def test_access_letters_are_compared_case_insensitively_and_all_must_be_granted() -> None:
    functions = {"Signal.Doors.*": "RW", "Signal.Speed": "r"}
    assert allowed(functions, "Signal.Doors.A", "r") and allowed(functions, "Signal.Doors.A", "rw")
    assert allowed(functions, "Signal.Speed", "R")
    assert not allowed(functions, "Signal.Speed", "rw")
    assert not allowed(functions, "Signal.Engine", "r")
    assert parse_service_config({"permissions": {"vis": {"a": "RW", "b": "wr", "c": "W"}}}, "x").permissions


@pytest.mark.parametrize(("value", "expected"), [
    ([], "expected an object"),
    ({"vis": "rw"}, "expected an object {function"),
    ({"vis": {"a": "x"}}, "expected r, w or rw"),
    ({"vis": {"a": 1}}, "expected r, w or rw"),
    ({"vis": {"a": "ww"}}, "expected r, w or rw"),
    ({"vis": {"a": "rr"}}, "expected r, w or rw"),
    ({"v is": {"a": "r"}}, "printable"),
    ({"vis": {"a\nb": "r"}}, "printable"),
    ({"vis": {"x" * 300: "r"}}, "1 to 256"),
    ({f"s{i}": {"a": "r"} for i in range(65)}, "at most 64"),
    ({"vis": {f"f{i}": "r" for i in range(1025)}}, "at most 1024"),
])
def test_hostile_permissions_in_a_package_are_refused_naming_the_field(value: object, expected: str) -> None:
    with pytest.raises(PackageError, match="aosService.permissions") as error:
        parse_service_config({"permissions": value}, "aosService")
    assert expected in error.value.message


def test_permissions_are_read_from_the_service_config() -> None:
    config = parse_service_config({"Permissions": {"vis": {"Signal.*": "rw"}}}, "aosService")
    assert config.permissions == {"vis": {"Signal.*": "rw"}}
    assert parse_permissions(None, "x") == {} and parse_service_config({}, "s").permissions == {}


def test_requests_are_checked_field_by_field() -> None:
    request = parse_request(json.dumps({"secret": SECRET, "server": "vis", "function": "A.B", "access": "rw"}).encode())
    assert (request.secret, request.server, request.function, request.access) == (SECRET, "vis", "A.B", "rw")
    for bad in [b"", b"{", b"null", json.dumps({"secret": "x", "server": "vis"}).encode(),
                json.dumps({"secret": str(uuid.uuid1()), "server": "vis"}).encode(),  # not a v4
                json.dumps({"secret": SECRET, "server": 5}).encode(),
                json.dumps({"secret": SECRET, "server": "vis", "access": "r"}).encode(),
                b"{" + b" " * MAX_REQUEST_BYTES + b"}"]:
        with pytest.raises(BadRequest):
            parse_request(bad)


def test_the_spec_carries_the_secret_it_is_given_and_none_without() -> None:
    image = ImageConfig(os="linux", architecture="amd64", entrypoint=(), cmd=("/bin/true",), working_dir="", env=())
    identity = InstanceIdentity("svc", "subject", 0)
    setup = InstanceSetup(identity=identity, uid=5000, gid=5000, rootfs="/r", cgroups_path="/aos/x", secret=SECRET)
    node = NodeFacts(cores=2, dmips=20000)
    env = build_runtime_spec(image, ServiceConfig(), setup, node)["process"]["env"]
    assert f"AOS_SECRET={SECRET}" in env
    without = InstanceSetup(identity=identity, uid=5000, gid=5000, rootfs="/r", cgroups_path="/aos/x")
    assert not any(e.startswith("AOS_SECRET=") for e in build_runtime_spec(image, ServiceConfig(), without, node)["process"]["env"])
