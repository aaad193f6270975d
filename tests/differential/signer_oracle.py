#!/usr/bin/env python
"""Oracle harness around aos-signer's own config.yaml validator.

Run it with the python of one of the venvs made by setup.sh:

    venv1/bin/python   signer_oracle.py FILE...   # aos-signer 1.17.0, schema-version-1 configs
    venv116/bin/python signer_oracle.py FILE...   # aos-signer 1.16.0
    venv2/bin/python   signer_oracle.py FILE...   # aos-signer 2.1.0, schemaVersion: 2 configs
    echo '["a.yaml", "b.yaml"]' | venv1/bin/python signer_oracle.py   # paths as a JSON list on stdin

One JSON object per input file is written to stdout, one per line, in input order:

    {"path": ..., "valid": bool, "error": str | null,
     "error_type": str | null,      # e.g. "SignerConfigError<-ValidationError", "AttributeError"
     "caught_by_signer": bool | null,  # true when aos-signer itself turned the problem into SignerConfigError
     "numbers": {...}}              # only when valid

numbers (1.x): every size string present under configuration.quotas (mem, state, storage, temp, upload,
download, upload_speed, download_speed) and configuration.requestedResources (ram, storage, state),
converted by aos-signer's Configuration.size_with_units_to_bytes, as {"quotas.mem": 6000000, ...}.
If the converter raises for a value, that entry is {"error": "RuntimeError: ..."}; if it returns
None (it does for "" and other falsy values) the entry is null.

numbers (2.x): aos-signer 2.x converts nothing, so this is the validated pydantic model,
model_dump(mode="json", by_alias=True): durations come out as pydantic's ISO 8601 strings, enums as
their values, defaults filled in.  2.x lines also carry "durations_seconds": {"items.0.configuration.offlineTTL":
10.0, ...}, the total_seconds() of every timedelta in the model, which is easier to compare than pydantic's
re-serialised ISO strings (P1M becomes "P30D", P1W "P7D", PT36H "P1DT12H").

The harness never crashes on an input: every exception raised while aos-signer loads and validates a
file (including the ones aos-signer does not catch itself) makes that file "invalid".  Each file is
validated in a forked child with a time limit (--timeout, default 30 s) and an address-space limit
(--max-memory-mb, default 2048): aos-signer itself formats the whole document into its error message
(jsonschema's str(ValidationError), pydantic's input_value), so a YAML alias bomb of a few hundred bytes
costs it minutes and 6-9 GB; such files come back with "inconclusive": true and error_type
"OracleTimeout", "OracleMemoryLimit" or "OracleCrash"; callers should not treat those as a verdict.
aos-signer's rich console output is silenced, and aos_keys (which holds the PyPI version check) is
blocked from being imported and sockets are disabled, so no network call can happen.
"""

import contextlib
import importlib.abc
import importlib.metadata
import io
import json
import os
import socket
import sys

V1_SIZE_FIELDS = (
    ('quotas', ('mem', 'state', 'storage', 'temp', 'upload', 'download', 'upload_speed', 'download_speed')),
    ('requestedResources', ('ram', 'storage', 'state')),
)
MAX_ERROR_CHARS = int(os.environ.get('ORACLE_MAX_ERROR_CHARS', '4000'))


# --- isolation -------------------------------------------------------------------------------------

class _BlockAosKeys(importlib.abc.MetaPathFinder):
    """Refuse to import aos_keys: the validators do not need it and it holds the PyPI version check."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == 'aos_keys' or fullname.startswith('aos_keys.'):
            raise ImportError(f'signer_oracle blocks import of {fullname} (no network, no version check)')
        return None


def _no_network(*_args, **_kwargs):
    raise OSError('signer_oracle: network access is disabled')


def _isolate():
    sys.meta_path.insert(0, _BlockAosKeys())
    socket.socket.connect = _no_network
    socket.socket.connect_ex = _no_network
    socket.create_connection = _no_network
    socket.getaddrinfo = _no_network


@contextlib.contextmanager
def _silenced():
    """Swallow anything written to stdout/stderr (rich console, logging) while aos-signer runs."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


# --- error formatting ------------------------------------------------------------------------------

def _exc_text(exc):
    """One readable line for an exception; jsonschema errors lose their schema dump."""
    message = getattr(exc, 'message', None)  # jsonschema ValidationError: the short message
    if not isinstance(message, str):
        message = str(exc)
    path = getattr(exc, 'json_path', None)
    if isinstance(path, str) and path not in ('', '$'):
        message = f'{message} (at {path} of the validated chapter)'
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + '...'
    return f'{type(exc).__name__}: {message}'


def _describe_failure(exc):
    """(error, error_type, caught_by_signer) for an exception that came out of aos-signer."""
    caught = type(exc).__name__ == 'SignerConfigError'
    cause = exc.__cause__ if caught else None
    if cause is not None:
        error_type = f'SignerConfigError<-{type(cause).__name__}'
        error = f'SignerConfigError: {_exc_text(cause)}'
    else:
        error_type = type(exc).__name__
        error = _exc_text(exc)
    return error, error_type, caught


# --- per-version validation ------------------------------------------------------------------------

def _v1_numbers(configuration):
    numbers = {}
    for section, keys in V1_SIZE_FIELDS:
        raw = configuration.requested_resources if section == 'requestedResources' else configuration.quotas
        if not isinstance(raw, dict):
            continue
        for key in keys:
            if key not in raw:
                continue
            try:
                with _silenced():
                    numbers[f'{section}.{key}'] = configuration.size_with_units_to_bytes(raw[key])
            except Exception as exc:  # noqa: BLE001 - reporting the converter's own failure is the point
                numbers[f'{section}.{key}'] = {'error': _exc_text(exc)}
    return numbers


