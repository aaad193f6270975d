"""Benchmark: building a service package of a ~200 MB tree, against tar|gzip, tar|pigz and umoci.

Usage: python benchmarks/build.py [--size-mb 200] [--level N (default: the build default, 3)] [--workdir DIR]

Generates a deterministic tree (many small files plus a few large ones; text-like,
machine-code-like and incompressible content), then times, once each:
  tar -c | gzip -LEVEL      the single-threaded baseline
  tar -c | pigz -LEVEL      multithreaded deflate
  umoci init/new/insert     a real OCI image builder (Go, parallel gzip)
  aosctl build, cold        build_package to a package archive, empty cache
  aosctl build, rebuild     the same tree again, warm cache
and prints the times, the ratios against each baseline and the compressed sizes.
All runs read the tree from the page cache. Numbers from one run on a shared machine are
indicative; run it twice before trusting a figure.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aos_operator.image import DEFAULT_LEVEL, build_package, cache

IMAGE_CONFIG = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/usr/bin/app"], "WorkingDir": "/"}}
SERVICE_CONFIG = {"runners": ["runc"], "quotas": {"ramLimit": 209715200}}
_SYLLABLES = "ab ce di fo gu ha je ki lo mu na pe qi ro su ta ve wi xo yu ze an er in on un st tr pl ck".split()


def _text_corpus(rng: random.Random, size: int) -> bytes:
    vocabulary = ["".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))) for _ in range(4000)]
    vocabulary += "def return self import for in if else None True { } ( ) = == + 0 1 # : , .".split()
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]  # Zipf-like word frequencies
    words = rng.choices(vocabulary, weights=weights, k=size // 5)
    separators = rng.choices([" ", "\n", "    "], weights=[85, 10, 5], k=len(words))
    return "".join(word + separator for word, separator in zip(words, separators, strict=True)).encode()[:size]


def _binary_corpus(rng: random.Random, size: int) -> bytes:
    # Like machine code and data sections: a vocabulary of instruction-like byte strings with
    # Zipf frequencies, zero padding runs and tables of similar records.
    tokens = [rng.randbytes(rng.randint(1, 7)) for _ in range(3000)]
    weights = [1.0 / (rank + 1) for rank in range(len(tokens))]
    parts: list[bytes] = []
    total = 0
    while total < size:
        roll = rng.random()
        if roll < 0.05:
            chunk = bytes(rng.randint(16, 256))
        elif roll < 0.15:
            record = bytearray(rng.randbytes(rng.randint(8, 24)))
            rows = []
            for _ in range(rng.randint(4, 40)):
                record[rng.randrange(len(record))] = rng.randrange(256)
                rows.append(bytes(record))
            chunk = b"".join(rows)
        else:
            chunk = b"".join(rng.choices(tokens, weights=weights, k=rng.randint(32, 1024)))
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)[:size]


def _content(rng: random.Random, corpus: bytes | None, size: int) -> bytes:
    if corpus is None:
        return rng.randbytes(size)
    pieces = []
    while size > 0:
        length = min(size, rng.randint(4096, 65536))
        start = rng.randrange(0, len(corpus) - length)
        pieces.append(corpus[start : start + length])
        size -= length
    return b"".join(pieces)


def generate_tree(root: Path, size_mb: int, seed: int = 2024) -> tuple[int, int]:
    """Write the benchmark tree; return (files, bytes)."""
    rng = random.Random(seed)
    text, binary = _text_corpus(rng, 4 << 20), _binary_corpus(rng, 4 << 20)
    kinds = [(text, 0.55), (binary, 0.4), (None, 0.05)]
    budget = size_mb << 20
    large = [  # a few large files: about 60 % of the bytes
        ("usr/lib/libservice.so", binary, 0.25),
        ("usr/share/service/data.csv", text, 0.17),
        ("usr/share/service/assets.pak", None, 0.08),
        ("usr/bin/service", binary, 0.06),
    ]
    files = written = 0
    for path, corpus, share in large:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        size = int(budget * share)
        target.write_bytes(_content(rng, corpus, size))
        files, written = files + 1, written + size
    index = 0
    while written < budget:  # many small files, log-uniform sizes from 200 B to 64 KiB
        corpus = rng.choices([kind for kind, _ in kinds], weights=[w for _, w in kinds])[0]
        size = min(int(200 * (65536 / 200) ** rng.random()), budget - written)
        target = root / "usr/lib/python3/site-packages" / f"pkg{index % 97}" / f"mod{index % 13}" / f"file{index}.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_content(rng, corpus, max(size, 1)))
        files, written, index = files + 1, written + max(size, 1), index + 1
    return files, written


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children: steadier than wall time on a busy machine."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(label: str, action) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    action()
    elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
    print(f"  {label:<28} {elapsed:7.2f} s wall {cpu:7.2f} s CPU", flush=True)
    return elapsed, cpu


def _shell(command: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--level", type=int, default=DEFAULT_LEVEL, help="deflate level for us, gzip and pigz")
    parser.add_argument("--workdir", type=Path, default=None, help="where to generate (default: a temp dir)")
    args = parser.parse_args()
    for tool in ("tar", "gzip", "pigz", "umoci"):
        if shutil.which(tool) is None:
            print(f"benchmarks/build.py: {tool} is not installed (make system-deps)", file=sys.stderr)
            return 1

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="aos-bench-") as scratch:
        work = Path(scratch)
        tree = work / "tree"
        generated_at = time.time()
        files, size = generate_tree(tree, args.size_mb)
        print(f"tree: {files} files, {size / 1e6:.0f} MB (generated in {time.time() - generated_at:.1f} s)")
        level = args.level
        times: dict[str, tuple[float, float]] = {}
        sizes: dict[str, int] = {}

        times["gzip"] = _timed(f"tar -c | gzip -{level}", lambda: _shell(f"tar -cf - -C {tree} . | gzip -{level} > {work}/gzip.tgz"))
        sizes["gzip"] = (work / "gzip.tgz").stat().st_size
        times["pigz"] = _timed(f"tar -c | pigz -{level}", lambda: _shell(f"tar -cf - -C {tree} . | pigz -{level} > {work}/pigz.tgz"))
        sizes["pigz"] = (work / "pigz.tgz").stat().st_size
        layout = work / "umoci"
        times["umoci"] = _timed(
            "umoci init/new/insert",
            lambda: _shell(f"umoci init --layout {layout} && umoci new --image {layout}:b && umoci insert --image {layout}:b {tree} /"),
        )
        sizes["umoci"] = max(p.stat().st_size for p in (layout / "blobs/sha256").iterdir())

        # Files written less than the racy window ago are never trusted by the cache.
        time.sleep(max(0.0, cache.RACY_WINDOW_NS / 1e9 + 0.1 - (time.time() - generated_at)))
        cache_dir = work / "cache"

        def build(name: str) -> None:
            result = build_package(
                tree, IMAGE_CONFIG, SERVICE_CONFIG, archive=work / f"{name}.tar", cache_dir=cache_dir, compression_level=level
            )
            sizes[name] = result.layer.size

        times["cold"] = _timed(f"ours, cold (level {level})", lambda: build("cold"))
        times["rebuild"] = _timed("ours, rebuild (warm cache)", lambda: build("rebuild"))
        assert (work / "cold.tar").read_bytes() == (work / "rebuild.tar").read_bytes()

        print()
        print("speed-up of our cold build (baseline time / ours), wall and CPU:")
        for name, label in (("gzip", f"tar|gzip -{level}"), ("pigz", f"tar|pigz -{level}"), ("umoci", "umoci")):
            wall, cpu = (times[name][i] / times["cold"][i] for i in (0, 1))
            print(f"  vs {label:<14} {wall:5.2f}x wall {cpu:5.2f}x CPU")
        print(f"rebuild vs cold build: {times['cold'][0] / times['rebuild'][0]:.1f}x wall")
        print()
        print(f"compressed layer {sizes['cold'] / 1e6:.1f} MB ({sizes['cold'] / size:.3f} of {size / 1e6:.0f} MB); size ratio ours/baseline:")
        for baseline in ("gzip", "pigz", "umoci"):
            print(f"  vs {baseline:<6} {sizes['cold'] / sizes[baseline]:.3f}  ({sizes[baseline] / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
