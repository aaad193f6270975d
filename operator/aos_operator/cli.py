"""`aosctl`: the command line of the project (validate, schema, build, push, pull, run, operator, agent)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aos_operator import __version__
from aos_operator.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNREADABLE,
    AosError,
    InputError,
    RuntimeFailure,
)
from aos_operator.api.client import Connection
from aos_operator.image import BuildResult, Progress, open_package
from aos_operator.packaging import (
    build_service,
    materialize,
    pull_package,
    push_package,
    registry_client,
    source_folder,
)
from aos_operator.registry import RegistryClient
from aos_operator.service import (
    ConfigResult,
    ServiceDescription,
    image_config,
    load_service,
    read_config,
    service_config,
)
from aos_operator.service.description import Image
from aos_operator.service.schema import config_json_schema
from aos_operator.service.units import human_bytes

Command = Callable[[argparse.Namespace], int]


# --- validate and schema -------------------------------------------------------------------------


def _quota_summary(service: ServiceDescription) -> str:
    quotas = service.quotas
    parts = []
    if quotas.cpu_dmips is not None:
        parts.append(f"cpu {quotas.cpu_dmips} DMIPS")
    for label, value in (
        ("ram", quotas.ram),
        ("tmp", quotas.tmp),
        ("state", quotas.state),
        ("storage", quotas.storage),
        ("upload", quotas.upload_bytes),
        ("download", quotas.download_bytes),
    ):
        if value is not None:
            parts.append(f"{label} {human_bytes(value)}")
    for label, value in (("upload speed", quotas.upload_speed_kbits), ("download speed", quotas.download_speed_kbits)):
        if value is not None:
            parts.append(f"{label} {value} kbit/s")
    if quotas.pids is not None:
        parts.append(f"pids {quotas.pids}")
    if quotas.no_file is not None:
        parts.append(f"open files {quotas.no_file}")
    if service.skip_resource_limits:
        parts.append("(skipResourceLimits: enforced on the device, not reserved when placing)")
    return ", ".join(parts) or "none"


def _service_summary(service: ServiceDescription) -> list[str]:
    identity = service.name or service.service_id or "(unnamed)"
    lines = [f"  service    {identity} {service.version}"]
    if service.name and service.service_id:
        lines.append(f"  id         {service.service_id}")
    for image in service.images:
        command = shlex.join(image.command) if image.command else "(none)"
        lines.append(f"  image      {image.platform.label()} from {image.source_folder}/")
        lines.append(f"  command    {command}")
        lines.append(f"  workdir    {image.working_dir or '/'}")
    lines.append(f"  quotas     {_quota_summary(service)}")
    instances = service.instances
    lines.append(f"  instances  {instances.min_instances} per unit, priority {instances.priority}")
    return lines


def _result_json(result: ConfigResult) -> dict[str, Any]:
    return {
        "file": result.file,
        "dialect": result.dialect,
        "valid": result.valid,
        "issues": [issue.__dict__ for issue in result.issues],
        "services": [
            {
                "description": service.model_dump(mode="json"),
                "serviceConfig": service_config(service),
                "imageConfigs": {image.platform.label(): image_config(service, image) for image in service.images},
            }
            for service in result.services
        ],
    }


def cmd_validate(args: argparse.Namespace) -> int:
    result = read_config(Path(args.path), check_upload=not args.local)
    if args.json:
        print(json.dumps(_result_json(result), indent=2))
        return EXIT_OK if result.valid else EXIT_INVALID
    for issue in result.issues:
        print(issue.render())
    if not result.valid:
        count = len(result.errors)
        print(f"{result.file}: invalid, {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{result.file}: valid (schema version {result.dialect})")
    if not result.services:
        print("  no service items (identity.type: service) in this config")
    for service in result.services:
        print("\n".join(_service_summary(service)))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_json_schema(), indent=2))
    return EXIT_OK


# --- build, push, pull ---------------------------------------------------------------------------


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aosctl" / "build"


class ProgressBar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.drawn = False

    def __call__(self, progress: Progress) -> None:
        if not self.enabled:
            return
        if progress.total_bytes:
            fraction = min(progress.done_bytes / progress.total_bytes, 1.0)
            bar = "#" * int(fraction * 30)
            text = f"{progress.phase:6} [{bar:<30}] {human_bytes(progress.done_bytes)} / {human_bytes(progress.total_bytes)}"
        else:
            text = f"{progress.phase:6} {progress.done_files} files"
        sys.stderr.write("\r" + text.ljust(78)[:78])
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\r" + " " * 78 + "\r")
            sys.stderr.flush()


def _load_for_build(path: Path, item: str | None) -> tuple[ServiceDescription, ConfigResult]:
    service, result = load_service(path, item=item)
    for issue in result.warnings:
        print(issue.render(), file=sys.stderr)
    return service, result


def _build(args: argparse.Namespace, path: Path, *, archive: Path | None, oci_layout: Path | None) -> BuildResult:
    service, result = _load_for_build(path, args.item)
    image = _image(service, args.arch)
    source = source_folder(image, result.base_dir or path)
    bar = ProgressBar(sys.stderr.isatty() and not args.quiet)
    try:
        built = build_service(
            service,
            source,
            architecture=image.platform.architecture,
            archive=archive,
            oci_layout=oci_layout,
            tag=getattr(args, "tag", None),
            cache_dir=None if args.no_cache else Path(args.cache_dir or default_cache_dir()),
            progress=bar,
        )
    finally:
        bar.close()
    for warning in built.warnings:
        print(f"aosctl: warning: {warning}", file=sys.stderr)
    return built


def _image(service: ServiceDescription, architecture: str | None) -> Image:
    try:
        return service.image_for(architecture)
    except LookupError as error:
        raise InputError(str(error), hint="choose one with --arch") from None


def cmd_build(args: argparse.Namespace) -> int:
    path = Path(args.path)
    archive = Path(args.output) if args.output else None
    oci_layout = Path(args.oci_layout) if args.oci_layout else None
    if archive is None and oci_layout is None:
        service, _ = load_service(path, item=args.item)
        archive = Path(f"{(service.name or path.resolve().name)}-{service.version}.tar")
    built = _build(args, path, archive=archive, oci_layout=oci_layout)
    if not args.quiet:
        for output in (built.archive, built.oci_layout):
            if output is not None:
                print(f"wrote {output}", file=sys.stderr)
        cached = " (layer from cache)" if built.layer_from_cache else ""
        print(f"layer {built.layer.digest} {human_bytes(built.layer.size)}{cached}", file=sys.stderr)
    print(built.manifest_digest)
    return EXIT_OK


def _registry(args: argparse.Namespace) -> RegistryClient:
    return registry_client(
        insecure=args.insecure,
        ca_file=Path(args.ca) if args.ca else None,
        auth_file=Path(args.auth) if args.auth else None,
    )


def cmd_push(args: argparse.Namespace) -> int:
    path = Path(args.path)
    with tempfile.TemporaryDirectory(prefix="aosctl-push-") as scratch:
        if path.is_dir() and not (path / "manifest.json").exists() and not (path / "oci-layout").exists():
            built = _build(args, path, archive=None, oci_layout=Path(scratch) / "layout")
            package = open_package(built.oci_layout)  # type: ignore[arg-type]
        else:
            package = open_package(path)
        with _registry(args) as client:
            digest = push_package(client, package, args.reference)
    print(f"{args.reference.split('@')[0]}@{digest}")
    return EXIT_OK


def cmd_pull(args: argparse.Namespace) -> int:
    with _registry(args) as client:
        digest, output = pull_package(client, args.reference, Path(args.output), oci_layout=args.oci_layout)
    print(f"wrote {output}", file=sys.stderr)
    print(digest)
    return EXIT_OK


# --- run ----------------------------------------------------------------------------------------


def _package_for_run(args: argparse.Namespace, scratch: Path) -> tuple[Path, str]:
    """A package directory for the runtime, and the service ID its instances run as."""
    path = Path(args.target)
    directory = scratch / "package"
    if path.exists():
        if path.is_dir() and not (path / "manifest.json").exists() and not (path / "oci-layout").exists():
            built = _build(args, path, archive=None, oci_layout=scratch / "layout")
            service, _ = load_service(path, item=args.item)
            materialize(open_package(built.oci_layout), directory)  # type: ignore[arg-type]
            return directory, args.service_id or service.service_id or "local"
        materialize(open_package(path), directory)
        return directory, args.service_id or "local"
    if "/" not in args.target:
        raise InputError(f"{args.target}: no such file or directory, and not an image reference (registry/repo:tag)")
    with _registry(args) as client:
        client.pull(args.target, directory)
    return directory, args.service_id or "local"


def cmd_run(args: argparse.Namespace) -> int:
    from aos_operator.runtime import RuntimeConfig, detect_node_facts, run_foreground, stop_on_signals

    if os.geteuid() != 0:
        raise RuntimeFailure(
            "aosctl run needs root: it runs the service under runc with cgroup limits and mounts",
            hint="run it with sudo",
        )
    if args.instances < 1:
        raise InputError(f"--instances must be at least 1, got {args.instances}")
    config = RuntimeConfig(state_root=Path(args.state_dir), run_root=Path(args.run_dir),
                           network=_network_config(args))
    with tempfile.TemporaryDirectory(prefix="aosctl-run-") as scratch:
        package_dir, service_id = _package_for_run(args, Path(scratch))
        stop = threading.Event()
        if args.timeout:
            timer = threading.Timer(args.timeout, stop.set)
            timer.daemon = True
            timer.start()
        with stop_on_signals(stop):
            result = run_foreground(
                package_dir,
                instances=args.instances,
                node=detect_node_facts(dmips=args.node_dmips),
                stop_event=stop,
                config=config,
                service_id=service_id,
                subject_id=args.subject,
                restart=not args.no_restart,
                provider=args.network_provider,
            )
    return result.exit_code


# --- the instance network (runtime/network): flags shared by run and agent ------------------------


def network_options(command: argparse.ArgumentParser) -> None:
    from aos_operator.runtime.network.model import AOSEDGE_UNCOUNTED, DEFAULT_POOL, DEFAULT_PREFIX

    group = command.add_argument_group("instance network (CNI)")
    group.add_argument("--no-network", action="store_true",
                       help="no CNI network: each instance gets a network namespace with loopback only")
    group.add_argument("--network-pool", default=DEFAULT_POOL, metavar="CIDR",
                       help=f"subnets of provider networks come from here (default {DEFAULT_POOL})")
    group.add_argument("--network-prefix", type=int, default=DEFAULT_PREFIX, metavar="N",
                       help=f"prefix length of each provider network (default /{DEFAULT_PREFIX})")
    group.add_argument("--cni-dir", action="append", metavar="DIR",
                       help="CNI plugin directory (repeatable; default /usr/lib/cni and /opt/cni/bin)")
    group.add_argument("--traffic-uncounted", default=",".join(AOSEDGE_UNCOUNTED), metavar="CIDR,...",
                       help="ranges uploadLimit/downloadLimit do not count (default: loopback and the private "
                            "ranges, as AosEdge; '' counts everything)")
    group.add_argument("--dns-server", action="append", metavar="IP",
                       help="upstream DNS servers of the networks' DNS (default: the node's /etc/resolv.conf)")


def _network_config(args: argparse.Namespace) -> Any:
    from aos_operator.runtime.network.model import NetworkConfig

    options: dict[str, Any] = {
        # dnsmasq re-reads its hosts file as nobody: under the run dir, which the node keeps 0755
        "dns_dir": str(Path(args.run_dir) / "network-dns"),
        "enabled": not args.no_network, "pool": args.network_pool, "prefix": args.network_prefix,
        "uncounted": tuple(part.strip() for part in args.traffic_uncounted.split(",") if part.strip()),
        "upstream_dns": tuple(args.dns_server or ()),
    }
    if args.cni_dir:
        options["plugin_dirs"] = tuple(args.cni_dir)
    try:
        return NetworkConfig(**options)
    except ValueError as error:
        raise InputError(str(error)) from None


# --- operator and agent ------------------------------------------------------------------------------


def _logging(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # kopf reports every handler call at INFO: one line per watch event, which buries ours.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def _connection(args: argparse.Namespace) -> Connection:
    return Connection(server=args.kube_server, kubeconfig=args.kubeconfig)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def cmd_operator(args: argparse.Namespace) -> int:
    import asyncio

    from aos_operator.controller import handlers
    from aos_operator.controller.settings import OperatorSettings

    _logging(args)
    if not args.registry:
        raise InputError("no registry: pass --registry HOST[:PORT][/PREFIX] or set AOS_REGISTRY")
    settings = OperatorSettings(
        registry=args.registry,
        work_dir=Path(args.work_dir),
        connection=_connection(args),
        namespaces=tuple(args.namespace or ()),
        registry_insecure=args.registry_insecure,
        registry_ca=Path(args.registry_ca) if args.registry_ca else None,
        registry_auth=Path(args.registry_auth) if args.registry_auth else None,
        resync_seconds=args.resync,
        instance_stop_timeout=args.stop_timeout,
        liveness=args.liveness or None,
        peering=args.peering,
    )
    asyncio.run(handlers.run(settings))
    return EXIT_OK


def _node_config(path: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Resources and host devices the node offers, from a small YAML file."""
    if not path:
        return (), ()
    import yaml

    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise InputError(f"{path}: cannot read the node config: {error}") from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: the node config must be a mapping with `resources` and `devices` lists")
    def names(key: str) -> tuple[str, ...]:
        items = document.get(key) or []
        return tuple(str(item["name"] if isinstance(item, dict) else item) for item in items)
    return names("resources"), names("devices")


