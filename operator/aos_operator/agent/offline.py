"""The agent's part of offlineTTL: note each successful contact with the API server on disk, and
decide whether an instance the node supervisor stopped for OfflineTimeout may start again.

The node supervisor stops and refuses instances by the record (runtime/offline.py). Like an
AosEdge device, the agent does not restart them when contact returns: they start again only
with a new desired state, which here is a new generation of the AosServiceInstance's spec (a new
package, or an instance the operator recreated); a re-list after the outage or an agent restart
is the same desired state and leaves them Failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aos_operator.runtime import InstanceStatus, Phase, Reason
from aos_operator.runtime.offline import record_online

log = logging.getLogger("aos_operator.agent")


class ContactRecord:
    """Writes the last-contact record after successful API calls, at most once per `min_interval`
    (no record without a path)."""

    def __init__(self, path: Path | None, min_interval: float = 1.0) -> None:
        self.path = path
        self.min_interval = min_interval
        self._written = -float("inf")
        self._lock = threading.Lock()

    def succeeded(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._written < self.min_interval:
                return
            self._written = now
        try:
            record_online(self.path)
        except OSError as error:  # a full disk must not stop the agent; the TTL then runs from the last record
            log.warning("could not record the contact with the API server in %s: %s", self.path, error)


def stays_failed(body: Mapping[str, Any], status: InstanceStatus | None) -> bool:
    """An instance stopped for OfflineTimeout whose spec has not changed since the agent last
    converged it (its reported observedGeneration) is left as it is."""
    if status is None or status.phase != Phase.FAILED or status.reason != Reason.OFFLINE_TIMEOUT:
        return False
    observed = (body.get("status") or {}).get("observedGeneration")
    return observed is not None and observed == body["metadata"].get("generation")
