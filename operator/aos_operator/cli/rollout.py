"""`aosctl rollout status|history|undo|pause|resume aosservice/NAME` (controller/rollout_cli.py
does the work; imported only when the command runs, so other commands do not load the
Kubernetes client)."""

from __future__ import annotations

import argparse

from aos_operator.cli.common import seconds, whole_number


def _run(args: argparse.Namespace) -> int:
    from aos_operator.controller.rollout_cli import cmd_rollout

    return cmd_rollout(args)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rollout = commands.add_parser(
        "rollout", help="status, history, undo, pause and resume of an AosService's rollout",
        description="Manage the rollout of an AosService through the Kubernetes API (kubeconfig as kubectl finds it). "
        "Exit 0 done, 1 no such service or revision, 2 bad input or no kubeconfig, 3 the API failed or "
        "(status --watch) the rollout was rolled back.")
    actions = rollout.add_subparsers(dest="rollout_action", metavar="ACTION", required=True,
                                    help="status, history, undo, pause or resume")

    def common(action: argparse.ArgumentParser) -> None:
        action.add_argument("resource", metavar="aosservice/NAME", help="the AosService, as aosservice/NAME or aossvc/NAME")
        action.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
        action.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
        action.add_argument("--kube-server", metavar="URL", help="API server URL without auth (tests)")
        action.set_defaults(func=_run)

    status = actions.add_parser("status", help="show the rollout; --watch waits until it ends")
    common(status)
    status.add_argument("-w", "--watch", action="store_true", help="wait until Complete (exit 0) or rolled back (exit 3)")
    status.add_argument("--timeout", type=seconds(), default=600.0, help="seconds --watch waits at most (default: %(default)s)")
    common(actions.add_parser("history", help="list the revisions kept"))
    undo = actions.add_parser("undo", help="go back to the previous (or --to-revision) revision, without a rebuild")
    common(undo)
    undo.add_argument("--to-revision", type=whole_number(1), metavar="N", help="revision number from `rollout history`")
    common(actions.add_parser("pause", help="hold the rollout: no further device is updated"))
    common(actions.add_parser("resume", help="go on after `pause` or an indefinite canary pause"))
