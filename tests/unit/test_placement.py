"""Placement, naming, selectors and conditions of the controller (pure parts)."""

from __future__ import annotations

import uuid

import pytest

from aos_operator.api import naming
from aos_operator.api.models import LabelSelector
from aos_operator.api.selectors import equality_selector, matches
from aos_operator.controller.conditions import Wanted, merge_conditions, rollout_conditions
from aos_operator.controller.placement import (
    DeviceView,
    InstanceView,
    PackageRef,
    Reservation,
    SelectionMemo,
    ServiceView,
    plan,
    reservation,
)
from aos_operator.controller.rollout_pass import _counts

AMD = PackageRef("reg:5000/aos/ns/svc", "sha256:" + "a" * 64, "amd64")
ARM = PackageRef("reg:5000/aos/ns/svc", "sha256:" + "b" * 64, "arm64")


def service(**changes: object) -> ServiceView:
    values: dict[str, object] = dict(
        namespace="ns", name="svc", uid="uid-1", service_id="9931560c-be75-4f60-9abf-08297d905332",
        subject="default", version="1.0.0", instances_per_device=1, runners=("runc", "crun"),
        selector=LabelSelector(matchLabels={"zone": "a"}), packages={"amd64": AMD},
    )
    values.update(changes)
    return ServiceView(**values)  # type: ignore[arg-type]


def device(name: str, zone: str = "a", **changes: object) -> DeviceView:
    values: dict[str, object] = dict(name=name, labels={"zone": zone}, ready=True, architecture="amd64")
    values.update(changes)
    return DeviceView(**values)  # type: ignore[arg-type]


def existing(name: str, dev: str, index: int = 0, digest: str = AMD.digest, **changes: object) -> InstanceView:
    values: dict[str, object] = dict(name=name, device=dev, index=index, digest=digest, deleting=False)
    values.update(changes)
    return InstanceView(**values)  # type: ignore[arg-type]


def test_selector_picks_devices_and_creates_one_instance_each() -> None:
    result = plan(service(instances_per_device=2), [device("d1"), device("d2", zone="b")], [])
    names = [body["metadata"]["name"] for body in result.create]
    assert names == ["svc-d1-0", "svc-d1-1"]
    body = result.create[0]
    assert body["metadata"]["labels"] == {"aosedge.io/service": "svc", "aosedge.io/device": "d1", "aosedge.io/index": "0"}
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert body["metadata"]["finalizers"] == ["aosedge.io/instances"]
    spec = body["spec"]
    assert spec["image"] == {"reference": f"{AMD.repository}@{AMD.digest}", "digest": AMD.digest, "architecture": "amd64"}
    assert spec["instanceId"] == str(uuid.uuid3(uuid.NAMESPACE_OID, f"{spec['serviceId']}:default:0"))
    assert result.desired == 2 and not result.update and not result.delete


@pytest.mark.parametrize(
    "candidate",
    [
        device("d1", ready=False),
        device("d1", unschedulable=True),
        device("d1", architecture="arm64"),
        device("d1", runners=("xrun",)),
        device("d1", zone="b"),
    ],
    ids=["not-ready", "unschedulable", "other-arch", "no-runner", "not-selected"],
)
def test_ineligible_devices_get_no_new_instances(candidate: DeviceView) -> None:
    result = plan(service(), [candidate], [])
    assert result.empty and result.desired == 0


def test_multi_arch_service_uses_each_devices_package() -> None:
    result = plan(service(packages={"amd64": AMD, "arm64": ARM}), [device("x"), device("y", architecture="arm64")], [])
    assert [body["spec"]["image"]["digest"] for body in result.create] == [AMD.digest, ARM.digest]


def test_device_leaving_the_selector_loses_its_instances() -> None:
    result = plan(service(), [device("d1", zone="b"), device("d2")], [existing("svc-d1-0", "d1")])
    assert result.delete == ["svc-d1-0"]
    assert [body["metadata"]["name"] for body in result.create] == ["svc-d2-0"]


def test_deleted_device_loses_its_instances() -> None:
    assert plan(service(), [], [existing("svc-gone-0", "gone")]).delete == ["svc-gone-0"]


