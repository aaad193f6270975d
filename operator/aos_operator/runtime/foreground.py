"""`aosctl run`: run N instances of a package in the foreground, streaming their output.

The CLI parses arguments and builds or pulls the package; this module installs it, prints the
limits it applies, starts the instances, copies their logs to the output (each line prefixed with
`[index]` when there is more than one instance) together with status changes, and stops and
cleans everything up when the stop event is set (Ctrl-C / SIGTERM) or every instance has ended.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from aos_operator.errors import EXIT_FAILED, EXIT_OK
from aos_operator.runtime.identity import InstanceIdentity
from aos_operator.runtime.logs import LogFollower
from aos_operator.runtime.network.model import DEFAULT_PROVIDER
from aos_operator.runtime.runtime import Runtime, RuntimeConfig, StatusPoller
from aos_operator.runtime.spec import NodeFacts
from aos_operator.runtime.status import InstanceStatus, Phase, Reason


@dataclass
class ForegroundResult:
    statuses: list[InstanceStatus]
    interrupted: bool

    @property
    def exit_code(self) -> int:
        """0 when stopped by the user (the normal end of `aosctl run`) or when every instance
        last exited 0; EXIT_FAILED otherwise."""
        if self.interrupted:
            return EXIT_OK
        return EXIT_OK if all(s.exit_code == 0 for s in self.statuses) else EXIT_FAILED


@dataclass
class _Stream:
    """One instance's log, cut into lines and prefixed."""

    follower: LogFollower
    prefix: str
    partial: str = ""

    def pump(self, output: TextIO, final: bool = False) -> None:
        text = self.partial + self.follower.read().decode("utf-8", "replace")
        *complete, self.partial = text.split("\n")
        for line in complete:
            output.write(f"{self.prefix}{line}\n")
        if final and self.partial:
            output.write(f"{self.prefix}{self.partial}\n")
            self.partial = ""
        if complete or final:
            output.flush()


@contextmanager
def stop_on_signals(stop_event: threading.Event) -> Iterator[None]:
    """Set `stop_event` on SIGINT, SIGTERM and SIGHUP (the terminal closed) inside the block
    (main thread only)."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: stop_event.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _describe(status: InstanceStatus) -> str:
    text = status.phase.value
    if status.reason == Reason.STOPPED:
        text += " on request"  # not "Stopped (Stopped)"
    elif status.reason:
        text += f" ({status.reason})"
    if status.last_exit is not None:
        # after a crash and a restart, "Running" alone would hide the crash
        label = "previous run exited with code" if status.phase == Phase.RUNNING else "last exit code"
        text += f", {label} {status.last_exit.exit_code} ({status.last_exit.reason})"
    if status.restarts:
        text += f", restarted {status.restarts} time{'s' if status.restarts != 1 else ''}"
    if status.ip:
        text += f", address {status.ip}"
    if status.message:
        text += f": {status.message}"
    if status.traffic_message:
        text += f" ({status.traffic_message})"
    if status.reason == "CrashLoop" and status.exit_code == 0:
        text += " (the service ends by itself with exit code 0 and is restarted each time; run it with " \
                "--no-restart if it is meant to end)"
    return text


def run_foreground(package_dir: Path | str, instances: int = 1, node: NodeFacts | None = None,
                   output: TextIO | None = None, stop_event: threading.Event | None = None, *,
                   config: RuntimeConfig | None = None, service_id: str = "local", subject_id: str = "local",
                   restart: bool = True, poll_interval: float = 0.05,
                   provider: str = DEFAULT_PROVIDER) -> ForegroundResult:
    """Run `instances` instances of the package until `stop_event` is set or all have ended."""
    if instances < 1:
        raise ValueError(f"instances must be >= 1, got {instances}")
    output = output or sys.stdout
    stop_event = stop_event or threading.Event()
    runtime = Runtime(config, node)
    package = runtime.install(package_dir)
    output.write(f"[aos] package {package.digest}\n")
    for name, how in runtime.limits(package):
        output.write(f"[aos] limit {name}: {how}\n")
    output.flush()
    identities = [InstanceIdentity(service_id, subject_id, index) for index in range(instances)]
    streams = [_Stream(LogFollower(runtime.log_path(identity.instance_id)),
                       f"[{identity.index}] " if instances > 1 else "") for identity in identities]
    poller = StatusPoller(runtime)
    ids = {identity.instance_id for identity in identities}
    index_of = {identity.instance_id: identity.index for identity in identities}
    interrupted = False
    said: dict[str, str] = {}  # the last status line of each instance: each change is said once

    def say(status: InstanceStatus) -> None:
        line = f"[aos] instance {index_of[status.instance_id]}: {_describe(status)}\n"
        if said.get(status.instance_id) != line:
            said[status.instance_id] = line
            output.write(line)
            output.flush()

    try:
        for identity in identities:
            runtime.start(identity, package, restart=restart, wait=False, provider=provider)
        while True:
            for stream in streams:
                stream.pump(output)
            for status in poller.poll():
                if status.instance_id in ids:
                    say(status)
            if stop_event.is_set():
                interrupted = True
                break
            if all(runtime.status(i).phase.terminal for i in ids):
                break
            stop_event.wait(poll_interval)
    finally:
        for identity in identities:
            if identity.instance_id in runtime.instance_ids():
                runtime.stop(identity.instance_id)
        for stream in streams:
            stream.pump(output, final=True)
            stream.follower.close()
    statuses = [runtime.status(identity.instance_id) for identity in identities]
    for status in statuses:
        say(status)
    return ForegroundResult(statuses, interrupted)
