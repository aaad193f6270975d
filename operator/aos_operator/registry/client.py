"""Push service packages to an OCI registry and pull them back by tag or digest.

Push: every blob the manifest refers to (config, layers, aosService, ...) is checked with HEAD
and skipped when present, mounted from another repository of the same registry when it is
known to be there, else uploaded (POST then PUT; PATCH chunks above a size threshold). Then
the manifest bytes go up exactly as given, and the registry's digest must equal ours.

Pull: the manifest (verified against the digest when pulled by digest), then each blob
streamed through a hash into a sink that is committed only when digest and size match;
a dropped connection resumes with a Range request.

Blobs move concurrently (bounded by `max_workers`); no blob is ever held whole in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urljoin

import urllib3
from urllib3.exceptions import HTTPError

from aos_operator.bounded import parse_json
from aos_operator.digests import is_digest, sha256_digest
from aos_operator.errors import InputError, PackageError, RegistryError, shorten
from aos_operator.registry.auth import repository_scope
from aos_operator.registry.content import BlobSink, BlobSource, FileSink
from aos_operator.registry.credentials import CredentialSource
from aos_operator.registry.headers import check_location
from aos_operator.registry.layout import blob_path, read_package, write_manifest
from aos_operator.registry.limits import RateFloor, RegistryLimits
from aos_operator.registry.manifest import (
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_BYTES,
    Descriptor,
    parse_manifest,
    referenced_blobs,
)
from aos_operator.registry.reference import Reference, parse_reference
from aos_operator.registry.retry import RetryPolicy, TransientFailure
from aos_operator.registry.transport import (
    Body,
    Readable,
    Reply,
    Response,
    Transport,
    credentials_hint,
    describe_error_body,
    discard,
    read_body,
    read_error_body,
)

T = TypeVar("T")
MiB = 1024 * 1024
_READ_SIZE = MiB
MOUNT_SOURCES = 4  # repositories remembered per blob as mount candidates


@dataclass
class TransferStats:
    """What a client moved. Byte counts are blob bytes actually sent or received (a resent
    chunk counts twice); `blobs_present` counts blobs skipped because the destination (the
    registry on push, the directory on pull) already had them."""

    blob_bytes_uploaded: int = 0
    blob_bytes_downloaded: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0
    blobs_downloaded: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {item.name: getattr(self, item.name) for item in fields(self)}


@dataclass(frozen=True)
class PulledManifest:
    data: bytes
    media_type: str
    digest: str


class RegistryClient:
    """A client of the OCI distribution API; thread-safe, one per process is enough.

    `credentials` is a Credentials pair, a DockerConfig (config.json or pull secret) or any
    CredentialSource. `insecure=True` allows plain HTTP to every registry; loopback registries
    may use plain HTTP anyway. Blobs larger than `chunked_threshold` go up in `chunk_size`
    PATCH requests (some proxies cap request bodies); smaller ones in a single PUT. `limits`
    bounds the time of each request and the rate of blob bodies (`limits.py`);
    `insecure_registries` names hosts that may receive credentials over plain HTTP.
    """

    def __init__(
        self,
        *,
        credentials: CredentialSource | None = None,
        ca_file: str | Path | None = None,
        insecure: bool = False,
        retry: RetryPolicy | None = None,
        max_workers: int = 4,
        chunk_size: int = 64 * MiB,
        chunked_threshold: int = 128 * MiB,
        read_timeout: float = 60.0,
        limits: RegistryLimits | None = None,
        insecure_registries: Sequence[str] = (),
    ) -> None:
        if max_workers < 1 or chunk_size < 1 or chunked_threshold < 0:
            raise ValueError("max_workers and chunk_size must be positive, chunked_threshold not negative")
        self.retry = retry or RetryPolicy()
        self.transport = Transport(
            credentials=credentials,
            ca_file=ca_file,
            insecure=insecure,
            retry=self.retry,
            read_timeout=read_timeout,
            max_connections=max_workers + 2,
            limits=limits,
            insecure_registries=insecure_registries,
        )
        self.limits = self.transport.limits
        self.max_workers = max_workers
        self.chunk_size = chunk_size
        self.chunked_threshold = chunked_threshold
        self.stats = TransferStats()
        # Where this process last saw each blob, per registry, newest last: candidates for
        # cross-repository mounts. A few are enough (one mount succeeds or the blob is uploaded);
        # a shared layer pushed to 2000 repositories was sorted in each push.
        self._locations: dict[tuple[str, str], dict[str, None]] = {}
        self._locations_lock = threading.Lock()

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- push --------------------------------------------------------------------------

    def push(
        self,
        reference: str | Reference,
        manifest: bytes,
        media_type: str,
        blobs: Mapping[str, BlobSource],
        *,
        mount_from: Sequence[str] = (),
    ) -> str:
        """Push every referenced blob, then the manifest (bytes untouched); return its digest.

        `blobs` maps digest to source; `mount_from` names repositories of the same registry
        that may already hold some of the blobs.
        """
        ref = parse_reference(reference)
        digest = sha256_digest(manifest)
        what = f"push {ref}"
        if ref.digest and ref.digest != digest:
            raise PackageError(f"{what}: the manifest's digest is {digest}, not the {ref.digest} in the reference")
        document = parse_manifest(manifest, what)
        declared = document.get("mediaType")
        if declared and declared != media_type:
            raise PackageError(
                f"{what}: the manifest says mediaType {declared!r} but is pushed as {media_type!r}",
                hint="push it with the media type the manifest declares",
            )
        descriptors = referenced_blobs(document, what)
        sources = [(descriptor, _source_for(descriptor, blobs, what)) for descriptor in descriptors]
        self._parallel(lambda item: self._push_blob(ref, item[0], item[1], mount_from), sources)
        self._put_manifest(ref, manifest, media_type, digest)
        return digest

    def push_package(self, reference: str | Reference, directory: str | Path, *, mount_from: Sequence[str] = ()) -> str:
        """Push a package directory (`manifest.json` + `blobs/sha256/<hex>`); return the digest."""
        data, media_type, blobs = read_package(directory)
        return self.push(reference, data, media_type, blobs, mount_from=mount_from)

    def push_blob(self, repository: str | Reference, source: BlobSource, *, mount_from: Sequence[str] = ()) -> None:
        """Make one blob present in `repository` (skipped if there, mounted if possible)."""
        ref = parse_reference(repository)
        descriptor = Descriptor(media_type="", digest=source.digest, size=source.size, field="blob")
        self._push_blob(ref, descriptor, source, mount_from)

    def blob_exists(self, repository: str | Reference, digest: str, *, for_push: bool = False,
                    what: str | None = None) -> bool:
        """Whether the repository has the blob; `for_push` asks with the push token (one token per push).
        `what` names the operation in errors (a push names the reference the user gave)."""
        ref = parse_reference(repository)
        what = what or f"check {ref.repository_name}@{digest}"
        response = self.transport.request(
            "HEAD",
            ref.api_host,
            f"/v2/{ref.repository}/blobs/{digest}",
            what=what,
            scopes=[repository_scope(ref.repository, push=for_push)],
        )
        if response.status not in (200, 404):
            raise self._status_error(response, what, ref, "pull")
        discard(response)
        return response.status == 200

    def _push_blob(self, ref: Reference, descriptor: Descriptor, source: BlobSource, mount_from: Sequence[str]) -> None:
        what = f"push {ref} ({descriptor.field} {descriptor.digest})"
        candidates = self._mount_candidates(ref, descriptor.digest, mount_from)
        # A blob this process pushed to another repository is mounted at once: a mount of a blob
        # the repository has already succeeds too, so the HEAD before it would only cost a round trip.
        if not self._seen_elsewhere(ref, descriptor.digest) and self.blob_exists(ref, descriptor.digest, for_push=True, what=what):
            self.stats.add(blobs_present=1)
        else:
            session = None
            for candidate in candidates:
                mounted, session = self._mount(ref, descriptor.digest, candidate, session, what)
                if mounted:
                    self.stats.add(blobs_mounted=1)
                    break
            else:
                self._upload(ref, source, session, what)
                self.stats.add(blobs_uploaded=1)
        self._remember(ref, descriptor.digest)

    def _mount_candidates(self, ref: Reference, digest: str, mount_from: Sequence[str]) -> list[str]:
        with self._locations_lock:
            known = list(reversed(self._locations.get((ref.api_host, digest), {})))
        candidates = list(dict.fromkeys([*mount_from, *known]))
        return [repository for repository in candidates if repository != ref.repository]

    def _seen_elsewhere(self, ref: Reference, digest: str) -> bool:
        with self._locations_lock:
            return any(repository != ref.repository for repository in self._locations.get((ref.api_host, digest), ()))

    def _remember(self, ref: Reference, digest: str) -> None:
        with self._locations_lock:
            seen = self._locations.setdefault((ref.api_host, digest), {})
            seen.pop(ref.repository, None)
            seen[ref.repository] = None
            if len(seen) > MOUNT_SOURCES:
                del seen[next(iter(seen))]

    def _mount(
        self, ref: Reference, digest: str, source_repository: str, session: str | None, what: str
    ) -> tuple[bool, str | None]:
        """Try a cross-repository mount; on failure the registry opens an upload session instead.

        Returns (mounted, session): a new session replaces (and cancels) the previous one.
        """
        query = urlencode({"mount": digest, "from": source_repository})
        response = self.transport.request(
            "POST",
            ref.api_host,
            f"/v2/{ref.repository}/blobs/uploads/?{query}",
            what=what,
            scopes=[repository_scope(ref.repository, push=True), repository_scope(source_repository)],
            headers={"Content-Length": "0"},
        )
        discard(response)  # a failed mount is no error: the blob is uploaded instead
        if response.status == 202 and response.headers.get("Location"):
            if session is not None:
                self._cancel_upload(ref, session, what)
            return False, self._location(ref, response)
        return response.status == 201, session

    def _cancel_upload(self, ref: Reference, session: str, what: str) -> None:
        # Best effort: an abandoned session only costs the registry a little until it expires.
        try:
            response = self.transport.request(
                "DELETE",
                ref.api_host,
                session,
                what=what,
                scopes=[repository_scope(ref.repository, push=True)],
                retry=False,
            )
            discard(response)
        except (TransientFailure, RegistryError):
            pass

    def _upload(self, ref: Reference, source: BlobSource, session: str | None, what: str) -> None:
        """Upload a blob; any passing failure restarts it in a fresh upload session."""
        pending = [session] if session else []

        def attempt() -> None:
            location = pending.pop() if pending else self._start_upload(ref, what)
            if source.size > self.chunked_threshold:
                location = self._send_chunks(ref, source, location, what)
                self._finish_upload(ref, source, location, b"", 0, what)
            else:
                body = self._reader_factory(source, 0, source.size, what)
                self._finish_upload(ref, source, location, body, source.size, what)

        self.retry.run(attempt, what)

    def _start_upload(self, ref: Reference, what: str) -> str:
        response = self.transport.request(
            "POST",
            ref.api_host,
            f"/v2/{ref.repository}/blobs/uploads/",
            what=what,
            scopes=[repository_scope(ref.repository, push=True)],
            headers={"Content-Length": "0"},
            retry=False,
        )
        if response.status != 202 or not response.headers.get("Location"):
            raise self._status_error(response, what, ref, "push")
        discard(response)
        return self._location(ref, response)

    def _send_chunks(self, ref: Reference, source: BlobSource, location: str, what: str) -> str:
        """PATCH the blob in chunks, following the Location and Range the registry returns."""
        offset = 0
        while offset < source.size:
            length = min(self.chunk_size, source.size - offset)
            response = self.transport.request(
                "PATCH",
                ref.api_host,
                location,
                what=what,
                scopes=[repository_scope(ref.repository, push=True)],
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(length),
                    "Content-Range": f"{offset}-{offset + length - 1}",
                },
                body=self._reader_factory(source, offset, length, what),
                body_size=length,
                retry=False,
            )
            if response.status == 416:
                discard(response)
                raise TransientFailure(f"{what}: the registry lost track of the upload (HTTP 416)")
            if response.status != 202:
                raise self._status_error(response, what, ref, "push")
            discard(response)
            location = self._location(ref, response) if response.headers.get("Location") else location
            offset = _range_end(response.headers.get("Range"), offset + length, source.size, what)
        return location

    def _finish_upload(
        self, ref: Reference, source: BlobSource, location: str, body: Body, length: int, what: str
    ) -> None:
        separator = "&" if "?" in location else "?"
        response = self.transport.request(
            "PUT",
            ref.api_host,
            f"{location}{separator}{urlencode({'digest': source.digest})}",
            what=what,
            scopes=[repository_scope(ref.repository, push=True)],
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            body=body,
            body_size=length,
            retry=False,
        )
        if response.status == 400:
            detail = describe_error_body(read_error_body(response))
            if "DIGEST_INVALID" in detail or "SIZE_INVALID" in detail:
                raise PackageError(
                    f"{what}: the registry computed another digest or size for the bytes of {source}{detail}",
                    hint="the blob source does not hold the content its digest names; rebuild the package",
                )
            raise RegistryError(f"{what}: the registry refused the upload (HTTP 400){detail}")
        if response.status != 201:
            raise self._status_error(response, what, ref, "push")
        discard(response)
        _check_digest_header(response, source.digest, what)

    def _reader_factory(self, source: BlobSource, offset: int, length: int, what: str) -> Callable[[], Readable]:
        return lambda: _CountingReader(source, offset, length, self.stats, what)

    def _put_manifest(self, ref: Reference, manifest: bytes, media_type: str, digest: str) -> None:
        what = f"push {ref}"
        response = self.transport.request(
            "PUT",
            ref.api_host,
            f"/v2/{ref.repository}/manifests/{ref.manifest_reference}",
            what=what,
            scopes=[repository_scope(ref.repository, push=True)],
            headers={"Content-Type": media_type},
            body=manifest,
        )
        if response.status != 201:
            raise self._status_error(response, what, ref, "push")
        discard(response)
        _check_digest_header(response, digest, what)

    # -- pull --------------------------------------------------------------------------

    def pull_manifest(self, reference: str | Reference) -> PulledManifest:
        """The manifest bytes, media type and digest; by digest the bytes are verified."""
        ref = parse_reference(reference)
        what = f"pull {ref}"

        def attempt() -> tuple[Response, bytes]:
            response = self.transport.request(
                "GET",
                ref.api_host,
                f"/v2/{ref.repository}/manifests/{ref.manifest_reference}",
                what=what,
                scopes=[repository_scope(ref.repository)],
                headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
                retry=False,
                body_limit=MAX_MANIFEST_BYTES,
            )
            if response.status != 200:
                raise self._status_error(response, what, ref, "pull")
            return response, read_body(response, MAX_MANIFEST_BYTES, what)

        response, data = self.retry.run(attempt, what)
        digest = sha256_digest(data)
        expected = ref.digest or response.headers.get("Docker-Content-Digest")
        if expected and expected != digest:
            raise RegistryError(
                f"{what}: the manifest served hashes to {digest}, not {shorten(expected, 80)}",
                hint="the registry (or something between) served wrong content; nothing was used",
            )
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type not in MANIFEST_MEDIA_TYPES:
            media_type = parse_manifest(data, what).get("mediaType") or media_type
        return PulledManifest(data=data, media_type=media_type, digest=digest)

    def pull_blob(self, repository: str | Reference, digest: str, size: int, destination: str | Path) -> None:
        """Stream a blob to `destination` (via a temp file next to it) once digest and size match."""
        self.pull_blob_into(repository, digest, size, FileSink(destination))

    def pull_blob_into(self, repository: str | Reference, digest: str, size: int, sink: BlobSink) -> None:
        """Stream a blob into `sink`, committing it only when digest and size match; else abort it."""
        ref = parse_reference(repository)
        if not is_digest(digest):
            raise InputError(f"pull {ref.repository_name}: {digest!r} is not a sha256 digest")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InputError(f"pull {ref.repository_name}@{digest}: size {size!r} must be a non-negative integer")
        what = f"pull {ref.repository_name}@{digest}"
        download = _Download(sink, size, what)
        try:
            self.retry.run(
                lambda: self._download_attempt(ref, digest, download, what), what, progress=lambda: download.received
            )
            download.finish(digest)
        except BaseException:
            _abort(sink)
            raise
        self.stats.add(blobs_downloaded=1)
        self._remember(ref, digest)

    def _download_attempt(self, ref: Reference, digest: str, download: _Download, what: str) -> None:
        """One GET of the blob, resuming after the bytes already received."""
        headers = {"Range": f"bytes={download.received}-"} if download.received else {}
        response = self.transport.request(
            "GET",
            ref.api_host,
            f"/v2/{ref.repository}/blobs/{digest}",
            what=what,
            scopes=[repository_scope(ref.repository)],
            headers=headers,
            follow_redirects=True,
            retry=False,
            stream=True,
        )
        if isinstance(response, Reply):  # not 200 or 206: read whole under the deadline
            raise self._status_error(response, what, ref, "pull")
        if response.status == 206 and not _resumes_at(response, download.received):
            discard(response, drain=False)
            download.restart()
            raise TransientFailure(f"{what}: the registry answered a range request with another range")
        try:
            if response.status == 200:
                download.restart()
            floor = RateFloor(self.limits, what)
            start = download.received
            # read1 hands over whatever has arrived, so a broken connection loses nothing received
            while chunk := response.read1(_READ_SIZE):
                download.write(chunk)
                self.stats.add(blob_bytes_downloaded=len(chunk))
                floor.update(download.received - start)
        except HTTPError as error:
            raise TransientFailure(f"{what}: connection broke after {download.received} bytes ({error})") from None
        finally:
            discard(response, drain=False)

    def pull(self, reference: str | Reference, directory: str | Path, *,
             check: Callable[[dict[str, Any], str], None] | None = None,
             skip: Callable[[Descriptor], bool] | None = None) -> PulledManifest:
        """Pull a package into `directory`: blobs/sha256/<hex> for each blob, then manifest.json.

        Blobs already there with the right size and digest are kept, so an interrupted pull
        resumes; manifest.json is written last, so its presence means the package is whole.
        `check(manifest, where)` may refuse the manifest before any blob is fetched; blobs for
        which `skip(descriptor)` is true are not fetched (the caller holds their content already).
        """
        ref = parse_reference(reference)
        manifest = self.pull_manifest(ref)
        document = parse_manifest(manifest.data, f"pull {ref}")
        descriptors = referenced_blobs(document, f"pull {ref}")
        if check is not None:
            check(document, f"pull {ref}: manifest {manifest.digest}")
        if skip is not None:
            descriptors = [descriptor for descriptor in descriptors if not skip(descriptor)]
        directory = Path(directory)
        try:
            (directory / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"{directory}: cannot create the package directory ({error.strerror})") from None

        def fetch(descriptor: Descriptor) -> None:
            path = blob_path(directory, descriptor.digest)
            if _file_matches(path, descriptor):
                self.stats.add(blobs_present=1)
            else:
                self.pull_blob(ref, descriptor.digest, descriptor.size, path)

        self._parallel(fetch, descriptors)
        try:
            write_manifest(directory, manifest.data)
        except OSError as error:
            raise InputError(f"{directory}: cannot write manifest.json ({error.strerror})") from None
        return manifest

    # -- listing and login (aosctl ls, login) -------------------------------------------

    def list_tags(self, repository: str | Reference, *, limit: int = 10_000) -> list[str]:
        """The repository's tags (following `Link` pages), at most `limit` of them."""
        ref = parse_reference(repository)
        what = f"list tags of {ref.repository_name}"
        path: str | None = f"/v2/{ref.repository}/tags/list?n=1000"
        tags: list[str] = []
        while path and len(tags) < limit:
            response = self.transport.request(
                "GET", ref.api_host, path, what=what, scopes=[repository_scope(ref.repository)],
                headers={"Accept": "application/json"},
            )
            if response.status != 200:
                raise self._status_error(response, what, ref, "pull")
            link = response.headers.get("Link", "")
            document = parse_json_body(read_body(response, MAX_MANIFEST_BYTES, what), what)
            page = document.get("tags") if isinstance(document, dict) else None
            if page is not None and (not isinstance(page, list) or not all(isinstance(t, str) for t in page)):
                raise RegistryError(f"{what}: the registry's tag list is not a list of strings")
            tags.extend(page or [])
            path = _next_page(link)
        return sorted(set(tags[:limit]))

    def check_login(self, registry: str) -> None:
        """Ask the registry's API root with the client's credentials; raise RegistryError when
        they are refused (a registry without authentication accepts anyone)."""
        ref = parse_reference(f"{registry}/login-check")
        what = f"log in to {registry}"
        response = self.transport.request("GET", ref.api_host, "/v2/", what=what)
        if response.status != 200:
            raise self._status_error(response, what, ref, "pull")
        discard(response)

    # -- shared ------------------------------------------------------------------------

    def _parallel(self, action: Callable[[T], None], items: Sequence[T]) -> None:
        """Run `action` on each item, at most max_workers at once; the first error wins."""
        if len(items) <= 1 or self.max_workers == 1:
            for item in items:
                action(item)
            return
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(items)), thread_name_prefix="registry") as pool:
            futures = [pool.submit(action, item) for item in items]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            for future in futures:
                if future.done() and not future.cancelled() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]

    def _location(self, ref: Reference, response: Response) -> str:
        location = check_location(response.headers["Location"], f"push {ref}")
        return urljoin(self.transport.url(ref.api_host, "/v2/"), location)

    def _status_error(self, response: Response, what: str, ref: Reference, action: str) -> RegistryError:
        detail = describe_error_body(read_error_body(response))
        credentials = self.transport.credentials_for(ref.registry)
        who = f"user {credentials.username!r}" if credentials else "anonymous access"
        status = response.status
        if status == 401:
            return RegistryError(
                f"{what}: the registry did not accept {who} (HTTP 401){detail}",
                hint=credentials_hint(ref.registry, credentials),
            )
        if status == 403:
            return RegistryError(
                f"{what}: {who} may not {action} {ref.repository_name} (HTTP 403){detail}",
                hint=f"ask the registry's administrator for {action} rights, or use other credentials",
            )
        if status == 404:
            return RegistryError(
                f"{what}: not found (HTTP 404){detail}",
                hint=f"check that {ref.repository_name} exists and has that tag or digest",
            )
        return RegistryError(f"{what}: the registry answered HTTP {status}{detail}")


