"""The operator's settings, from the command line (`aosctl operator`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aos_operator.api.client import Connection
from aos_operator.registry.limits import RegistryLimits


@dataclass(frozen=True)
class OperatorSettings:
    registry: str  # host[:port][/prefix], e.g. aos-registry.aos-system.svc:5000/aos
    work_dir: Path
    connection: Connection = field(default_factory=Connection)
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    registry_insecure: bool = False
    registry_ca: Path | None = None
    registry_auth: Path | None = None
    registry_limits: RegistryLimits = field(default_factory=RegistryLimits)
    registry_insecure_hosts: tuple[str, ...] = ()  # may receive credentials over plain HTTP
    resync_seconds: float = 30.0  # a service is re-checked at least this often, events or not
    source_refresh_seconds: float = 60.0  # image sources by tag are re-read this often (ConfigMaps: on change)
    device_grace_seconds: float = 40.0  # a device not heard from for this long is marked Ready=Unknown (liveness.py)
    instance_stop_timeout: float = 120.0  # how long a removed instance waits for its agent to stop it
    build_concurrency: int = 2  # builds at once; each uses a CPU core or more
    retry_min_seconds: float = 2.0
    retry_max_seconds: float = 120.0
    liveness: str | None = None
    peering: str | None = None
    sign_key: Path | None = None  # every pushed package is signed with it (trust/)
    metrics_address: str | None = None  # HOST:PORT of /metrics (controller/metrics.py); None: not served

    @property
    def registry_host(self) -> str:
        return self.registry.split("/", 1)[0]

    @property
    def repository_prefix(self) -> str:
        parts = self.registry.split("/", 1)
        return parts[1] if len(parts) > 1 else "aos"
