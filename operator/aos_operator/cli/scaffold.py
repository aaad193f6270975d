"""`aosctl init [--schema 1|2] DIR`: a service skeleton that validates, builds and runs as is.

The service is a POSIX shell script on the node's own base rootfs (AosEdge services run on top
of the device's OS), so the skeleton needs no interpreter the node lacks.
"""

from __future__ import annotations

import argparse
import re
import uuid
from pathlib import Path

from aos_operator.cli.common import quiet_option
from aos_operator.cli.output import add_output_option, emit, note, result, structured
from aos_operator.errors import EXIT_OK, InputError

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

_SCRIPT = """#!/bin/sh
# {name}: replace this loop with the service's work. AOS_* variables name this instance.
echo "{name} started: service $AOS_SERVICE_ID, instance $AOS_INSTANCE_INDEX"
count=0
while true; do
    count=$((count + 1))
    echo "{name} is alive ($count)"
    sleep 5
done
"""

_CONFIG_V1 = """# AosEdge service config, schema version 1 (aos-signer 1.x). Reference: README, "config.yaml".
publisher:
  author: "{name} authors"
  company: "{name}"

build:
  os: linux
  arch: {arch}
  sign_pkcs12: aos-user-sp.p12   # aos-signer signs with it; aosctl does not need it
  symlinks: copy

publish:
  url: aoscloud.io
  service_uid: {service_id}
  tls_pkcs12: aos-user-sp.p12
  version: "0.1.0"

configuration:
  cmd: /bin/sh /usr/bin/{name}.sh
  workingDir: /
  instances:
    minInstances: 1
    priority: 0
  runParameters:
    startInterval: PT10S
    startBurst: 3
    restartInterval: PT2S
  quotas:
    cpu: 1000
    mem: 32M
    temp: 8M
    state: 64KB
    storage: 1M
"""

_CONFIG_V2 = """# AosEdge service config, schema version 2 (aos-signer 2.x). The image's files are in
# {name}/{arch}/ (the <codename>/<architecture>/ layout); sourceFolder names another folder.
schemaVersion: 2
items:
  - identity:
      id: {service_id}
      codename: {name}
      type: service
      title: "{name}"
    version: "0.1.0"
    images:
      - archInfo:
          architecture: {arch}
        osInfo:
          os: linux
    configuration:
      cmd: /bin/sh /usr/bin/{name}.sh
      workingDir: /
      instances:
        minInstances: 1
        priority: 0
      runParameters:
        startInterval: PT10S
        startBurst: 3
        restartInterval: PT2S
      quotas:
        cpuLimit: 1000
        ramLimit: 32M
        tmpLimit: 8M
        stateLimit: 64KB
        storageLimit: 1M
"""


def _architecture() -> str:
    from aos_operator.runtime.node import oci_architecture
    import platform

    return oci_architecture(platform.machine())


def cmd_init(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    name = args.name or directory.resolve().name.lower()
    if not _NAME.fullmatch(name):
        raise InputError(f"{name!r}: not a service name (lower-case letters, digits and '-', up to 63)",
                         hint="pass --name NAME")
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise InputError(f"{directory}: exists and is not an empty directory", hint="init writes into a new directory")
    arch = args.arch or _architecture()
    service_id = str(uuid.uuid4())
    if args.schema == 1:
        config, root = _CONFIG_V1, directory / "src"
    else:
        config, root = _CONFIG_V2, directory / name / arch
    values = {"name": name, "arch": arch, "service_id": service_id}
    written = []
    try:
        (directory / "meta").mkdir(parents=True, exist_ok=True)
        (directory / "meta" / "config.yaml").write_text(config.format(**values))
        written.append(directory / "meta" / "config.yaml")
        script = root / "usr" / "bin" / f"{name}.sh"
        script.parent.mkdir(parents=True)
        script.write_text(_SCRIPT.format(**values))
        script.chmod(0o755)
        written.append(script)
    except OSError as error:
        raise InputError(f"{directory}: cannot write the skeleton: {error.strerror or error}") from None
    if structured(args):
        emit(args, "InitResult", {"directory": str(directory), "configSchemaVersion": args.schema, "serviceId": service_id,
                                  "files": [str(p) for p in written]})
        args._document_written = True
        return EXIT_OK
    for path in written:
        result(str(path))
    note(args, f"aosctl: next: aosctl validate {directory} && sudo aosctl run {directory}")
    return EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    init = commands.add_parser(
        "init", help="write a new service skeleton that validates, builds and runs",
        description="Write DIR/meta/config.yaml and a shell-script service (in src/ for schema version 1, in "
        "<codename>/<arch>/ for version 2) with a fresh service ID and small quotas.")
    init.add_argument("directory", metavar="DIR", help="a new (or empty) directory")
    init.add_argument("--schema", type=int, choices=[1, 2], default=2, help="config schema version (default: %(default)s)")
    init.add_argument("--name", help="service name / codename (default: the directory's name)")
    init.add_argument("--arch", metavar="ARCH", help="image architecture (default: this machine's)")
    quiet_option(init, "print only the files written")
    add_output_option(init)
    init.set_defaults(func=cmd_init)