class _Download:
    """A blob arriving in pieces: hashed, size-checked, written to its sink."""

    def __init__(self, sink: BlobSink, size: int, what: str) -> None:
        self.sink, self.size, self.what = sink, size, what
        self.received = 0
        self.hash = hashlib.sha256()

    def restart(self) -> None:
        if self.received:
            _sink_call(self.sink.restart, self.what)
        self.received = 0
        self.hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        if self.received + len(chunk) > self.size:
            raise RegistryError(
                f"{self.what}: the registry sent more than the {self.size} bytes the manifest declares",
                hint="the registry's copy does not match the manifest; nothing was kept",
            )
        self.hash.update(chunk)
        _sink_call(lambda: self.sink.write(chunk), self.what)
        self.received += len(chunk)

    def finish(self, digest: str) -> None:
        if self.received != self.size:
            raise RegistryError(
                f"{self.what}: got {self.received} bytes, the manifest declares {self.size}",
                hint="the registry's copy does not match the manifest; nothing was kept",
            )
        actual = "sha256:" + self.hash.hexdigest()
        if actual != digest:
            raise RegistryError(
                f"{self.what}: the bytes received hash to {actual}, not to the blob's digest",
                hint="the registry's copy, or something between, is corrupt; nothing was kept",
            )
        _sink_call(self.sink.commit, self.what)


