"""Facts about this node that the runtime spec depends on: cores, DMIPS, architecture, cgroups."""

from __future__ import annotations

import os
import platform

from aos_operator.runtime.cgroups import detect_cgroups, swap_accounting
from aos_operator.runtime.spec import DEFAULT_DMIPS_PER_CORE, NodeFacts

_OCI_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                      "armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386"}


def oci_architecture(machine: str) -> str:
    return _OCI_ARCHITECTURES.get(machine, machine)


def detect_node_facts(dmips: int | None = None) -> NodeFacts:
    """This node's facts; `dmips` overrides the default of DEFAULT_DMIPS_PER_CORE per core."""
    cores = os.cpu_count() or 1
    cgroups = detect_cgroups()
    return NodeFacts(
        cores=cores,
        dmips=dmips if dmips is not None else cores * DEFAULT_DMIPS_PER_CORE,
        architecture=oci_architecture(platform.machine()),
        cgroup_version=cgroups.version,
        swap_accounting=swap_accounting(cgroups),
    )
