"""Whether a package's signatures vouch for it: the pure decision, and the device's policy.

A package passes when at least one of its signatures (a) verifies, as ECDSA P-256/SHA-256
over the payload bytes, with one of the configured public keys, and (b) has a payload that
names exactly the package's manifest digest. Anything else is refused with the most telling
reason: no signature at all, signatures by other keys, or a valid signature over another
digest. The repository named in the payload is not compared (cosign does not either): the
digest is the content, and mirrors keep it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aos_operator.errors import InputError, SignatureError
from aos_operator.trust.cosign import SignatureLayer, signed_digest
from aos_operator.trust.keys import VerificationKey, load_verification_keys

POLICY_REQUIRED = "required"
POLICY_OFF = "off"
POLICIES = (POLICY_REQUIRED, POLICY_OFF)


@dataclass(frozen=True)
class FoundSignature:
    """A signature read from the registry, with its payload bytes (already digest-checked)."""

    layer: SignatureLayer
    payload: bytes
    where: str  # the tag or referrer it came from, for messages


@dataclass(frozen=True)
class Verdict:
    digest: str
    key: VerificationKey
    where: str


def check_signatures(
    signatures: Sequence[FoundSignature], digest: str, keys: Sequence[VerificationKey], package: str
) -> Verdict:
    """The first signature that vouches for `digest` with one of `keys`; else SignatureError."""
    if not keys:
        raise SignatureError(f"{package}: no public keys are configured to verify it with")
    if not signatures:
        raise SignatureError(
            f"{package}: is not signed (no cosign signature for {digest})",
            hint="sign it with `aosctl push --sign-key` or `cosign sign --key`",
        )
    other_digests: list[str] = []
    for found in signatures:
        key = next((key for key in keys if key.verifies(found.layer.signature, found.payload)), None)
        if key is None:
            continue
        try:
            named = signed_digest(found.payload, found.where)
        except SignatureError:
            continue
        if named == digest:
            return Verdict(digest, key, found.where)
        other_digests.append(named)
    if other_digests:
        raise SignatureError(
            f"{package}: the signature by a trusted key is over {other_digests[0]}, not {digest}",
            hint="the manifest was changed after signing, or a signature was copied from another package",
        )
    ids = ", ".join(key.key_id for key in keys)
    raise SignatureError(
        f"{package}: {len(signatures)} signature(s), none made by a trusted key ({ids})",
        hint="sign it with one of the device's keys, or add the signer's public key to the device's policy",
    )


@dataclass(frozen=True)
class VerificationPolicy:
    """What a device accepts: `required` (a valid signature by one of `keys`) or `off`."""

    mode: str = POLICY_OFF
    keys: tuple[VerificationKey, ...] = field(default=())

    @property
    def required(self) -> bool:
        return self.mode == POLICY_REQUIRED

    @classmethod
    def load(cls, mode: str | None, key_paths: Sequence[str | Path]) -> VerificationPolicy:
        """From settings: keys given and no mode means required; required without keys is refused."""
        mode = mode or (POLICY_REQUIRED if key_paths else POLICY_OFF)
        if mode not in POLICIES:
            raise InputError(f"signature policy {mode!r} is not one of {', '.join(POLICIES)}")
        keys = tuple(key for path in key_paths for key in load_verification_keys(path))
        if mode == POLICY_REQUIRED and not keys:
            raise InputError(
                "signature policy `required` needs at least one public key",
                hint="pass --verify-key FILE|DIR (repeatable), or set the policy to off",
            )
        return cls(mode, keys)

    def describe(self) -> str:
        if not self.required:
            return "signatures not checked (policy off)"
        return f"signatures required, {len(self.keys)} key(s): " + ", ".join(key.key_id for key in self.keys)
