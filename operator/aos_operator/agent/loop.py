"""The device agent's Kubernetes side (`aosctl agent`): register and heart-beat the AosDevice,
watch this device's AosServiceInstances, hand them to the core, and report their status.

Threads, each with one job: the heartbeat, the watch (list, then watch from the list's
resourceVersion, with the device label selector on the server and checked again here), a
worker that converges instances one at a time, a reporter that writes status patches, and the
alert job (instance_alerts.py). Each successful API call is noted on disk for offlineTTL
(offline.py).
Reports wait in a latest-wins table, so when the API server is away the services keep running
and their status catches up when it is back.
"""

from __future__ import annotations

import logging
import os
import platform
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from aos_operator import __version__
from aos_operator.agent.core import Desired, DeviceAgent, Outcome
from aos_operator.agent.metrics import HEARTBEATS, count_alert
from aos_operator.agent.instance_alerts import FALLEN_REASON, RAISED_REASON, AlertChange, InstanceAlerts, condition_fields
from aos_operator.agent.offline import ContactRecord, stays_failed
from aos_operator.api.client import API_ERRORS, Connection, KubeClient, error_text, status_error
from aos_operator.api.models import AOS_DEVICE, AOS_SERVICE_INSTANCE, API_VERSION, LABEL_DEVICE, device_ready
from aos_operator.api.naming import label_value
from aos_operator.api.selectors import equality_selector
from aos_operator.runtime import InstanceStatus, NodeFacts, Reason
from aos_operator.runtime.node_config import EMPTY as EMPTY_NODE_CONFIG
from aos_operator.runtime.node_config import NodeConfig
from aos_operator.runtime.usage import memory_total

log = logging.getLogger("aos_operator.agent")
DUPLICATE_REASON = "DuplicateInstanceId"
ALIVE_FILE = "agent.alive"
# A signature may be added later; a device share may be freed.
RETRIED_REASONS = ("PullFailed", "StartError", "SignatureInvalid", "NoAvailableDevice")
TRAFFIC_LIMIT_REASON = Reason.TRAFFIC_LIMIT

Key = tuple[str, str]  # (namespace, name) of an AosServiceInstance


@dataclass(frozen=True)
class AgentSettings:
    device: str
    node: str
    run_dir: Path
    connection: Connection = field(default_factory=Connection)
    heartbeat_seconds: float = 10.0
    # Where the device's Lease is renewed every beat; None: no Lease, every beat is a status patch.
    lease_namespace: str | None = None
    status_report_seconds: float = 300.0  # with a Lease, an unchanged AosDevice status is written again after this long
    labels_seconds: float = 30.0  # how often the Node's labels are read and mirrored onto the AosDevice
    usage_seconds: float = 15.0  # how often CPU and RAM use are looked at for instance status
    usage_report_seconds: float = 300.0  # an unchanged use is reported again after this long
    alert_poll_seconds: float = 0.0  # how often alert rules are checked (AosEdge: 10 s); 0: never
    online_record: Path | None = None  # the last-contact record for offlineTTL (runtime/offline.py); None: none
    resources: tuple[str, ...] = ()
    host_devices: tuple[str, ...] = ()
    runners: tuple[str, ...] = ("runc",)
    node_config: NodeConfig = EMPTY_NODE_CONFIG  # its devices' shares go into the AosDevice status


