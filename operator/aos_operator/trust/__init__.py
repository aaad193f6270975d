"""Trust: who vouches for a package.

- `keys`: ECDSA P-256 keys in PEM and cosign's encrypted private-key format;
- `cosign`: cosign's simple-signing payload and signature manifest, as pure data;
- `verify`: the pure decision whether signatures vouch for a digest, and the device's policy;
- `store`: signatures in the registry (the `.sig` tag, OCI 1.1 referrers), and the check a
  device makes before it pulls any layer;
- `bundle`: the AosCloud upload bundle `aos-signer sign` writes (`aosctl sign`).

Knows no Kubernetes; only `store` talks to a registry.
"""