def _make_v1():
    from aos_signer.signer import common
    from aos_signer.service_config.service_configuration import ServiceConfiguration

    common.ALLOW_PRINT = False

    def validate(path):
        config = ServiceConfiguration(path)
        return (_v1_numbers(config.configuration) if config.configuration is not None else {}), {}

    return validate


def _timedeltas(node, prefix=''):
    """{dotted.path: total seconds} for every timedelta in a model_dump(mode='python') tree."""
    import datetime
    found = {}
    if isinstance(node, datetime.timedelta):
        found[prefix] = node.total_seconds()
    elif isinstance(node, dict):
        for key, value in node.items():
            found.update(_timedeltas(value, f'{prefix}.{key}' if prefix else str(key)))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            found.update(_timedeltas(value, f'{prefix}.{index}' if prefix else str(index)))
    return found


def _make_v2():
    from aos_signer.signer import common
    from aos_signer.upload_config_v2.batch_configuration import UpdateBundleConfiguration

    common.ALLOW_PRINT = False

    def validate(path):
        model = UpdateBundleConfiguration(path, validate_paths=False).upload_meta_config
        return model.model_dump(mode='json', by_alias=True), {
            'durations_seconds': _timedeltas(model.model_dump(mode='python', by_alias=True)),
        }

    return validate


def check_file(validate, path):
    result = {'path': path, 'valid': False, 'error': None, 'error_type': None, 'caught_by_signer': None}
    try:
        with _silenced():
            numbers, extra = validate(path)
    except KeyboardInterrupt:
        raise
    except MemoryError:
        result.update(error_type='OracleMemoryLimit', caught_by_signer=False, inconclusive=True,
                      error='OracleMemoryLimit: aos-signer ran out of the memory allowed by --max-memory-mb')
        return result
    except BaseException as exc:  # noqa: B036 - SystemExit or anything else from aos-signer is "invalid"
        result['error'], result['error_type'], result['caught_by_signer'] = _describe_failure(exc)
        return result
    result['valid'] = True
    try:
        json.dumps(numbers)
    except (TypeError, ValueError) as exc:
        numbers = {'error': f'not JSON-serialisable: {exc}'}
    result['numbers'] = numbers
    result.update(extra)
    return result


def _limit_memory(megabytes):
    if megabytes > 0:
        import resource
        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def check_file_isolated(validate, path, timeout, memory_mb):
    """check_file() in a forked child, so that a hang, a memory blow-up or a hard crash inside aos-signer
    (or inside pydantic-core / ruamel / jsonschema) is reported for that file instead of killing the batch."""
    import select
    import signal
    import time

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        status = 0
        try:
            _limit_memory(memory_mb)
            line = json.dumps(check_file(validate, path), ensure_ascii=False).encode('utf-8')
            with os.fdopen(write_fd, 'wb') as pipe:
                pipe.write(line)
        except BaseException:  # noqa: B036 - the parent reports a child that produced nothing
            status = 70
        finally:
            os._exit(status)  # never run the parent's atexit/flush machinery in the child
    os.close(write_fd)
    chunks = []
    deadline = time.monotonic() + timeout if timeout > 0 else None
    timed_out = False
    with os.fdopen(read_fd, 'rb') as pipe:
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([pipe], [], [], wait)
            if not ready:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(pipe.fileno(), 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    base = {'path': path, 'valid': False, 'caught_by_signer': False, 'inconclusive': True}
    if timed_out:
        return {**base, 'error_type': 'OracleTimeout',
                'error': f'OracleTimeout: aos-signer did not finish within {timeout:g} s (inconclusive)'}
    data = b''.join(chunks)
    if data:
        try:
            return json.loads(data.decode('utf-8'))
        except ValueError:
            pass
    if os.WIFSIGNALED(status):
        how = f'killed by signal {os.WTERMSIG(status)}'
    else:
        how = f'exited with status {os.WEXITSTATUS(status)}'
    return {**base, 'error_type': 'OracleCrash',
            'error': f'OracleCrash: validation process {how} without a verdict '
                     f'(memory limit {memory_mb} MB; inconclusive)'}


def main(argv):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('paths', nargs='*', help='config files; none = read a JSON list of paths from stdin')
    parser.add_argument('--timeout', type=float, default=float(os.environ.get('ORACLE_TIMEOUT', '30')),
                        help='seconds per file before giving up (default 30; 0 = none)')
    parser.add_argument('--max-memory-mb', type=int, default=int(os.environ.get('ORACLE_MAX_MEMORY_MB', '2048')),
                        help='address-space limit for each validation, MB (default 2048; 0 = none)')
    parser.add_argument('--no-fork', action='store_true',
                        help='validate in this process (faster, but a pathological file can hang or kill the run)')
    args = parser.parse_args(argv[1:])

    _isolate()
    version = importlib.metadata.version('aos-signer')
    validate = _make_v1() if version.startswith('1.') else _make_v2()

    paths = args.paths
    if not paths:
        paths = json.load(sys.stdin)
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            sys.stderr.write('stdin must be a JSON list of file paths\n')
            return 2
    fork = not args.no_fork and hasattr(os, 'fork')
    out = sys.stdout
    for path in paths:
        if fork:
            result = check_file_isolated(validate, path, args.timeout, args.max_memory_mb)
        else:
            result = check_file(validate, path)
        out.write(json.dumps(result, ensure_ascii=False) + '\n')
        out.flush()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
