"""The operator's kopf handlers as registered (controller/handlers.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aos_operator.controller.handlers import make_registry
from aos_operator.controller.reconciler import Operator
from aos_operator.controller.settings import OperatorSettings


def test_index_and_event_handlers_are_coroutines_run_in_the_event_loop() -> None:
    # kopf runs a plain function in its thread pool; these handlers set the service loops'
    # asyncio events and change the books the passes read, which only the loop may do.
    op = Operator(OperatorSettings(registry="registry.example:5000/aos", work_dir=Path("/nonexistent")),
                  kube=None, registry=None)  # type: ignore[arg-type]  # registration touches neither
    registry = make_registry(op)
    handlers = [*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers()]
    ids = {str(handler.id) for handler in handlers}
    assert {"devices", "instances", "identities", "layers", "configmap-changed", "instance-changed",
            "device-changed", "service-changed", "layer-changed"} <= ids
    threaded = [str(handler.id) for handler in handlers if not asyncio.iscoroutinefunction(handler.fn)]
    assert threaded == []
