"""`aosctl ps`, `logs`, `stop`, `rm`, `prune`: the instances `aosctl run` left on this machine.

They read the runtime's own state (the Runtime API: list, status, log_path, stop, remove,
uninstall), so they find foreground and detached instances alike, even from another aosctl.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence

from aos_operator.cli.common import runtime_dir_options, seconds, whole_number
from aos_operator.cli.output import add_output_option, emit, note, plural, result, structured, table
from aos_operator.cli.run import _needs_root, instance_document, runtime_config
from aos_operator.errors import EXIT_OK, InputError


def _runtime(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from aos_operator.runtime import Runtime
    from aos_operator.runtime.spec import NodeFacts

    # Reading and stopping need no node facts: do not probe the machine for them.
    return Runtime(runtime_config(args), NodeFacts(cores=1, dmips=1))  # type: ignore[arg-type]


def _since(start: float | None, now: float) -> str:
    if not start:
        return "-"
    elapsed = max(0, int(now - start))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if elapsed >= size:
            return f"{elapsed // size}{unit} ago"
    return f"{elapsed}s ago"


def find_instances(runtime, selectors: Sequence[str]) -> list[str]:  # type: ignore[no-untyped-def]
    """Instance IDs for each selector: an instance ID, a unique prefix of one, or a service ID
    (all its instances)."""
    known = runtime.instance_ids()
    chosen: list[str] = []
    for selector in selectors:
        matches = [i for i in known if i.startswith(selector)]
        if not matches:
            matches = [i for i in known if runtime.status(i).identity.service_id == selector]
        if not matches:
            raise InputError(f"{selector}: no such instance or service on this machine",
                             hint="aosctl ps -a lists them (with --state-dir, if run used another)")
        if len(matches) > 1 and selector not in {runtime.status(i).identity.service_id for i in matches}:
            raise InputError(f"{selector}: matches {len(matches)} instances ({', '.join(m[:12] for m in matches)})",
                             hint="give more of the instance ID")
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def cmd_ps(args: argparse.Namespace) -> int:
    _needs_root("aosctl ps")
    runtime = _runtime(args)
    statuses = [s for s in runtime.list() if args.all or not s.phase.terminal]
    if structured(args):
        emit(args, "InstanceList", {"instances": [instance_document(s) for s in statuses]})
        return EXIT_OK
    if args.quiet:
        for status in statuses:
            result(status.instance_id)
        return EXIT_OK
    now = time.time()
    rows = [[s.instance_id[:12], s.identity.service_id, str(s.identity.index),
             s.phase.value + (f" ({s.reason})" if s.reason and s.phase.value != s.reason else ""),
             str(s.restarts), _since(s.start_time, now), s.package[len("sha256:"):][:12]] for s in statuses]
    result(table(rows, ["INSTANCE", "SERVICE", "INDEX", "PHASE", "RESTARTS", "SINCE", "DIGEST"]))
    return EXIT_OK


def _tail(data: bytes, lines: int | None) -> bytes:
    if lines is None:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def cmd_logs(args: argparse.Namespace) -> int:
    from aos_operator.runtime.logs import LogFollower

    _needs_root("aosctl logs")
    runtime = _runtime(args)
    found = find_instances(runtime, [args.instance])
    if len(found) > 1:
        raise InputError(f"{args.instance}: the service has {len(found)} instances "
                         f"({', '.join(i[:12] for i in found)})", hint="name one by its instance ID (aosctl ps)")
    instance_id = found[0]
    path = runtime.log_path(instance_id)
    rotated = path.with_name(path.name + ".1")
    history = b""
    for part in (rotated, path):
        try:
            history += part.read_bytes()
        except FileNotFoundError:
            pass
    out = sys.stdout.buffer
    follower = LogFollower(path) if args.follow else None  # from the end, before printing history
    out.write(_tail(history, args.tail))
    out.flush()
    if follower is None:
        return EXIT_OK
    stop = threading.Event()
    try:
        while not stop.is_set():
            data = follower.read()
            if data:
                out.write(data)
                out.flush()
            elif runtime.status(instance_id).phase.terminal:
                out.write(follower.read())
                out.flush()
                break
            stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        follower.close()
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    _needs_root("aosctl stop")
    if not args.instances and not args.all:
        raise InputError("name the instances to stop (instance ID, prefix, or service ID), or pass --all")
    runtime = _runtime(args)
    ids = [s.instance_id for s in runtime.list() if not s.phase.terminal] if args.all else \
        find_instances(runtime, args.instances)
    statuses = [runtime.stop(instance_id, timeout=args.time) for instance_id in ids]
    if structured(args):
        emit(args, "InstanceList", {"instances": [instance_document(s) for s in statuses]})
        return EXIT_OK
    for status in statuses:
        result(status.instance_id)
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    _needs_root("aosctl rm")
    runtime = _runtime(args)
    ids = find_instances(runtime, args.instances)
    running = [i for i in ids if not runtime.status(i).phase.terminal]
    if running and not args.force:
        raise InputError(f"{', '.join(i[:12] for i in running)}: still running",
                         hint="stop it first (aosctl stop), or pass --force")
    for instance_id in ids:
        runtime.remove(instance_id)
    if structured(args):
        emit(args, "Removed", {"instances": ids})
        return EXIT_OK
    for instance_id in ids:
        result(instance_id)
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    _needs_root("aosctl prune")
    runtime = _runtime(args)
    removed_instances: list[str] = []
    if not args.keep_instances:
        for status in runtime.list():
            if status.phase.terminal:
                runtime.remove(status.instance_id)
                removed_instances.append(status.instance_id)
    used = {status.package for status in runtime.list()}
    removed_packages = []
    for digest in runtime.packages.digests():
        if digest not in used:
            runtime.uninstall(digest)
            removed_packages.append(digest)
    runtime.packages.layers.remove_unfinished()
    if structured(args):
        emit(args, "PruneResult", {"instances": removed_instances, "packages": removed_packages})
        return EXIT_OK
    note(args, f"removed {plural(len(removed_instances), 'stopped instance')} (with their storage and state) and "
               f"{plural(len(removed_packages), 'package')} no instance uses (with their layers)")
    for digest in removed_packages:
        result(digest)
    return EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ps = commands.add_parser(
        "ps", help="list the service instances on this machine (root)",
        description="List the instances aosctl run started (foreground or -d): instance ID, service ID, index, "
        "phase, restarts, when the current run started, package digest. Running ones only, unless --all.")
    ps.add_argument("--all", "-a", action="store_true", help="also stopped and failed instances")
    ps.add_argument("--quiet", "-q", action="store_true", help="only the instance IDs")
    runtime_dir_options(ps)
    add_output_option(ps)
    ps.set_defaults(func=cmd_ps)

    logs = commands.add_parser(
        "logs", help="print an instance's output (root)",
        description="Print the output (stdout and stderr, as the runtime keeps them) of an instance, given by "
        "its instance ID, a unique prefix of it, or its service ID when it has one instance.")
    logs.add_argument("instance", metavar="INSTANCE", help="instance ID, unique prefix, or service ID")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new output until the instance ends")
    logs.add_argument("--tail", type=whole_number(0), metavar="N", help="only the last N lines (default: all)")
    runtime_dir_options(logs)
    logs.set_defaults(func=cmd_logs)

    stop = commands.add_parser(
        "stop", help="stop instances (root)",
        description="Stop instances and remove what they put on the node; their storage, state and logs stay "
        "(aosctl rm deletes them). Prints the IDs of the stopped instances.")
    stop.add_argument("instances", nargs="*", metavar="INSTANCE", help="instance ID, unique prefix, or service ID")
    stop.add_argument("--all", action="store_true", help="every running instance")
    stop.add_argument("--time", "-t", type=seconds(allow_zero=True), metavar="SECONDS",
                      help="how long to wait for an instance to end before killing its supervisor (default 10)")
    runtime_dir_options(stop)
    add_output_option(stop)
    stop.set_defaults(func=cmd_stop)

    rm = commands.add_parser(
        "rm", help="delete stopped instances with their storage, state and logs (root)",
        description="Delete instances: their storage, state, logs and UIDs. A running instance is refused "
        "unless --force (which stops it first).")
    rm.add_argument("instances", nargs="+", metavar="INSTANCE", help="instance ID, unique prefix, or service ID")
    rm.add_argument("--force", "-f", action="store_true", help="stop running instances first")
    runtime_dir_options(rm)
    add_output_option(rm)
    rm.set_defaults(func=cmd_rm)

    prune = commands.add_parser(
        "prune", help="delete stopped instances and packages and layers no instance uses (root)",
        description="Delete every stopped or failed instance (with its storage, state and logs), then every "
        "installed package no remaining instance uses, with the layers only it used.")
    prune.add_argument("--keep-instances", action="store_true", help="only packages and layers; keep instances")
    runtime_dir_options(prune)
    add_output_option(prune)
    prune.set_defaults(func=cmd_prune)
