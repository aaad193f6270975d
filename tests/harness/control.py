"""Drive a harness from outside its event loop: a subprocess (`python -m tests.harness serve`) or a thread."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from tests.harness.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class HarnessError(RuntimeError):
    """The harness control API refused a call or the harness process did not start."""


class ProxyHandle:
    """A client proxy living in the harness process: give `url` to one client, then block it."""

    def __init__(self, control: HarnessClient, name: str, url: str) -> None:
        self._control = control
        self.name = name
        self.url = url

    def block(self, mode: str = "reset") -> None:
        self._control._call("POST", f"proxies/{self.name}/block", {"mode": mode})

    def unblock(self) -> None:
        self._control._call("POST", f"proxies/{self.name}/unblock", {})


class HarnessClient:
    """The control API (`/_harness/...`) of an emulator reached over HTTP, plus seeding through the API."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, method: str, path: str, body: Any | None = None) -> Any:
        return self.request(method, f"/_harness/{path}", body)

    def request(self, method: str, path: str, body: Any | None = None,
                content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": content_type, "User-Agent": "aos-harness"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            raise HarnessError(f"{method} {path}: HTTP {error.code}: {error.read().decode(errors='replace')}") from None
        return json.loads(payload) if payload else None

    def health(self) -> dict[str, Any]:
        return self._call("GET", "health")

    def metrics(self) -> Metrics:
        return Metrics.from_snapshot(self._call("GET", "metrics"))

    def reset_metrics(self) -> None:
        self._call("POST", "metrics/reset", {})

    def fail_next(self, status: int, count: int = 1, **match: Any) -> None:
        self._call("POST", "faults", {"status": status, "count": count, **match})

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def proxy(self, name: str) -> ProxyHandle:
        answer = self._call("POST", f"proxies/{name}", {})
        return ProxyHandle(self, answer["name"], answer["url"])

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST an object to an API collection path, e.g. `/api/v1/namespaces`."""
        return self.request("POST", path, dict(body))

    def ensure_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        try:
            return self.request("GET", f"/api/v1/namespaces/{name}")
        except HarnessError:
            return self.create("/api/v1/namespaces", {
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}},
            })

    def create_node(self, name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self.create("/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        })


class HarnessProcess:
    """`with HarnessProcess() as harness:` runs `python -m tests.harness serve` and stops it at exit."""

    def __init__(self, *extra_args: str, startup_timeout: float = 30.0) -> None:
        self.extra_args = extra_args
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[str] | None = None
        self.client: HarnessClient | None = None
        # A file, not a pipe: nobody drains stderr while the harness runs, and a full pipe blocks it.
        self.stderr = tempfile.TemporaryFile(mode="w+")

    def __enter__(self) -> HarnessClient:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.harness", "serve", "--port", "0", "--print-url", *self.extra_args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )
        url = _read_line(self.process, self.startup_timeout, self.stderr)
        if not url.startswith("http://"):
            self.__exit__(None, None, None)
            raise HarnessError(f"the harness process did not print its URL (got {url!r})")
        self.client = HarnessClient(url)
        return self.client

    def __exit__(self, *exc_info: Any) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.stderr.close()
        self.process = None


def _read_line(process: subprocess.Popen[str], timeout: float, stderr: Any) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline() if process.stdout else ""),
                              daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        process.kill()
        raise HarnessError(f"the harness process printed nothing within {timeout} s")
    if not result[0] and process.wait(timeout=5) is not None:
        stderr.seek(0)
        errors = stderr.read()
        raise HarnessError(f"the harness process exited with {process.returncode}: {errors}")
    return result[0].strip()


class EmulatorThread:
    """Run an emulator on its own event loop in a background thread, for synchronous code.

    `with EmulatorThread() as harness:` gives `harness.url`; `harness.call(fn)` runs `fn(emulator)`
    on the emulator's loop (seeding, counters, faults), and `harness.call_async(coro_fn)` awaits
    `coro_fn(emulator)` there (e.g. `lambda kube: kube.client_proxy("agent-1")`).
    """

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._ready: Future[str] = Future()
        self._stop: asyncio.Event | None = None
        self.emulator: Any = None
        self.url = ""

    def _run(self) -> None:
        from tests.harness.emulator import KubeEmulator, run_forever

        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                self.emulator = KubeEmulator(**self.options)
                await run_forever(self.emulator, self._ready.set_result, self._stop)
            except BaseException as error:
                if not self._ready.done():
                    self._ready.set_exception(error)
                raise

        self.loop.run_until_complete(main())
        self.loop.close()

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        self.url = self._ready.result(timeout=30)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def call(self, fn: Callable[[Any], T]) -> T:
        async def run() -> T:
            return fn(self.emulator)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)

    def call_async(self, fn: Callable[[Any], Any]) -> Any:
        async def run() -> Any:
            return await fn(self.emulator)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)
