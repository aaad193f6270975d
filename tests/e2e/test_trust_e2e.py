"""Signatures end to end: the operator signs what it pushes, an agent that trusts its key runs the
service, an agent that trusts another key reports the instance Failed / SignatureInvalid and runs
nothing (a real control plane, the operator and agents as the chart's identities, real registry,
real runc)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from aos_operator.api.models import AOS_SERVICE
from aos_operator.trust.keys import generate_signing_key, plain_pem
from tests.e2e.fleet import Fleet, eventually, fleet_on_control_plane
from tests.e2e.test_operator_agents import CHART_VALUES, aos_service, config, config_map

pytestmark = pytest.mark.root
NAMESPACE = "demo"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("trust-fleet")
    signer, stranger = generate_signing_key(), generate_signing_key()
    (root / "operator.key").write_bytes(plain_pem(signer))
    (root / "trusted.pub").write_bytes(signer.public.pem())
    (root / "stranger.pub").write_bytes(stranger.public.pem())
    with fleet_on_control_plane(root, CHART_VALUES, NAMESPACE) as fleet:
        fleet.start_operator("--sign-key", str(root / "operator.key"))
        fleet.start_agent("edge-trusting", {"trust": "e2e", "kubernetes.io/arch": "amd64"},
                          "--verify-key", str(root / "trusted.pub"))
        fleet.start_agent("edge-strict", {"trust": "e2e", "kubernetes.io/arch": "amd64"},
                          "--signature-policy", "required", "--verify-key", str(root / "stranger.pub"))
        yield fleet


def test_signed_by_the_operator_runs_only_where_its_key_is_trusted(fleet: Fleet) -> None:
    fleet.plane.create(config_map())
    fleet.api.create(AOS_SERVICE, aos_service({"trust": "e2e"}, config()))

    def settled() -> dict[str, dict[str, Any]] | None:
        found = {i["spec"]["device"]: i for i in fleet.instances(NAMESPACE, "hello-world")}
        phases = {device: (instance.get("status") or {}).get("phase") for device, instance in found.items()}
        return found if phases == {"edge-trusting": "Running", "edge-strict": "Failed"} else None

    found = eventually(settled, 180, lambda: f"one instance Running, one Failed\n{fleet.diagnostics()}")
    strict = found["edge-strict"]["status"]
    assert strict["reason"] == "SignatureInvalid" and "none made by a trusted key" in strict["message"]
    assert fleet.agents["edge-strict"].containers() == []  # nothing runs there
    for stored in ("layers", "packages", "blobs/sha256", "pulls"):  # nothing pulled, installed or unpacked
        path = fleet.agents["edge-strict"].data_dir / stored
        assert not path.exists() or not any(path.iterdir()), f"{path} is not empty"
    trusted = fleet.agents["edge-trusting"]
    instance_id = found["edge-trusting"]["spec"]["instanceId"]
    eventually(lambda: "Hello from an AosEdge service" in trusted.log_of(instance_id), 60, "the trusted instance's output")
