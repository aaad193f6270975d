"""`aosctl build`, `push` and `pull`: a service directory becomes a package, a package goes to
or comes from a registry."""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from aos_operator.cli import progress, trust
from aos_operator.cli.common import build_options, default_cache_dir, quiet_option, registry, registry_options
from aos_operator.cli.output import add_output_option, camel_keys, emit, note, result, structured, warn
from aos_operator.errors import EXIT_OK, BuildError, InputError
from aos_operator.image import BlobStore, BuildResult, Package, open_package
from aos_operator.image.oci import ANNOTATION_LAYER_UID, ANNOTATION_LAYER_VERSION
from aos_operator.image.aos_layer import AosLayer, build_aos_layer, write_layer_package
from aos_operator.packaging import build_service, load_local_layer, order_layers, pull_package, push_package, source_folder
from aos_operator.registry.reference import Reference
from aos_operator.service import ConfigResult, ServiceDescription, load_service
from aos_operator.service.description import Image
from aos_operator.service.layers import load_layer_dir
from aos_operator.service.units import human_bytes


def is_service_dir(path: Path) -> bool:
    """A directory that is not a package directory or OCI layout is a service to build."""
    return path.is_dir() and not (path / "manifest.json").exists() and not (path / "oci-layout").exists()


def load_for_build(path: Path, item: str | None) -> tuple[ServiceDescription, ConfigResult]:
    service, loaded = load_service(path, item=item)
    for issue in loaded.warnings:
        print(issue.render(), file=sys.stderr)  # FILE:LINE: field: warning: ...
    return service, loaded


def choose_image(service: ServiceDescription, architecture: str | None) -> Image:
    try:
        return service.image_for(architecture)
    except LookupError as error:
        raise InputError(str(error), hint="choose one with --arch") from None


def build(args: argparse.Namespace, path: Path, *, archive: Path | None, oci_layout: Path | None,
          loaded: tuple[ServiceDescription, ConfigResult] | None = None) -> BuildResult:
    service, config = loaded or load_for_build(path, args.item)
    image = choose_image(service, args.arch)
    if not image.command:
        # version 2 ignores unknown keys: a misspelt `cmd` would build a package that runs nothing
        raise BuildError(f"{config.file}: the {image.platform.label()} image has no command (cmd): "
                         "the package would have nothing to run",
                         hint="set cmd; a warning above names a key that may be a misspelt cmd")
    source = source_folder(image, config.base_dir or path)
    cache_dir = None if args.no_cache else Path(args.cache_dir or default_cache_dir())
    with ExitStack() as cleanup:
        output = archive or oci_layout
        scratch_parent = output.parent if output is not None and output.parent.is_dir() else None
        layers = local_layers(args, service, cleanup, scratch_parent, cache_dir)
        line = progress.BuildProgress(progress.enabled(args))
        try:
            built = build_service(
                service,
                source,
                architecture=image.platform.architecture,
                archive=archive,
                oci_layout=oci_layout,
                tag=getattr(args, "tag", None),
                cache_dir=cache_dir,
                progress=line,
                layers=layers,
            )
        finally:
            line.close()
    for message in built.warnings:
        warn(message)
    if service.layers and not layers:
        warn(f"the config lists {len(service.layers)} Aos layer(s) ({', '.join(r.uid for r in service.layers)}) "
             "and the package carries none; give them with --layer DIR|ARCHIVE")
    return built


def local_layers(args: argparse.Namespace, service: ServiceDescription, cleanup: ExitStack, scratch_parent: Path | None,
                 cache_dir: Path | None) -> list[AosLayer]:
    """The --layer inputs, built or read (blobs in the cache, else in a scratch store that
    `cleanup` removes), checked against the service's layers and put in its order."""
    paths = getattr(args, "layer", None) or []
    if not paths:
        return []
    scratch = Path(cleanup.enter_context(tempfile.TemporaryDirectory(dir=scratch_parent, prefix=".aos-layers-")))
    store = BlobStore(scratch)
    given = [(path, load_local_layer(Path(path), store, cache_dir=cache_dir)) for path in paths]
    return order_layers(service, given)


def refuse_layers(args: argparse.Namespace, what: str) -> None:
    """--layer is for building a service directory; a built package already has its layers."""
    if getattr(args, "layer", None):
        raise InputError(f"--layer: {what} is a built package, not a service directory; its layers are in it",
                         hint="give the service directory to build it with the layers")


def open_input(args: argparse.Namespace, path: Path, scratch: Path) -> Package:
    """The package of DIR (built into `scratch`), ARCHIVE, package directory or LAYOUT."""
    if not path.exists():
        raise InputError(f"{path}: no such file or directory",
                         hint="give a service directory, a package archive or directory, or an OCI layout")
    if is_service_dir(path):
        built = build(args, path, archive=None, oci_layout=scratch / "layout")
        return open_package(built.oci_layout)  # type: ignore[arg-type]
    refuse_layers(args, str(path))
    return open_package(path)