class _CountingReader:
    """Reads `length` bytes of a source from `offset`, counting them as uploaded."""

    def __init__(self, source: BlobSource, offset: int, length: int, stats: TransferStats, what: str) -> None:
        self._source, self._remaining, self._stats, self._what = source, length, stats, what
        try:
            self._stream = source.open()
            if offset:
                self._stream.seek(offset)
        except OSError as error:
            raise PackageError(f"{what}: cannot read {source} ({error})") from None

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        wanted = self._remaining if size is None or size < 0 else min(size, self._remaining)
        try:
            data = self._stream.read(wanted)
        except OSError as error:
            raise PackageError(f"{self._what}: cannot read {self._source} ({error})") from None
        if not data:
            raise PackageError(
                f"{self._what}: {self._source} ended {self._remaining} bytes early",
                hint="the blob source is shorter than its size says",
            )
        self._remaining -= len(data)
        self._stats.add(blob_bytes_uploaded=len(data))
        return data

    def close(self) -> None:
        self._stream.close()


def _source_for(descriptor: Descriptor, blobs: Mapping[str, BlobSource], what: str) -> BlobSource:
    source = blobs.get(descriptor.digest)
    if source is None:
        raise PackageError(
            f"{what}: the manifest's {descriptor.field} refers to {descriptor.digest}, but no blob source was given",
            hint="pass a source for every blob the manifest refers to",
        )
    if source.digest != descriptor.digest or source.size != descriptor.size:
        raise PackageError(
            f"{what}: {descriptor.field} declares {descriptor.digest} ({descriptor.size} bytes), "
            f"but its source says {source.digest} ({source.size} bytes)"
        )
    return source


