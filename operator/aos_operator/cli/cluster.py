"""`aosctl operator`, `agent`, `agent-health` and `crds`: the commands the Helm chart runs."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from aos_operator.cli import trust
from aos_operator.cli.common import (
    kube_options,
    max_layer_size_option,
    network_config,
    network_options,
    registry,
    registry_options,
    seconds,
    whole_number,
)
from aos_operator.packaging import registry_limits
from aos_operator.errors import EXIT_FAILED, EXIT_OK, InputError, RuntimeFailure


def _logging(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # kopf reports every handler call at INFO: one line per watch event, which buries ours.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def _connection(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The API connection, refused up front when there is none to be had (no traceback later)."""
    from aos_operator.api.client import Connection

    connection = Connection(server=args.kube_server, kubeconfig=args.kubeconfig)
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not args.kubeconfig
    if not args.kube_server and not in_cluster:
        if args.kubeconfig:
            candidates = [args.kubeconfig]
        elif os.environ.get("KUBECONFIG"):
            candidates = os.environ["KUBECONFIG"].split(os.pathsep)
        else:
            candidates = [str(Path.home() / ".kube" / "config")]
        if not any(candidate and Path(candidate).is_file() for candidate in candidates):
            raise InputError(
                f"no Kubernetes API to talk to: not in a cluster, and no kubeconfig at {', '.join(candidates)}",
                hint="pass --kubeconfig FILE or --kube-server URL, or set KUBECONFIG",
            )
    connection.check()
    return connection


def _fewer_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives threads their own malloc arenas, up to eight per core, and each keeps what it
    freed; the operator's API calls and builds run in a thread pool. MALLOC_ARENA_MAX, when set, wins."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    import ctypes  # only the operator needs it: not at every command's start

    try:
        ctypes.CDLL(None).mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):  # no glibc: its allocator is not this one
        pass


def cmd_operator(args: argparse.Namespace) -> int:
    import asyncio

    from aos_operator.controller import handlers
    from aos_operator.controller.settings import OperatorSettings

    if not args.registry:
        raise InputError("no registry: pass --registry HOST[:PORT][/PREFIX] or set AOS_REGISTRY")
    connection = _connection(args)
    _logging(args)
    settings = OperatorSettings(
        registry=args.registry,
        work_dir=Path(args.work_dir),
        connection=connection,
        namespaces=tuple(args.namespace or ()),
        registry_insecure=args.insecure,
        registry_ca=Path(args.ca) if args.ca else None,
        registry_auth=Path(args.auth) if args.auth else None,
        registry_limits=registry_limits(args.request_timeout, args.min_blob_rate),
        registry_insecure_hosts=tuple(args.insecure_registry or ()),
        resync_seconds=args.resync,
        source_refresh_seconds=args.source_refresh,
        instance_stop_timeout=args.stop_timeout,
        device_grace_seconds=args.device_grace,
        liveness=args.liveness or None,
        peering=args.peering,
        sign_key=Path(args.sign_key) if args.sign_key else None,
        metrics_address=args.metrics_address or None,
    )
    _fewer_malloc_arenas()
    asyncio.run(handlers.run(settings))
    return EXIT_OK


