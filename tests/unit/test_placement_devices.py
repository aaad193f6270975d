"""Placement by host devices and resources (pure): AosEdge's getNodesByDevices /
getNodesByResources and sharedCount, with the NoDeviceFits reasons."""

from __future__ import annotations

import random

from aos_operator.controller.placement import (
    DeviceView,
    InstanceView,
    PackageRef,
    Reservation,
    ReservationBook,
    ServiceView,
    describe_misfits,
    no_device_fits,
    plan,
    reservation,
    wanted_keys,
)

AMD = PackageRef("reg:5000/aos/ns/svc", "sha256:" + "a" * 64, "amd64")


def service(devices: tuple[str, ...] = (), resources: tuple[str, ...] = (), per_device: int = 1,
            **changes: object) -> ServiceView:
    values: dict[str, object] = dict(
        namespace="ns", name="svc", uid="uid-1", service_id="svc-id", subject="default", version="1.0.0",
        instances_per_device=per_device, runners=(), selector=None, packages={"amd64": AMD},
        reservation=reservation(None, None, None, None, False, devices=devices), resources=resources,
    )
    values.update(changes)
    return ServiceView(**values)  # type: ignore[arg-type]


def device(name: str, devices: dict[str, int] | None = None, resources: tuple[str, ...] = (), **changes: object) -> DeviceView:
    values: dict[str, object] = dict(name=name, labels={}, ready=True, architecture="amd64",
                                     devices=tuple(sorted((devices or {}).items())), resources=resources)
    values.update(changes)
    return DeviceView(**values)  # type: ignore[arg-type]


def held(name: str, on: str, index: int, devices: tuple[str, ...]) -> InstanceView:
    return InstanceView(name=name, device=on, index=index, digest=AMD.digest, deleting=False,
                        reserved=Reservation(devices=devices))


def test_only_devices_offering_every_device_and_resource_get_instances() -> None:
    svc = service(devices=("camera0",), resources=("vis",))
    devices = [device("a", {"camera0": 0}, ("vis",)), device("b", {"camera0": 0}), device("c", resources=("vis",)),
               device("d")]
    assert wanted_keys(svc, devices, []) == {("a", 0)}
    assert no_device_fits(svc, devices, []) == {"b": ["resource vis"], "c": ["device camera0"],
                                                "d": ["device camera0", "resource vis"]}
    created = plan(svc, devices, []).create
    assert [body["spec"]["device"] for body in created] == ["a"]
    assert created[0]["spec"]["reserved"]["devices"] == ["camera0"]  # what the share counting reads back


def test_shared_count_is_counted_over_every_service_on_the_device() -> None:
    svc = service(devices=("camera0",), per_device=3)
    one = [device("a", {"camera0": 2})]
    # two instances of this service take both shares; the third is not placed
    assert wanted_keys(svc, one, []) == {("a", 0), ("a", 1)}
    assert no_device_fits(svc, one, []) == {"a": ["device camera0 (sharedCount 2, all in use)"]}
    # another service already holds one share: one instance left for this one
    elsewhere = {"a": Reservation(devices=("camera0",))}
    assert wanted_keys(svc, one, [], elsewhere) == {("a", 0)}
    # with every share held elsewhere, none
    full = {"a": Reservation(devices=("camera0", "camera0"))}
    assert wanted_keys(svc, one, [], full) == set()
    assert "a: device camera0 (sharedCount 2, all in use)" in describe_misfits(no_device_fits(svc, one, [], full))
    # sharedCount 0: any number
    assert len(wanted_keys(svc, [device("a", {"camera0": 0})], [], full)) == 3


def test_kept_instances_hold_their_shares() -> None:
    svc = service(devices=("camera0",), per_device=2)
    one = [device("a", {"camera0": 1})]
    existing = [held("svc-a-1", "a", 1, ("camera0",))]
    assert wanted_keys(svc, one, existing) == {("a", 1)}  # index 1 keeps the share, index 0 waits
    assert no_device_fits(svc, one, existing) == {"a": ["device camera0 (sharedCount 1, all in use)"]}


def test_skip_resource_limits_still_takes_a_device_share() -> None:
    shares = reservation(5000, 1 << 20, None, None, True, devices=["camera0", "camera0"])
    assert shares == Reservation(0, 0, ("camera0",))
    assert Reservation.from_spec(shares.to_spec()) == shares
    assert Reservation().to_spec() == {"cpuDmips": 0, "ramBytes": 0}  # unchanged for services without devices
    assert Reservation.from_spec({"devices": "camera0"}) == Reservation()  # a hostile shape counts as nothing


def test_a_device_only_reporting_names_offers_them_without_limit() -> None:
    body = {"metadata": {"name": "old"}, "status": {"hostDevices": ["camera0"], "resources": ["vis", 3]}}
    view = DeviceView.from_body(body)
    assert view.devices == (("camera0", 0),) and view.resources == ("vis",)
    body["status"]["devices"] = [{"name": "camera0", "sharedCount": 2, "used": 1, "free": 1}, {"name": 5}]
    assert DeviceView.from_body(body).devices == (("camera0", 2),)


