"""Hostile registries and token services on loopback, in front of or beside the real registry:
servers that trickle, tokens and headers that would split a request, a token realm on another
loopback address that wants the registry's credentials. Each is refused with a clear error, in
bounded time (small limits configured), and leaves nothing in the pull directory."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from registry_support import (
    OCI_MANIFEST,
    CertificateAuthority,
    Fault,
    FaultProxy,
    RegistryServer,
    TokenServer,
    htpasswd_auth,
    make_package,
)

from aos_operator.cli import main
from aos_operator.errors import RegistryError
from aos_operator.registry import Credentials, RegistryClient, RegistryLimits, RetryPolicy

FAST = RegistryLimits(request_timeout=1.0, blob_min_rate=2000, blob_rate_window=0.5, blob_rate_grace=0.5)


def no_retry_waits() -> RetryPolicy:
    return RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01, sleep=lambda _: None)


def leftovers(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file())


@pytest.fixture
def pushed(registry: RegistryServer):
    package = make_package(layer_sizes=(400_000,))
    with RegistryClient() as client:
        client.push(f"{registry.host}/aos/slow:v1", package.manifest, OCI_MANIFEST, package.sources())
    return package


# -- slow servers -----------------------------------------------------------------------


def test_trickled_manifest_hits_the_request_deadline(fault_proxy: FaultProxy, pushed) -> None:
    fault_proxy.add(Fault("GET", "/manifests/v1", "trickle", rate=20))
    with RegistryClient(limits=FAST, retry=no_retry_waits()) as client, pytest.raises(RegistryError) as caught:
        client.pull_manifest(f"{fault_proxy.host}/aos/slow:v1")
    message = str(caught.value)
    assert f"{fault_proxy.host}/aos/slow:v1" in message
    assert "did not complete the request within 1 s (the request deadline)" in message
    assert "--request-timeout" in message
    # a deadline is final: a server that is slow on purpose is not asked again
    assert len(fault_proxy.requests("GET", "/manifests/v1")) == 1


def test_trickled_headers_of_a_blob_hit_the_request_deadline(fault_proxy: FaultProxy, pushed, tmp_path: Path) -> None:
    layer = pushed.layer_digests[0]
    fault_proxy.add(Fault("GET", f"/blobs/{layer}", "trickle", rate=20))
    with RegistryClient(limits=FAST, retry=no_retry_waits()) as client, pytest.raises(RegistryError) as caught:
        client.pull(f"{fault_proxy.host}/aos/slow:v1", tmp_path / "pkg")
    assert "request deadline" in str(caught.value) and layer in str(caught.value)
    assert not (tmp_path / "pkg" / "manifest.json").exists()
    assert f"blobs/sha256/{layer.split(':')[1]}" not in leftovers(tmp_path / "pkg")
    assert not [name for name in leftovers(tmp_path / "pkg") if "tmp" in name or "partial" in name]


def test_trickled_blob_body_is_refused_below_the_minimum_rate(fault_proxy: FaultProxy, pushed, tmp_path: Path) -> None:
    layer = pushed.layer_digests[0]
    fault_proxy.add(Fault("GET", f"/blobs/{layer}", "trickle-body", rate=200))
    with RegistryClient(limits=FAST, retry=no_retry_waits(), max_workers=1) as client:
        with pytest.raises(RegistryError) as caught:
            client.pull(f"{fault_proxy.host}/aos/slow:v1", tmp_path / "pkg")
    message = str(caught.value)
    assert layer in message and "below the minimum of 2000 bytes/s" in message and "--min-blob-rate" in message
    assert len(fault_proxy.requests("GET", f"/blobs/{layer}")) == 1  # not resumed again and again
    assert not (tmp_path / "pkg" / "manifest.json").exists()
    files = leftovers(tmp_path / "pkg")
    assert f"blobs/sha256/{layer.split(':')[1]}" not in files
    assert not [name for name in files if layer.split(":")[1] in name]  # no partial file of the layer


def test_a_slow_but_steady_blob_passes_the_rate_floor(fault_proxy: FaultProxy, pushed, tmp_path: Path) -> None:
    """The same limits, a body faster than the minimum: pulled whole. The floor refuses only slowness."""
    layer = pushed.layer_digests[0]
    fault_proxy.add(Fault("GET", f"/blobs/{layer}", "trickle-body", rate=400_000))
    with RegistryClient(limits=FAST, retry=no_retry_waits()) as client:
        client.pull(f"{fault_proxy.host}/aos/slow:v1", tmp_path / "pkg")
    assert (tmp_path / "pkg" / "blobs" / "sha256" / layer.split(":")[1]).read_bytes() == pushed.blobs[layer]


def test_cli_flags_set_the_limits(fault_proxy: FaultProxy, pushed, tmp_path: Path, capsys) -> None:
    fault_proxy.add(Fault("GET", "/manifests/v1", "trickle", rate=20))
    code = main(["pull", "--request-timeout", "0.5", f"{fault_proxy.host}/aos/slow:v1", "-o", str(tmp_path / "pkg")])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "within 0.5 s (the request deadline)" in err and "Traceback" not in err


# -- a hostile token service -------------------------------------------------------------


class HostileRealm:
    """A token service on a loopback address that answers with whatever the test sets."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.answer: dict[str, Any] = {"token": "ok"}
        self.trickle = False
        self.requests: list[dict[str, str]] = []
        realm = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                realm.requests.append(dict(self.headers.items()))
                body = json.dumps(realm.answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not realm.trickle:
                    self.wfile.write(body)
                    return
                try:
                    for byte in body:
                        self.wfile.write(bytes([byte]))
                        threading.Event().wait(0.1)
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer((address, 0), Handler)
        self._httpd.daemon_threads = True
        self.realm = f"http://{address}:{self._httpd.server_address[1]}/token"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def hostile_realm() -> Iterator[HostileRealm]:
    realm = HostileRealm()
    yield realm
    realm.stop()


@pytest.fixture
def realm_registry(start_registry_server, token_server: TokenServer, hostile_realm: HostileRealm) -> RegistryServer:
    """A real registry with token auth whose WWW-Authenticate sends clients to the hostile realm."""
    auth = token_server.auth_config()
    auth["token"]["realm"] = hostile_realm.realm
    return start_registry_server("hostile-realm", auth=auth)


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("abc\r\nX-Injected: yes", "a line break (CR/LF)"),
        ("abc\x00def", "a NUL byte"),
        ("abc\x1bdef", "the control character 0x1b"),
        ("abc def", "a space"),
        ("t\u00f6ken", "the non-ASCII character U+00F6"),
    ],
)
def test_token_that_would_split_a_header_is_refused(
    realm_registry: RegistryServer, hostile_realm: HostileRealm, token: str, problem: str
) -> None:
    hostile_realm.answer = {"token": token, "expires_in": 300}
    with RegistryClient(retry=no_retry_waits()) as client, pytest.raises(RegistryError) as caught:
        client.pull_manifest(f"{realm_registry.host}/aos/any:v1")
    message = str(caught.value)
    assert f"the token from {hostile_realm.realm} holds {problem}" in message
    assert "refusing to put it into a header" in message


