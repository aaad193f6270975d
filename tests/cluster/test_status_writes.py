"""The operator's status writes on the real kube-apiserver (reconciler.write_status): a pass that
runs before the watch has delivered the previous write diffs against that write, not against the
older body, so it writes nothing twice; a body that moved on is diffed as it is."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aos_operator.api.client import Connection, KubeClient
from aos_operator.api.models import AOS_SERVICE
from aos_operator.controller.conditions import READY, RECONCILING, Wanted
from aos_operator.controller.reconciler import Operator, status_seen, write_status
from aos_operator.controller.settings import OperatorSettings
from tests.cluster.install import apply_crds
from tests.conftest import EXAMPLES
from tools.cluster import ControlPlane

NAMESPACE = "apps"


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    with ControlPlane(controller_manager=False, audit=True) as started:
        apply_crds(started)
        started.ensure_namespace(NAMESPACE)
        yield started


@pytest.fixture
def kube(plane: ControlPlane) -> Iterator[KubeClient]:
    client = KubeClient(Connection(kubeconfig=str(plane.admin_kubeconfig)), user_agent="aos-status-tests")
    yield client
    client.close()


def patches(plane: ControlPlane, name: str) -> int:
    """Status patches of AosService `name` the API server took (a patch that changes nothing
    leaves the resourceVersion alone, so the audit log counts them)."""
    return sum(1 for event in plane.audit_events() if event.get("userAgent") == "aos-status-tests"
               and event.get("verb") == "patch" and (event.get("objectRef") or {}).get("name") == name
               and (event.get("objectRef") or {}).get("subresource") == "status")


def service(kube: KubeClient, name: str) -> dict[str, Any]:
    config = yaml.safe_load((EXAMPLES / "hello-world" / "meta" / "config.yaml").read_text())
    return kube.create(AOS_SERVICE, {"apiVersion": "aosedge.io/v1alpha1", "kind": "AosService",
                                     "metadata": {"name": name, "namespace": NAMESPACE}, "spec": {"config": config}})


def operator(kube: KubeClient) -> Operator:
    return Operator(OperatorSettings(registry="r.example:5000/aos", work_dir=Path("/nonexistent")), kube,
                    registry=None)  # type: ignore[arg-type]  # status writes touch no registry


ROLLING = [Wanted(READY, False, "RollingOut", "revision 1"), Wanted(RECONCILING, True, "RollingOut", "revision 1")]


def test_a_pass_on_a_body_older_than_its_last_write_writes_nothing_again(plane: ControlPlane, kube: KubeClient) -> None:
    op = operator(kube)
    stale = service(kube, "stale")  # the daemon's body: the watch has not brought our writes yet

    async def passes() -> None:
        await write_status(op, stale, ROLLING, {"desired": 1, "updated": 1, "version": "1.0.0"})
        await write_status(op, stale, ROLLING, {"desired": 1, "updated": 1, "version": "1.0.0"})
        assert patches(plane, "stale") == 1, "the same status on the same stale body: no second patch"
        await write_status(op, stale, ROLLING, {"desired": 1, "updated": 1, "ready": 1})
        assert patches(plane, "stale") == 2, "what changed is written"
        written = kube.get(AOS_SERVICE, "stale", NAMESPACE)
        assert written is not None
        assert (written["status"]["desired"], written["status"]["ready"], written["status"]["version"]) == (1, 1, "1.0.0")
        await write_status(op, stale, ROLLING, {"desired": 1, "updated": 1, "version": "1.0.0", "ready": 1})
        assert patches(plane, "stale") == 2, "two writes ahead of the body: still none"

    asyncio.run(passes())


def test_a_body_that_moved_on_is_diffed_as_it_is(plane: ControlPlane, kube: KubeClient) -> None:
    op = operator(kube)
    body = service(kube, "moved")

    async def passes() -> None:
        await write_status(op, body, ROLLING, {"desired": 1, "updated": 1})
        # Someone else changed the status meanwhile (it has one writer, but a user can kubectl-patch it).
        kube.patch(AOS_SERVICE, "moved", {"status": {"updated": 0}}, NAMESPACE, status=True)
        current = kube.get(AOS_SERVICE, "moved", NAMESPACE)
        assert current is not None
        await write_status(op, copy.deepcopy(current), ROLLING, {"desired": 1, "updated": 1})
        again = kube.get(AOS_SERVICE, "moved", NAMESPACE)
        assert again is not None and again["status"]["updated"] == 1, "the newer body is the base: updated written back"
        assert patches(plane, "moved") == 3

    asyncio.run(passes())


def test_the_last_write_is_let_go_once_the_watch_has_brought_it(plane: ControlPlane, kube: KubeClient) -> None:
    op = operator(kube)
    body = service(kube, "let-go")

    async def passes() -> None:
        await write_status(op, body, ROLLING, {"desired": 1})
        memo = op.statuses[("apps", "let-go")]
        status_seen(op, ("apps", "let-go"), str(body["metadata"]["resourceVersion"]))
        assert ("apps", "let-go") in op.statuses, "an event older than the write: still kept"
        status_seen(op, ("apps", "let-go"), memo.version)
        assert ("apps", "let-go") not in op.statuses, "the write's own event: let go"

    asyncio.run(passes())