def _range_end(header: str | None, fallback: int, size: int, what: str) -> int:
    """The next offset after a PATCH: one past the end of the registry's `Range: 0-<end>`."""
    if not header:
        return fallback
    try:
        received = int(header.split("-", 1)[1]) + 1
    except (IndexError, ValueError):
        raise TransientFailure(f"{what}: the registry sent an unreadable Range header {header!r}") from None
    if received > size:
        raise TransientFailure(f"{what}: the registry claims {received} bytes of a {size}-byte blob")
    return received


def _resumes_at(response: urllib3.BaseHTTPResponse, offset: int) -> bool:
    content_range = response.headers.get("Content-Range", "")
    return content_range.startswith(f"bytes {offset}-")


def _check_digest_header(response: Response, digest: str, what: str) -> None:
    reported = response.headers.get("Docker-Content-Digest")
    if reported and reported != digest:
        raise RegistryError(
            f"{what}: the registry reports digest {shorten(reported, 80)}, we sent {digest}",
            hint="the registry changed the content; do not trust this registry's copy",
        )


def _file_matches(path: Path, descriptor: Descriptor) -> bool:
    try:
        if path.stat().st_size != descriptor.size:
            return False
        with path.open("rb") as stream:
            return "sha256:" + hashlib.file_digest(stream, "sha256").hexdigest() == descriptor.digest
    except OSError:
        return False


def _sink_call(operation: Callable[[], None], what: str) -> None:
    try:
        operation()
    except OSError as error:
        raise RegistryError(
            f"{what}: cannot store the blob ({error})", hint="check free space and permissions where the blob goes"
        ) from None


def _abort(sink: BlobSink) -> None:
    with contextlib.suppress(OSError):  # the original error matters more than a failed clean-up
        sink.abort()


def _next_page(link: str) -> str | None:
    """The path of a `Link: </v2/...?n=..&last=..>; rel="next"` header, if any."""
    if 'rel="next"' not in link or "<" not in link:
        return None
    target = link[link.index("<") + 1 : link.index(">")] if ">" in link else ""
    return target if target.startswith("/v2/") else None


def parse_json_body(data: bytes, what: str) -> Any:
    try:
        return parse_json(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RegistryError(f"{what}: the registry answered with invalid JSON ({error})") from None