def test_cli_pull_with_a_crlf_token_is_a_clear_error_not_an_internal_one(
    realm_registry: RegistryServer, hostile_realm: HostileRealm, tmp_path: Path, capsys
) -> None:
    hostile_realm.answer = {"token": "abc\r\nX-Injected: yes"}
    code = main(["pull", f"{realm_registry.host}/aos/any:v1", "-o", str(tmp_path / "pkg")])
    err = capsys.readouterr().err
    assert code == 3
    assert "internal error" not in err and "Traceback" not in err
    assert "holds a line break (CR/LF)" in err
    assert not (tmp_path / "pkg").exists() or leftovers(tmp_path / "pkg") == []


def test_trickled_token_hits_the_request_deadline(realm_registry: RegistryServer, hostile_realm: HostileRealm) -> None:
    hostile_realm.trickle = True
    with RegistryClient(limits=FAST, retry=no_retry_waits()) as client, pytest.raises(RegistryError) as caught:
        client.pull_manifest(f"{realm_registry.host}/aos/any:v1")
    assert "request deadline" in str(caught.value)


@pytest.mark.parametrize(
    ("location", "problem"),
    [("file:///etc/passwd", "the scheme 'file'"), ("http:///x", "no host"), ("/v2/a b", "a space")],
)
def test_redirect_location_that_is_no_url_is_refused(fault_proxy: FaultProxy, pushed, tmp_path: Path, location, problem) -> None:
    layer = pushed.layer_digests[0]
    fault_proxy.add(Fault("GET", f"/blobs/{layer}", "status", status=307, headers={"Location": location}))
    with RegistryClient(retry=no_retry_waits()) as client, pytest.raises(RegistryError) as caught:
        client.pull(f"{fault_proxy.host}/aos/slow:v1", tmp_path / "pkg")
    assert "Location header" in str(caught.value) and problem in str(caught.value)