def test_device_that_goes_offline_keeps_its_instances_but_gets_no_more() -> None:
    offline = device("d1", ready=False)
    result = plan(service(instances_per_device=2), [offline], [existing("svc-d1-0", "d1")])
    assert result.empty and result.desired == 1


def test_new_package_updates_instances_in_place() -> None:
    old = existing("svc-d1-0", "d1", digest="sha256:" + "0" * 64)
    result = plan(service(), [device("d1")], [old])
    assert [name for name, _ in result.update] == ["svc-d1-0"]
    assert result.update[0][1]["spec"]["image"]["digest"] == AMD.digest


def test_fewer_instances_per_device_removes_the_highest_indices() -> None:
    current = [existing("svc-d1-0", "d1", 0), existing("svc-d1-1", "d1", 1), existing("svc-d1-2", "d1", 2)]
    assert plan(service(), [device("d1")], current).delete == ["svc-d1-1", "svc-d1-2"]


def test_instances_being_deleted_are_left_alone() -> None:
    leaving = existing("svc-d1-0", "d1", deleting=True)
    result = plan(service(), [device("d1")], [leaving])
    assert result.empty


def test_plan_is_stable_when_nothing_changes() -> None:
    first = plan(service(), [device("d1")], [])
    created = InstanceView.from_body(first.create[0])
    assert plan(service(), [device("d1")], [created]).empty


def test_selectors() -> None:
    selector = LabelSelector.model_validate(
        {"matchLabels": {"a": "1"}, "matchExpressions": [
            {"key": "b", "operator": "In", "values": ["x", "y"]},
            {"key": "c", "operator": "NotIn", "values": ["z"]},
            {"key": "d", "operator": "Exists"},
            {"key": "e", "operator": "DoesNotExist"},
        ]}
    )
    assert matches(selector, {"a": "1", "b": "x", "d": ""})
    assert not matches(selector, {"a": "1", "b": "q", "d": ""})
    assert not matches(selector, {"a": "1", "b": "x", "c": "z", "d": ""})
    assert not matches(selector, {"a": "1", "b": "x"})
    assert not matches(selector, {"a": "1", "b": "x", "d": "", "e": "1"})
    assert matches(None, {}) and matches(LabelSelector(), {"any": "thing"})
    assert equality_selector({"b": "2", "a": "1"}) == "a=1,b=2"


def test_names_fit_kubernetes_limits() -> None:
    long_device = "node-" + "x" * 300
    name = naming.instance_name("svc", long_device, 3)
    assert len(name) <= 253 and name != naming.instance_name("svc", long_device + "y", 3)
    value = naming.label_value(long_device)
    assert len(value) <= 63 and value[0].isalnum() and value[-1].isalnum()
    assert naming.instance_name("svc", "Node_A.local", 0) == "svc-node-a-local-0"
    assert naming.service_id(None, "ns", "svc") == naming.service_id(None, "ns", "svc")
    assert naming.service_id(None, "ns", "svc") != naming.service_id(None, "other", "svc")
    assert naming.service_id("given", "ns", "svc") == "given"
    assert naming.repository("aos/", "Team-A", "hello") == "aos/team-a/hello"


def test_condition_transition_time_moves_only_on_status_change() -> None:
    first = merge_conditions(None, [Wanted("Ready", False, "RollingOut")], 1, at="t1")
    second = merge_conditions(first, [Wanted("Ready", False, "Other", "m")], 2, at="t2")
    third = merge_conditions(second, [Wanted("Ready", True, "InstancesReady")], 2, at="t3")
    assert first[0]["lastTransitionTime"] == "t1"
    assert second[0]["lastTransitionTime"] == "t1" and second[0]["reason"] == "Other"
    assert second[0]["observedGeneration"] == 2
    assert third[0]["lastTransitionTime"] == "t3" and third[0]["status"] == "True"


