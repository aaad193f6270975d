"""`aosctl`: the command line of the project.

One module per command group, as crane's and ko's `cmd/` have a file per verb:

    validate.py   validate, schema              packages.py   build, push, pull
    inspect.py    inspect                       registry.py   digest, ls, login, logout
    run.py        run                           instances.py  ps, logs, stop, rm, prune
    scaffold.py   init                          cluster.py    operator, agent, agent-health, crds
    rollout.py    rollout (status, history, undo, pause, resume)
    meta.py       version, completion           trust.py      sign (and push's signing, run's check)
    permissions.py  permissions (a secret's permissions at a function server)

Shared: common.py (options with one name and one check everywhere), output.py (streams, and the
text/json/yaml documents), errors.py (exceptions to exit codes), progress.py (terminal progress).
A module adds its commands in `register(commands)`; `build_parser` calls them in this order.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aos_operator import __version__
from aos_operator.cli import (
    cluster,
    inspect,
    instances,
    meta,
    packages,
    permissions,
    registry,
    rollout,
    run,
    scaffold,
    trust,
    validate,
)
from aos_operator.cli.errors import EXIT_INTERNAL, run_command
from aos_operator.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_UNREADABLE

EXIT_CODES = (
    (EXIT_OK, "success"),
    (EXIT_INVALID, "the input was read but is not acceptable (config, source tree, package)"),
    (EXIT_UNREADABLE, "the input or the command line could not be read (missing file, bad flag value)"),
    (EXIT_FAILED, "the environment failed (registry, runc, kernel), or a service instance failed"),
    (EXIT_INTERNAL, "a bug in aosctl (rerun with AOSCTL_DEBUG=1 for the traceback)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)

GROUPS = (validate, packages, trust, inspect, registry, run, instances, permissions, scaffold, cluster, rollout, meta)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aosctl",
        description="Build, push and run AosEdge services; run the Kubernetes operator and device agent.",
        epilog="exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES)
        + "\n\nResults go to stdout, aosctl's own messages to stderr. `aosctl COMMAND --help` for a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aosctl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(commands)
    return parser


_parser = build_parser  # the name tests and the chart check have used since 0.1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_UNREADABLE if exit_.code else EXIT_OK
    return run_command(args.func, args)


__all__ = ["EXIT_CODES", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
