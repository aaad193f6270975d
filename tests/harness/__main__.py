"""`python -m tests.harness serve --port 0 --print-url`: the API emulator as a standalone process."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from tests.harness.emulator import KubeEmulator, run_forever
from tests.harness.resources import CRD_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the Kubernetes API emulator until SIGTERM/SIGINT")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serve.add_argument("--print-url", action="store_true", help="print the URL on stdout once listening")
    serve.add_argument("--crd-dir", type=Path, default=CRD_DIR, help="CRD YAML files to serve")
    serve.add_argument("--no-crds", action="store_true", help="serve no CRDs of this project")
    serve.add_argument("--bookmark-interval", type=float, default=60.0)
    serve.add_argument("--keep-requests", action="store_true",
                       help="keep KMock's request log (memory grows with every request)")
    args = parser.parse_args(argv)

    try:
        emulator = KubeEmulator(
            host=args.host, port=args.port, crd_dir=None if args.no_crds else args.crd_dir,
            bookmark_interval=args.bookmark_interval, keep_requests=args.keep_requests,
        )
    except (OSError, ValueError, KeyError) as error:
        print(f"python -m tests.harness serve: {error}", file=sys.stderr)
        return 2

    def ready(url: str) -> None:
        if args.print_url:
            print(url, flush=True)
        print(f"kube API emulator serving at {url}", file=sys.stderr, flush=True)

    async def serve_until_signalled() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_forever(emulator, ready, stop)

    asyncio.run(serve_until_signalled())
    return 0


if __name__ == "__main__":
    sys.exit(main())
