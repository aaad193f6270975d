"""Content digests and canonical JSON: the identity of every blob the project writes or reads."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def canonical_json(value: Any) -> bytes:
    """Serialize to the canonical form: sorted keys, compact separators, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(value: str) -> bool:
    return isinstance(value, str) and bool(_DIGEST_RE.fullmatch(value))


def digest_hex(digest: str) -> str:
    """The hex part of a `sha256:<hex>` digest; raises ValueError for anything else."""
    if not is_digest(digest):
        raise ValueError(f"not a sha256 digest: {digest!r} (expected sha256:<64 lowercase hex>)")
    return digest.split(":", 1)[1]
