"""The /metrics endpoint of the operator and the agent: prometheus-client's own HTTP server on
an address from the command line (`--metrics-address HOST:PORT`), serving one registry."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from aos_operator.errors import InputError

log = logging.getLogger("aos_operator.metrics")


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT` or `:PORT` (every interface) into (host, port)."""
    host, separator, port_text = text.rpartition(":")
    if not separator or not port_text.isascii() or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InputError(f"metrics address {text[:80]!r}: expected HOST:PORT (e.g. 127.0.0.1:9469 or :9469)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if any(character.isspace() or character in "/[]" for character in host):
        raise InputError(f"metrics address {text[:80]!r}: {host[:60]!r} is not a host name or address")
    return host or "0.0.0.0", int(port_text)


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(address: str, registry: CollectorRegistry) -> MetricsServer:
    """Serve `registry` at http://ADDRESS/metrics from a daemon thread (port 0: any free port)."""
    host, port = parse_address(address)
    try:
        server, thread = start_http_server(port, host, registry=registry)
    except OSError as error:
        raise InputError(f"metrics address {address}: cannot listen ({error.strerror or error})",
                         hint="choose another --metrics-address, or '' for none") from None
    found = MetricsServer(server, thread)
    log.info("Prometheus metrics at http://%s:%d/metrics", host, found.port)
    return found
