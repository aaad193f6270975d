"""Which resources the emulator serves: our CRDs (read from crds/*.yaml) and the built-ins we use."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"

ALL_VERBS = frozenset({"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"})
METADATA_FIELDS = ("metadata.name", "metadata.namespace")


@dataclass(frozen=True)
class ResourceSpec:
    """What the emulator needs to know about one served resource (one group/version/plural)."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    subresources: frozenset[str] = frozenset()
    short_names: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    custom: bool = False  # a CRD: no strategic-merge patch, status dropped on create, RV needed on PUT
    selectable_fields: tuple[str, ...] = ()
    verbs: frozenset[str] = ALL_VERBS

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """`group/version/plural` (`v1/plural` for the core group), KMock's resource notation."""
        return f"{self.api_version}/{self.plural}"

    @property
    def qualified_name(self) -> str:
        """`plural.group` as in kubectl and in API error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def field_selectors(self) -> tuple[str, ...]:
        return METADATA_FIELDS + self.selectable_fields


def _core(plural: str, kind: str, *, namespaced: bool, group: str = "", version: str = "v1",
          subresources: Iterable[str] = (), short_names: Iterable[str] = (),
          fields: Iterable[str] = ()) -> ResourceSpec:
    return ResourceSpec(
        group=group, version=version, plural=plural, kind=kind, singular=kind.lower(),
        namespaced=namespaced, subresources=frozenset(subresources),
        short_names=frozenset(short_names), selectable_fields=tuple(fields),
    )


_EVENT_FIELDS = (
    "involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
    "involvedObject.uid", "involvedObject.apiVersion", "reason", "type", "source",
)

BUILTIN_RESOURCES: tuple[ResourceSpec, ...] = (
    _core("namespaces", "Namespace", namespaced=False, subresources={"status"}, short_names={"ns"},
          fields=("status.phase",)),
    _core("nodes", "Node", namespaced=False, subresources={"status"}, short_names={"no"},
          fields=("spec.unschedulable",)),
    _core("configmaps", "ConfigMap", namespaced=True, short_names={"cm"}),
    _core("secrets", "Secret", namespaced=True, fields=("type",)),
    _core("events", "Event", namespaced=True, short_names={"ev"}, fields=_EVENT_FIELDS),
    _core("events", "Event", namespaced=True, group="events.k8s.io", short_names={"ev"},
          fields=("regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid",
                  "reason", "type")),
    _core("leases", "Lease", namespaced=True, group="coordination.k8s.io"),
    _core("customresourcedefinitions", "CustomResourceDefinition", namespaced=False,
          group="apiextensions.k8s.io", subresources={"status"}, short_names={"crd", "crds"}),
    # kopf's peering resources (kopf's own CRDs in a real cluster).
    ResourceSpec(group="kopf.dev", version="v1", plural="kopfpeerings", kind="KopfPeering",
                 singular="kopfpeering", namespaced=True, custom=True),
    ResourceSpec(group="kopf.dev", version="v1", plural="clusterkopfpeerings", kind="ClusterKopfPeering",
                 singular="clusterkopfpeering", namespaced=False, custom=True),
    ResourceSpec(group="zalando.org", version="v1", plural="kopfpeerings", kind="KopfPeering",
                 singular="kopfpeering", namespaced=True, custom=True),
    ResourceSpec(group="zalando.org", version="v1", plural="clusterkopfpeerings", kind="ClusterKopfPeering",
                 singular="clusterkopfpeering", namespaced=False, custom=True),
)

# Namespaces every cluster has.
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def specs_from_crd(crd: Mapping[str, Any]) -> list[ResourceSpec]:
    """One spec per served version of a CustomResourceDefinition object."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    specs: list[ResourceSpec] = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        selectable = tuple(
            str(item["jsonPath"]).lstrip(".") for item in version.get("selectableFields") or []
        )
        specs.append(ResourceSpec(
            group=spec["group"], version=version["name"], plural=names["plural"], kind=names["kind"],
            singular=names.get("singular") or names["kind"].lower(),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            subresources=frozenset((version.get("subresources") or {}).keys()),
            short_names=frozenset(names.get("shortNames") or ()),
            categories=frozenset(names.get("categories") or ()),
            custom=True, selectable_fields=selectable,
        ))
    return specs


def load_crds(directory: Path = CRD_DIR) -> list[dict[str, Any]]:
    """The CustomResourceDefinition documents in `directory` (*.yaml), sorted by file name."""
    if not directory.is_dir():
        raise FileNotFoundError(f"CRD directory {directory} does not exist: pass a directory of CRD YAML files")
    crds: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from None
        crds += [document for document in documents
                 if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition"]
    return crds


@dataclass
class ResourceTable:
    """The served resources, looked up by (group, version, plural)."""

    specs: dict[tuple[str, str, str], ResourceSpec] = field(default_factory=dict)

    def add(self, spec: ResourceSpec) -> None:
        self.specs[spec.group, spec.version, spec.plural] = spec

    def get(self, group: str | None, version: str | None, plural: str | None) -> ResourceSpec | None:
        return self.specs.get((group or "", version or "", plural or ""))

    def by_kind(self, api_version: str, kind: str) -> ResourceSpec | None:
        for spec in self.specs.values():
            if spec.api_version == api_version and spec.kind == kind:
                return spec
        return None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.specs.values())
