"""The runc command line, as the runtime uses it: run --detach, state, list, kill, delete.

All containers of one runtime live under their own runc state directory (`--root`), so
`runc list` shows exactly this runtime's containers.
"""

from __future__ import annotations

import functools
import os
import select
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aos_operator.bounded import parse_json
from aos_operator.errors import RuntimeFailure


@functools.lru_cache(maxsize=8)
def _located(binary: str, search_path: str | None) -> str:
    # exec of a bare name tries each PATH entry in turn (nine failed execve here before /usr/sbin/runc)
    return shutil.which(binary, path=search_path) or binary


class Runc:
    def __init__(self, root: Path, binary: str = "runc") -> None:
        self.root = root
        self.binary = binary

    def _command(self, *args: str) -> list[str]:
        return [_located(self.binary, os.environ.get("PATH")), "--root", str(self.root), *args]

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(self._command(*args), stdin=subprocess.DEVNULL, capture_output=True,
                                    text=True, timeout=60)
        except FileNotFoundError:
            raise RuntimeFailure(f"{self.binary}: not found", hint="install runc (apt-get install runc)") from None
        if check and result.returncode != 0:
            raise RuntimeFailure(f"runc {args[0]} failed: {result.stderr.strip() or f'exit {result.returncode}'}")
        return result

    def run_detached(self, container_id: str, bundle: Path, pid_file: Path, stdio_fd: int, log_file: Path,
                     meanwhile: Callable[[], None] | None = None) -> None:
        """`runc run --detach`: create and start in one runc process (a second one, `runc start`,
        costs about as much again as a whole start beyond `runc run`); the container's stdout and
        stderr are `stdio_fd`. When it returns the init runs, re-parented to the calling subreaper.
        `meanwhile` is called while runc works (once runc has been started)."""
        command = self._command("--log", str(log_file), "--log-format", "json", "run", "--detach",
                                "--bundle", str(bundle), "--pid-file", str(pid_file), container_id)
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdio_fd, stderr=stdio_fd)
        except FileNotFoundError:
            raise RuntimeFailure(f"{self.binary}: not found", hint="install runc (apt-get install runc)") from None
        try:
            if meanwhile is not None:
                meanwhile()
        finally:
            returncode = _wait_bounded(process, 60)
        if returncode != 0:
            # runc's own message often starts with "runc run failed: " already: say it once
            detail = (last_error(log_file) or f"exit {returncode}").removeprefix("runc run failed: ")
            raise RuntimeFailure(f"runc run failed: {detail}")

    def state(self, container_id: str) -> dict[str, Any] | None:
        """`runc state`, or None when runc does not know the container."""
        result = self._run("state", container_id, check=False)
        if result.returncode != 0:
            return None
        return parse_json(result.stdout)

    def list(self) -> list[dict[str, Any]]:
        if not self.root.exists():
            return []
        result = self._run("list", "--format", "json")
        return parse_json(result.stdout or "null") or []

    def kill(self, container_id: str, signal: str = "KILL") -> None:
        self._run("kill", container_id, signal, check=False)

    def delete(self, container_id: str, force: bool = False) -> None:
        args = ["delete", "--force", container_id] if force else ["delete", container_id]
        result = self._run(*args, check=False)
        if result.returncode != 0 and self.state(container_id) is not None:
            raise RuntimeFailure(f"runc delete {container_id} failed: {result.stderr.strip()}")


def _wait_bounded(process: subprocess.Popen[bytes], timeout: float) -> int:
    """The exit code, waiting at most `timeout` (then kill). Through a pidfd: Popen.wait with a
    timeout polls with sleeps of up to 50 ms, which would be most of a container start."""
    pidfd = os.pidfd_open(process.pid)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            process.kill()
            process.wait()
            raise RuntimeFailure(f"{process.args[0]} did not end within {timeout:g} s")
    finally:
        os.close(pidfd)
    return process.wait()


def last_error(log_file: Path) -> str | None:
    """The last error message in a runc JSON log."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            entry = parse_json(line)
        except ValueError:
            continue
        if entry.get("level") in ("error", "fatal"):
            return str(entry.get("msg", "")).strip()
    return None
