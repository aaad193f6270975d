"""`aosctl run`: a package's instances under runc on this machine, in the foreground or detached.

Which service ID the instances run as decides their instance IDs and storage, so unrelated
packages must not share one: the config's service ID, else one derived from what was run (the
repository of a reference, the service's name, the package's image config), always reported.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from aos_operator.cli import packages, trust
from aos_operator.cli.common import (
    build_options,
    max_layer_size_option,
    network_config,
    network_options,
    quiet_option,
    registry,
    registry_options,
    runtime_dir_options,
    seconds,
    whole_number,
)
from aos_operator.cli.output import add_output_option, camel_keys, emit, note, result, structured
from aos_operator.errors import EXIT_FAILED, EXIT_OK, InputError, RuntimeFailure
from aos_operator.image import Package, open_package
from aos_operator.packaging import materialize
from aos_operator.registry.reference import Reference

_DERIVED_NAMESPACE = uuid.UUID("6f0c1d2e-8a4b-5c3d-9e7f-a1b2c3d4e5f6")  # aosctl's own, for derived IDs


@dataclass(frozen=True)
class RunTarget:
    package_dir: Path
    service_id: str
    origin: str  # where the service ID came from, said to the user


def derived_service_id(key: str) -> str:
    return str(uuid.uuid5(_DERIVED_NAMESPACE, key))


def _package_key(package: Package) -> str:
    """What identifies a service inside a package that has no service ID: its author and command."""
    config = package.image_config()
    settings = config.get("config") or {}
    parts = [str(config.get("author") or ""), str(config.get("architecture") or ""),
             repr(settings.get("Entrypoint") or []), repr(settings.get("Cmd") or [])]
    return "package:" + "\x00".join(parts)


def _check_architecture(package: Package, node_architecture: str, what: str) -> None:
    architecture = package.image_config().get("architecture")
    if architecture and architecture != node_architecture:
        raise InputError(
            f"{what}: the package is built for {package.image_config().get('os', 'linux')}/{architecture}, "
            f"this node is {node_architecture}",
            hint="build or pull the image for this node's architecture (--arch, or an image list with it)",
        )


def prepare(args: argparse.Namespace, scratch: Path, node_architecture: str) -> RunTarget:
    """Build (DIR), open (ARCHIVE, LAYOUT) or pull (REF) the package into a package directory."""
    path = Path(args.target)
    directory = scratch / "package"
    chosen = args.service_id
    if path.exists():
        trust.refuse_local_verify(args)
        if packages.is_service_dir(path):
            service, loaded = packages.load_for_build(path, args.item)
            built = packages.build(args, path, archive=None, oci_layout=scratch / "layout", loaded=(service, loaded))
            package = open_package(built.oci_layout)  # type: ignore[arg-type]
            _check_architecture(package, node_architecture, str(path))
            materialize(package, directory)
            if chosen:
                return RunTarget(directory, chosen, "--service-id")
            if service.service_id:
                return RunTarget(directory, service.service_id, "the config's service ID")
            name = service.name or path.resolve().name
            return RunTarget(directory, derived_service_id(f"service:{name}"),
                             f"derived from the service name {name!r}")
        packages.refuse_layers(args, str(path))
        package = open_package(path)
        _check_architecture(package, node_architecture, str(path))
        materialize(package, directory)
        if chosen:
            return RunTarget(directory, chosen, "--service-id")
        return RunTarget(directory, derived_service_id(_package_key(package)),
                         "derived from the package's author and command")
    if "/" not in args.target:
        raise InputError(f"{args.target}: no such file or directory, and not an image reference (registry/repo:tag)")
    reference = Reference.parse(args.target)
    packages.refuse_layers(args, args.target)
    with registry(args) as client:
        client.pull(trust.verify_before_pull(args, client), directory)
    package = open_package(directory)
    _check_architecture(package, node_architecture, args.target)
    if chosen:
        return RunTarget(directory, chosen, "--service-id")
    repository = f"{reference.registry}/{reference.repository}"
    return RunTarget(directory, derived_service_id(f"repository:{repository}"),
                     f"derived from the repository {repository}")


class _LineFilter:
    """A text stream that sends the runtime's own `[aos]` lines to one stream and the service's
    output to another: the service's output is the result (stdout), our lines are messages."""

    def __init__(self, output: object, messages: object, quiet: bool) -> None:
        self.output, self.messages, self.quiet = output, messages, quiet
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            if line.startswith("[aos] "):
                if not self.quiet:
                    self.messages.write("aosctl: " + line[len("[aos] "):] + "\n")  # type: ignore[attr-defined]
            else:
                self.output.write(line + "\n")  # type: ignore[attr-defined]
        return len(text)

    def flush(self) -> None:
        self.output.flush()  # type: ignore[attr-defined]
        self.messages.flush()  # type: ignore[attr-defined]


def _needs_root(what: str) -> None:
    if os.geteuid() != 0:
        raise RuntimeFailure(f"{what} needs root: it runs the service under runc with cgroup limits and mounts",
                             hint="run it with sudo")


def runtime_config(args: argparse.Namespace) -> object:
    from aos_operator.runtime import RuntimeConfig

    limit = getattr(args, "max_layer_size", None)
    extra: dict[str, object] = {"max_layer_bytes": limit} if limit is not None else {}
    if getattr(args, "node_config", None):  # [devices] host devices and resources, as the agent's
        from aos_operator.runtime.node_config import load_node_config

        extra["node_config"] = load_node_config(args.node_config)
    return RuntimeConfig(state_root=Path(args.state_dir), run_root=Path(args.run_dir),
                         cgroup_parent=args.cgroup_parent, network=network_config(args),
                         **extra)  # type: ignore[arg-type]


