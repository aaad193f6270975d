"""Facts about this node that the runtime spec depends on: cores, DMIPS, architecture, cgroups,
the largest open-files and process limits runc can set."""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path

from aos_operator.runtime.cgroups import detect_cgroups, swap_accounting
from aos_operator.runtime.spec import DEFAULT_DMIPS_PER_CORE, NodeFacts

_OCI_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                      "armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386"}
_CAP_SYS_RESOURCE = 24


def oci_architecture(machine: str) -> str:
    return _OCI_ARCHITECTURES.get(machine, machine)


def detect_node_facts(dmips: int | None = None) -> NodeFacts:
    """This node's facts; `dmips` overrides the default of DEFAULT_DMIPS_PER_CORE per core."""
    cores = os.cpu_count() or 1
    cgroups = detect_cgroups()
    ceilings = _rlimit_ceilings()
    return NodeFacts(
        cores=cores,
        dmips=dmips if dmips is not None else cores * DEFAULT_DMIPS_PER_CORE,
        architecture=oci_architecture(platform.machine()),
        cgroup_version=cgroups.version,
        swap_accounting=swap_accounting(cgroups),
        open_files_max=ceilings[0],
        processes_max=ceilings[1],
    )


def _rlimit_ceilings() -> tuple[int, int]:
    """The largest RLIMIT_NOFILE and RLIMIT_NPROC runc can give a container here. runc's init raises
    its hard limits from the ones it inherits from this process, which needs CAP_SYS_RESOURCE;
    with it, open files still stop at fs.nr_open."""
    try:
        nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        nr_open = NodeFacts.open_files_max
    if _has_capability(_CAP_SYS_RESOURCE):
        return nr_open, NodeFacts.processes_max
    files, processes = (resource.getrlimit(kind)[1] for kind in (resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC))
    unlimited = resource.RLIM_INFINITY
    return (nr_open if files == unlimited else min(nr_open, files),
            NodeFacts.processes_max if processes == unlimited else processes)


def _has_capability(number: int) -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> number & 1)
    except (OSError, ValueError):
        pass
    return True  # unknown: assume root's full set