# -- credentials and the realm's host ----------------------------------------------------


@pytest.fixture
def other_loopback_token_server(tmp_path: Path) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path / "token-127.0.0.2", {"alice": "wonderland"}, address="127.0.0.2")
    yield server
    server.stop()


@pytest.fixture
def split_registry(start_registry_server, other_loopback_token_server: TokenServer) -> RegistryServer:
    """A registry on 127.0.0.1 whose token realm is plain HTTP on 127.0.0.2."""
    return start_registry_server("split", auth=other_loopback_token_server.auth_config())


def test_credentials_are_not_sent_to_a_plain_http_realm_on_another_host(
    split_registry: RegistryServer, other_loopback_token_server: TokenServer
) -> None:
    package = make_package()
    reference = f"{split_registry.host}/aos/private:v1"
    with RegistryClient(credentials=Credentials("alice", "wonderland"), retry=no_retry_waits()) as client:
        with pytest.raises(RegistryError) as caught:
            client.push(reference, package.manifest, OCI_MANIFEST, package.sources())
    message = str(caught.value)
    assert "plain HTTP on another host" in message and other_loopback_token_server.realm in message
    assert "--insecure-registry 127.0.0.2:" in message
    assert [request for request in other_loopback_token_server.requests if request["user"]] == []


def test_credentials_go_to_the_realm_host_the_user_names(
    split_registry: RegistryServer, other_loopback_token_server: TokenServer, tmp_path: Path
) -> None:
    package = make_package()
    reference = f"{split_registry.host}/aos/private:v1"
    with RegistryClient(
        credentials=Credentials("alice", "wonderland"), insecure_registries=["127.0.0.2"], retry=no_retry_waits()
    ) as client:
        assert client.push(reference, package.manifest, OCI_MANIFEST, package.sources()) == package.digest
        client.pull(reference, tmp_path / "pkg")
    assert (tmp_path / "pkg" / "manifest.json").read_bytes() == package.manifest
    assert {request["user"] for request in other_loopback_token_server.requests} == {"alice"}


def test_cli_insecure_registry_flag_opts_in(
    split_registry: RegistryServer, other_loopback_token_server: TokenServer, tmp_path: Path, capsys
) -> None:
    package = make_package()
    reference = f"{split_registry.host}/aos/private:v1"
    with RegistryClient(credentials=Credentials("alice", "wonderland"), insecure_registries=["127.0.0.2"]) as client:
        client.push(reference, package.manifest, OCI_MANIFEST, package.sources())
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {split_registry.host: {"username": "alice", "password": "wonderland"}}}))
    argv = ["pull", "--auth", str(config), reference, "-o", str(tmp_path / "pkg")]
    assert main(argv) == 3
    assert "plain HTTP on another host" in capsys.readouterr().err
    realm_host = other_loopback_token_server.realm.split("/")[2]
    assert main([*argv[:1], "--insecure-registry", realm_host, *argv[1:]]) == 0, capsys.readouterr().err
    assert (tmp_path / "pkg" / "manifest.json").read_bytes() == package.manifest
    assert os.stat(tmp_path / "pkg" / "manifest.json").st_size == len(package.manifest)


# -- a trickled TLS handshake ------------------------------------------------------------