def cmd_build(args: argparse.Namespace) -> int:
    path = Path(args.path)
    archive = Path(args.output) if args.output else None
    oci_layout = Path(args.oci_layout) if args.oci_layout else None
    loaded = load_for_build(path, args.item)
    if archive is None and oci_layout is None:
        service = loaded[0]
        archive = Path(f"{(service.name or path.resolve().name)}-{service.version}.tar")
    built = build(args, path, archive=archive, oci_layout=oci_layout, loaded=loaded)
    if structured(args):
        emit(args, "BuildResult", {
            "manifestDigest": built.manifest_digest,
            "archive": str(built.archive) if built.archive else None,
            "ociLayout": str(built.oci_layout) if built.oci_layout else None,
            "layer": {"digest": built.layer.digest, "size": built.layer.size, "fromCache": built.layer_from_cache},
            "aosLayers": [{"uid": d.annotation(ANNOTATION_LAYER_UID), "version": d.annotation(ANNOTATION_LAYER_VERSION),
                           "digest": d.digest, "size": d.size} for d in built.aos_layers],
            "warnings": list(built.warnings),
        })
        return EXIT_OK
    for output in (built.archive, built.oci_layout):
        if output is not None:
            note(args, f"wrote {output}")
    cached = " (layer from cache)" if built.layer_from_cache else ""
    note(args, f"layer {built.layer.digest} {human_bytes(built.layer.size)}{cached}")
    for descriptor in built.aos_layers:
        note(args, f"aos layer {descriptor.annotation(ANNOTATION_LAYER_UID)} "
                   f"{descriptor.annotation(ANNOTATION_LAYER_VERSION)} {descriptor.digest} {human_bytes(descriptor.size)}")
    result(built.manifest_digest)
    return EXIT_OK


def cmd_build_layer(args: argparse.Namespace) -> int:
    path = Path(args.path)
    meta = load_layer_dir(path)
    output = Path(args.output) if args.output else Path(f"{meta.uid}-{meta.version.replace('+', '_')}.layer.tar")
    if output.is_dir() or not (output.parent if str(output.parent) else Path(".")).is_dir():
        raise InputError(f"{output}: the layer package is a file in an existing directory", hint="give -o FILE.tar")
    cache_dir = None if args.no_cache else Path(args.cache_dir or default_cache_dir())
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".aos-layer-") as scratch:
        layer = build_aos_layer(meta.source, meta.uid, meta.version, store=BlobStore(Path(scratch)),
                                cache_dir=cache_dir)
        write_layer_package(output, layer)
    if structured(args):
        emit(args, "LayerBuildResult", {"uid": layer.uid, "version": layer.version, "archive": str(output),
                                        "digest": layer.descriptor.digest, "size": layer.descriptor.size,
                                        "diffId": layer.diff_id})
        return EXIT_OK
    note(args, f"wrote {output}")
    note(args, f"layer {layer.uid} {layer.version}: {human_bytes(layer.descriptor.size)}")
    result(layer.descriptor.digest)
    return EXIT_OK


def check_reference(text: str) -> Reference:
    """Refuse a malformed reference before building or connecting (InputError names it)."""
    return Reference.parse(text)


def cmd_push(args: argparse.Namespace) -> int:
    check_reference(args.reference)
    with tempfile.TemporaryDirectory(prefix="aosctl-push-") as scratch:
        package = open_input(args, Path(args.path), Path(scratch))
        total = sum(d.size for d in package.manifest.descriptors)
        key = trust.signing_key(args)
        with registry(args) as client:
            with progress.TransferProgress(progress.enabled(args), "push", lambda: client.stats.blob_bytes_uploaded,
                                           total):
                digest = push_package(client, package, args.reference)
            if key is not None:
                trust.sign_pushed(args, client, args.reference, digest, len(package.manifest_bytes), key)
            stats = client.stats.snapshot()
    pushed = f"{args.reference.split('@')[0]}@{digest}"
    if structured(args):
        emit(args, "PushResult", {"reference": pushed, "digest": digest, "stats": camel_keys(stats)})
        return EXIT_OK
    note(args, f"pushed {stats['blobs_uploaded']} blobs ({human_bytes(stats['blob_bytes_uploaded'])}), "
               f"{stats['blobs_present'] + stats['blobs_mounted']} already there")
    result(pushed)
    return EXIT_OK


