"""Build progress reports, for a terminal progress bar on large trees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Phases in the order a build goes through them; "hash" runs only when a cache can be reused.
PHASES = ("scan", "hash", "layer", "write")


@dataclass(frozen=True)
class Progress:
    """Where a build stands. Totals are 0 while unknown (during "scan")."""

    phase: str
    done_bytes: int
    total_bytes: int
    done_files: int
    total_files: int


ProgressCallback = Callable[[Progress], None]


class ProgressReporter:
    """Calls the callback at phase ends and every `byte_step` bytes or `file_step` files, not more."""

    def __init__(
        self, callback: ProgressCallback | None, *, byte_step: int = 8 << 20, file_step: int = 1000
    ) -> None:
        self._callback = callback
        self._byte_step = byte_step
        self._file_step = file_step
        self._phase = ""
        self._total_bytes = self._total_files = 0
        self._done_bytes = self._done_files = 0
        self._reported_bytes = self._reported_files = 0

    def start(self, phase: str, total_bytes: int = 0, total_files: int = 0) -> None:
        self._phase, self._total_bytes, self._total_files = phase, total_bytes, total_files
        self._done_bytes = self._done_files = 0
        self._emit()

    def advance(self, data_bytes: int = 0, files: int = 0) -> None:
        self._done_bytes += data_bytes
        self._done_files += files
        if (
            self._done_bytes - self._reported_bytes >= self._byte_step
            or self._done_files - self._reported_files >= self._file_step
        ):
            self._emit()

    def finish(self) -> None:
        self._emit()

    def _emit(self) -> None:
        self._reported_bytes, self._reported_files = self._done_bytes, self._done_files
        if self._callback is not None:
            self._callback(
                Progress(self._phase, self._done_bytes, self._total_bytes, self._done_files, self._total_files)
            )
