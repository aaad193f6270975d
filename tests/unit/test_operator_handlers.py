"""The operator's kopf handlers as registered (controller/handlers.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import kopf
import yaml

from aos_operator.api.client import Connection
from aos_operator.controller.builder import noticed
from aos_operator.controller.handlers import REQUEST_SLOTS, make_registry, register_login
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


def _logged_in(settings: OperatorSettings) -> tuple[kopf.AiohttpSession, int]:
    """What kopf's login handler returns, and its session's connection limit."""
    registry = kopf.OperatorRegistry()
    register_login(registry, settings)
    (handler,) = [h for h in registry._activities.get_all_handlers() if str(h.id) == "login"]

    async def login() -> tuple[kopf.AiohttpSession, int]:
        info = await handler.fn()
        limit = info.aiohttp_session.connector.limit
        await info.aiohttp_session.close()
        return info, limit

    return asyncio.run(login())


def test_kopf_logs_in_with_the_kubeconfig_on_a_session_of_bounded_connections(tmp_path: Path) -> None:
    # kopf's own session opens a connection per concurrent request, each with a 256 KiB TLS buffer.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "secret-token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    settings = OperatorSettings(registry="r:5000/aos", work_dir=tmp_path, connection=Connection(kubeconfig=str(kubeconfig)))
    info, one = _logged_in(settings)
    assert isinstance(info, kopf.AiohttpSession) and info.server == "https://127.0.0.1:6443"
    assert info.aiohttp_session.headers["Authorization"] == "Bearer secret-token"
    assert REQUEST_SLOTS < one < 64
    # every watched namespace holds its own watch streams: the bound grows with them
    _, three = _logged_in(OperatorSettings(registry="r:5000/aos", work_dir=tmp_path, namespaces=("a", "b", "c"),
                                           connection=Connection(kubeconfig=str(kubeconfig))))
    assert three >= one + 2 * 5


def test_kopf_keeps_no_diff_base_annotation() -> None:
    # No create/update handler: the last handled spec need not be written back to every object.
    op = Operator(OperatorSettings(registry="registry.example:5000/aos", work_dir=Path("/nonexistent")),
                  kube=None, registry=None)  # type: ignore[arg-type]
    registry = make_registry(op)
    (startup,) = [h for h in registry._activities.get_all_handlers() if str(h.id) == "configure"]
    settings = kopf.OperatorSettings()

    async def configure() -> None:
        await startup.fn(settings=settings)
        for task in op.tasks:
            task.cancel()

    asyncio.run(configure())
    body = kopf.Body({"metadata": {"name": "s", "annotations": {}}, "spec": {"config": {"a": 1}}})
    patch = kopf.Patch()
    settings.persistence.diffbase_storage.store(body=body, patch=patch, essence=settings.persistence.diffbase_storage.build(body=body))
    assert not patch, "nothing is patched"
    assert settings.persistence.diffbase_storage.fetch(body=body) == settings.persistence.diffbase_storage.build(body=body)
    # No copy of the body either (kopf deep-copied it twice per watch event): a changed spec is no
    # diff to kopf, since the service loops compare generations themselves.
    changed = kopf.Body({"metadata": {"name": "s", "labels": {"x": "y"}}, "spec": {"config": {"a": 2}}})
    assert settings.persistence.diffbase_storage.build(body=changed, extra_fields=["spec.config"]) == {}


def test_the_building_notice_is_written_only_for_a_build_still_going_after_its_delay() -> None:
    async def scenario(build_seconds: float, fail: bool = False) -> tuple[list[str], object]:
        said: list[str] = []

        async def build() -> str:
            await asyncio.sleep(build_seconds)
            if fail:
                raise RuntimeError("push failed")
            return "pushed"

        async def notice() -> None:
            said.append("Building")

        try:
            return said, await noticed(build(), notice, after=0.2)
        except RuntimeError as error:
            return said, error

    assert asyncio.run(scenario(0.0)) == ([], "pushed"), "a fast build: no status write"
    assert asyncio.run(scenario(0.5)) == (["Building"], "pushed"), "a slow one: one write, then its result"
    said, error = asyncio.run(scenario(0.0, fail=True))
    assert said == [] and isinstance(error, RuntimeError), "a fast failure is raised, nothing said first"


def test_a_cancelled_pass_cancels_the_build_it_waits_for() -> None:
    async def scenario() -> bool:
        started, ended = asyncio.Event(), asyncio.Event()

        async def build() -> None:
            started.set()
            try:
                await asyncio.sleep(30)
            finally:
                ended.set()

        async def nothing() -> None:
            return None

        waiting = asyncio.ensure_future(noticed(build(), nothing, after=10))
        await started.wait()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        return ended.is_set()

    assert asyncio.run(scenario())
