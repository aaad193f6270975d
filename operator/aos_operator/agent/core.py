"""The device agent's core: make this node run exactly the instances it is asked to run.

A plain class with no Kubernetes in it: the Kubernetes loop (`agent.loop`) feeds it desired
instances and reports what it returns; `aosctl run` shares the runtime beneath it. Packages
are pulled by digest into a local cache, verified, installed once, and shared by instances.
With a signature policy, a package's cosign signature is checked before any layer is pulled
(and before an installed package starts for the first time in this process); a refused package
leaves what ran before running.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aos_operator.digests import digest_hex
from aos_operator.errors import AosError, PackageError, RegistryError, RuntimeFailure, SignatureError
from aos_operator.registry import RegistryClient
from aos_operator.runtime import InstanceIdentity, InstanceStatus, Runtime
from aos_operator.runtime.package_gc import GcPolicy
from aos_operator.trust.store import verify_package
from aos_operator.trust.verify import VerificationPolicy

log = logging.getLogger("aos_operator.agent")


@dataclass(frozen=True)
class Desired:
    """One instance this node should run: who it is and which package, by digest."""

    service_id: str
    subject: str
    index: int
    reference: str  # repository@sha256:...
    digest: str
    instance_id: str  # as the operator computed it; must match the runtime's
    provider: str = "default"  # the instance's network: its AosService's namespace

    @property
    def identity(self) -> InstanceIdentity:
        return InstanceIdentity(self.service_id, self.subject, self.index)


@dataclass(frozen=True)
class Outcome:
    """What happened when the agent converged an instance, for the status report."""

    phase: str
    reason: str | None = None
    message: str = ""


class DeviceAgent:
    def __init__(self, runtime: Runtime, registry: RegistryClient, package_cache: Path,
                 policy: VerificationPolicy | None = None, gc: GcPolicy | None = None) -> None:
        self.runtime = runtime
        self.registry = registry
        self.package_cache = package_cache
        self.policy = policy or VerificationPolicy()
        self.gc = gc or GcPolicy()
        self._installing = threading.Lock()  # also held by the GC: an install in progress is not garbage
        self._verified: set[str] = set()  # digests whose signature this process checked
        self._assigned: dict[str, str] = {}  # instance ID -> digest it is asked to run

    def adopt(self) -> list[InstanceStatus]:
        """After a restart: find the instances that kept running, without restarting them."""
        return self.runtime.recover()

    def running_package(self, instance_id: str) -> str | None:
        try:
            status = self.runtime.status(instance_id)
        except RuntimeFailure:
            return None
        return None if status.phase.terminal else status.package

    def converge(self, desired: Desired, report: Callable[[Outcome], None]) -> Outcome:
        """Run `desired`: pull and install its package if needed, (re)start it when its package changed."""
        try:
            identity = desired.identity
        except ValueError as error:  # the API's spec: types checked by the CRD, content here
            return Outcome("Failed", "InvalidSpec", str(error))
        if identity.instance_id != desired.instance_id:
            return Outcome("Failed", "InvalidSpec", f"instanceId {desired.instance_id} is not {identity.instance_id}")
        self._assigned[desired.instance_id] = desired.digest
        current = self.running_package(desired.instance_id)
        if current == desired.digest:
            return Outcome("Running")  # adopted or already converged: leave it alone
        try:
            if not self.runtime.packages.has(desired.digest):
                report(Outcome("Pulling", message=desired.reference))
                self._pull_and_install(desired)
            else:
                self._verify(desired)  # installed earlier, perhaps under another policy
            self.runtime.packages.note_use(desired.digest, desired.service_id)
            report(Outcome("Starting"))
            if current is not None:  # a new package: replace the container, keep storage and state
                self.runtime.stop(desired.instance_id)
            self.runtime.start(identity, desired.digest, wait=False, provider=desired.provider)
        except SignatureError as error:
            log.warning("instance %s: package refused: %s", desired.instance_id, error)
            return Outcome("Failed", SignatureError.reason, error.message)
        except AosError as error:
            reason = "PullFailed" if isinstance(error, RegistryError | PackageError) else "StartError"
            reason = getattr(error, "reason", None) or reason  # e.g. NoAvailableDevice (runtime/devices.py)
            log.warning("instance %s: %s", desired.instance_id, error)
            return Outcome("Failed", reason, str(error))
        except Exception as error:  # a bug, or input no check names: report it rather than drop the instance
            log.exception("instance %s: converging failed", desired.instance_id)
            return Outcome("Failed", "InternalError", f"the agent failed: {type(error).__name__}: {error}"[:500])
        if current is not None and current != desired.digest:
            self.collect_garbage()  # the previous package stays (policy.keep_previous) for a fast way back
        return Outcome("Starting")

    def _pull_and_install(self, desired: Desired) -> None:
        with self._installing:  # one pull per package at a time; instances of it share it
            if self.runtime.packages.has(desired.digest):
                return
            self._verify(desired)  # before any layer is fetched
            directory = self.package_cache / digest_hex(desired.digest)
            packages = self.runtime.packages  # [aos layers] refuse a bad layer list before any blob; pull a layer once
            self.registry.pull(desired.reference, directory, check=packages.check_manifest,
                               skip=lambda blob: packages.pull_skips(blob.field, blob.digest))
            try:
                self.runtime.install(directory)
            finally:
                shutil.rmtree(directory, ignore_errors=True)  # the runtime keeps what it needs

    def _verify(self, desired: Desired) -> None:
        if not self.policy.required or desired.digest in self._verified:
            return
        if not desired.reference.endswith("@" + desired.digest):
            raise SignatureError(
                f"{desired.reference}: a signed package is pulled by its digest {desired.digest}; the reference names another"
            )
        verify_package(self.registry, desired.reference, desired.digest, self.policy)
        self._verified.add(desired.digest)

    def remove(self, instance_id: str) -> None:
        """Stop the instance and delete its data; drop its package when nothing else uses it."""
        self._assigned.pop(instance_id, None)
        try:
            self.runtime.remove(instance_id)
        except RuntimeFailure:
            return  # not on this node
        self.collect_garbage()

    def needed_packages(self) -> set[str]:
        """What the GC must keep: the packages of assigned instances and of every instance on the node."""
        needed = set(self._assigned.values())
        needed.update(status.package for status in self.runtime.list() if status.package)
        return needed

    def collect_garbage(self) -> list[str]:
        with self._installing:
            try:
                removed = self.runtime.packages.collect(self.needed_packages(), self.gc)
            except (AosError, OSError) as error:
                log.warning("package GC failed (nothing needed was touched): %s", error)
                return []
        if removed:
            log.info("package GC removed %d package(s): %s", len(removed), ", ".join(removed))
        return removed

    def status(self, instance_id: str) -> InstanceStatus | None:
        try:
            return self.runtime.status(instance_id)
        except RuntimeFailure:
            return None

    def instances(self) -> list[InstanceStatus]:
        return self.runtime.list()