class TrickleRelay:
    """TCP on 127.0.0.1 to an upstream port: the client's bytes go through at once, the server's
    come back at `rate` bytes/s (a TLS handshake that takes forever)."""

    def __init__(self, upstream_port: int, rate: float) -> None:
        self.upstream_port, self.rate = upstream_port, rate
        self.connections = 0
        self.sent_to_client = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.rate), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, rate: float | None) -> None:
        try:
            while data := source.recv(65536 if rate is None else 1):
                target.sendall(data)
                if rate is not None:
                    self.sent_to_client += len(data)
                    time.sleep(1 / rate)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.close()

    def stop(self) -> None:
        self._listener.close()


def test_trickled_tls_handshake_hits_the_request_deadline(
    start_registry_server, certificate_authority: CertificateAuthority
) -> None:
    tls_registry = start_registry_server("tls-slow", tls=certificate_authority)
    relay = TrickleRelay(tls_registry.port, rate=50)
    try:
        with RegistryClient(ca_file=certificate_authority.ca_file, limits=FAST, retry=no_retry_waits()) as client:
            with pytest.raises(RegistryError) as caught:
                client.pull_manifest(f"127.0.0.1:{relay.port}/aos/any:v1")
    finally:
        relay.stop()
    assert "request deadline" in str(caught.value)
    assert relay.connections == 1  # refused on the first try, no fall back to plain HTTP
    # cut in the middle of the handshake: the server's certificate chain alone is longer than this
    assert relay.sent_to_client < 400


# -- Locations to another origin get no credentials ----------------------------------------


class Catcher:
    """An HTTP server on another loopback address that records what it is sent and answers 401."""

    def __init__(self, address: str = "127.0.0.2") -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                catcher.seen.append((self.command, dict(self.headers.items())))
                length = int(self.headers.get("Content-Length") or 0)
                while length > 0:
                    length -= len(self.rfile.read(min(length, 65536)) or b"x" * length)
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_PATCH = do_GET  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer((address, 0), Handler)
        self._httpd.daemon_threads = True
        self.origin = f"http://{address}:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def basic_behind_proxy(start_registry_server, tmp_path: Path) -> Iterator[FaultProxy]:
    registry = start_registry_server("basic-proxied", auth=htpasswd_auth(tmp_path / "auth", {"alice": "wonderland"}))
    proxy = FaultProxy(registry.port)
    yield proxy
    proxy.stop()


@pytest.fixture
def catcher() -> Iterator[Catcher]:
    server = Catcher()
    yield server
    server.stop()


def test_blob_redirect_to_another_host_gets_no_credentials(
    basic_behind_proxy: FaultProxy, catcher: Catcher, tmp_path: Path
) -> None:
    package = make_package()
    reference = f"{basic_behind_proxy.host}/aos/private:v1"
    alice = Credentials("alice", "wonderland")
    with RegistryClient(credentials=alice, retry=no_retry_waits()) as client:
        client.push(reference, package.manifest, OCI_MANIFEST, package.sources())
        layer = package.layer_digests[0]
        basic_behind_proxy.add(Fault("GET", f"/blobs/{layer}", "status", status=307,
                                     headers={"Location": f"{catcher.origin}/storage/{layer}"}))
        with pytest.raises(RegistryError):
            client.pull(reference, tmp_path / "pkg")
    assert any("Authorization" in seen.headers for seen in basic_behind_proxy.requests("GET", "/manifests/"))
    assert [method for method, _ in catcher.seen] == ["GET"]
    assert all("Authorization" not in headers for _, headers in catcher.seen)


def test_upload_location_on_another_host_gets_no_credentials(basic_behind_proxy: FaultProxy, catcher: Catcher) -> None:
    package = make_package()
    basic_behind_proxy.add(Fault("POST", "/blobs/uploads/", "rewrite-headers", times=10,
                                 headers={"Location": f"{catcher.origin}/upload/session"}))
    with RegistryClient(credentials=Credentials("alice", "wonderland"), retry=no_retry_waits(), max_workers=1) as client:
        with pytest.raises(RegistryError):
            client.push(f"{basic_behind_proxy.host}/aos/private:v1", package.manifest, OCI_MANIFEST, package.sources())
    assert catcher.seen, "the client never followed the Location"
    assert all("Authorization" not in headers for _, headers in catcher.seen)
