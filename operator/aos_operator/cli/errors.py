"""From exceptions to exit codes and one-line messages: the only place the CLI catches errors.

AosError kinds carry their exit code (errors.py). Everything else that escapes a command is a
bug in aosctl, reported as such with its own exit code, so a script can tell the two apart.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable

from aos_operator.errors import EXIT_FAILED, EXIT_INTERRUPTED, AosError
from aos_operator.cli.output import document, output_format, structured, write_document

EXIT_INTERNAL = 70  # EX_SOFTWARE of sysexits.h: a bug in aosctl, never bad input

Command = Callable[[argparse.Namespace], int]


def run_command(command: Command, args: argparse.Namespace) -> int:
    try:
        return command(args)
    except AosError as error:
        _report(args, type(error).__name__, error.message, error.hint, error.exit_code)
        return error.exit_code
    except KeyboardInterrupt:
        print("aosctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `aosctl ps | head`: the reader left; nothing to say
        _silence_stdout()
        return EXIT_FAILED
    except Exception as error:  # a bug, not bad input: say so, keep the traceback for a report
        if os.environ.get("AOSCTL_DEBUG"):
            traceback.print_exc()
        _report(args, "InternalError", f"internal error: {type(error).__name__}: {error}",
                "this is a bug in aosctl; rerun with AOSCTL_DEBUG=1 and report the traceback", EXIT_INTERNAL)
        return EXIT_INTERNAL


def _report(args: argparse.Namespace, kind: str, message: str, hint: str | None, code: int) -> None:
    text = f"aosctl: {message}" + (f"\n  hint: {hint}" if hint else "")
    print(text, file=sys.stderr, flush=True)
    if structured(args) and not getattr(args, "_document_written", False):
        error = {"kind": kind, "message": message, "exitCode": code}
        if hint:
            error["hint"] = hint
        try:
            write_document(output_format(args), document("Error", {"error": error}))
        except BrokenPipeError:
            _silence_stdout()


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
