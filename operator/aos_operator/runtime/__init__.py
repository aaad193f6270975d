"""What an AosEdge device does with a service package: install it, build the OCI runtime spec
with the quotas as Linux limits, run it under runc, supervise it, report, clean up."""

from aos_operator.runtime.foreground import ForegroundResult, run_foreground, stop_on_signals
from aos_operator.runtime.identity import InstanceIdentity
from aos_operator.runtime.node import detect_node_facts
from aos_operator.runtime.package import InstalledPackage
from aos_operator.runtime.runtime import Runtime, RuntimeConfig, StatusPoller, StatusWatcher
from aos_operator.runtime.spec import NodeFacts, build_runtime_spec
from aos_operator.runtime.status import InstanceStatus, Phase, Reason, Termination

__all__ = [
    "ForegroundResult", "InstalledPackage", "InstanceIdentity", "InstanceStatus", "NodeFacts", "Phase",
    "Reason", "Runtime", "RuntimeConfig", "StatusPoller", "StatusWatcher", "Termination",
    "build_runtime_spec", "detect_node_facts", "run_foreground", "stop_on_signals",
]
