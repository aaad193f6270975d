"""Kubernetes API emulator harness for end-to-end tests, built on KMock.

In a test: the `kube` fixture (KubeEmulator on the test's loop) or `kube_process` (a subprocess
driven by HarnessClient). Outside pytest: `python -m tests.harness serve --port 0 --print-url`,
or EmulatorThread for synchronous code.
"""

from tests.harness.clients import sync_api_client
from tests.harness.control import EmulatorThread, HarnessClient, HarnessError, HarnessProcess, ProxyHandle
from tests.harness.emulator import ApiError, KubeEmulator
from tests.harness.faults import FaultRule
from tests.harness.metrics import Metrics, RequestKey
from tests.cluster.proxy import ClientProxy
from tests.harness.resources import ResourceSpec
from tests.harness.waiting import eventually

__all__ = [
    "ApiError", "ClientProxy", "EmulatorThread", "FaultRule", "HarnessClient", "HarnessError",
    "HarnessProcess", "KubeEmulator", "Metrics", "ProxyHandle", "RequestKey", "ResourceSpec",
    "eventually", "sync_api_client",
]
