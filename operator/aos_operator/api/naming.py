"""Names and identities derived from an AosService: instance object names, label values, AosEdge IDs."""

from __future__ import annotations

import hashlib
import re
import uuid

MAX_NAME = 253
MAX_LABEL_VALUE = 63
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_SERVICE_ID_NAMESPACE = uuid.UUID("5c1c2a43-5e4e-4a0a-9a0c-6f1f9b0d2a71")  # fixed: IDs must be stable


def _fit(text: str, limit: int) -> str:
    """Shorten to `limit` keeping it unique: a prefix and a hash of the whole."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{text[: limit - 11].rstrip('-.')}-{digest}"


def dns_label(text: str) -> str:
    cleaned = _NOT_DNS.sub("-", text.lower()).strip("-") or "x"
    return cleaned


def instance_name(service: str, device: str, index: int) -> str:
    return _fit(f"{service}-{dns_label(device)}-{index}", MAX_NAME)


def label_value(text: str) -> str:
    """A label value (63 characters, alphanumeric at both ends) that stays unique for long names."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "x"
    return _fit(value, MAX_LABEL_VALUE)


def service_id(config_service_id: str | None, namespace: str, name: str) -> str:
    """AOS_SERVICE_ID: the config's service UID, or a stable UUID derived from the object's name."""
    if config_service_id:
        return config_service_id
    return str(uuid.uuid5(_SERVICE_ID_NAMESPACE, f"{namespace}/{name}"))


def instance_id(service_id_: str, subject: str, index: int) -> str:
    """AOS_INSTANCE_ID as AosEdge 9.x derives it: UUID v3 (OID namespace) of `service:subject:index`."""
    return str(uuid.uuid3(uuid.NAMESPACE_OID, f"{service_id_}:{subject}:{index}"))


def layer_repository(prefix: str, namespace: str, uid: str) -> str:
    """`aos/<namespace>/layers/<uid>`: where the operator pushes every version of an Aos layer (tag: version)."""
    return "/".join(part for part in (prefix.strip("/"), dns_label(namespace), "layers", dns_label(uid)) if part)


def repository(prefix: str, namespace: str, name: str) -> str:
    """`aos/<namespace>/<name>`: where the operator pushes a service's packages."""
    return "/".join(part for part in (prefix.strip("/"), dns_label(namespace), dns_label(name)) if part)
