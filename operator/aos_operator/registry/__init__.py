"""OCI distribution client: push AosEdge service packages to any OCI registry, pull them by digest.

Knows HTTP and OCI, never Kubernetes: pull secrets come in as their `data` dict.
"""

from aos_operator.registry.client import PulledManifest, RegistryClient, TransferStats
from aos_operator.registry.content import BlobSink, BlobSource, BytesBlob, FileBlob, FileSink
from aos_operator.registry.credentials import CredentialSource, Credentials, DockerConfig
from aos_operator.registry.limits import RegistryLimits
from aos_operator.registry.reference import Reference
from aos_operator.registry.retry import RetryPolicy

__all__ = [
    "BlobSink",
    "BlobSource",
    "BytesBlob",
    "CredentialSource",
    "Credentials",
    "DockerConfig",
    "FileBlob",
    "FileSink",
    "PulledManifest",
    "Reference",
    "RegistryLimits",
    "RegistryClient",
    "RetryPolicy",
    "TransferStats",
]