def cmd_agent(args: argparse.Namespace) -> int:
    from aos_operator.agent.core import DeviceAgent
    from aos_operator.agent.loop import AgentLoop, AgentSettings
    from aos_operator.api.client import KubeClient
    from aos_operator.runtime import Runtime, RuntimeConfig, detect_node_facts, stop_on_signals
    from aos_operator.runtime.node_config import EMPTY as EMPTY_NODE_CONFIG
    from aos_operator.runtime.node_config import load_node_config
    from aos_operator.runtime.package_gc import GcPolicy
    from aos_operator.runtime.offline import online_record_path

    device = args.device or os.environ.get("NODE_NAME")
    if not device:
        raise InputError("no device name: pass --device NAME or set NODE_NAME")
    if os.geteuid() != 0:
        raise RuntimeFailure("the agent needs root: it runs services under runc", hint="run it as root")
    connection = _connection(args)
    _logging(args)
    # Groups are the host's (AosEdge resolves device and resource groups against the node's
    # /etc/group): in a pod that is the base rootfs, /host.
    group_file = Path(args.base_rootfs) / "etc" / "group"
    if not group_file.is_file():
        group_file = Path("/etc/group")
    node_config = (load_node_config(args.node_config, group_file=group_file) if args.node_config
                   else EMPTY_NODE_CONFIG)
    data_dir, run_dir = Path(args.data_dir), Path(args.run_dir)
    config = RuntimeConfig(
        state_root=data_dir,
        run_root=run_dir,  # runc's state is then <run-dir>/runc, where the chart's docs look
        base_path=args.base_rootfs,
        cgroup_parent=args.cgroup_parent,
        max_layer_bytes=args.max_layer_size,
        network=network_config(args),  # type: ignore[arg-type]
        node_config=node_config,
        group_file=group_file,
    )
    node = detect_node_facts(dmips=args.dmips)
    runtime = Runtime(config, node)
    # The agent gets credentials from --auth or pull secrets, not from the node's docker config.
    client = registry(args, notify=lambda line: logging.getLogger("aos_operator.registry").warning("%s", line),
                      docker_defaults=False)
    settings = AgentSettings(
        device=device,
        node=args.node or device,
        run_dir=run_dir,
        connection=connection,
        heartbeat_seconds=args.heartbeat,
        lease_namespace=args.lease_namespace,
        status_report_seconds=args.status_report,
        labels_seconds=args.labels_interval,
        alert_poll_seconds=args.alert_poll,
        online_record=online_record_path(data_dir),  # where the node supervisor looks (offlineTTL)
        resources=tuple(resource.name for resource in node_config.resources),
        host_devices=tuple(device.name for device in node_config.devices),
        node_config=node_config,
    )
    kube = KubeClient(settings.connection, user_agent=f"aos-agent/{device}")
    from aos_operator.trust.verify import VerificationPolicy

    policy = VerificationPolicy.load(args.signature_policy, args.verify_key or [])
    logging.getLogger("aos_operator.agent").info("device %s: %s", device, policy.describe())
    gc = GcPolicy(keep_previous=args.keep_previous, max_packages=args.max_packages, max_bytes=args.max_package_bytes)
    loop = AgentLoop(settings, kube, DeviceAgent(runtime, client, data_dir / "pulls", policy, gc), node)
    metrics = None
    if args.metrics_address:
        from aos_operator.agent.metrics import AgentCollector, make_registry
        from aos_operator.metrics_http import serve_metrics

        collector = AgentCollector(device, runtime.list, loop.instance_names, lambda: loop.last_heartbeat)
        metrics = serve_metrics(args.metrics_address, make_registry(collector))
    try:
        with stop_on_signals(loop.stop):
            loop.run()
    finally:
        if metrics is not None:
            metrics.close()
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


def _namespace(text: str) -> str:
    # A name, not one of kopf's patterns: kopf's connections are counted per namespace's watch streams.
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a namespace name (lowercase letters, digits and '-', at most 63; "
            "no patterns: repeat --namespace for each namespace to watch)")
    return text


def _metrics_address(text: str) -> str:
    from aos_operator.metrics_http import parse_address

    if text:
        try:
            parse_address(text)
        except InputError as error:
            raise argparse.ArgumentTypeError(error.message) from None
    return text


