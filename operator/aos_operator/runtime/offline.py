"""offlineTTL: the node's record of its last contact with its control plane, and what it means for
an instance whose service may run offline only for so long.

The device agent writes the record (`<state root>/online.json`, replaced atomically, so it
survives restarts and reboots as AosEdge's stored online time does) after each successful call
to the API server; the node supervisor reads it to stop an instance whose offlineTTL has run out
and to refuse to (re)start one. Without a record (`aosctl run`, which has no control plane, or an
agent that never reached its API server) nothing is enforced.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from aos_operator.bounded import parse_json
from aos_operator.runtime.files import write_atomically

ONLINE_FILE = "online.json"
_MAX_RECORD_BYTES = 4096


def online_record_path(state_root: Path) -> Path:
    return state_root / ONLINE_FILE


def record_online(path: Path, when: float | None = None) -> None:
    """Note a successful contact at `when` (epoch seconds, default now)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps({"lastOnline": time.time() if when is None else when}))


def last_online(path: Path | str) -> float | None:
    """The recorded time of the last contact; None when there is no usable record."""
    try:
        with open(path, "rb") as handle:
            data = parse_json(handle.read(_MAX_RECORD_BYTES))
        value = data["lastOnline"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return float(value)


def offline_deadline(path: Path | str, ttl: float) -> float | None:
    """When (epoch seconds) an instance with `ttl` must stop if no contact comes; None: never."""
    if ttl <= 0:
        return None
    online = last_online(path)
    return None if online is None else online + ttl


def timeout_message(path: Path | str, ttl: float) -> str:
    online = last_online(path)
    since = datetime.fromtimestamp(online, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if online is not None else "never"
    return (f"no contact with the control plane since {since}, longer than the service's offlineTTL of {ttl:g} s; "
            "stopped, and not started again until a new desired state arrives")