def check_pull_destination(output: Path, oci_layout: bool) -> None:
    """A pull writes a new directory, or resumes an interrupted one (only blobs/ in it): it never
    merges into a directory that holds something else."""
    if output.suffix == ".tar" and not oci_layout:
        if output.is_dir():
            raise InputError(f"{output}: is a directory, not an archive to write")
        return
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a directory", hint="choose a new directory, or FILE.tar")
    if output.is_dir():
        entries = sorted(entry.name for entry in output.iterdir())
        if entries and entries != ["blobs"]:
            raise InputError(
                f"{output}: the directory is not empty ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''})",
                hint="pull into a new or empty directory (a directory with only blobs/, left by an interrupted "
                "pull, resumes)",
            )


def cmd_pull(args: argparse.Namespace) -> int:
    check_reference(args.reference)
    output = Path(args.output)
    check_pull_destination(output, args.oci_layout)
    with registry(args) as client:
        with progress.TransferProgress(progress.enabled(args), "pull", lambda: client.stats.blob_bytes_downloaded):
            digest, written = pull_package(client, args.reference, output, oci_layout=args.oci_layout)
    if structured(args):
        emit(args, "PullResult", {"digest": digest, "output": str(written),
                                  "format": "oci-layout" if args.oci_layout else
                                  ("archive" if written.suffix == ".tar" else "directory")})
        return EXIT_OK
    note(args, f"wrote {written}")
    result(digest)
    return EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    build_command = commands.add_parser(
        "build",
        help="build a service's OCI package, reproducibly",
        description="Build the AosEdge service package (manifest.json + blobs) of a service directory "
        "and print its manifest digest. The same inputs give the same bytes (SOURCE_DATE_EPOCH sets the time). "
        "Without -o or --oci-layout the archive is NAME-VERSION.tar in the current directory.",
    )
    build_command.add_argument("path", metavar="DIR", help="service directory (meta/config.yaml + src/) or config.yaml")
    build_command.add_argument("-o", "--output", metavar="FILE.tar", help="the package archive, as devices receive it")
    build_command.add_argument("--oci-layout", metavar="DIR", help="also (or instead) write an OCI image layout")
    build_command.add_argument("--tag", help="tag recorded in the OCI layout's index")
    build_options(build_command)
    quiet_option(build_command, "print only the digest")
    add_output_option(build_command, output_is_a_path=True)
    build_command.set_defaults(func=cmd_build)

    layer_command = commands.add_parser(
        "build-layer",
        help="build an Aos layer package from a layer directory",
        description="Build the Aos layer package (layer.json + the gzip tar blob) of a directory that holds "
        "layer.yaml (uid, version) and src/ (the layer's files, relative to /; OCI whiteouts allowed), and print "
        "the layer's digest. The result is what `--layer ARCHIVE` of build, push and run takes. Without -o it is "
        "UID-VERSION.layer.tar in the current directory.",
    )
    layer_command.add_argument("path", metavar="DIR", help="layer directory (layer.yaml + src/)")
    layer_command.add_argument("-o", "--output", metavar="FILE.tar", help="the layer package")
    layer_command.add_argument("--cache-dir", metavar="DIR", help=f"build cache (default {default_cache_dir()})")
    layer_command.add_argument("--no-cache", action="store_true", help="build without the cache")
    quiet_option(layer_command, "print only the digest")
    add_output_option(layer_command, output_is_a_path=True)
    layer_command.set_defaults(func=cmd_build_layer)

    push = commands.add_parser(
        "push", help="push a package (building it from a service directory) to an OCI registry",
        description="Push a service directory (built first), a package archive, a package directory or an OCI "
        "layout to REF and print REF@sha256:... Blobs the registry already has are skipped; layers over 128 MiB "
        "go up in 64 MiB chunks. Without --auth, docker's config.json is used.",
    )
    push.add_argument("path", metavar="DIR|ARCHIVE|LAYOUT",
                      help="service directory, package archive or package directory, OCI layout")
    push.add_argument("reference", metavar="REF", help="registry/repository:tag, e.g. localhost:5000/aos/hello:1.0.0")
    trust.sign_key_option(push)
    build_options(push)
    registry_options(push)
    quiet_option(push, "print only REF@DIGEST")
    add_output_option(push)
    push.set_defaults(func=cmd_push)

    pull = commands.add_parser(
        "pull", help="pull a package from an OCI registry, verified",
        description="Pull the package REF names into a package directory, an archive (FILE.tar) or, with "
        "--oci-layout, an OCI layout, checking every digest; print the manifest digest. A directory must be "
        "new or empty (one with only blobs/, from an interrupted pull, resumes).",
    )
    pull.add_argument("reference", metavar="REF", help="registry/repository:tag or registry/repository@sha256:...")
    pull.add_argument("-o", "--output", metavar="DIR|FILE.tar", required=True, help="package directory, or archive")
    pull.add_argument("--oci-layout", action="store_true", help="write an OCI image layout at --output instead")
    registry_options(pull)
    quiet_option(pull, "print only the digest")
    add_output_option(pull, output_is_a_path=True)
    pull.set_defaults(func=cmd_pull)
