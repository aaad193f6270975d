"""`aosctl permissions SECRET SERVER`: ask the node's permission socket what an instance's
AOS_SECRET allows (the protocol is in runtime/permission_server.py)."""

from __future__ import annotations

import argparse
import sys

from aos_operator.cli.common import DEFAULT_RUN_DIR
from aos_operator.cli.output import add_output_option, emit, result, structured, table
from aos_operator.errors import EXIT_INVALID, EXIT_OK, InputError


def cmd_permissions(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aos_operator.runtime.permission_server import query_permissions

    secret = args.secret
    if secret == "-":  # keeps the secret out of the process list
        secret = sys.stdin.readline(4096).strip()
    if (args.function is None) != (args.access is None):
        raise InputError("--function and --access go together")
    answer = query_permissions(Path(args.run_dir), secret, args.server, args.function, args.access)
    granted = bool(answer.get("ok")) and answer.get("allowed", True) is True
    if structured(args):
        emit(args, "Permissions", {key: value for key, value in answer.items()
                                   if key not in ("version", "kind", "schemaVersion")})
    elif not answer.get("ok"):
        print(f"aosctl: refused ({answer.get('code', 'Refused')}): {str(answer.get('error', ''))[:300]}",
              file=sys.stderr)
    else:
        instance = answer.get("instance") or {}
        result(f"instance {instance.get('instanceId')} (service {instance.get('serviceId')}, subject "
               f"{instance.get('subjectId')}, index {instance.get('instance')}), server {answer.get('server')}:")
        rows = sorted((str(mask), str(access)) for mask, access in (answer.get("permissions") or {}).items())
        result(table(rows, ("FUNCTION", "ACCESS")))
        if "allowed" in answer:
            verdict = "allowed" if answer["allowed"] else "not allowed"
            result(f"{answer.get('access')} on {answer.get('function')}: {verdict}")
    return EXIT_OK if granted else EXIT_INVALID


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    command = commands.add_parser(
        "permissions", help="what an instance's AOS_SECRET allows at a function server",
        description="Ask this node's permission socket (<run-dir>/permissions.sock, root only) which "
        "permissions SECRET holds for the function server SERVER, as a function server checks its callers. "
        "Exit 0 when granted, 1 when refused (unknown secret, no permissions for SERVER, or --access not "
        "allowed on --function), 3 when no permission server runs.")
    command.add_argument("secret", metavar="SECRET", help="the instance's AOS_SECRET; '-' reads it from stdin")
    command.add_argument("server", metavar="SERVER", help="function server ID, e.g. vis")
    command.add_argument("--function", metavar="PATH", help="check one function or path, e.g. Signal.Doors.FrontLeft")
    command.add_argument("--access", choices=["r", "w", "rw"], help="the access to check on --function")
    command.add_argument("--run-dir", default=DEFAULT_RUN_DIR, metavar="DIR",
                         help=f"the runtime's run dir: {DEFAULT_RUN_DIR} for aosctl run, /run/aos for the agent "
                         "(default: %(default)s)")
    add_output_option(command)
    command.set_defaults(func=cmd_permissions)
