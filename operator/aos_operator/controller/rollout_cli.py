"""What `aosctl rollout status|history|undo|pause|resume aosservice/NAME` does, through the
Kubernetes API (the command line is cli/rollout.py).

Like `kubectl rollout`: the kubeconfig is found as kubectl finds it ($KUBECONFIG, then
~/.kube/config; in a pod, the service account), the namespace is the context's unless `-n`
says otherwise. The commands only read status and write what the operator acts on:
`spec.paused` (pause, resume), and annotations for a resumed canary pause and for an undo (the
revision to go back to, valid while the spec builds to the same sources; a later spec change
starts a new rollout). Undo never rebuilds: the operator dispatches the old revision's digests.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from kubernetes.client.exceptions import ApiException

from aos_operator.api.client import API_ERRORS, Connection, KubeClient, error_text
from aos_operator.api.models import AOS_SERVICE
from aos_operator.controller import revisions
from aos_operator.errors import EXIT_FAILED, EXIT_OK, AosError, InputError, SpecError

KIND_NAMES = ("aosservice", "aosservices", "aossvc", "aosservice.aosedge.io", "aosservices.aosedge.io")
DONE, BAD = "Complete", ("RolledBack", "Failed")


class ApiFailure(AosError):
    """The API server refused or could not be reached."""


def resource_name(value: str) -> str:
    kind, slash, name = value.partition("/")
    if not slash or kind.lower() not in KIND_NAMES or not name or "/" in name:
        raise InputError(f"{value!r}: expected aosservice/NAME", hint="e.g. aosctl rollout status aosservice/hello")
    return name


def default_namespace(kubeconfig: str | None) -> str:
    try:
        import kubernetes  # the kubeconfig's current context names the namespace, as kubectl reads it

        _, current = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
        return str((current or {}).get("context", {}).get("namespace") or "default")
    except Exception:  # no kubeconfig (in a pod, or --kube-server): kubectl's default
        return "default"


class Rollouts:
    def __init__(self, kube: KubeClient, namespace: str, name: str, out: TextIO = sys.stdout) -> None:
        self.kube, self.namespace, self.name, self.out = kube, namespace, name, out

    def _get(self) -> dict[str, Any]:
        try:
            body = self.kube.get(AOS_SERVICE, self.name, self.namespace)
        except API_ERRORS as error:
            raise ApiFailure(f"aosservice/{self.name} in {self.namespace}: {_api_message(error)}") from None
        if body is None:
            raise SpecError(f"aosservice/{self.name} not found in namespace {self.namespace}",
                            hint="check the name and -n NAMESPACE")
        return body

    def _patch(self, patch: Mapping[str, Any]) -> None:
        try:
            self.kube.patch(AOS_SERVICE, self.name, dict(patch), self.namespace)
        except API_ERRORS as error:
            raise ApiFailure(f"aosservice/{self.name} in {self.namespace}: {_api_message(error)}") from None

    def status(self, watch: bool, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        shown = None
        while True:
            body = self._get()
            rollout = (body.get("status") or {}).get("rollout") or {}
            line = describe(rollout)
            if line != shown:
                print(line, file=self.out, flush=True)
                shown = line
            phase = rollout.get("phase")
            if not watch or phase == DONE:
                return EXIT_OK
            if phase in BAD:
                return EXIT_FAILED
            if time.monotonic() > deadline:
                raise ApiFailure(f"aosservice/{self.name}: rollout not finished after {timeout:.0f} s: {line}")
            time.sleep(1.0)

    def history(self) -> int:
        status = self._get().get("status") or {}
        rollout = status.get("rollout") or {}
        rows = [("REVISION", "DIGEST", "VERSION", "CREATED", "ROLLED-OUT", "RESULT", "")]
        for item in revisions.of(status):
            marks = []
            if item["revision"] == rollout.get("revision"):
                marks.append("current")
            if item["revision"] == rollout.get("stableRevision"):
                marks.append("stable")
            rows.append((str(item["revision"]), str(item.get("digest", ""))[:19], str(item.get("version") or ""),
                         str(item.get("createdAt") or ""), str(item.get("rolledOutAt") or ""),
                         str(item.get("result") or ""), ",".join(marks)))
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=self.out)
        return EXIT_OK

    def undo(self, to_revision: int | None) -> int:
        body = self._get()
        status = body.get("status") or {}
        rollout = status.get("rollout") or {}
        history = revisions.of(status)
        number = to_revision if to_revision is not None else revisions.previous(
            history, rollout.get("revision"), rollout.get("stableRevision"))
        if number is None:
            raise SpecError(f"aosservice/{self.name}: no earlier revision to go back to")
        if revisions.by_number(history, number) is None:
            known = ", ".join(str(item["revision"]) for item in history) or "none"
            raise SpecError(f"aosservice/{self.name}: revision {number} is not in the history (kept: {known})",
                            hint="aosctl rollout history shows the revisions kept (spec.revisionHistoryLimit)")
        source = status.get("sourceDigest")
        if not source:
            raise SpecError(f"aosservice/{self.name}: the operator has not built this spec yet; try again shortly")
        self._patch({"metadata": {"annotations": {
            revisions.ANNOTATION_ROLLBACK_TO: str(number), revisions.ANNOTATION_ROLLBACK_FROM: source}}})
        print(f"aosservice/{self.name} rolling back to revision {number}", file=self.out)
        return EXIT_OK

    def pause(self) -> int:
        self._patch({"spec": {"paused": True}})
        print(f"aosservice/{self.name} paused", file=self.out)
        return EXIT_OK

    def resume(self) -> int:
        body = self._get()
        rollout = (body.get("status") or {}).get("rollout") or {}
        patch: dict[str, Any] = {"spec": {"paused": False}}
        if rollout.get("phase") == "Paused" and rollout.get("stepReachedAt") and rollout.get("revision"):
            patch["metadata"] = {"annotations": {
                revisions.ANNOTATION_RESUME: f"{rollout['revision']}:{rollout.get('step', 0)}"}}
        self._patch(patch)
        print(f"aosservice/{self.name} resumed", file=self.out)
        return EXIT_OK


def describe(rollout: Mapping[str, Any]) -> str:
    if not rollout:
        return "no rollout yet (the operator has not reconciled the service)"
    parts = [f"revision {rollout.get('revision')}", str(rollout.get("phase") or "Unknown"),
             f"{rollout.get('updatedDevices', 0)}/{rollout.get('totalDevices', 0)} devices updated, "
             f"{rollout.get('availableDevices', 0)} available"]
    if rollout.get("stableRevision"):
        parts.append(f"stable revision {rollout['stableRevision']}")
    if rollout.get("message"):
        parts.append(str(rollout["message"]))
    return ": ".join(parts[:2]) + "; " + "; ".join(parts[2:])


def _api_message(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"API server answered {error_text(error)}"
    return f"cannot reach the API server: {error_text(error)}"


def cmd_rollout(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    name = resource_name(args.resource)
    namespace = args.namespace or default_namespace(args.kubeconfig)
    try:
        kube = KubeClient(Connection(server=args.kube_server, kubeconfig=args.kubeconfig), user_agent="aosctl-rollout")
    except Exception as error:  # kubeconfig missing or malformed: the kubernetes client's own message
        raise InputError(f"cannot load the Kubernetes configuration: {error}",
                         hint="set KUBECONFIG or pass --kubeconfig FILE") from None
    try:
        rollouts = Rollouts(kube, namespace, name, out)
        action = args.rollout_action
        if action == "status":
            return rollouts.status(args.watch, args.timeout)
        if action == "history":
            return rollouts.history()
        if action == "undo":
            return rollouts.undo(args.to_revision)
        if action == "pause":
            return rollouts.pause()
        return rollouts.resume()
    finally:
        kube.close()

