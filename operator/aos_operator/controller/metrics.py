"""The operator's Prometheus metrics (`aosctl operator --metrics-address`): reconcile passes,
builds and pushes (counters by result, durations as histograms) and errors by reason.

All are events, so plain counters and histograms in one registry of the process; `timed`
measures a block and counts it as `ok` or `failed`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()

# Passes take milliseconds when nothing changed and minutes when they build; builds and pushes
# take seconds to minutes.
_PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_WORK_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

PASSES = Counter("aos_operator_reconcile_passes", "Reconcile passes over AosServices, by result "
                 "(ok, or error: the API or a bug; see aos_operator_errors_total)", ["result"], registry=REGISTRY)
PASS_SECONDS = Histogram("aos_operator_reconcile_duration_seconds", "Duration of a reconcile pass",
                         buckets=_PASS_BUCKETS, registry=REGISTRY)
BUILDS = Counter("aos_operator_builds", "Service package builds, by result", ["result"], registry=REGISTRY)
BUILD_SECONDS = Histogram("aos_operator_build_duration_seconds", "Duration of a package build (one image)",
                          buckets=_WORK_BUCKETS, registry=REGISTRY)
PUSHES = Counter("aos_operator_pushes", "Package pushes to the registry, by result", ["result"], registry=REGISTRY)
PUSH_SECONDS = Histogram("aos_operator_push_duration_seconds", "Duration of a package push (one image; "
                         "a reused image layer is mounted or skipped, not uploaded)", buckets=_WORK_BUCKETS, registry=REGISTRY)
ERRORS = Counter("aos_operator_errors", "Reconcile passes that ended in an error, by the reason the status names "
                 "(InvalidConfig, InvalidSpec, BuildFailed, RegistryUnavailable, SigningFailed, ApiError, "
                 "InternalError)", ["reason"], registry=REGISTRY)

for _result in ("ok", "failed"):  # the series exist from the start, at 0
    BUILDS.labels(result=_result)
    PUSHES.labels(result=_result)
for _result in ("ok", "error"):
    PASSES.labels(result=_result)


def count_error(reason: str) -> None:
    ERRORS.labels(reason=reason).inc()


@contextmanager
def timed(counter: Counter, histogram: Histogram) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    except BaseException:
        counter.labels(result="failed").inc()
        raise
    finally:
        histogram.observe(time.monotonic() - started)
    counter.labels(result="ok").inc()