def metrics_option(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument("--metrics-address", type=_metrics_address, default="", metavar="HOST:PORT",
                         help=f"serve Prometheus metrics ({what}) at http://HOST:PORT/metrics; "
                         "':PORT' on every interface (default: none)")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    operator = commands.add_parser(
        "operator", help="run the Kubernetes operator (AosService -> packages -> instances)",
        description="Reconcile AosServices: validate their config, build and push their packages, place "
        "AosServiceInstances on matching AosDevices, and report status. Runs until SIGTERM.",
    )
    operator.add_argument("--namespace", action="append", metavar="NS", type=_namespace,
                          help="watch this namespace (repeatable; default: all)")
    operator.add_argument("--registry", default=os.environ.get("AOS_REGISTRY"), metavar="HOST[:PORT][/PREFIX]",
                          help="the registry to push packages to ($AOS_REGISTRY)")
    registry_options(operator, from_environment=True)
    operator.add_argument("--work-dir", default="/var/cache/aos-operator", metavar="DIR",
                          help="build cache and scratch space (default: %(default)s)")
    trust.sign_key_option(operator, default=os.environ.get("AOS_SIGN_KEY"))
    operator.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", metavar="URL",
                          help="kopf probe endpoint, '' for none (default: %(default)s)")
    operator.add_argument("--peering", metavar="NAME", help="kopf peering object; without it: standalone")
    metrics_option(operator, "reconcile passes, builds, pushes, errors")
    operator.add_argument("--resync", type=seconds(), default=30.0, metavar="SECONDS",
                          help="re-check every service this often (default: %(default)s)")
    operator.add_argument("--source-refresh", type=seconds(), default=60.0, metavar="SECONDS",
                          help="re-read image sources given by tag this often; ConfigMap sources are "
                          "read again when the watch sees them change (default: %(default)s)")
    operator.add_argument("--stop-timeout", type=seconds(), default=120.0, metavar="SECONDS",
                          help="how long a removed instance waits for its agent to report it stopped "
                          "(default: %(default)s)")
    operator.add_argument("--device-grace", type=seconds(), default=40.0, metavar="SECONDS",
                          help="mark an AosDevice Ready=Unknown when its agent has renewed neither its Lease nor "
                          "its status for this long, or its Lease's duration if longer (default: %(default)s)")
    kube_options(operator)
    operator.set_defaults(func=cmd_operator)

    agent = commands.add_parser(
        "agent", help="run the device agent of one edge node (root)",
        description="Register and heart-beat this node's AosDevice, run the AosServiceInstances assigned to it "
        "under runc, and report their status. Services keep running when the agent stops.",
    )
    agent.add_argument("--device", help="AosDevice name (default: $NODE_NAME)")
    agent.add_argument("--node", help="Node whose labels the AosDevice mirrors (default: the device name)")
    agent.add_argument("--data-dir", default="/var/lib/aos", metavar="DIR",
                       help="packages, layers, storage and state (default: %(default)s)")
    agent.add_argument("--run-dir", default="/run/aos", metavar="DIR",
                       help="runtime state, bundles, runc state (default: %(default)s)")
    agent.add_argument("--base-rootfs", default="/", metavar="DIR",
                       help="the services' base layer: the host root, /host in a pod (default: %(default)s)")
    agent.add_argument("--cgroup-parent", default="/aos", metavar="PATH",
                       help="cgroup under which instances run (default: %(default)s)")
    agent.add_argument("--dmips", type=whole_number(1), help="total DMIPS of the device (default: cores x 10000)")
    agent.add_argument("--node-config", metavar="FILE",
                       help="host devices and resources the node offers, in AosEdge's unit-config node shape (YAML)")
    agent.add_argument("--heartbeat", type=seconds(), default=10.0, metavar="SECONDS",
                       help="how often the device's Lease is renewed, or without --lease-namespace its AosDevice "
                       "status (default: %(default)s)")
    agent.add_argument("--lease-namespace", type=_namespace, default=os.environ.get("AOS_LEASE_NAMESPACE"), metavar="NS",
                       help="renew a Lease named after the device in this namespace every beat, and write the "
                       "AosDevice status only when it changes ($AOS_LEASE_NAMESPACE; default: none, every beat is "
                       "a status write)")
    agent.add_argument("--status-report", type=seconds(), default=300.0, metavar="SECONDS",
                       help="with a Lease, write an unchanged AosDevice status again after this long "
                       "(default: %(default)s)")
    agent.add_argument("--labels-interval", type=seconds(), default=30.0, metavar="SECONDS",
                       help="how often the Node's labels are read and mirrored onto the AosDevice "
                            "(default: %(default)s)")
    metrics_option(agent, "instances' CPU, RAM, restarts, phase, alerts; the device's instances and heartbeat")
    agent.add_argument("--alert-poll", type=seconds(), default=10.0, metavar="SECONDS",
                       help="how often the services' alertRules are checked (default: %(default)s, AosEdge's)")
    network_options(agent)
    max_layer_size_option(agent)
    # Package GC (runtime/package_gc.py): what an assigned instance needs is never deleted.
    agent.add_argument("--keep-previous", type=whole_number(0), default=1, metavar="N",
                       help="previous packages kept per service for a fast rollback (default: %(default)s)")
    agent.add_argument("--max-packages", type=whole_number(1), metavar="N",
                       help="installed packages at most, needed ones excepted (default: no limit)")
    agent.add_argument("--max-package-bytes", type=whole_number(1), metavar="BYTES",
                       help="size of installed packages at most (their blobs' sizes), needed ones excepted "
                       "(default: no limit)")
    agent.add_argument("--signature-policy", choices=["required", "off"], default=os.environ.get("AOS_SIGNATURE_POLICY"),
                       help="required: run only packages signed by a --verify-key (default when keys are given; "
                       "$AOS_SIGNATURE_POLICY)")
    trust.verify_key_option(agent, default=[item for item in os.environ.get("AOS_VERIFY_KEYS", "").split(":")
                                            if item] or None)
    registry_options(agent, from_environment=True)
    kube_options(agent)
    agent.set_defaults(func=cmd_agent)

    health = commands.add_parser(
        "agent-health", help="liveness check of a running agent (the chart's probe)",
        description="Exit 0 when the agent that uses --run-dir has heart-beaten recently, 3 (with the reason "
        "on stderr) otherwise.")
    health.add_argument("--run-dir", default="/run/aos", metavar="DIR", help="the agent's --run-dir (default: %(default)s)")
    health.set_defaults(func=cmd_agent_health)

    crds = commands.add_parser(
        "crds", help="print or write the CustomResourceDefinitions",
        description="Print the CRDs of AosService, AosDevice, AosServiceInstance and AosLayer as one YAML "
        "stream, or write one file per CRD into DIR.")
    crds.add_argument("--output", "-o", metavar="DIR", help="write one YAML file per CRD into DIR")
    crds.set_defaults(func=cmd_crds)
