"""Throughput of the test API emulator against stock KMock, and watch fan-out with selectors.

Baseline "kmock-0.8": KMock's own KubernetesEmulator doing the same create / get / status-patch /
list through the sync `kubernetes` client. The harness does more per request (stamping, events,
selectors), but KMock's reaction matching rescans every recorded request on each request, so the
baseline slows down as requests accumulate; the harness bypasses that matching while no test
reaction is registered. The fan-out part has N agents watch their own
instances with a label selector while the "operator" updates all of them; it prints what each
agent received (events and bytes, from the harness counters) against the unfiltered stream a
selector-less server would send. Numbers are from one run on a shared machine: provisional.

Run: .venv/bin/python -m benchmarks.kube_emulator [--objects 300] [--agents 8]
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import kmock
import kubernetes

from tests.harness import EmulatorThread, sync_api_client

GROUP, VERSION, PLURAL, NAMESPACE = "aosedge.io", "v1alpha1", "aosserviceinstances", "bench"


def instance(index: int, devices: int) -> dict[str, Any]:
    device = f"dev-{index % devices}"
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AosServiceInstance",
            "metadata": {"name": f"inst-{index}", "namespace": NAMESPACE,
                         "labels": {"aosedge.io/device": device}, "resourceVersion": None},
            "spec": {"service": "svc", "device": device, "index": index}}


def crud_rounds(url: str, objects: int, devices: int) -> float:
    """Seconds for create, get, status patch of every object plus one selector list per device."""
    api = kubernetes.client.CustomObjectsApi(sync_api_client(url, "bench"))
    started = time.perf_counter()
    for index in range(objects):
        body = instance(index, devices)
        del body["metadata"]["resourceVersion"]
        api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
    for index in range(objects):
        api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, f"inst-{index}")
        api.patch_namespaced_custom_object_status(GROUP, VERSION, NAMESPACE, PLURAL, f"inst-{index}",
                                                  {"status": {"phase": "Running"}})
    for device in range(devices):
        api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, label_selector=f"aosedge.io/device=dev-{device}")
    return time.perf_counter() - started


class StockKMockThread:
    """KMock's own KubernetesEmulator on a loop in a thread, with what it needs declared."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            emulator.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
                kind="AosServiceInstance", namespaced=True, subresources={"status"},
                verbs={"get", "list", "watch", "create", "patch"})
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> StockKMockThread:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def fan_out(objects: int, agents: int) -> dict[str, Any]:
    """Each agent watches its device's instances; every instance gets one status update."""
    with EmulatorThread() as harness:
        harness.call(lambda kube: kube.ensure_namespace(NAMESPACE))
        operator = kubernetes.client.CustomObjectsApi(sync_api_client(harness.url, "aos-operator"))
        for index in range(objects):
            body = instance(index, agents)
            del body["metadata"]["resourceVersion"]
            operator.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
        start_version = harness.call(lambda kube: str(kube.revision))
        received = {f"dev-{device}": 0 for device in range(agents)}

        expected = {f"dev-{device}": len(range(device, objects, agents)) for device in range(agents)}

        def agent(device: str) -> None:
            api = kubernetes.client.CustomObjectsApi(sync_api_client(harness.url, f"aos-agent/{device}"))
            for event in kubernetes.watch.Watch().stream(
                    api.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL,
                    label_selector=f"aosedge.io/device={device}", resource_version=start_version, timeout_seconds=5):
                received[device] += 1
                if received[device] >= expected[device]:
                    return

        threads = [threading.Thread(target=agent, args=(device,)) for device in received]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # the watches open
        started = time.perf_counter()
        for index in range(objects):
            operator.patch_namespaced_custom_object_status(GROUP, VERSION, NAMESPACE, PLURAL, f"inst-{index}",
                                                           {"status": {"phase": "Running"}})
        for thread in threads:
            thread.join(30)
        elapsed = time.perf_counter() - started
        metrics = harness.call(lambda kube: kube.metrics.snapshot())
    agent_streams = {client: stream for client, stream in metrics["watch"].items() if client.startswith("aos-agent/")}
    return {"seconds": elapsed, "streams": agent_streams, "received": received}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--agents", type=int, default=8)
    args = parser.parse_args()

    def timed(setup: Callable[[], Any]) -> float:
        with setup() as server:
            if isinstance(server, EmulatorThread):
                server.call(lambda kube: kube.ensure_namespace(NAMESPACE))
            return crud_rounds(server.url, args.objects, args.agents)

    requests = 3 * args.objects + args.agents
    ours = timed(EmulatorThread)
    stock = timed(StockKMockThread)
    print(f"CRUD, {requests} requests through the sync client:")
    print(f"  kmock-0.8 (baseline) {stock:6.2f} s  {requests / stock:7.0f} req/s")
    print(f"  harness              {ours:6.2f} s  {requests / ours:7.0f} req/s  ratio harness/baseline time: {ours / stock:.2f}")

    result = fan_out(args.objects, args.agents)
    events = sum(stream["events"] for stream in result["streams"].values())
    size = sum(stream["bytes"] for stream in result["streams"].values())
    per_event = size / events if events else 0
    unfiltered = args.objects * args.agents
    print(f"Watch fan-out: {args.agents} agents, {args.objects} status updates, "
          f"delivered in {result['seconds']:.2f} s")
    print(f"  events sent to agents {events} (with no selector: {unfiltered}; ratio {events / unfiltered:.3f})")
    print(f"  bytes sent to agents  {size} ({per_event:.0f} per event)")
    print(f"  per agent events: {sorted(result['received'].values())}")


if __name__ == "__main__":
    main()