def cmd_agent(args: argparse.Namespace) -> int:
    from aos_operator.agent.core import DeviceAgent
    from aos_operator.agent.loop import AgentLoop, AgentSettings
    from aos_operator.api.client import KubeClient
    from aos_operator.runtime import Runtime, RuntimeConfig, detect_node_facts, stop_on_signals

    _logging(args)
    device = args.device or os.environ.get("NODE_NAME")
    if not device:
        raise InputError("no device name: pass --device NAME or set NODE_NAME")
    if os.geteuid() != 0:
        raise RuntimeFailure("the agent needs root: it runs services under runc", hint="run it as root")
    resources, host_devices = _node_config(args.node_config)
    data_dir, run_dir = Path(args.data_dir), Path(args.run_dir)
    config = RuntimeConfig(
        state_root=data_dir,
        run_root=run_dir,  # runc's state is then <run-dir>/runc, where the chart's docs look
        base_path=args.base_rootfs,
        cgroup_parent=args.cgroup_parent,
        network=_network_config(args),
    )
    node = detect_node_facts(dmips=args.dmips)
    runtime = Runtime(config, node)
    registry = _registry(args)
    settings = AgentSettings(
        device=device,
        node=args.node or device,
        run_dir=run_dir,
        connection=_connection(args),
        heartbeat_seconds=args.heartbeat,
        resources=resources,
        host_devices=host_devices,
    )
    kube = KubeClient(settings.connection, user_agent=f"aos-agent/{device}")
    loop = AgentLoop(settings, kube, DeviceAgent(runtime, registry, data_dir / "pulls"), node)
    with stop_on_signals(loop.stop):
        loop.run()
    return EXIT_OK


