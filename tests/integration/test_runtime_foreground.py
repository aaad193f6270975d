"""`aosctl run`'s engine: run_foreground streams output, prints limits, stops and cleans up."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import assert_nothing_left, wait_until

from aos_operator.errors import EXIT_FAILED, EXIT_OK
from aos_operator.runtime import NodeFacts, Phase, Reason, Runtime, RuntimeConfig, run_foreground

pytestmark = pytest.mark.root  # runc, mounts, loop devices, cgroups

PYTHON = "/usr/bin/python3"
TICKER = """
import os, time
for n in range(100000):
    print(f"tick {n} from {os.environ['AOS_INSTANCE_INDEX']}", flush=True)
    time.sleep(0.1)
"""


def test_two_instances_stream_prefixed_output_until_stopped(runtime_config: RuntimeConfig,
                                                           make_package: Callable[..., Path]) -> None:
    package = make_package({"app/tick.py": TICKER}, cmd=[PYTHON, "-u", "/app/tick.py"],
                           service_config={"quotas": {"cpuDmipsLimit": 3000, "ramLimit": 64 << 20}})
    output = io.StringIO()
    stop = threading.Event()

    def stop_when_both_ticked() -> None:
        wait_until(lambda: "[0] tick 2 from 0" in output.getvalue() and "[1] tick 2 from 1" in output.getvalue(),
                   what="both instances to print")
        stop.set()

    helper = threading.Thread(target=stop_when_both_ticked, daemon=True)
    helper.start()
    result = run_foreground(package, 2, NodeFacts(cores=2, dmips=10000), output, stop, config=runtime_config)
    helper.join()
    text = output.getvalue()
    assert result.interrupted and result.exit_code == EXIT_OK
    assert "[aos] limit cpu: CFS quota 60000 us per 100000 us = 0.60 CPU" in text  # 3000 of 10000 DMIPS, 2 cores
    assert "[aos] limit memory: 67108864 bytes (64.0 MiB), swap included" in text
    assert all(line.startswith(("[0] ", "[1] ", "[aos] ")) for line in text.splitlines())
    assert [s.phase for s in result.statuses] == [Phase.STOPPED, Phase.STOPPED]
    # each instance's address on the network, as the runtime gave it
    addresses = re.findall(r"\[aos\] instance \d: Running, address (10\.231\.\d+\.\d+)", text)
    assert len(set(addresses)) == 2
    assert_nothing_left(Runtime(runtime_config))


def test_ends_by_itself_when_the_service_gives_up(runtime_config: RuntimeConfig,
                                                  make_package: Callable[..., Path]) -> None:
    package = make_package({"app/fail.py": "print('failing', flush=True)\nraise SystemExit(4)\n"},
                           cmd=[PYTHON, "-u", "/app/fail.py"],
                           service_config={"runParameters": {"startBurst": 2, "startInterval": "PT30S",
                                                             "restartInterval": "PT0.1S"}})
    output = io.StringIO()
    result = run_foreground(package, 1, None, output, config=runtime_config)
    text = output.getvalue()
    assert not result.interrupted and result.exit_code == EXIT_FAILED
    assert text.count("failing\n") == 2 and "[0]" not in text  # no prefix for a single instance
    assert result.statuses[0].reason == Reason.CRASH_LOOP and result.statuses[0].exit_code == 4
    assert "Failed (CrashLoop), last exit code 4 (Crashed)" in text
    assert_nothing_left(Runtime(runtime_config))


DRIVER = """
import json, sys, threading
from pathlib import Path
from aos_operator.runtime import RuntimeConfig, run_foreground, stop_on_signals
options = json.loads(sys.argv[1])
config = RuntimeConfig(state_root=Path(options["state_root"]), run_root=Path(options["run_root"]),
                       cgroup_parent=options["cgroup_parent"])
stop = threading.Event()
with stop_on_signals(stop):
    result = run_foreground(options["package"], 1, None, sys.stdout, stop, config=config)
sys.exit(result.exit_code)
"""


def test_sigterm_stops_and_cleans_up(runtime_config: RuntimeConfig, make_package: Callable[..., Path]) -> None:
    package = make_package({"app/tick.py": TICKER}, cmd=[PYTHON, "-u", "/app/tick.py"])
    options = {"state_root": str(runtime_config.state_root), "run_root": str(runtime_config.run_root),
               "cgroup_parent": runtime_config.cgroup_parent, "package": str(package)}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(options)], stdout=subprocess.PIPE, text=True)
    assert driver.stdout is not None
    for line in driver.stdout:
        if line.startswith("tick 1 "):
            break
    driver.send_signal(signal.SIGTERM)
    rest = driver.stdout.read()
    assert driver.wait(timeout=60) == EXIT_OK
    assert "[aos] instance 0: Stopped on request" in rest
    assert_nothing_left(Runtime(runtime_config))
