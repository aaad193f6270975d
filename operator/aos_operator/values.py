"""Checks of single values that reach a container: working directory, env entries, sysctl keys,
host name. Pure and shared, so the validator, the builder and the runtime (which must check a
package again, whoever built it) refuse the same values with the same words.

Each check returns None for a good value, else the problem as a phrase without the field name
(the caller knows where the value came from).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# A quota's largest value: the OCI runtime spec's limits are int64, and runc refuses more at start.
LARGEST_LIMIT = 2**63 - 1

# The sysctls Kubernetes calls safe (namespaced and isolated per pod; kubelet's allow-list as of
# 1.32), plus net.core.somaxconn: per network namespace since Linux 4.x, it changes only the
# listen backlog of the service's own sockets, and AosEdge's own service-config example sets it.
ALLOWED_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.core.somaxconn",
})

# The form of each allowed sysctl's value: every one is a number, or a fixed count of them
# separated by spaces or tabs, or (the reserved ports) a list of ports and ranges. runc writes the
# value into /proc/sys at start, where any other form fails the start; here it fails validation.
_NUMBER = r"-?[0-9]{1,20}"
_SYSCTL_FORMS = {
    **{key: (1, "a number") for key in ALLOWED_SYSCTLS},
    "net.ipv4.ip_local_port_range": (2, "two numbers, e.g. '32768 60999'"),
    "net.ipv4.ping_group_range": (2, "two numbers, e.g. '0 2147483647'"),
    "net.ipv4.tcp_rmem": (3, "three numbers, e.g. '4096 131072 6291456'"),
    "net.ipv4.tcp_wmem": (3, "three numbers, e.g. '4096 16384 4194304'"),
}
_RESERVED_PORTS_RE = re.compile(r"[0-9]{1,5}(?:-[0-9]{1,5})?(?:,[0-9]{1,5}(?:-[0-9]{1,5})?)*")

# Variables the runtime sets itself; a service may not set or shadow them.
RESERVED_ENV_PREFIX = "AOS_"

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
HOSTNAME_MAX = 64
_SYSCTL_VALUE_RE = re.compile(r"[\x20-\x7e\t]*")


def _control_characters(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def working_dir_problem(path: str) -> str | None:
    """A working directory must be a clean absolute path: `/`, no `..`, `.` or empty components,
    no NUL or control characters."""
    if "\0" in path:
        return f"{path!r} contains a NUL byte"
    if _control_characters(path):
        return f"{path!r} contains a control character"
    if not path.startswith("/"):
        return f"{path!r} is not an absolute path; write it from the root, e.g. /app"
    parts = path.rstrip("/").split("/")[1:] if path != "/" else []
    if "" in parts:
        return f"{path!r} has an empty component ('//'); write e.g. /app"
    if ".." in parts:
        return f"{path!r} contains '..'; a working directory stays inside the service's root"
    if "." in parts:
        return f"{path!r} contains '.' components; write the plain path"
    return None


def env_entry_problem(entry: str, *, from_service: bool = True) -> str | None:
    """An env entry is NAME=value: the name not empty, no `=`, NUL, whitespace or control
    characters in it; the value without NUL, newlines or control characters (tab allowed). An
    entry from the service (config, image) may not be one of the runtime's own AOS_* variables;
    the cloud's per-instance overrides may (they win over everything on AosEdge devices)."""
    name, separator, value = entry.partition("=")
    if not separator:
        return f"{entry!r} is not NAME=value"
    if not name:
        return f"{entry!r} has an empty variable name"
    if "\0" in name or _control_characters(name) or any(ch.isspace() for ch in name):
        return f"the variable name {name!r} contains whitespace, NUL or a control character"
    if "\0" in value or _control_characters(value.replace("\t", " ")):
        return f"the value of {name} contains NUL, a newline or another control character"
    if from_service and name.startswith(RESERVED_ENV_PREFIX):
        return (f"{name} is reserved: the runtime sets the AOS_* variables (AOS_SERVICE_ID, AOS_SUBJECT_ID, "
                "AOS_INSTANCE_INDEX, AOS_INSTANCE_ID) itself")
    return None


def sysctl_problem(key: str, value: object) -> str | None:
    """Only the namespaced sysctls in ALLOWED_SYSCTLS, each with a value of its form."""
    if key not in ALLOWED_SYSCTLS:
        return (f"sysctl {key!r} is not allowed for a service; allowed: {', '.join(sorted(ALLOWED_SYSCTLS))}")
    if not isinstance(value, str):
        return f"sysctl {key}: the value must be a string, got {value!r}"
    if not _SYSCTL_VALUE_RE.fullmatch(value) or not value.strip():
        return f"sysctl {key}: {value!r} is not a one-line printable value"
    if key == "net.ipv4.ip_local_reserved_ports":
        if not _RESERVED_PORTS_RE.fullmatch(value.strip()):
            return f"sysctl {key}: {value[:80]!r} is not a list of ports and ranges, e.g. '8080,9148-9150'"
        return None
    count, form = _SYSCTL_FORMS[key]
    numbers = value.split()
    if len(numbers) != count or not all(re.fullmatch(_NUMBER, number) for number in numbers):
        return f"sysctl {key}: {value[:80]!r} is not {form}"
    return None


def hostname_problem(hostname: str) -> str | None:
    if len(hostname) > HOSTNAME_MAX or not _HOSTNAME_RE.fullmatch(hostname):
        return (f"{hostname!r} is not a valid host name: letters, digits, '-' and '.', labels of at most 63, "
                f"at most {HOSTNAME_MAX} characters")
    return None


def first_problem(problems: Iterable[str | None]) -> str | None:
    return next((problem for problem in problems if problem), None)