def test_counts_and_rollout_conditions() -> None:
    digests = {AMD.digest}
    running = existing("a", "d1", phase="Running", running_digest=AMD.digest)
    stale = existing("b", "d2", digest="sha256:" + "0" * 64, phase="Running", running_digest="sha256:" + "0" * 64)
    starting = existing("c", "d3", phase="Starting")
    failed = existing("d", "d4", phase="Failed", reason="CrashLoop")
    counts = _counts([running, stale, starting, failed], digests, desired=4)
    # ready: running the package it is assigned (the old one too, mid-rollout); updated: assigned the current one
    assert (counts.desired, counts.ready, counts.updated, counts.failed) == (4, 2, 3, 1)
    assert counts.ratio == "2/4"
    by_type = {w.type: w for w in rollout_conditions(counts)}
    assert not by_type["Ready"].status and by_type["Stalled"].status and by_type["Ready"].reason == "InstancesFailed"
    done = _counts([running], digests, desired=1)
    assert {w.type: w.status for w in rollout_conditions(done)} == {"Ready": True, "Reconciling": False, "Stalled": False}
    assert rollout_conditions(_counts([], digests, 0))[0].reason == "NoMatchingDevices"


def test_reservation_is_requested_resources_clamped_else_half_the_quota_and_none_when_skipped() -> None:
    assert reservation(5000, 1 << 30, None, None, False) == Reservation(2500, 1 << 29)  # AosEdge's 50 %
    assert reservation(5000, 1 << 30, 8000, 1 << 20, False) == Reservation(5000, 1 << 20)  # clamped to the quota
    assert reservation(None, None, 300, None, False) == Reservation(300, 0)
    # skipResourceLimits: nothing reserved (the device still applies every quota)
    assert reservation(5000, 1 << 30, 8000, 1 << 20, True) == Reservation()


def test_placement_reserves_dmips_and_memory_and_skip_resource_limits_reserves_nothing() -> None:
    small = device("d1", dmips=10_000, memory=1 << 30)
    heavy = service(instances_per_device=3, reservation=Reservation(4000, 1 << 28))
    result = plan(heavy, [small], [])
    assert [body["metadata"]["name"] for body in result.create] == ["svc-d1-0", "svc-d1-1"]  # a third does not fit
    assert result.create[0]["spec"]["reserved"] == {"cpuDmips": 4000, "ramBytes": 1 << 28}
    # what other services reserve there counts too
    crowded = plan(heavy, [small], [], reserved_elsewhere={"d1": Reservation(7000, 0)})
    assert [body["metadata"]["name"] for body in crowded.create] == []
    # kept instances count first, and are never dropped for lack of room
    kept = plan(heavy, [small], [existing("svc-d1-0", "d1", reserved=Reservation(4000, 1 << 28))],
                reserved_elsewhere={"d1": Reservation(5000, 0)})
    assert kept.create == [] and kept.delete == [] and kept.desired == 1
    skipped = plan(service(instances_per_device=3, reservation=Reservation()), [small], [], reserved_elsewhere={"d1": Reservation(10_000, 1 << 30)})
    assert len(skipped.create) == 3
    assert skipped.create[0]["spec"]["reserved"] == {"cpuDmips": 0, "ramBytes": 0}
    # a device that reports no capacity is not checked
    assert len(plan(heavy, [device("d2")], [], reserved_elsewhere={"d2": Reservation(10**9, 10**12)}).create) == 3


def test_selection_memo_selects_once_per_fleet_snapshot_and_selector() -> None:
    memo = SelectionMemo()
    fleet = {name: device(name, zone) for name, zone in (("d1", "a"), ("d2", "b"), ("d3", "a"))}
    zone_a = LabelSelector(matchLabels={"zone": "a"})
    first = memo.select(zone_a, fleet)
    assert [d.name for d in first] == ["d1", "d3"]
    assert memo.select(LabelSelector(matchLabels={"zone": "a"}), fleet) is first  # an equal selector: kept
    assert [d.name for d in memo.select(LabelSelector(matchLabels={"zone": "b"}), fleet)] == ["d2"]
    assert len(memo.select(None, fleet)) == 3
    expression = LabelSelector(matchExpressions=[{"key": "zone", "operator": "In", "values": ["b", "a"]}])
    assert len(memo.select(expression, fleet)) == 3
    assert memo.select(LabelSelector(matchExpressions=[{"key": "zone", "operator": "In", "values": ["b"]}]), fleet) != first
    relabelled = {**fleet, "d3": device("d3", "b")}  # a new snapshot: selected again
    assert [d.name for d in memo.select(zone_a, relabelled)] == ["d1"]
