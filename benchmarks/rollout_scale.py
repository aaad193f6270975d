"""A rollout over 200 simulated devices on the real control plane (tools/cluster.py).

Real: etcd, kube-apiserver, kube-controller-manager, the CRDs, docker-registry, `aosctl
operator` (real builds and pushes), every device's AgentLoop (watch, status reports).
Simulated: the devices' runtime (tests/e2e/rollout_fleet.py: an instance starts in 0.5-1.5 s),
so the figures are the control plane's and the planner's, not runc's.

Printed, from one run: seconds from the spec change to every device running the new revision
with `maxUnavailable: 10%`, and for the baseline `100%` (every device at once, the behaviour
before rollouts), the most devices seen unavailable at once (sampled), and the API requests of
all clients but the benchmark (operator, agents) per device updated, from kube-apiserver's own
`apiserver_request_total` counters, by verb.

Run: .venv/bin/python -m benchmarks.rollout_scale [--devices 200] [--max-unavailable 10%]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from tests.e2e.rollout_fleet import rollout_fleet, unavailable_devices

_SAMPLE = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$')


def request_counts(plane) -> Counter[str]:  # type: ignore[no-untyped-def]
    text = plane.request("GET", "/metrics", raw=True).decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group("labels")))
            counts[labels.get("verb", "?")] += int(float(match.group("value")))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--max-unavailable", default="10%")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aos-rollout-bench-") as work, rollout_fleet(
            Path(work), args.devices, resync=10.0, heartbeat=30.0) as fleet:
        fleet.service("bench", "1.0.0", {"rollingUpdate": {"maxUnavailable": args.max_unavailable}})

        def settled(revision: int) -> bool:
            rollout = fleet.rollout("bench")
            if rollout.get("revision") != revision or rollout.get("phase") != "Complete":
                return False
            digest = fleet.revision_digest("bench", revision)
            instances = fleet.instances("bench")
            return len(instances) == args.devices and all(
                i["spec"]["image"]["digest"] == digest and (i.get("status") or {}).get("phase") == "Running"
                for i in instances)

        started = time.perf_counter()
        while not settled(1):
            if time.perf_counter() - started > 900:
                raise SystemExit("the first revision did not reach every device within 15 min")
            time.sleep(1.0)
        print(f"{args.devices} devices on revision 1 after {time.perf_counter() - started:.1f} s", flush=True)
        time.sleep(5)  # heartbeats and reports drain
        results = []
        for revision, budget in ((2, args.max_unavailable), (3, "100%")):
            peak = 0
            stop = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not stop.is_set():
                    peak = max(peak, len(unavailable_devices(fleet.instances("bench"))))
                    stop.wait(0.5)

            before = request_counts(fleet.plane)
            started = time.perf_counter()
            fleet.set_version("bench", f"{revision}.0.0", strategy={"rollingUpdate": {"maxUnavailable": budget}})
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            while not settled(revision):
                if time.perf_counter() - started > 1800:
                    raise SystemExit("the rollout did not finish within 30 min")
                time.sleep(0.5)
            elapsed = time.perf_counter() - started
            stop.set()
            sampler.join()
            after = request_counts(fleet.plane)
            # The benchmark's own requests are LISTs (its sampler and polling); operator and agents
            # watch instead, so LISTs are left out.
            delta = {verb: after[verb] - before[verb] for verb in after if after[verb] - before[verb] > 0 and verb != "LIST"}
            results.append((budget, elapsed, peak, delta))
            time.sleep(5)
    for budget, elapsed, peak, delta in results:
        total = sum(delta.values())
        print(f"maxUnavailable {budget}: {elapsed:.1f} s from the spec change to all {args.devices} devices updated "
              f"and Running; at most {peak} unavailable at once (sampled every 0.5 s); {total} API requests = "
              f"{total / args.devices:.1f} per device update ({', '.join(f'{v} {n}' for v, n in sorted(delta.items()))})")
    print(f"ratio: {args.max_unavailable} takes {results[0][1] / results[1][1]:.1f}x the time of the baseline "
          "(100%, every device at once, as before rollouts)")


if __name__ == "__main__":
    main()
