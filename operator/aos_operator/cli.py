"""`aosctl`: the command line of the project (validate, schema, build, push, pull, run, operator, agent)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from aos_operator import __version__
from aos_operator.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_UNREADABLE, AosError

Command = Callable[[argparse.Namespace], int]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aosctl",
        description="Build, push and run AosEdge services; run the Kubernetes operator and device agent.",
    )
    parser.add_argument("--version", action="version", version=f"aosctl {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
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