def test_services_without_devices_are_not_reported() -> None:
    assert no_device_fits(service(), [device("a")], []) == {}
    # a device that is not Ready is no candidate, so it is no misfit either
    assert no_device_fits(service(devices=("x",)), [device("a", ready=False)], []) == {}


def _walked(instances: dict[tuple[str, str], dict], namespace: str, service: str) -> dict[str, tuple]:
    """What every other service reserves per device, summed by walking every instance."""
    totals: dict[str, Reservation] = {}
    for body in instances.values():
        spec = body["spec"]
        if (body["metadata"]["namespace"], spec["service"]) == (namespace, service):
            continue
        if body["metadata"].get("deletionTimestamp") or not spec.get("device"):
            continue
        totals[spec["device"]] = totals.get(spec["device"], Reservation()) + Reservation.from_spec(spec.get("reserved"))
    return {device: (r.cpu_dmips, r.ram, sorted(r.devices)) for device, r in totals.items()}


def test_the_reservation_book_from_events_equals_a_walk_over_every_instance() -> None:
    generator = random.Random(7)
    book, instances = ReservationBook(), {}
    services = [("ns-a", "alpha"), ("ns-a", "beta"), ("ns-b", "alpha")]
    for _ in range(3000):
        namespace, service = generator.choice(services)
        name = f"{service}-{generator.randrange(6)}"
        if generator.random() < 0.2:  # deleted (or never there)
            instances.pop((namespace, name), None)
            book.update(namespace, name, None)
        else:
            body = {"metadata": {"namespace": namespace, "name": name}, "spec": {
                "service": service, "device": generator.choice(["d1", "d2", "d3", ""]),
                "reserved": {"cpuDmips": generator.randrange(500), "ramBytes": generator.randrange(1 << 20),
                             "devices": generator.sample(["gpu", "camera", "uart"], generator.randrange(3))}}}
            if generator.random() < 0.1:
                body["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
            instances[(namespace, name)] = body
            book.update(namespace, name, body)
        for who in services:
            found = {device: (r.cpu_dmips, r.ram, sorted(r.devices)) for device, r in book.elsewhere(*who).items()}
            assert found == _walked(instances, *who)
    for key in list(instances):  # everything gone: nothing left in the book
        book.update(*key, None)
    assert all(book.elsewhere(*who) == {} for who in services)
    assert book._devices == {} and book._services == {}


def test_a_pass_sees_each_device_of_elsewhere_as_it_first_read_it() -> None:
    book = ReservationBook()

    def instance(name: str, service: str, dmips: int) -> dict:
        return {"metadata": {"namespace": "ns", "name": name},
                "spec": {"service": service, "device": "d1", "reserved": {"cpuDmips": dmips}}}

    book.update("ns", "other-0", instance("other-0", "other", 300))
    seen = book.elsewhere("ns", "mine")
    assert seen["d1"].cpu_dmips == 300 and "d2" not in seen
    book.update("ns", "other-1", instance("other-1", "other", 200))
    assert seen["d1"].cpu_dmips == 300, "one pass plans from one reading"
    assert book.elsewhere("ns", "mine")["d1"].cpu_dmips == 500, "the next pass reads again"


def test_devices_whose_cpu_or_ram_is_reserved_are_named_with_what_is_left() -> None:
    svc = service(reservation=Reservation(2500, 32 << 20))
    roomy, full_cpu, full_ram = (device("a", dmips=40000, memory=1 << 30), device("b", dmips=4000, memory=1 << 30),
                                 device("c", dmips=40000, memory=48 << 20))
    others = {"b": Reservation(3000, 0), "c": Reservation(0, 20 << 20)}
    assert {key[0] for key in wanted_keys(svc, [roomy, full_cpu, full_ram], [], others)} == {"a"}
    misfits = no_device_fits(svc, [roomy, full_cpu, full_ram], [], others)
    assert misfits == {"b": ["CPU (3000 of 4000 DMIPS reserved, an instance reserves 2500)"],
                       "c": ["RAM (20 of 48 MiB reserved, an instance reserves 32)"]}
    assert no_device_fits(svc, [roomy], [], others) == {}, "nothing stopped an instance"
    # What a device keeps counts first: its own instance holds its place, no misfit for it.
    kept = InstanceView(name="svc-b", device="b", index=0, digest=AMD.digest, deleting=False, reserved=svc.reservation)
    assert no_device_fits(svc, [full_cpu], [kept], others) == {}


def test_a_pass_works_out_only_the_devices_it_asks_about() -> None:
    book = ReservationBook()
    for number in range(50):  # a fleet with something reserved on every device
        book.update("ns", f"other-{number}", {"metadata": {"namespace": "ns", "name": f"other-{number}"},
                                              "spec": {"service": "other", "device": f"d{number}",
                                                       "reserved": {"cpuDmips": 100}}})
    seen = book.elsewhere("ns", "svc")
    svc = service(reservation=Reservation(100, 0))
    wanted_keys(svc, [device("d7", dmips=1000)], [], seen)
    no_device_fits(svc, [device("d7", dmips=1000)], [], seen)
    assert set(seen._read) == {"d7"}  # type: ignore[attr-defined]  # not the other 49
