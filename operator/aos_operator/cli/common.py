"""Options and helpers that several commands share, so that one option has one name, one
meaning and one check everywhere (registry, build, runtime directories, Kubernetes, values)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from aos_operator.errors import InputError
from aos_operator.packaging import registry_client, registry_limits
from aos_operator.registry import RegistryClient, RegistryLimits

# --- values: every number a flag takes is checked by argparse, so a bad one is a usage error ---


def whole_number(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


def seconds(*, allow_zero: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = "0 or more" if allow_zero else "more than 0"
            raise argparse.ArgumentTypeError(f"must be a number of seconds {bound}, got {text}")
        return value

    parse.__name__ = "seconds"
    return parse


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


# --- option groups ------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aosctl" / "build"


def build_options(command: argparse.ArgumentParser) -> None:
    group = command.add_argument_group("build options (when the input is a service directory)")
    group.add_argument("--item", metavar="CODENAME", help="the service item of a schema-version-2 config")
    group.add_argument("--arch", metavar="ARCH", help="the image's architecture when there are several")
    group.add_argument("--cache-dir", metavar="DIR", help=f"build cache (default {default_cache_dir()})")
    group.add_argument("--no-cache", action="store_true", help="build without the cache")
    group.add_argument("--layer", action="append", metavar="DIR|ARCHIVE",
                       help="an Aos layer the service's config lists (repeatable): a directory with layer.yaml "
                            "(uid, version) and src/, or a layer package from aosctl build-layer")


# --- the instance network (runtime/network): flags shared by run and agent ------------------------


def network_options(command: argparse.ArgumentParser) -> None:
    from aos_operator.runtime.network.model import AOSEDGE_UNCOUNTED, DEFAULT_POOL, DEFAULT_PREFIX

    group = command.add_argument_group("instance network (CNI)")
    group.add_argument("--no-network", action="store_true",
                       help="no CNI network: each instance gets a network namespace with loopback only")
    group.add_argument("--network-pool", default=DEFAULT_POOL, metavar="CIDR",
                       help=f"subnets of provider networks come from here (default {DEFAULT_POOL})")
    group.add_argument("--network-prefix", type=int, default=DEFAULT_PREFIX, metavar="N",
                       help=f"prefix length of each provider network (default /{DEFAULT_PREFIX})")
    group.add_argument("--cni-dir", action="append", metavar="DIR",
                       help="CNI plugin directory (repeatable; default /usr/lib/cni and /opt/cni/bin)")
    group.add_argument("--traffic-uncounted", default=",".join(AOSEDGE_UNCOUNTED), metavar="CIDR,...",
                       help="ranges uploadLimit/downloadLimit do not count (default: loopback and the private "
                            "ranges, as AosEdge; '' counts everything)")
    group.add_argument("--dns-server", action="append", metavar="IP",
                       help="upstream DNS servers of the networks' DNS (default: the node's /etc/resolv.conf)")


def network_config(args: argparse.Namespace) -> object:
    """The NetworkConfig of the network flags; commands without them (ps, stop) get the defaults,
    which is enough to find and tear down what a run set up (records name everything)."""
    from aos_operator.runtime.network.model import AOSEDGE_UNCOUNTED, DEFAULT_POOL, DEFAULT_PREFIX, NetworkConfig

    uncounted = getattr(args, "traffic_uncounted", ",".join(AOSEDGE_UNCOUNTED))
    options: dict[str, object] = {
        # dnsmasq re-reads its hosts file as nobody: under the run dir, which the node keeps 0755
        "dns_dir": str(Path(args.run_dir) / "network-dns"),
        "enabled": not getattr(args, "no_network", False),
        "pool": getattr(args, "network_pool", DEFAULT_POOL),
        "prefix": getattr(args, "network_prefix", DEFAULT_PREFIX),
        "uncounted": tuple(part.strip() for part in uncounted.split(",") if part.strip()),
        "upstream_dns": tuple(getattr(args, "dns_server", None) or ()),
    }
    if getattr(args, "cni_dir", None):
        options["plugin_dirs"] = tuple(args.cni_dir)
    try:
        return NetworkConfig(**options)  # type: ignore[arg-type]
    except ValueError as error:
        raise InputError(str(error)) from None


def quiet_option(command: argparse.ArgumentParser, what: str = "print only the result") -> None:
    command.add_argument("--quiet", "-q", action="store_true", help=f"no progress or notes on stderr; {what}")


def registry_options(command: argparse.ArgumentParser, *, from_environment: bool = False) -> None:
    """`--insecure`, `--ca`, `--auth` on every command that talks to a registry; `--registry-*`
    are the same options under the names the operator and agent had (the chart passes them)."""
    group = command.add_argument_group("registry options")
    env = os.environ.get if from_environment else (lambda name: None)
    suffix = " ($AOS_REGISTRY_{})" if from_environment else ""
    group.add_argument("--insecure", "--registry-insecure", dest="insecure", action="store_true",
                       default=env_flag("AOS_REGISTRY_INSECURE") if from_environment else False,
                       help="plain HTTP to the registry (loopback registries may use it anyway)"
                       + suffix.format("INSECURE"))
    group.add_argument("--ca", "--registry-ca", dest="ca", metavar="FILE", default=env("AOS_REGISTRY_CA"),
                       help="CA bundle for the registry's TLS certificate" + suffix.format("CA"))
    group.add_argument("--auth", "--registry-auth", dest="auth", metavar="FILE", default=env("AOS_REGISTRY_AUTH"),
                       help="docker config.json with credentials (default: $DOCKER_CONFIG/config.json or "
                       "~/.docker/config.json, with its credHelpers and credsStore)" + suffix.format("AUTH"))
    group.add_argument("--request-timeout", type=seconds(), metavar="SECONDS",
                       help="deadline of each registry request that is not a blob body "
                       f"(default {RegistryLimits.request_timeout:g})")
    group.add_argument("--min-blob-rate", type=float, metavar="BYTES_PER_S",
                       help=f"slowest blob download accepted, averaged over {RegistryLimits.blob_rate_window:g} s "
                       f"(default {RegistryLimits.blob_min_rate:g}; 0: no minimum)")
    group.add_argument("--insecure-registry", action="append", metavar="HOST[:PORT]",
                       help="a host that may receive registry credentials over plain HTTP, e.g. a token realm "
                       "(repeatable)")


def registry(args: argparse.Namespace, *, notify: Callable[[str], None] | None = None,
             docker_defaults: bool = True) -> RegistryClient:
    """The registry client of the command line's registry options.

    Without --auth, docker's own config.json is read (as docker, skopeo and crane do).
    `notify` receives a line for each retry, so a slow registry is not a silent one."""
    if notify is None and not getattr(args, "quiet", False):
        notify = lambda line: print(f"aosctl: {line}", file=sys.stderr, flush=True)  # noqa: E731
    return registry_client(
        insecure=args.insecure,
        ca_file=Path(args.ca) if args.ca else None,
        auth_file=Path(args.auth) if args.auth else None,
        limits=registry_limits(getattr(args, "request_timeout", None), getattr(args, "min_blob_rate", None)),
        insecure_registries=tuple(getattr(args, "insecure_registry", None) or ()),
        docker_defaults=docker_defaults,
        notify_retry=notify,
    )


DEFAULT_STATE_DIR = "/var/lib/aosctl"
DEFAULT_RUN_DIR = "/run/aosctl"


def runtime_dir_options(command: argparse.ArgumentParser) -> None:
    """Where `aosctl run` keeps instances; ps, logs, stop, rm and prune look in the same place."""
    group = command.add_argument_group("local runtime")
    group.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                       help="installed packages, storage, state and logs (default: %(default)s)")
    group.add_argument("--run-dir", default=DEFAULT_RUN_DIR, metavar="DIR",
                       help="runtime state: bundles, runc (default: %(default)s)")
    group.add_argument("--cgroup-parent", default="/aos", metavar="PATH",
                       help="cgroup under which instances run (default: %(default)s)")


def kube_options(command: argparse.ArgumentParser) -> None:
    group = command.add_argument_group("Kubernetes and logging")
    group.add_argument("--kube-server", metavar="URL", default=os.environ.get("AOS_KUBE_SERVER"),
                       help="API server URL without auth, for tests ($AOS_KUBE_SERVER); "
                       "default: in-cluster, else the kubeconfig")
    group.add_argument("--kubeconfig", metavar="FILE",
                       help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    group.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="default: %(default)s")
    group.add_argument("--verbose", "-v", action="store_true", help="the same as --log-level debug")


def layer_size_limit(text: str) -> int:
    """--max-layer-size: bytes, or a size such as 4GiB or 500M."""
    from aos_operator.service import units

    try:
        value = units.parse_size(text, dialect=2)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if value < 1:
        raise argparse.ArgumentTypeError("the maximum unpacked layer size must be at least 1 byte")
    return value


def max_layer_size_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--max-layer-size", type=layer_size_limit, default="4GiB", metavar="SIZE",
                         help="refuse a service layer that unpacks to more than this (default: %(default)s)")


def existing_path(text: str, what: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise InputError(f"{text}: no such file or directory", hint=f"give the path of {what}")
    return path