def cmd_run(args: argparse.Namespace) -> int:
    from aos_operator.runtime import detect_node_facts, run_foreground, stop_on_signals

    _needs_root("aosctl run")
    if args.detach and args.timeout:
        raise InputError("--timeout and --detach exclude each other", hint="stop a detached service with aosctl stop")
    config = runtime_config(args)
    node = detect_node_facts(dmips=args.node_dmips)
    with tempfile.TemporaryDirectory(prefix="aosctl-run-") as scratch:
        target = prepare(args, Path(scratch), node.architecture)
        note(args, f"aosctl: service ID {target.service_id} ({target.origin})")
        if args.detach:
            return _run_detached(args, target, config, node)
        stop = threading.Event()
        if args.timeout:
            timer = threading.Timer(args.timeout, stop.set)
            timer.daemon = True
            timer.start()
        # with a document on stdout, the service's output goes to stderr so the document stays whole
        stream = _LineFilter(sys.stderr if structured(args) else sys.stdout, sys.stderr,
                             quiet=args.quiet or structured(args))
        with stop_on_signals(stop):  # SIGINT, SIGTERM and SIGHUP
            outcome = run_foreground(
                target.package_dir,
                instances=args.instances,
                node=node,
                output=stream,  # type: ignore[arg-type]
                stop_event=stop,
                config=config,  # type: ignore[arg-type]
                service_id=target.service_id,
                subject_id=args.subject,
                restart=not args.no_restart,
                provider=args.network_provider,
            )
    if structured(args):
        emit(args, "RunResult", {"serviceId": target.service_id, "interrupted": outcome.interrupted,
                                 "instances": [instance_document(s) for s in outcome.statuses]})
    return outcome.exit_code


def _run_detached(args: argparse.Namespace, target: RunTarget, config: object, node: object) -> int:
    from aos_operator.runtime import InstanceIdentity, Runtime

    runtime = Runtime(config, node)  # type: ignore[arg-type]
    package = runtime.install(target.package_dir)
    statuses = []
    for index in range(args.instances):
        identity = InstanceIdentity(target.service_id, args.subject, index)
        statuses.append(runtime.start(identity, package, restart=not args.no_restart, wait=True,
                                      provider=args.network_provider))
    if structured(args):
        emit(args, "RunResult", {"serviceId": target.service_id, "detached": True,
                                 "instances": [instance_document(s) for s in statuses]})
    else:
        for status in statuses:
            note(args, f"aosctl: instance {status.identity.index}: {status.phase.value}"
                       + (f" ({status.reason})" if status.reason else "")
                       + (f", address {status.ip}" if status.ip else ""))
            result(status.instance_id)
    failed = [s for s in statuses if s.phase.terminal]
    return EXIT_FAILED if failed else EXIT_OK


def instance_document(status: object) -> dict[str, object]:
    data = camel_keys(status.to_json())  # type: ignore[attr-defined]
    data["cpuMillicores"] = getattr(status, "cpu_millicores", None)
    data["ramBytes"] = getattr(status, "ram_bytes", None)
    data["ip"] = getattr(status, "ip", None)
    return data  # type: ignore[no-any-return]


_SERVICE_ID = re.compile(r"[^\n\r\x00]{1,255}")


def service_id_value(text: str) -> str:
    if not _SERVICE_ID.fullmatch(text):
        raise argparse.ArgumentTypeError("must be 1 to 255 characters on one line")
    return text


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = commands.add_parser(
        "run",
        help="run a service under runc with its quotas (root)",
        description="Build (a service directory), open (an archive or OCI layout) or pull (a reference) a package, "
        "install it as an AosEdge device does and run its instances under runc with the quotas as Linux limits. "
        "In the foreground the service's output goes to stdout and aosctl's lines to stderr; Ctrl-C, SIGTERM or "
        "closing the terminal (SIGHUP) stops and cleans up. With -d the instances keep running under their "
        "supervisors: see them with aosctl ps/logs, end them with aosctl stop. Storage and state persist in "
        "--state-dir. Exit 0: stopped by the user or every instance exited 0; 3: an instance failed or "
        "could not start.",
    )
    run.add_argument("target", metavar="DIR|ARCHIVE|LAYOUT|REF",
                     help="service directory, package archive or directory, OCI layout, or registry reference")
    run.add_argument("--instances", "-n", type=whole_number(1), default=1, help="instances to run (default: %(default)s)")
    run.add_argument("--node-dmips", type=whole_number(1), metavar="DMIPS",
                     help="the node's total DMIPS (default: cores x 10000)")
    run.add_argument("--service-id", type=service_id_value, metavar="ID",
                     help="AOS_SERVICE_ID (default: the config's service ID, else derived from the reference, the "
                     "service's name or the package; the ID used is printed)")
    run.add_argument("--subject", default="local", metavar="ID", type=service_id_value,
                     help="AOS_SUBJECT_ID (default: %(default)s)")
    run.add_argument("--no-restart", action="store_true", help="do not restart an instance that ends")
    run.add_argument("--timeout", type=seconds(), metavar="SECONDS", help="stop after this long (more than 0)")
    run.add_argument("--detach", "-d", action="store_true",
                     help="start the instances and return; print their instance IDs")
    run.add_argument("--network-provider", default="default", metavar="NAME",
                     help="the provider network the instances join (default 'default', the agent's name for "
                          "services of the 'default' namespace)")
    run.add_argument("--node-config", metavar="FILE",
                     help="host devices and resources this machine offers, as the agent's --node-config")
    network_options(run)
    max_layer_size_option(run)
    trust.verify_key_option(run)
    runtime_dir_options(run)
    build_options(run)
    registry_options(run)
    quiet_option(run, "only the service's output")
    add_output_option(run)
    run.set_defaults(func=cmd_run)
