"""Who an instance is: service, subject and index, and the instance ID derived from them."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

_INSTANCE_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_instance_id(value: object) -> bool:
    """Whether `value` has the form of an instance ID (a UUID as str() writes it): the runtime names
    directories, cgroups and locks by it, so nothing else may reach them."""
    return isinstance(value, str) and _INSTANCE_ID_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class InstanceIdentity:
    """AosEdge's InstanceIdent: one running copy of a service for one subject."""

    service_id: str
    subject_id: str
    index: int

    def __post_init__(self) -> None:
        for field, value in (("service_id", self.service_id), ("subject_id", self.subject_id)):
            if not isinstance(value, str) or not value or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
                raise ValueError(f"instance identity: {field} must be a non-empty string without control characters "
                                 f"(it becomes an AOS_* variable), got {value!r}")
        if not isinstance(self.index, int) or isinstance(self.index, bool) or self.index < 0:
            raise ValueError(f"instance identity: index must be an integer >= 0, got {self.index!r}")

    @property
    def instance_id(self) -> str:
        """The deterministic instance ID of AosEdge v9: UUIDv3 in the OID namespace."""
        return str(uuid.uuid3(uuid.NAMESPACE_OID, f"{self.service_id}:{self.subject_id}:{self.index}"))

    def to_json(self) -> dict[str, object]:
        return {"serviceId": self.service_id, "subjectId": self.subject_id, "index": self.index}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> InstanceIdentity:
        return cls(str(data["serviceId"]), str(data["subjectId"]), int(data["index"]))  # type: ignore[arg-type]
