"""The instance network as one of the runtime's instance hooks (runtime.InstanceHook).

`setup` runs in every `Runtime.start` before the spec is written: it sets the instance's network
up unless it already is, and makes the spec join its named netns by path, so each restart of the
container by the node supervisor joins the same netns and keeps the address. `teardown` runs at
`Runtime.remove`. The runtime itself also tears a network down when its instance ends for good
and adopts them in `recover()` (the hook API has no call for those).

What the hook needs beyond the identity travels in the spec's annotations, set by the runtime:
the package digest (for its quotas, exposed ports, allowed connections) and the provider.
"""

from __future__ import annotations

from typing import Any

from aos_operator.runtime.identity import InstanceIdentity
from aos_operator.runtime.network.manager import NetworkManager
from aos_operator.runtime.network.model import DEFAULT_PROVIDER, InstanceNetwork
from aos_operator.runtime.package import PackageStore
from aos_operator.runtime.spec import join_network_namespace

PACKAGE_ANNOTATION = "io.aosedge.package"
PROVIDER_ANNOTATION = "io.aosedge.network.provider"


class NetworkHook:
    def __init__(self, manager: NetworkManager, packages: PackageStore) -> None:
        self.manager = manager
        self.packages = packages

    def setup(self, identity: InstanceIdentity, spec: dict[str, Any]) -> None:
        annotations = spec.get("annotations", {})
        package = self.packages.get(annotations[PACKAGE_ANNOTATION])
        record: InstanceNetwork = self.manager.setup(
            instance_id=identity.instance_id, service_id=identity.service_id, subject_id=identity.subject_id,
            index=identity.index, provider=annotations.get(PROVIDER_ANNOTATION, DEFAULT_PROVIDER),
            service=package.service_config, image=package.image_config)
        join_network_namespace(spec, record.netns)

    def teardown(self, instance_id: str) -> None:
        self.manager.teardown(instance_id)
