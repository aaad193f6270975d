"""Real parts and test doubles around the real registry for the registry client's tests.

- RegistryServer: Debian's docker-registry (CNCF Distribution 2.8) on 127.0.0.1 and a free
  port, storage in a temp dir; no auth, htpasswd (bcrypt), token auth, and/or its own TLS.
- TokenServer: the Bearer realm for a registry configured with `auth: token`: checks Basic
  credentials and signs ES256 JWTs whose x5c chain the registry trusts (rootcertbundle).
- FaultProxy: an HTTP proxy between client and registry that injects faults on demand.
- make_package: a small AosEdge service package whose manifest carries `aosService`.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import http.client
import io
import ipaddress
import json
import re
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aos_operator.digests import canonical_json
from tools.cluster import dying_with_parent

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
AOS_SERVICE = "application/vnd.aos.service.config.v1+json"
TOKEN_SERVICE = "test-registry"
TOKEN_ISSUER = "test-token-issuer"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- TLS material -----------------------------------------------------------------------


@dataclass
class CertificateAuthority:
    """A CA and a server certificate for 127.0.0.1 / localhost, as PEM files."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls(directory: Path) -> CertificateAuthority:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aos-operator test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    tls = CertificateAuthority(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    tls.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    tls.key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return tls


# -- the registry -----------------------------------------------------------------------


@dataclass
class RegistryServer:
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    tls: CertificateAuthority | None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return (self.root / "registry.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_registry(
    root: Path, *, auth: dict[str, Any] | None = None, tls: CertificateAuthority | None = None
) -> RegistryServer:
    """Start docker-registry with its own config (never the stock one) and wait until it serves."""
    root.mkdir(parents=True, exist_ok=True)
    last_log = ""
    for _ in range(5):  # a free port can be taken between probing and binding: try another
        port = free_port()
        http: dict[str, Any] = {"addr": f"127.0.0.1:{port}", "secret": "aos-operator-tests"}
        if tls:
            http["tls"] = {"certificate": str(tls.cert_file), "key": str(tls.key_file)}
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(root / "data")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
        }
        if auth:
            config["auth"] = auth
        config_path = root / "config.yml"
        config_path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        log = (root / "registry.log").open("wb")
        process = subprocess.Popen(dying_with_parent(["docker-registry", "serve", str(config_path)]), stdout=log,
                                   stderr=subprocess.STDOUT)
        log.close()
        server = RegistryServer(process, port, root, tls)
        if _wait_ready(server):
            return server
        server.stop()
        last_log = server.log()
    raise RuntimeError(f"docker-registry did not start; last log:\n{last_log}")


def _wait_ready(server: RegistryServer) -> bool:
    context = ssl.create_default_context(cafile=str(server.tls.ca_file)) if server.tls else None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            connection = (
                http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=2)
                if context
                else http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
            )
            connection.request("GET", "/v2/")
            status = connection.getresponse().status
            connection.close()
            if status in (200, 401):
                time.sleep(0.05)
                # Another process may hold the port and have answered: ours must still be alive.
                return server.process.poll() is None
        except OSError:
            pass
        time.sleep(0.05)
    return False


def htpasswd_auth(root: Path, users: dict[str, str]) -> dict[str, Any]:
    """An `auth: htpasswd:` section with bcrypt hashes made by the `bcrypt` package."""
    import bcrypt

    path = root / "htpasswd"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
            for user, password in users.items()
        )
    )
    return {"htpasswd": {"realm": "aos-test", "path": str(path)}}


