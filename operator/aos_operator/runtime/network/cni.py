"""Run CNI plugins the way the CNI specification says a runtime does, without libcni.

A plugin is an executable found in one of the plugin directories; the runtime passes the command
and the container in `CNI_*` environment variables and the network configuration (with
`cniVersion`, `name` and, when chaining, `prevResult`) as JSON on stdin. ADD returns a result on
stdout; an error is a JSON object with `code` and `msg`. A chain is ADDed in order, each plugin
getting the previous result, and DELeted in reverse order.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aos_operator.bounded import parse_json
from aos_operator.errors import RuntimeFailure

CNI_VERSION = "1.0.0"
_TIMEOUT_SECONDS = 30.0
_MAX_OUTPUT = 1 << 20


def find_plugin(plugin_type: str, plugin_dirs: Sequence[str]) -> Path:
    if not plugin_type or "/" in plugin_type or plugin_type.startswith("."):
        raise RuntimeFailure(f"CNI plugin type {plugin_type!r} is not a plain executable name")
    for directory in plugin_dirs:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeFailure(f"CNI plugin {plugin_type!r} not found in {', '.join(plugin_dirs)}",
                         hint="install containernetworking-plugins, set the CNI plugin directory, "
                              "or turn the instance network off")


def invoke(command: str, plugin: Mapping[str, Any], *, network_name: str, container_id: str, netns: str,
           ifname: str, plugin_dirs: Sequence[str], prev_result: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run one plugin; returns its parsed result (an empty dict for DEL)."""
    config = {"cniVersion": CNI_VERSION, "name": network_name, **plugin}
    if prev_result is not None:
        config["prevResult"] = dict(prev_result)
    binary = find_plugin(str(plugin.get("type", "")), plugin_dirs)
    environment = {
        "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
        "CNI_PATH": ":".join(plugin_dirs),
        # iptables, tc and friends live in sbin; plugins exec them by name.
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }
    try:
        completed = subprocess.run([str(binary)], input=json.dumps(config).encode(), env=environment,
                                   capture_output=True, timeout=_TIMEOUT_SECONDS, cwd="/", check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"CNI plugin {binary} {command} for {container_id} did not finish "
                             f"within {_TIMEOUT_SECONDS:g} s") from None
    output = completed.stdout[:_MAX_OUTPUT]
    if completed.returncode != 0:
        raise RuntimeFailure(f"CNI plugin {binary.name} {command} for {container_id} failed: {_error_text(output, completed.stderr)}")
    if command != "ADD":
        return {}
    try:
        result = parse_json(output)
    except ValueError:
        raise RuntimeFailure(f"CNI plugin {binary.name} ADD for {container_id} printed no JSON result") from None
    if not isinstance(result, dict):
        raise RuntimeFailure(f"CNI plugin {binary.name} ADD for {container_id}: the result is not an object")
    return result


def _error_text(stdout: bytes, stderr: bytes) -> str:
    try:
        error = parse_json(stdout)
        text = f"{error.get('msg', '')} {error.get('details', '')}".strip() or str(error)
    except (ValueError, AttributeError):
        text = (stdout or stderr).decode(errors="replace").strip()
    return " ".join(text.split())[:500] or "no message"


def add_chain(plugins: Sequence[Mapping[str, Any]], **context: Any) -> dict[str, Any]:
    """ADD every plugin in order; on a failure the ones already added are deleted again."""
    result: dict[str, Any] | None = None
    done: list[Mapping[str, Any]] = []
    try:
        for plugin in plugins:
            result = invoke("ADD", plugin, prev_result=result, **context)
            done.append(plugin)
    except RuntimeFailure:
        delete_chain(done, **context)
        raise
    return result or {}


def delete_chain(plugins: Sequence[Mapping[str, Any]], *, prev_result: Mapping[str, Any] | None = None,
                 **context: Any) -> list[str]:
    """DEL every plugin in reverse order, going on after failures; returns the failures' messages."""
    failures = []
    for plugin in reversed(plugins):
        try:
            invoke("DEL", plugin, prev_result=prev_result, **context)
        except RuntimeFailure as error:
            failures.append(str(error))
    return failures