def cmd_agent_health(args: argparse.Namespace) -> int:
    from aos_operator.agent.loop import agent_alive

    alive, problem = agent_alive(Path(args.run_dir))
    if alive:
        return EXIT_OK
    print(f"aosctl: {problem}", file=sys.stderr)
    return EXIT_FAILED


def cmd_crds(args: argparse.Namespace) -> int:
    from aos_operator.api import crds

    if args.output:
        for path in crds.write_all(Path(args.output)):
            print(path)
    else:
        print("---\n".join(crds.render(kind) for kind in crds.KINDS), end="")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aosctl",
        description="Build, push and run AosEdge services; run the Kubernetes operator and device agent.",
    )
    parser.add_argument("--version", action="version", version=f"aosctl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    validate = commands.add_parser(
        "validate",
        help="check a service's config.yaml (schema version 1 or 2)",
        description="Check a config.yaml as AosEdge's aos-signer does and summarize the service. "
        "Exit 0: valid; 1: invalid (every error is listed as FILE:LINE: field: problem); 2: unreadable.",
    )
    validate.add_argument("path", metavar="PATH", help="service directory (with meta/config.yaml) or config.yaml")
    validate.add_argument("--json", action="store_true", help="print the normalized description and generated configs")
    validate.add_argument(
        "--local",
        action="store_true",
        help="skip the AosCloud signing and upload credential checks (not needed to build or run)",
    )
    validate.set_defaults(func=cmd_validate)

    schema = commands.add_parser("schema", help="print JSON Schemas for editors")
    schema.add_argument("kind", choices=["config"], help="config: config.yaml (both schema versions)")
    schema.set_defaults(func=cmd_schema)

    def build_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--item", metavar="CODENAME", help="the service item of a schema-version-2 config")
        command.add_argument("--arch", metavar="ARCH", help="the image's architecture when there are several")
        command.add_argument("--cache-dir", metavar="DIR", help=f"build cache (default {default_cache_dir()})")
        command.add_argument("--no-cache", action="store_true", help="build without the cache")
        command.add_argument("--quiet", "-q", action="store_true", help="print only the digest")

    def registry_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--insecure", action="store_true", help="plain HTTP to the registry (loopback is allowed anyway)")
        command.add_argument("--ca", metavar="FILE", help="CA bundle for the registry's TLS certificate")
        command.add_argument("--auth", metavar="FILE", help="docker config.json with registry credentials")

    build = commands.add_parser(
        "build",
        help="build a service's OCI package, reproducibly",
        description="Build the AosEdge service package (manifest.json + blobs) of a service directory "
        "and print its manifest digest. The same inputs give the same bytes (SOURCE_DATE_EPOCH sets the time).",
    )
    build.add_argument("path", metavar="DIR", help="service directory (meta/config.yaml + src/) or config.yaml")
    build.add_argument("-o", "--output", metavar="FILE.tar", help="the package archive, as devices receive it")
    build.add_argument("--oci-layout", metavar="DIR", help="also (or instead) write an OCI image layout")
    build.add_argument("--tag", help="tag recorded in the OCI layout's index")
    build_options(build)
    build.set_defaults(func=cmd_build)

    push = commands.add_parser(
        "push", help="push a package (building it from a service directory) to an OCI registry",
        description="Push a package archive, package directory or OCI layout to REF; a service directory is "
        "built first. Prints REF@sha256:... Blobs the registry has are skipped.",
    )
    push.add_argument("path", metavar="DIR|ARCHIVE", help="service directory, package archive or directory, OCI layout")
    push.add_argument("reference", metavar="REF", help="registry/repository:tag, e.g. localhost:5000/aos/hello:1.0.0")
    build_options(push)
    registry_options(push)
    push.set_defaults(func=cmd_push)

    pull = commands.add_parser("pull", help="pull a package from an OCI registry, verified")
    pull.add_argument("reference", metavar="REF", help="registry/repository:tag or registry/repository@sha256:...")
    pull.add_argument("-o", "--output", metavar="DIR|FILE.tar", required=True, help="package directory, or archive")
    pull.add_argument("--oci-layout", action="store_true", help="write an OCI image layout at --output instead")
    registry_options(pull)
    pull.set_defaults(func=cmd_pull)

    run = commands.add_parser(
        "run",
        help="run a service under runc with its quotas, in the foreground (root)",
        description="Build (a service directory), open (an archive) or pull (a reference) a package, install it "
        "as an AosEdge device does and run its instances under runc with the quotas as Linux limits. Output is "
        "streamed; Ctrl-C or SIGTERM stops and cleans up. Storage and state persist in --state-dir.",
    )
    run.add_argument("target", metavar="DIR|ARCHIVE|REF", help="service directory, package, or registry reference")
    run.add_argument("--instances", "-n", type=int, default=1, help="instances to run (default 1)")
    run.add_argument("--node-dmips", type=int, help="the node's total DMIPS (default: cores x 10000)")
    run.add_argument("--service-id", help="AOS_SERVICE_ID (default: the config's service UID)")
    run.add_argument("--subject", default="local", help="AOS_SUBJECT_ID (default local)")
    run.add_argument("--no-restart", action="store_true", help="do not restart an instance that ends")
    run.add_argument("--timeout", type=float, metavar="SECONDS", help="stop after this long")
    run.add_argument("--state-dir", default="/var/lib/aosctl", help="installed packages, storage and state")
    run.add_argument("--run-dir", default="/run/aosctl", help="runtime state (bundles, logs, runc)")
    run.add_argument("--network-provider", default="default", metavar="NAME",
                     help="the provider network the instances join (default 'default', the agent's name for "
                          "services of the 'default' namespace)")
    network_options(run)
    build_options(run)
    registry_options(run)
    run.set_defaults(func=cmd_run)

    def kube_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--kube-server", metavar="URL", default=os.environ.get("AOS_KUBE_SERVER"),
                             help="API server URL without auth (tests); default: in-cluster or kubeconfig")
        command.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file (default ~/.kube/config)")
        command.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        command.add_argument("--verbose", "-v", action="store_true", help="the same as --log-level debug")

    operator = commands.add_parser(
        "operator", help="run the Kubernetes operator (AosService -> packages -> instances)",
        description="Reconcile AosServices: validate their config, build and push their packages, place "
        "AosServiceInstances on matching AosDevices, and report status.",
    )
    operator.add_argument("--namespace", action="append", metavar="NS", help="watch this namespace (repeatable; default all)")
    operator.add_argument("--registry", default=os.environ.get("AOS_REGISTRY"), help="HOST[:PORT][/PREFIX] to push to")
    operator.add_argument("--registry-insecure", action="store_true", default=_env_flag("AOS_REGISTRY_INSECURE"))
    operator.add_argument("--registry-ca", default=os.environ.get("AOS_REGISTRY_CA"), metavar="FILE")
    operator.add_argument("--registry-auth", default=os.environ.get("AOS_REGISTRY_AUTH"), metavar="FILE")
    operator.add_argument("--work-dir", default="/var/cache/aos-operator", help="build cache and scratch space")
    operator.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf probe endpoint ('' for none)")
    operator.add_argument("--peering", metavar="NAME", help="kopf peering object; without it: standalone")
    operator.add_argument("--resync", type=float, default=30.0, metavar="SECONDS", help="re-check every service this often")
    operator.add_argument("--stop-timeout", type=float, default=120.0, metavar="SECONDS",
                          help="how long a removed instance waits for its agent to report it stopped")
    kube_options(operator)
    operator.set_defaults(func=cmd_operator)

    agent = commands.add_parser(
        "agent", help="run the device agent of one edge node (root)",
        description="Register and heart-beat this node's AosDevice, run the AosServiceInstances assigned to it "
        "under runc, and report their status. Services keep running when the agent stops.",
    )
    agent.add_argument("--device", help="AosDevice name (default: $NODE_NAME)")
    agent.add_argument("--node", help="Node whose labels the AosDevice mirrors (default: the device name)")
    agent.add_argument("--data-dir", default="/var/lib/aos", help="packages, layers, storage and state")
    agent.add_argument("--run-dir", default="/run/aos", help="runtime state, bundles, runc state")
    agent.add_argument("--base-rootfs", default="/", help="the services' base layer (the host root; /host in a pod)")
    agent.add_argument("--cgroup-parent", default="/aos", help="cgroup under which instances run (default /aos)")
    agent.add_argument("--dmips", type=int, help="total DMIPS of the device (default: cores x 10000)")
    agent.add_argument("--node-config", metavar="FILE", help="YAML with the resources and devices the node offers")
    agent.add_argument("--heartbeat", type=float, default=10.0, metavar="SECONDS")
    network_options(agent)
    agent.add_argument("--insecure", "--registry-insecure", dest="insecure", action="store_true",
                       default=_env_flag("AOS_REGISTRY_INSECURE"), help="plain HTTP to the registry")
    agent.add_argument("--ca", "--registry-ca", dest="ca", default=os.environ.get("AOS_REGISTRY_CA"), metavar="FILE")
    agent.add_argument("--auth", "--registry-auth", dest="auth", default=os.environ.get("AOS_REGISTRY_AUTH"), metavar="FILE")
    kube_options(agent)
    agent.set_defaults(func=cmd_agent)

    health = commands.add_parser("agent-health", help="liveness check of a running agent")
    health.add_argument("--run-dir", default="/run/aos")
    health.set_defaults(func=cmd_agent_health)

    crds = commands.add_parser("crds", help="print or write the CustomResourceDefinitions")
    crds.add_argument("--output", "-o", metavar="DIR", help="write one YAML file per CRD into DIR")
    crds.set_defaults(func=cmd_crds)
    return parser


def _run(command: Command, args: argparse.Namespace) -> int:
    try:
        return command(args)
    except AosError as error:
        print(f"aosctl: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("aosctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as error:  # a bug, not bad input: say so, keep the traceback for a report
        if os.environ.get("AOSCTL_DEBUG"):
            traceback.print_exc()
        print(
            f"aosctl: internal error: {type(error).__name__}: {error}\n"
            "  hint: this is a bug in aosctl; rerun with AOSCTL_DEBUG=1 and report the traceback",
            file=sys.stderr,
        )
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_UNREADABLE if exit_.code else 0
    return _run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