# -- the token server -------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """The Bearer realm: Basic-authenticated users get what they ask; anonymous gets pull only."""

    def __init__(
        self,
        directory: Path,
        users: dict[str, str],
        *,
        anonymous_pull: bool = True,
        lifetime: int = 300,
        address: str = "127.0.0.1",
    ) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.users, self.anonymous_pull, self.lifetime = users, anonymous_pull, lifetime
        self.requests: list[dict[str, Any]] = []
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TOKEN_ISSUER)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self._key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.root_cert_bundle = directory / "token-signer.pem"
        self.root_cert_bundle.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server._answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.address = address
        self._httpd = ThreadingHTTPServer((address, 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        return f"http://{self.address}:{self.port}/token"

    def auth_config(self) -> dict[str, Any]:
        return {
            "token": {
                "realm": self.realm,
                "service": TOKEN_SERVICE,
                "issuer": TOKEN_ISSUER,
                "rootcertbundle": str(self.root_cert_bundle),
            }
        }

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
        scopes = [scope for value in query.get("scope", []) for scope in value.split(" ")]
        user = None
        header = handler.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(name) != password:
                self.requests.append({"user": name, "scopes": scopes, "granted": None})
                handler.send_response(401)
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            user = name
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            repository, _, actions = rest.rpartition(":")
            wanted = actions.split(",")
            allowed = wanted if user else [action for action in wanted if action == "pull" and self.anonymous_pull]
            if allowed:
                access.append({"type": kind, "name": repository, "actions": allowed})
        self.requests.append({"user": user, "scopes": scopes, "granted": access})
        token = self._sign(user or "", access)
        body = json.dumps({"token": token, "access_token": token, "expires_in": self.lifetime}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _sign(self, subject: str, access: list[dict[str, Any]]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self._x5c]}
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": TOKEN_SERVICE,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": hashlib.sha256(f"{now}{time.perf_counter_ns()}".encode()).hexdigest()[:16],
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


# -- the fault proxy --------------------------------------------------------------------


@dataclass
class Fault:
    """Do `action` to the next `times` requests matching method and path pattern.

    Actions: "status" (answer `status` with `headers`, registry not asked), "drop-body"
    (forward, then cut the connection halfway through the response body), "corrupt"
    (forward, flip one byte of the body), "drop-request" (read the request, close, no answer),
    "rewrite-headers" (forward, replacing response headers with `headers`), "trickle" (forward,
    then send the whole response, status line first, at `rate` bytes/s), "trickle-body" (the
    same, but status line and headers at once).
    """

    method: str
    path: str
    action: str
    times: int = 1
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    rate: float = 10.0

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and re.search(self.path, path) is not None


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    fault: str | None


class FaultProxy:
    """Forwards HTTP/1.1 to the registry, keeping the Host header so Locations point here."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults: list[Fault] = []
        self.seen: list[SeenRequest] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                proxy._handle(self)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def requests(self, method: str | None = None, path: str = "") -> list[SeenRequest]:
        return [seen for seen in self.seen if (method is None or seen.method == method) and re.search(path, seen.path)]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    return fault
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        method, path = handler.command, handler.path
        fault = self._take_fault(method, path)
        self.seen.append(SeenRequest(method, path, dict(handler.headers.items()), fault.action if fault else None))
        length = int(handler.headers.get("Content-Length") or 0)
        if fault and fault.action in ("status", "drop-request"):
            _read_exactly(handler.rfile, length, sink=None)
            if fault.action == "drop-request":
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
            body = json.dumps({"errors": [{"code": "INJECTED", "message": f"injected HTTP {fault.status}"}]}).encode()
            handler.send_response(fault.status)
            for name, value in fault.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            if method != "HEAD":
                handler.wfile.write(body)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            upstream.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in handler.headers.items():
                if name.lower() not in ("connection", "keep-alive", "proxy-connection"):
                    upstream.putheader(name, value)
            upstream.endheaders()
            _read_exactly(handler.rfile, length, sink=upstream.send)
            response = upstream.getresponse()
            self._relay(handler, method, response, fault)
        finally:
            upstream.close()

    def _relay(
        self, handler: BaseHTTPRequestHandler, method: str, response: http.client.HTTPResponse, fault: Fault | None
    ) -> None:
        replaced = {name.lower() for name in fault.headers} if fault and fault.action == "rewrite-headers" else set()
        headers = [
            (name, value)
            for name, value in response.getheaders()
            if name.lower() not in ("connection", "transfer-encoding", "keep-alive", *replaced)
        ]
        if replaced:
            headers += list(fault.headers.items())  # type: ignore[union-attr]
        if fault and fault.action in ("trickle", "trickle-body"):
            self._trickle(handler, method, response, headers, fault)
            return
        declared = response.getheader("Content-Length")
        body_length = None if declared is None else int(declared)
        buffered = b""
        if body_length is None and method != "HEAD":
            buffered = response.read()
            body_length = len(buffered)
            headers.append(("Content-Length", str(body_length)))
        handler.send_response_only(response.status, response.reason)
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()
        if method == "HEAD" or not body_length:
            return
        cut_at = body_length // 2 if fault and fault.action == "drop-body" else None
        corrupt = fault is not None and fault.action == "corrupt"
        sent = 0
        stream = io.BytesIO(buffered) if buffered else response
        while sent < body_length:
            chunk = stream.read(min(1 << 20, body_length - sent))
            if not chunk:
                break
            if cut_at is not None and sent + len(chunk) > cut_at:
                handler.wfile.write(chunk[: cut_at - sent])
                handler.wfile.flush()
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
            if corrupt:
                chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                corrupt = False
            handler.wfile.write(chunk)
            sent += len(chunk)


    def _trickle(
        self,
        handler: BaseHTTPRequestHandler,
        method: str,
        response: http.client.HTTPResponse,
        headers: list[tuple[str, str]],
        fault: Fault,
    ) -> None:
        """A slow server: the response in small pieces at `fault.rate` bytes/s, until the client hangs up."""
        body = b"" if method == "HEAD" else response.read()
        head = f"HTTP/1.1 {response.status} {response.reason}\r\n".encode("latin-1")
        head += b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers if name.lower() != "content-length")
        head += f"Content-Length: {len(body)}\r\n\r\n".encode("latin-1")
        handler.close_connection = True
        connection = handler.connection
        data, position = head + body, 0
        piece = max(1, int(fault.rate / 10))  # ten pieces a second
        try:
            if fault.action == "trickle-body":
                connection.sendall(head)
                position = len(head)
            while position < len(data):
                connection.sendall(data[position : position + piece])
                position += piece
                time.sleep(piece / fault.rate)
        except OSError:
            pass  # the client gave up: what a slow server wants to see


def _read_exactly(stream: Any, length: int, sink: Any) -> None:
    while length > 0:
        chunk = stream.read(min(1 << 20, length))
        if not chunk:
            break
        if sink is not None:
            sink(chunk)
        length -= len(chunk)


# -- a service package ------------------------------------------------------------------


@dataclass
class Package:
    manifest: bytes
    blobs: dict[str, bytes]
    layer_digests: list[str]
    config_digest: str
    service_digest: str

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    def sources(self) -> dict[str, Any]:
        from aos_operator.registry import BytesBlob

        return {digest: BytesBlob(data) for digest, data in self.blobs.items()}

    def write(self, directory: Path) -> Path:
        """As a package directory: manifest.json + blobs/sha256/<hex>."""
        (directory / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (directory / "manifest.json").write_bytes(self.manifest)
        for digest, data in self.blobs.items():
            (directory / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
        return directory


def _blob_descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def _tar_gz(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """A gzipped tar of `files` and the uncompressed tar (for diff_ids)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 0
            archive.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0), raw.getvalue()


def make_package(name: str = "hello", layer_sizes: tuple[int, ...] = (50_000,), seed: int = 1) -> Package:
    """An AosEdge package: image config, aosService config, gzip tar layers of random-ish files."""
    layers, diff_ids = [], []
    for index, size in enumerate(layer_sizes):
        content = hashlib.shake_256(f"{name}-{seed}-{index}".encode()).digest(size)
        compressed, tar = _tar_gz(
            {f"srv/{name}/data{index}.bin": content, f"srv/{name}/README": f"layer {index}\n".encode()}
        )
        layers.append(compressed)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": [f"/srv/{name}/run"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    )
    service = canonical_json(
        {
            "author": "aos-operator tests",
            "created": "2025-01-01T00:00:00Z",
            "hostname": name,
            "quotas": {"ramLimit": 1 << 24},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _blob_descriptor("application/vnd.oci.image.config.v1+json", config),
            "aosService": _blob_descriptor(AOS_SERVICE, service),
            "layers": [_blob_descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer) for layer in layers],
        }
    )
    blobs = {"sha256:" + hashlib.sha256(data).hexdigest(): data for data in (config, service, *layers)}
    return Package(
        manifest=manifest,
        blobs=blobs,
        layer_digests=["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers],
        config_digest="sha256:" + hashlib.sha256(config).hexdigest(),
        service_digest="sha256:" + hashlib.sha256(service).hexdigest(),
    )
