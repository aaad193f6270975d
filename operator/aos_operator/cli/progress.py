"""Progress lines on a terminal: the build's phases, and bytes moved by push and pull.

Drawn on stderr only when stderr is a terminal and neither --quiet nor structured output was
asked for; one line, redrawn in place, erased at the end. Sizes in decimal units throughout.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable

from aos_operator.cli.output import quiet, structured, transfer_bytes
from aos_operator.image import Progress

_WIDTH = 78


def enabled(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() and not quiet(args) and not structured(args)


class ProgressLine:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.drawn = False
        self._lock = threading.Lock()

    def draw(self, text: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            sys.stderr.write("\r" + text.ljust(_WIDTH)[:_WIDTH])
            sys.stderr.flush()
            self.drawn = True

    def close(self) -> None:
        with self._lock:
            if self.drawn:
                sys.stderr.write("\r" + " " * _WIDTH + "\r")
                sys.stderr.flush()
                self.drawn = False


def bar(done: float, total: float) -> str:
    fraction = min(done / total, 1.0) if total else 0.0
    return f"[{'#' * int(fraction * 30):<30}] {transfer_bytes(done)} / {transfer_bytes(total)}"


class BuildProgress(ProgressLine):
    """The image room's progress callback, drawn as a bar."""

    def __call__(self, progress: Progress) -> None:
        if progress.total_bytes:
            self.draw(f"{progress.phase:6} {bar(progress.done_bytes, progress.total_bytes)}")
        else:
            self.draw(f"{progress.phase:6} {progress.done_files} files")


class TransferProgress(ProgressLine):
    """Samples a byte counter a few times a second while a push or pull runs."""

    def __init__(self, enabled: bool, label: str, counter: Callable[[], int], total: int | None = None) -> None:
        super().__init__(enabled)
        self.label, self.counter, self.total = label, counter, total
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def __enter__(self) -> TransferProgress:
        if self.enabled:
            self._sample()  # drawn at once: a short transfer shows its line too
            self._thread = threading.Thread(target=self._run, name="aosctl-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._sample()
        self.close()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def _sample(self) -> None:
        done = self.counter()
        elapsed = max(time.monotonic() - self._started, 1e-3)
        rate = f"{transfer_bytes(done / elapsed)}/s"
        if self.total:
            self.draw(f"{self.label} {bar(done, self.total)} {rate}")
        else:
            self.draw(f"{self.label} {transfer_bytes(done)} {rate}")