def usage_moved(reported: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether a status differs from the one reported in more than the noise of its CPU and RAM
    use: anything else that differs, CPU by 10 millicores and 10 %, RAM by 1 MiB and 10 %."""
    if any(reported.get(name) != value for name, value in current.items() if name not in ("cpuMillicores", "ramBytes")):
        return True

    def moved(before: Any, after: Any, floor: int) -> bool:
        if before is None or after is None:
            return bool(before != after)
        return bool(abs(after - before) >= max(floor, 0.1 * max(abs(before), abs(after))))

    return (moved(reported.get("cpuMillicores"), current.get("cpuMillicores"), 10)
            or moved(reported.get("ramBytes"), current.get("ramBytes"), 1 << 20))


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AgentLoop:
    def __init__(self, settings: AgentSettings, kube: KubeClient, agent: DeviceAgent, node: NodeFacts) -> None:
        self.settings = settings
        self.kube = kube
        self.agent = agent
        self.node = node
        self.stop = threading.Event()
        self.selector = equality_selector({LABEL_DEVICE: label_value(settings.device)})
        self._desired: dict[Key, Mapping[str, Any]] = {}
        self._ids: dict[Key, str] = {}  # instance ID of every key seen, to clean up after DELETED
        self._keys: dict[str, Key] = {}
        self._work: queue.Queue[Key] = queue.Queue()
        self._queued: set[Key] = set()
        self._reports: dict[Key, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._usage_at: dict[str, float] = {}
        self._sent: dict[str, tuple[dict[str, Any], float]] = {}  # instance ID -> last status fields reported, when
        self._usage_checked = 0.0
        self._done: dict[Key, int | None] = {}  # the generation last converged, per instance
        self._retries: dict[Key, int] = {}
        self._traffic_blocked: dict[str, tuple[str, ...]] = {}
        self.last_heartbeat: float | None = None  # epoch seconds of the last renewal the API took (metrics)
        self._contact = ContactRecord(settings.online_record)
        self._ready_state: bool | None = None  # the Ready condition last written, and since when
        self._ready_at = ""
        self.alerts = InstanceAlerts(agent.runtime)
        self._alert_since: dict[str, tuple[bool, str]] = {}  # instance ID -> (raised, since)

    # --- threads ------------------------------------------------------------------------------

    def run(self) -> None:
        """Run until `stop` is set; the services keep running after the agent ends."""
        adopted = self.agent.adopt()
        log.info("device %s: %d instance(s) found on the node", self.settings.device, len(adopted))
        watcher = self.agent.runtime.watch(self._runtime_changed, interval=0.5)
        threads = [
            threading.Thread(target=self._guard, args=(self._heartbeat,), name="heartbeat", daemon=True),
            threading.Thread(target=self._guard, args=(self._watch,), name="watch", daemon=True),
            threading.Thread(target=self._guard, args=(self._converge_forever,), name="worker", daemon=True),
            threading.Thread(target=self._guard, args=(self._report_forever,), name="reporter", daemon=True),
            threading.Thread(target=self._guard, args=(self._alerts_forever,), name="alerts", daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            self.stop.wait()
        finally:
            watcher.close()
            self._mark_not_ready()

    def _guard(self, loop: Any) -> None:
        while not self.stop.is_set():
            try:
                loop()
                return
            except Exception:  # a bug in one loop must not take the agent down; say it and go on
                log.exception("agent loop %s failed; restarting it", loop.__name__)
                self.stop.wait(2.0)

    # --- AosDevice ----------------------------------------------------------------------------

    def _device_status(self) -> dict[str, Any]:
        instances = sum(1 for status in self.agent.instances() if not status.phase.terminal)
        return {
            "nodeName": self.settings.node,
            "architecture": self.node.architecture,
            "os": "linux",
            "kernelVersion": platform.release(),
            "cpuCores": self.node.cores,
            "dmips": self.node.dmips,
            "memoryBytes": memory_total(),
            "runners": list(self.settings.runners),
            "resources": list(self.settings.resources),
            "hostDevices": list(self.settings.host_devices),
            "devices": self._device_shares(),
            "agentVersion": __version__,
            "lastHeartbeat": now(),
            "instances": instances,
            "conditions": [self._ready_condition(True, "AgentRunning", "the agent heart-beats")],
        }

    def _device_shares(self) -> list[dict[str, Any]]:
        """The node config's devices with their shares in use (AosEdge's sharedCount; 0: any number)."""
        used = self.agent.runtime.device_usage() if self.settings.node_config.devices else {}
        shares = []
        for device in self.settings.node_config.devices:
            entry: dict[str, Any] = {"name": device.name, "sharedCount": device.sharedCount, "used": used.get(device.name, 0)}
            if device.sharedCount:
                entry["free"] = max(device.sharedCount - entry["used"], 0)
            shares.append(entry)
        return shares

    def _ready_condition(self, ready: bool, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": reason,
            "message": message,
            "lastTransitionTime": self._ready_since(ready),
        }

    def _ready_since(self, ready: bool) -> str:
        if self._ready_state != ready:
            self._ready_state, self._ready_at = ready, now()
        return self._ready_at

    def _sync_labels(self, device: Mapping[str, Any]) -> None:
        """Mirror the Node's labels; without a Node (outside a cluster) labels are left to people."""
        node_labels = self.kube.node_labels(self.settings.node)
        if node_labels is None:
            return
        current = dict(device.get("metadata", {}).get("labels") or {})
        wanted = {**node_labels, LABEL_DEVICE: label_value(self.settings.device)}
        patch: dict[str, Any] = {key: value for key, value in wanted.items() if current.get(key) != value}
        patch.update({key: None for key in current if key not in wanted})
        if patch:
            self.kube.patch(AOS_DEVICE, self.settings.device, {"metadata": {"labels": patch}})

    @property
    def lease_seconds(self) -> int:
        """The Lease's duration: four beats, as a kubelet's 40 s for its 10 s renewals."""
        return max(1, round(4 * self.settings.heartbeat_seconds))

    def _heartbeat(self) -> None:
        """Each beat renews the device's Lease, as a kubelet renews its node's (a small write
        nobody else watches), and writes the AosDevice status only when it changed, when the
        server's copy is not Ready (the operator marks a silent agent's device), and every
        `status_report_seconds`. Without a Lease namespace every beat is a status patch. The
        AosDevice is read when the agent has none (at start, after an error) and, with a Lease,
        with the Node's labels every `labels_seconds`."""
        alive = self.settings.run_dir / ALIVE_FILE
        device: Mapping[str, Any] | None = None  # as the last write or read returned it
        labels_read = float("-inf")
        reported: tuple[dict[str, Any], float] | None = None  # the status last written (its time left out), when
        leased = bool(self.settings.lease_namespace)  # until the API refuses the Lease (403): then status beats
        while not self.stop.is_set():
            alive.parent.mkdir(parents=True, exist_ok=True)
            alive.write_text(f"{self.settings.heartbeat_seconds}\n")  # agent-health reads the interval
            try:
                if device is None:
                    device = self._registered()
                    labels_read = float("-inf")  # a new or re-read object: its labels now, not in 30 s
                if time.monotonic() - labels_read >= self.settings.labels_seconds:
                    if leased and labels_read != float("-inf"):
                        device = self._registered()  # the status patches are rare: see what the server has
                    self._sync_labels(device)
                    labels_read = time.monotonic()
                if leased:
                    leased = self._renew_lease()
                marked = not device_ready(device)
                if marked:
                    self._ready_state = None  # Ready again from now, whoever said otherwise
                status = self._device_status()
                unchanged = {key: value for key, value in status.items() if key != "lastHeartbeat"}
                if (marked or not leased or reported is None or reported[0] != unchanged
                        or time.monotonic() - reported[1] >= self.settings.status_report_seconds):
                    device = self.kube.patch(AOS_DEVICE, self.settings.device, {"status": status}, status=True)
                    reported = (unchanged, time.monotonic())
                self.last_heartbeat = time.time()
                HEARTBEATS.labels(device=self.settings.device, result="ok").inc()
                self._contact.succeeded()
            except API_ERRORS as error:
                device = None  # read it again: it may have been deleted, relabelled or marked meanwhile
                HEARTBEATS.labels(device=self.settings.device, result="failed").inc()
                log.warning("heartbeat failed (the services keep running): %s", error_text(error))
            self.stop.wait(self.settings.heartbeat_seconds)

    def _renew_lease(self) -> bool:
        """Renew the device's Lease; False when the API forbids it (RBAC without the chart's Role):
        the agent then heart-beats by status, which the operator also watches."""
        namespace = str(self.settings.lease_namespace)
        try:
            self.kube.renew_lease(self.settings.device, namespace, self.settings.device, self.lease_seconds,
                                  {LABEL_DEVICE: label_value(self.settings.device)})
            return True
        except ApiException as error:
            if error.status != 403:
                raise
        log.warning("the API refuses the Lease %s/%s (403 Forbidden): heart-beating by AosDevice status instead; "
                    "grant create and patch on leases in %s (the chart's agent Role does), then restart the agent",
                    namespace, self.settings.device, namespace)
        return False

    def _registered(self) -> Mapping[str, Any]:
        """The AosDevice, created when there is none."""
        device = self.kube.get(AOS_DEVICE, self.settings.device)
        if device is None:
            body = {
                "apiVersion": "aosedge.io/v1alpha1",
                "kind": "AosDevice",
                "metadata": {"name": self.settings.device, "labels": {LABEL_DEVICE: label_value(self.settings.device)}},
                "spec": {},
            }
            device = self.kube.create(AOS_DEVICE, body)
            log.info("registered AosDevice %s", self.settings.device)
        return device

    def _mark_not_ready(self) -> None:
        try:
            status = {"conditions": [self._ready_condition(False, "AgentStopped", "the agent was stopped")]}
            self.kube.patch(AOS_DEVICE, self.settings.device, {"status": status}, status=True)
        except API_ERRORS as error:
            log.warning("could not mark the device not Ready: %s", error_text(error))

    def instance_names(self) -> dict[str, Key]:
        """Instance ID -> (namespace, name) of the AosServiceInstances seen (for the metrics)."""
        with self._lock:
            return dict(self._keys)

    # --- watching instances ----------------------------------------------------------------------

    def _mine(self, body: Mapping[str, Any]) -> bool:
        # The server filters by label; the spec is the truth (a label can be edited by hand).
        return (body.get("spec") or {}).get("device") == self.settings.device

    def _key(self, body: Mapping[str, Any]) -> Key:
        return body["metadata"]["namespace"], body["metadata"]["name"]

    def _enqueue(self, key: Key) -> None:
        with self._lock:
            if key in self._queued:
                return
            self._queued.add(key)
        self._work.put(key)

    def _accept(self, body: Mapping[str, Any]) -> None:
        key = self._key(body)
        instance_id = (body.get("spec") or {}).get("instanceId")
        with self._lock:
            self._desired[key] = body
            holder = self._keys.get(instance_id) if instance_id else None
            if holder is not None and (holder == key or holder not in self._desired):
                holder = None
            if instance_id and holder is None:
                self._ids[key] = instance_id
                self._keys[instance_id] = key
        if holder is not None:  # two objects would drive one container; the first one keeps it
            if (body.get("status") or {}).get("reason") == DUPLICATE_REASON:
                return  # already said (our own report comes back as an event)
            self._report(key, {"phase": "Failed", "reason": DUPLICATE_REASON,
                               "message": f"instance ID {instance_id} already runs on this device for "
                                          f"AosServiceInstance {holder[0]}/{holder[1]}; this one waits until that one is gone"})
            return
        self._enqueue(key)

    def _forget(self, key: Key) -> None:
        with self._lock:
            self._desired.pop(key, None)
            instance_id = self._ids.get(key)
            waiting = [body for other, body in self._desired.items()
                       if instance_id and (body.get("spec") or {}).get("instanceId") == instance_id]
        self._enqueue(key)  # first the removal, then a waiting duplicate may take the ID over
        for body in waiting[:1]:
            self._accept(body)

    def _resync(self, items: list[Mapping[str, Any]]) -> None:
        """After a (re)list: the list is the whole truth; anything else on the node goes."""
        listed = {self._key(item) for item in items}
        with self._lock:
            gone = [key for key in self._desired if key not in listed]
        for key in gone:
            self._forget(key)
        for item in items:
            self._accept(item)
        wanted_ids = {(item.get("spec") or {}).get("instanceId") for item in items}
        for status in self.agent.instances():
            if status.instance_id not in wanted_ids:
                log.info("instance %s is not assigned to this device any more: removing it", status.instance_id)
                self.agent.remove(status.instance_id)

    def _watch(self) -> None:
        delay = 1.0
        while not self.stop.is_set():
            try:
                items, version = self.kube.list(AOS_SERVICE_INSTANCE, None, self.selector)
                self._contact.succeeded()  # before converging: a start checks the record
                self._resync([item for item in items if self._mine(item)])
                delay = 1.0
                while not self.stop.is_set():
                    for event in self.kube.watch(AOS_SERVICE_INSTANCE, None, self.selector, version, timeout_seconds=60):
                        kind, body = event["type"], event["object"]
                        self._contact.succeeded()
                        if kind == "ERROR":
                            raise status_error(body)
                        version = body.get("metadata", {}).get("resourceVersion") or version
                        if kind == "BOOKMARK" or not isinstance(body, dict):
                            continue
                        if kind == "DELETED" or not self._mine(body):
                            self._forget(self._key(body))
                        else:
                            self._accept(body)
                        if self.stop.is_set():
                            return
            except API_ERRORS as error:
                if self.stop.is_set():
                    return  # the stream cut by the agent's own stop
                log.warning("watch of AosServiceInstances failed (the services keep running): %s", error_text(error))
                self.stop.wait(delay)
                delay = min(delay * 2, 30.0)

    # --- converging ------------------------------------------------------------------------------------

    def _converge_forever(self) -> None:
        while not self.stop.is_set():
            try:
                key = self._work.get(timeout=0.5)
            except queue.Empty:
                continue
            with self._lock:
                self._queued.discard(key)
                body = self._desired.get(key)
                instance_id = self._ids.get(key)
            self._converge(key, body, instance_id)

    def _converge(self, key: Key, body: Mapping[str, Any] | None, instance_id: str | None) -> None:
        if body is None:  # the object is gone
            self._done.pop(key, None)
            if instance_id:
                self.agent.remove(instance_id)
            return
        generation = body["metadata"].get("generation")
        if self._done.get(key) == generation:
            return  # our own status reports come back as events; only spec changes need work
        spec = body.get("spec") or {}
        if body["metadata"].get("deletionTimestamp"):
            if instance_id:
                self.agent.remove(instance_id)
            self._report(key, {"phase": "Stopped", "reason": "Deleted", "message": "stopped and removed"})
            self._done[key] = generation
            return
        current = self.agent.status(spec.get("instanceId", ""))  # the runtime names nothing by an ID not a UUID
        if current is not None and stays_failed(body, current):
            self._done[key] = generation  # offlineTTL: only a new desired state starts it again
            self._runtime_changed(current)  # stopped while this agent could not say so (perhaps before a restart)
            return
        image = spec.get("image") or {}
        if image.get("architecture") and image["architecture"] != self.node.architecture:
            self._report(key, {"phase": "Failed", "reason": "ArchitectureMismatch",
                               "message": f"package for {image['architecture']}, device is {self.node.architecture}"})
            self._done[key] = generation
            return
        desired = Desired(
            service_id=spec.get("serviceId"), subject=spec.get("subject"), index=spec.get("index"),
            reference=str(image.get("reference", "")), digest=str(image.get("digest", "")),
            instance_id=str(spec.get("instanceId")), provider=key[0],  # one network per service provider: the namespace
        )
        outcome = self.agent.converge(desired, lambda step: self._report_outcome(key, step, generation))
        self._report_outcome(key, outcome, generation)
        if outcome.phase == "Failed" and outcome.reason in RETRIED_REASONS:
            self._retry_later(key)
            return
        self._done[key] = generation
        self._retries.pop(key, None)
        status = self.agent.status(desired.instance_id)
        if status is not None and status.package == desired.digest:
            self._runtime_changed(status)

    def _retry_later(self, key: Key) -> None:
        """A pull or start that failed for a reason that may pass (registry away): try again later."""
        attempt = self._retries.get(key, 0) + 1
        self._retries[key] = attempt
        timer = threading.Timer(min(2.0 ** attempt, 60.0), self._enqueue, args=(key,))
        timer.daemon = True
        timer.start()

    # --- reporting -----------------------------------------------------------------------------------

    def _report_outcome(self, key: Key, outcome: Outcome, generation: int | None) -> None:
        if outcome.phase == "Running":  # the runtime's own report says more (start time, restarts)
            if generation is not None:
                self._report(key, {"observedGeneration": generation})
            return
        update: dict[str, Any] = {"phase": outcome.phase, "reason": outcome.reason, "message": outcome.message or None}
        if generation is not None:
            update["observedGeneration"] = generation
        self._report(key, update)

    def _runtime_changed(self, status: InstanceStatus) -> None:
        with self._lock:
            key = self._keys.get(status.instance_id)
        if key is None:
            return
        fields = self._status_fields(status)
        self._usage_at[status.instance_id] = time.monotonic()
        self._sent[status.instance_id] = (fields, time.monotonic())
        self._report(key, fields)
        self._traffic_event(key, status)

    def _traffic_event(self, key: Key, status: InstanceStatus) -> None:
        """A Warning event when an instance uses up uploadLimit/downloadLimit (AosEdge says nothing)."""
        blocked = status.traffic_blocked
        if blocked == self._traffic_blocked.get(status.instance_id, ()):
            return
        self._traffic_blocked[status.instance_id] = blocked
        if not blocked:
            return
        try:
            self.kube.post_event(key[0], {"apiVersion": API_VERSION, "kind": AOS_SERVICE_INSTANCE.kind,
                                          "name": key[1], "namespace": key[0]},
                                 "Warning", TRAFFIC_LIMIT_REASON, status.traffic_message, f"aos-agent/{self.settings.device}")
        except API_ERRORS as error:
            log.warning("instance %s: event not posted: %s", status.instance_id, error_text(error))

    @staticmethod
    def _status_fields(status: InstanceStatus) -> dict[str, Any]:
        started = status.start_time
        return {
            "phase": status.phase.value,
            "reason": status.reason,
            "message": status.message or None,
            "exitCode": status.exit_code,
            "restarts": status.restarts,
            "startTime": datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if started else None,
            "imageDigest": status.package,
            "cpuMillicores": round(status.cpu_millicores) if status.cpu_millicores is not None else None,
            "ramBytes": status.ram_bytes,
            "ip": status.ip,
            **({"reason": TRAFFIC_LIMIT_REASON, "message": status.traffic_message} if status.traffic_blocked else {}),
        }

    def _report(self, key: Key, update: dict[str, Any]) -> None:
        with self._lock:
            pending = self._reports.setdefault(key, {})
            pending.update(update)
            pending["lastUpdate"] = now()

    def _refresh_usage(self) -> None:
        """Every `usage_seconds`, a Running instance's CPU and RAM, reported only when they moved
        (see usage_moved) or `usage_report_seconds` after the last report: a patch of every instance
        every 15 s was, at 2000 instances, the largest kind of write in the apiserver's audit log."""
        if time.monotonic() - self._usage_checked < self.settings.usage_seconds / 3:
            return
        self._usage_checked = time.monotonic()
        due = self._usage_checked - self.settings.usage_seconds
        instances = self.agent.instances()
        for status in instances:
            if status.phase.value != "Running" or self._usage_at.get(status.instance_id, 0) >= due:
                continue
            sent = self._sent.get(status.instance_id)
            if sent is not None and self._usage_checked - sent[1] < self.settings.usage_report_seconds \
                    and not usage_moved(sent[0], self._status_fields(status)):
                self._usage_at[status.instance_id] = self._usage_checked
                continue
            self._runtime_changed(status)
        live = {status.instance_id for status in instances}
        for table in (self._usage_at, self._sent):  # the runtime watcher's thread adds to them meanwhile
            for instance_id in [known for known in list(table) if known not in live]:
                table.pop(instance_id, None)

    def _report_forever(self) -> None:
        delay = 0.2
        while not self.stop.is_set():
            self.stop.wait(delay)
            self._refresh_usage()
            with self._lock:
                batch, self._reports = self._reports, {}
            failed: dict[Key, dict[str, Any]] = {}
            for key, update in batch.items():
                try:
                    self.kube.patch(AOS_SERVICE_INSTANCE, key[1], {"status": update}, key[0], status=True)
                    self._contact.succeeded()
                except ApiException as error:
                    if error.status != 404:  # a deleted object needs no report
                        failed[key] = update
                except API_ERRORS:
                    failed[key] = update
            with self._lock:
                for key, update in failed.items():  # newer reports win over the failed ones
                    self._reports[key] = {**update, **self._reports.get(key, {})}
            delay = min(delay * 2, 10.0) if failed else 0.2

    # --- alerts ---------------------------------------------------------------------------------------

    def _alerts_forever(self) -> None:
        if self.settings.alert_poll_seconds <= 0:
            return
        while not self.stop.wait(self.settings.alert_poll_seconds):
            for change in self.alerts.poll():
                self._publish_alerts(change)

    def _publish_alerts(self, change: AlertChange) -> None:
        """Events for raise, continue (Warning) and fall (Normal); the QuotaAlert condition."""
        with self._lock:
            key = self._keys.get(change.instance_id)
        if key is None:
            return
        for event in change.events:
            if event.status == "raise":
                service_id = ((self._desired.get(key) or {}).get("spec") or {}).get("serviceId", "")
                count_alert(change.instance_id, service_id, event.parameter)
            warning = event.status != "fall"
            self._post_instance_event(key, "Warning" if warning else "Normal",
                                      RAISED_REASON if warning else FALLEN_REASON, event.message)
        raised = bool(change.raised)
        previous = self._alert_since.get(change.instance_id)
        if previous is None or previous[0] != raised:
            previous = self._alert_since[change.instance_id] = (raised, now())
        self._report(key, {"conditions": [condition_fields(change, previous[1])]})
        if not change.events and not change.raised:  # the instance ended: forget it
            self._alert_since.pop(change.instance_id, None)

    def _post_instance_event(self, key: Key, event_type: str, reason: str, message: str) -> None:
        try:
            self.kube.post_event(key[0], {"apiVersion": API_VERSION, "kind": AOS_SERVICE_INSTANCE.kind,
                                          "name": key[1], "namespace": key[0]},
                                 event_type, reason, message, f"aos-agent/{self.settings.device}")
        except API_ERRORS as error:
            log.warning("instance %s/%s: event %s not posted: %s", key[0], key[1], reason, error_text(error))


def agent_alive(run_dir: Path) -> tuple[bool, str]:
    """The liveness check: the heartbeat wrote the alive file within three of its intervals."""
    path = run_dir / ALIVE_FILE
    try:
        age = time.time() - os.stat(path).st_mtime
        interval = float(path.read_text().strip() or "10")
    except (OSError, ValueError):
        return False, f"{path}: no heartbeat record; is the agent running with --run-dir {run_dir}?"
    if age < 3 * interval:
        return True, ""
    return False, f"the agent's last heartbeat was {age:.0f} s ago (interval {interval:g} s)"
