"""What an AosEdge device does with a service package: install it, build the OCI runtime spec
with the quotas as Linux limits, run it under runc, supervise it, report, clean up.

The names below are imported lazily, so a supervisor process (`python -m
aos_operator.runtime.supervisor`) loads only the modules it uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ForegroundResult": "foreground", "run_foreground": "foreground", "stop_on_signals": "foreground",
    "InstanceIdentity": "identity",
    "detect_node_facts": "node",
    "InstalledPackage": "package",
    "Runtime": "runtime", "RuntimeConfig": "runtime", "StatusPoller": "runtime", "StatusWatcher": "runtime",
    "NodeFacts": "spec", "build_runtime_spec": "spec",
    "InstanceStatus": "status", "Phase": "status", "Reason": "status", "Termination": "status",
}

__all__ = [
    "ForegroundResult", "InstalledPackage", "InstanceIdentity", "InstanceStatus", "NodeFacts", "Phase",
    "Reason", "Runtime", "RuntimeConfig", "StatusPoller", "StatusWatcher", "Termination",
    "build_runtime_spec", "detect_node_facts", "run_foreground", "stop_on_signals",
]

if TYPE_CHECKING:
    from aos_operator.runtime.foreground import ForegroundResult, run_foreground, stop_on_signals
    from aos_operator.runtime.identity import InstanceIdentity
    from aos_operator.runtime.node import detect_node_facts
    from aos_operator.runtime.package import InstalledPackage
    from aos_operator.runtime.runtime import Runtime, RuntimeConfig, StatusPoller, StatusWatcher
    from aos_operator.runtime.spec import NodeFacts, build_runtime_spec
    from aos_operator.runtime.status import InstanceStatus, Phase, Reason, Termination


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'aos_operator.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"aos_operator.runtime.{_EXPORTS[name]}"), name)
