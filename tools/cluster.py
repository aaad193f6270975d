"""A real Kubernetes control plane on loopback for tests, benchmarks and the cluster demo.

`ControlPlane` starts etcd (temporary data dir), kube-apiserver (its own CA and serving
certificate, RBAC, the default admission plugins plus ValidatingAdmissionPolicy, service-account
token signing) and kube-controller-manager (garbage collection, namespace deletion, service
accounts and their tokens), all bound to 127.0.0.1 on free ports, and writes kubeconfigs: one for
an admin (system:masters) and one per identity asked for (client certificate or token).
`stop()` leaves no process, port or file behind. The binaries come from
tools/control-plane/build.sh (pinned, cached outside the clone, built when missing).

    python -m tools.cluster up [--dir DIR]   # start, print the kubeconfig, serve until SIGTERM
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aos_operator.runtime.supervisor import process_start_ticks

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "tools" / "control-plane" / "build.sh"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# What kube-controller-manager runs here: no nodes, pods or workloads exist without a kubelet.
CONTROLLERS = (
    "garbage-collector-controller", "namespace-controller", "serviceaccount-controller",
    "serviceaccount-token-controller", "root-ca-certificate-publisher-controller",
)


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


def binaries() -> Path:
    """The bin dir with etcd, kube-apiserver and kube-controller-manager; builds them when missing.

    AOS_CONTROL_PLANE_BIN names a ready directory instead (e.g. binaries built elsewhere).
    """
    explicit = os.environ.get("AOS_CONTROL_PLANE_BIN")
    if explicit:
        path = Path(explicit)
    else:
        result = subprocess.run(["sh", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=None, text=True)
        if result.returncode != 0:
            raise ControlPlaneError(f"{BUILD_SCRIPT} failed with exit code {result.returncode} (its output is above)")
        path = Path(result.stdout.strip().splitlines()[-1])
    for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
        if not os.access(path / name, os.X_OK):
            raise ControlPlaneError(f"{path / name} is missing or not executable: run {BUILD_SCRIPT}")
    return path


def dying_with_parent(command: Sequence[str], signal: str = "KILL") -> list[str]:
    """`command` run through setpriv (util-linux) with a parent-death signal, so that a test or
    benchmark killed by a timeout leaves no apiserver, etcd, operator or registry behind."""
    return ["setpriv", "--pdeathsig", signal, "--", *command]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- certificates -----------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class CertificateAuthority:
    """A throw-away CA that signs the serving certificate and the client certificates."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aos-test-control-plane-ca")])
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_file = directory / "ca.crt"
        self.cert_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, common_name: str, organizations: Sequence[str] = (), *,
              server: bool = False) -> tuple[Path, Path]:
        """Write `<name>.crt` and `<name>.key`; a server certificate is valid for 127.0.0.1 and localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([
            *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ])
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.DNSName("kubernetes"), x509.DNSName("kubernetes.default"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file, key_file = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_pem_key(key))
        key_file.chmod(0o600)
        return cert_file, key_file


# --- the control plane ------------------------------------------------------------------------


ROOT_PREFIX = "aos-control-plane-"
OWNER_FILE = "owner.json"  # [pid, start ticks] of the process that made the directory


def sweep_abandoned_roots() -> None:
    """Remove the temporary directories of control planes whose owner was killed before its
    clean stop (its components died with it, see dying_with_parent; the directory did not)."""
    for candidate in Path(tempfile.gettempdir()).glob(ROOT_PREFIX + "*"):
        try:
            pid, ticks = json.loads((candidate / OWNER_FILE).read_text())
        except (OSError, ValueError, TypeError):
            continue  # not ours to judge: made by an older version, or being written
        alive = process_start_ticks(int(pid))
        if (alive is None or (ticks is not None and alive[0] != ticks)) and not _written_lately(candidate):
            shutil.rmtree(candidate, ignore_errors=True)


def _written_lately(root: Path, seconds: float = 900.0) -> bool:
    """Whether anything under `root` changed lately: an owner in another PID namespace sharing
    this /tmp is not visible in /proc, but its etcd and logs keep writing."""
    since = time.time() - seconds
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                if os.lstat(os.path.join(directory, name)).st_mtime > since:
                    return True
            except OSError:
                continue
    return False


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on loopback; `with ControlPlane() as cp:`."""

    def __init__(self, root: Path | None = None, *, bin_dir: Path | None = None, controller_manager: bool = True,
                 apiserver_args: Sequence[str] = (), audit: bool = False, startup_timeout: float = 120.0) -> None:
        self._own_root = root is None
        if root is None:
            sweep_abandoned_roots()
            root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
            owner = process_start_ticks(os.getpid())
            (root / OWNER_FILE).write_text(json.dumps([os.getpid(), owner[0] if owner else None]))
        self.root = root
        self.bin_dir = bin_dir
        self.with_controller_manager = controller_manager
        self.apiserver_args = list(apiserver_args)
        self.audit = audit
        self.startup_timeout = startup_timeout
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.etcd_port = self.etcd_peer_port = self.port = 0
        self.startup_seconds = 0.0
        self.ca: CertificateAuthority | None = None

    # paths and addresses

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    # life cycle

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        started = time.monotonic()
        self.bin_dir = self.bin_dir or binaries()
        for directory in ("pki", "logs", "etcd", "kubeconfigs"):
            (self.root / directory).mkdir(parents=True, exist_ok=True)
        self.etcd_port, self.etcd_peer_port, self.port = free_port(), free_port(), free_port()
        self._write_pki()
        self._start_etcd()
        self._start_apiserver()
        self.wait_ready()
        if self.with_controller_manager:
            self._start_controller_manager()
        self.startup_seconds = time.monotonic() - started
        return self

    def _write_pki(self) -> None:
        self.ca = CertificateAuthority(self.pki)
        self.ca.issue("apiserver", "kube-apiserver", server=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.pki / "sa.key").write_bytes(_pem_key(key))
        (self.pki / "sa.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.client_kubeconfig("admin", "aos-test-admin", ["system:masters"], path=self.admin_kubeconfig)
        self.client_kubeconfig("kube-controller-manager", "system:kube-controller-manager")

    def _spawn(self, name: str, arguments: Sequence[str]) -> subprocess.Popen[bytes]:
        assert self.bin_dir is not None
        with self.log(name).open("ab") as log:
            process = subprocess.Popen(dying_with_parent([str(self.bin_dir / name), *arguments]),
                                       stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        return process

    def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._spawn("etcd", [
            "--name", "aos-test", "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"aos-test={peer}", "--initial-cluster-state", "new",
            # Throw-away data: durability costs fsyncs that a test does not need.
            "--unsafe-no-fsync", "--log-level", "warn", "--quota-backend-bytes", str(2 << 30),
        ])
        self._wait(lambda: self._http_ok(f"{self.etcd_url}/health"), "etcd /health", "etcd")

    def _apiserver_arguments(self) -> list[str]:
        pki = self.pki
        return [
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            f"--etcd-servers={self.etcd_url}", f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            # The defaults stay on; these two are named so that they are on whatever the defaults become.
            "--enable-admission-plugins=NodeRestriction,ValidatingAdmissionPolicy",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-max-token-expiration=48h",
            "--service-cluster-ip-range=10.96.0.0/24",
            # No kube-proxy or pods here: nothing uses the kubernetes Service's endpoints.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true", "--profiling=false", "--v=1",
            *(self._audit_arguments() if self.audit else ()),
            *self.apiserver_args,
        ]

    @property
    def audit_log(self) -> Path:
        return self.root / "logs" / "audit.log"

    def _audit_arguments(self) -> list[str]:
        """Every request's user, user agent, verb and resource, one JSON line each (benchmarks, tests)."""
        policy = self.root / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                                          "omitStages": ["RequestReceived"], "rules": [{"level": "Metadata"}]}))
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
                "--audit-log-maxsize=0", "--audit-log-maxbackup=0"]

    def audit_events(self) -> list[dict[str, Any]]:
        """The completed requests the audit log holds so far (stage ResponseComplete)."""
        events = []
        try:
            lines = self.audit_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:  # the line being written
                continue
            if event.get("stage") == "ResponseComplete":
                events.append(event)
        return events

    def _start_apiserver(self) -> None:
        self._spawn("kube-apiserver", self._apiserver_arguments())

    def _start_controller_manager(self) -> None:
        pki = self.pki
        kubeconfig = self.root / "kubeconfigs" / "kube-controller-manager.kubeconfig"
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--secure-port=0", "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            f"--controllers={','.join(CONTROLLERS)}", "--v=1",
        ])
        # Working controllers (with their own service-account tokens) create the default ServiceAccount.
        self._wait(self._default_service_account, "kube-controller-manager to create the default ServiceAccount",
                   "kube-controller-manager")

    def _default_service_account(self) -> bool:
        try:
            self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            return True
        except ControlPlaneError:
            return False

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver (every watch ends, every request fails) and start it on the same port."""
        self._terminate("kube-apiserver")
        self._start_apiserver()
        self.wait_ready()

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            self._terminate(name)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _terminate(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _alive(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items() if process.poll() is None}

    # readiness

    def _wait(self, check: Any, what: str, process_name: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self._alive(process_name):
                raise ControlPlaneError(f"{process_name} exited with {self.processes[process_name].returncode} "
                                        f"while waiting for {what}; last lines of {self.log(process_name)}:\n"
                                        + self._tail(process_name))
            if check():
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"timed out after {self.startup_timeout:.0f} s waiting for {what}; "
                                f"last lines of {self.log(process_name)}:\n{self._tail(process_name)}")

    def _tail(self, name: str, lines: int = 25) -> str:
        try:
            return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    def wait_ready(self) -> None:
        self._wait(self._ready, "kube-apiserver /readyz", "kube-apiserver")

    def _ready(self) -> bool:
        try:
            return self.request("GET", "/readyz", raw=True) == b"ok"
        except (OSError, urllib.error.URLError, ControlPlaneError):
            return False

    # talking to it as the admin

    def request(self, method: str, path: str, body: Any | None = None, *, content_type: str = "application/json",
                raw: bool = False, timeout: float = 30.0) -> Any:
        """One API request as the admin; the JSON answer, or ControlPlaneError with the status and message."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": content_type, "User-Agent": "aos-test-admin"})
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.ssl_context()) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                message = json.loads(text).get("message", text)
            except ValueError:
                message = text
            raise ApiError(error.code, f"{method} {path}: HTTP {error.code}: {message}") from None
        if raw:
            return payload
        return json.loads(payload) if payload else None

    def apply(self, obj: Mapping[str, Any], *, dry_run: bool = False, field_manager: str = "aos-tests") -> Any:
        """Server-side apply of one object as the admin (create or update)."""
        path = self.object_path(obj)
        query = f"?fieldManager={field_manager}&force=true" + ("&dryRun=All" if dry_run else "")
        return self.request("PATCH", path + query, dict(obj), content_type="application/apply-patch+yaml")

    def create(self, obj: Mapping[str, Any], *, dry_run: bool = False) -> Any:
        path = self.object_path(obj, collection=True) + ("?dryRun=All" if dry_run else "")
        return self.request("POST", path, dict(obj))

    def object_path(self, obj: Mapping[str, Any], *, collection: bool = False) -> str:
        """The REST path of an object, from the server's discovery (plural and scope)."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        plural, namespaced = self._resource(api_version, kind)
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        metadata = obj.get("metadata") or {}
        if namespaced:
            base += f"/namespaces/{metadata.get('namespace') or 'default'}"
        base += f"/{plural}"
        return base if collection else f"{base}/{metadata['name']}"

    def _resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        cache: dict[str, dict[str, tuple[str, bool]]] = self.__dict__.setdefault("_discovery", {})
        if api_version not in cache:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            cache[api_version] = {
                resource["kind"]: (resource["name"], resource["namespaced"])
                for resource in self.request("GET", path)["resources"] if "/" not in resource["name"]
            }
        if kind not in cache[api_version]:
            cache.pop(api_version)
            raise ControlPlaneError(f"the server serves no kind {kind} in {api_version}")
        return cache[api_version][kind]

    def ensure_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        try:
            self.request("POST", "/api/v1/namespaces", {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}})
        except ApiError as error:
            if error.status != 409:
                raise

    def wait_established(self, crd_names: Sequence[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(crd_names)
        while pending and time.monotonic() < deadline:
            crd = self.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{pending[0]}")
            if any(c["type"] == "Established" and c["status"] == "True" for c in (crd.get("status") or {}).get("conditions") or ()):
                pending.pop(0)
            else:
                time.sleep(0.2)
        if pending:
            raise ControlPlaneError(f"CRDs not Established within {timeout:.0f} s: {', '.join(pending)}")

    # identities

    def client_kubeconfig(self, name: str, common_name: str, organizations: Sequence[str] = (),
                          path: Path | None = None) -> Path:
        """A kubeconfig that authenticates with a client certificate: user CN, groups O."""
        assert self.ca is not None
        cert, key = self.ca.issue(name, common_name, organizations)
        return self._write_kubeconfig(path or self.root / "kubeconfigs" / f"{name}.kubeconfig", name,
                                      {"client-certificate": str(cert), "client-key": str(key)})

    def token_kubeconfig(self, name: str, token: str, *, server: str | None = None) -> Path:
        """A kubeconfig that authenticates with a bearer token (e.g. a service account's); `server`
        replaces the API server's URL (e.g. a proxy's in front of it)."""
        path = self.root / "kubeconfigs" / f"{name}.kubeconfig"
        written = self._write_kubeconfig(path, name, {"token": token}, server=server)
        written.chmod(0o600)
        return written

    def service_account_token(self, namespace: str, name: str, *, bound_pod: Mapping[str, Any] | None = None,
                              seconds: int = 86400) -> str:
        """A TokenRequest token of a ServiceAccount; bound to a Pod, it carries that pod's node name."""
        spec: dict[str, Any] = {"expirationSeconds": seconds}
        if bound_pod is not None:
            spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": bound_pod["metadata"]["name"],
                                      "uid": bound_pod["metadata"]["uid"]}
        answer = self.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                              {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        return str(answer["status"]["token"])

    def _write_kubeconfig(self, path: Path, user: str, credentials: Mapping[str, str], *,
                          server: str | None = None) -> Path:
        document = {
            "apiVersion": "v1", "kind": "Config", "current-context": user,
            "clusters": [{"name": "aos-test", "cluster": {"server": server or self.url,
                                                          "certificate-authority": str(self.pki / "ca.crt")}}],
            "users": [{"name": user, "user": dict(credentials)}],
            "contexts": [{"name": user, "context": {"cluster": "aos-test", "user": user}}],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    # etcd

    def etcd_call(self, method: str, body: Mapping[str, Any]) -> Any:
        """etcd's v3 JSON gateway, e.g. `etcd_call("kv/compaction", {"revision": n})`."""
        request = urllib.request.Request(f"{self.etcd_url}/v3/{method}", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision; watches from older versions get 410 Gone."""
        status = self.etcd_call("kv/range", {"key": base64.b64encode(b"/").decode(), "limit": 1})
        revision = int(status["header"]["revision"])
        self.etcd_call("kv/compaction", {"revision": revision, "physical": True})
        return revision


class ApiError(ControlPlaneError):
    """The API server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.cluster", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a control plane and serve until SIGTERM or SIGINT")
    up.add_argument("--dir", type=Path, help="keep its files here (default: a temporary dir removed at stop)")
    commands.add_parser("build", help="build (or find) the binaries and print their directory")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(binaries())
            return 0
        plane = ControlPlane(args.dir)
        with plane:
            print(f"control plane ready in {plane.startup_seconds:.1f} s: {plane.url}", flush=True)
            print(f"KUBECONFIG={plane.admin_kubeconfig}", flush=True)
            stop = {"now": False}
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.update(now=True))
            while not stop["now"]:
                time.sleep(0.5)
    except ControlPlaneError as error:
        print(f"control plane: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
