"""Sizes, speeds, durations, versions and ports: examples plus properties (hypothesis)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aos_operator.service import units

SI = {"k": 1000, "K": 1000, "kb": 1000, "kB": 1000, "KB": 1000, "m": 10**6, "M": 10**6, "mb": 10**6, "MB": 10**6,
      "g": 10**9, "G": 10**9, "gb": 10**9, "GB": 10**9}
IEC = {"Ki": 2**10, "KiB": 2**10, "Mi": 2**20, "MiB": 2**20, "Gi": 2**30, "GiB": 2**30, "Ti": 2**40, "TiB": 2**40}


@pytest.mark.parametrize(
    ("text", "dialect", "expected"),
    [
        ("100M", 1, 100_000_000),
        ("32KB", 1, 32_000),
        ("32kB", 1, 32_000),
        ("1.5G", 1, 1_500_000_000),
        ("100 M", 1, 100_000_000),
        ("1048576", 1, 1_048_576),
        (".5M", 1, 500_000),
        ("4.35k", 1, 4_350),  # exact decimal arithmetic; float would give 4349
        ("512MiB", 2, 536_870_912),
        ("1GiB", 2, 1_073_741_824),
        ("10K", 2, 10_000),
        (4096, 2, 4096),
        ("2TB", 2, 2 * 10**12),
    ],
)
def test_sizes(text: str | int, dialect: int, expected: int) -> None:
    assert units.parse_size(text, dialect=dialect) == expected


@pytest.mark.parametrize("text", ["512MiB", "10X", "M", ".", "1.", "1.M", "1e3", "-5M", "5 MB ", "1,5M"])
def test_schema_version_1_sizes_reject(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        units.parse_size(text, dialect=1)


@pytest.mark.parametrize("text", ["lots", "5 Mbit", "1..5M", "0x10", True])
def test_schema_version_2_sizes_reject(text: str | bool) -> None:
    with pytest.raises(ValueError):
        units.parse_size(text, dialect=2)


@pytest.mark.parametrize(
    ("text", "dialect", "bits"),
    [
        ("32Kb", 1, 32_000),  # kilobits
        ("32KB", 1, 256_000),  # kilobytes
        ("32kB", 1, 256_000),
        ("32k", 1, 32_000),  # no unit: bits, as aos-signer 2.x documents
        ("10Kibits", 1, 10_240),
        ("10 Kibits", 1, 10_240),
        ("1M", 2, 1_000_000),
        ("1Mb", 2, 1_000_000),
        ("1MB", 2, 8_000_000),
        ("10Kibit", 2, 10_240),
        (64000, 2, 64_000),
    ],
)
def test_speeds(text: str | int, dialect: int, bits: int) -> None:
    assert units.parse_speed(text, dialect=dialect) == bits


@pytest.mark.parametrize("parse, text", [
    (units.parse_size, "9223372036854775808"), (units.parse_size, "10000000T"), (units.parse_size, 2**63),
    (units.parse_speed, "2000000TB"), (units.parse_speed, 2**63),
])
def test_quantities_beyond_int64_are_refused_as_the_device_would(parse: object, text: str | int) -> None:
    with pytest.raises(ValueError, match=r"beyond the largest limit a device takes \(2\^63 - 1\)"):
        parse(text, dialect=2)  # type: ignore[operator]
    assert units.parse_size(2**63 - 1) == 2**63 - 1


def test_kbits_round_up_so_a_limit_never_vanishes() -> None:
    assert units.bits_to_kbits(1) == 1
    assert units.bits_to_kbits(32_000) == 32
    assert units.bits_to_kbits(32_001) == 33
    assert units.bits_to_kbits(0) == 0


@given(number=st.integers(0, 10**6), suffix=st.sampled_from(sorted(SI)))
def test_si_sizes_scale_by_powers_of_1000(number: int, suffix: str) -> None:
    assert units.parse_size(f"{number}{suffix}", dialect=1) == number * SI[suffix]
    assert units.parse_size(f"{number} {suffix}", dialect=2) == number * SI[suffix]


@given(number=st.integers(0, 10**6), suffix=st.sampled_from(sorted(IEC)))
def test_iec_sizes_scale_by_powers_of_1024(number: int, suffix: str) -> None:
    assert units.parse_size(f"{number}{suffix}", dialect=2) == number * IEC[suffix]
    with pytest.raises(ValueError):
        units.parse_size(f"{number}{suffix}", dialect=1)


@given(
    whole=st.integers(0, 10**5),
    fraction=st.integers(0, 999).map(lambda n: f"{n:03d}"),
    suffix=st.sampled_from(sorted(SI)),
)
def test_decimal_sizes_are_exact_and_truncate(whole: int, fraction: str, suffix: str) -> None:
    text = f"{whole}.{fraction}{suffix}"
    expected = int(Decimal(f"{whole}.{fraction}") * SI[suffix])
    assert units.parse_size(text, dialect=1) == expected


@given(number=st.integers(0, 10**9))
def test_bare_numbers_are_bytes_in_both_dialects(number: int) -> None:
    assert units.parse_size(str(number), dialect=1) == number
    assert units.parse_size(number, dialect=2) == number


@given(number=st.integers(0, 10**6), prefix=st.sampled_from(["k", "K", "M", "G", "Ki", "Mi"]))
def test_bytes_are_eight_bits(number: int, prefix: str) -> None:
    bits = units.parse_speed(f"{number}{prefix}b", dialect=2)
    assert units.parse_speed(f"{number}{prefix}B", dialect=2) == 8 * bits


@given(number=st.integers(1, 10**6), smaller=st.integers(0, 10**6))
def test_sizes_are_monotonic(number: int, smaller: int) -> None:
    low, high = sorted((number, smaller))
    assert units.parse_size(f"{low}M", dialect=1) <= units.parse_size(f"{high}M", dialect=1)


# --- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical", "rounded"),
    [
        ("PT10S", "PT10S", False),
        ("PT1M30S", "PT1M30S", False),
        ("PT90S", "PT1M30S", False),
        ("P1DT3H", "P1DT3H", False),
        ("P1W", "P7D", False),
        ("P1M", "P1M", False),
        ("P1Y2M", "P1Y2M", False),
        ("PT0S", "PT0S", False),
        ("PT0.5S", "PT1S", True),
        ("P1.5D", "PT36H", False),
        ("PT1,5S", "PT2S", True),
    ],
)
def test_iso_durations(text: str, canonical: str, rounded: bool) -> None:
    duration, was_rounded = units.parse_iso_duration(text)
    assert duration.iso() == canonical
    assert was_rounded is rounded


@pytest.mark.parametrize(
    "text",
    ["", "P", "PT", "10s", "1m30s", "10", "-PT1S", "pt10s", "P1.5M", "PT1H2D", "P1DT", "P1W2D", " PT1S", "PT1S "],
)
def test_iso_durations_reject(text: str) -> None:
    with pytest.raises(ValueError):
        units.parse_iso_duration(text)


durations = st.builds(
    units.Duration,
    years=st.integers(0, 5),
    months=st.integers(0, 11),
    days=st.integers(0, 400),
    seconds=st.integers(0, 86399),
)


@given(durations)
def test_canonical_durations_parse_back_to_themselves(duration: units.Duration) -> None:
    text = duration.iso()
    assert units.parse_iso_duration(text) == (duration, False)
    # What AosEdge's C++ device parser accepts: integer components only, in Y M D T H M S order.
    assert all(char.isdigit() or char in "PYMDTHS" for char in text)


@given(hours=st.integers(0, 1000), minutes=st.integers(0, 1000), seconds=st.integers(0, 10**5))
def test_time_components_add_up(hours: int, minutes: int, seconds: int) -> None:
    duration, _ = units.parse_iso_duration(f"PT{hours}H{minutes}M{seconds}S")
    assert duration.approximate_seconds() == hours * 3600 + minutes * 60 + seconds


# --- versions, ports, connections, modes ---------------------------------------------------------


@pytest.mark.parametrize("text", ["1.0.0", "0.0.1", "1.2.3-rc.1", "1.0.0+build.5", "1.0.0-alpha.beta-1+sha.5114f85"])
def test_semver_accepts(text: str) -> None:
    units.parse_semver(text)


@pytest.mark.parametrize("text", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "1.0.0-01", "1.0.0+", " 1.0.0", "1"])
def test_semver_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="SemVer"):
        units.parse_semver(text)


def test_semver_ordering_puts_prereleases_first() -> None:
    order = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0"]
    keys = [units.parse_semver(text).sort_key() for text in order]
    assert keys == sorted(keys)


@pytest.mark.parametrize(
    ("value", "key"),
    [(8080, "8080/tcp"), ("8080", "8080/tcp"), ("53/udp", "53/udp"), ("8089-8090/tcp", "8089-8090/tcp")],
)
def test_exposed_ports(value: int | str, key: str) -> None:
    assert units.parse_exposed_port(value).key() == key


@pytest.mark.parametrize("value", [0, 70000, "80/sctp", "9000-8000/tcp", "1/2/3", "http", "80-/tcp", "-1", True, " 80"])
def test_exposed_ports_reject(value: int | str | bool) -> None:
    with pytest.raises(ValueError):
        units.parse_exposed_port(value)


@given(first=st.integers(1, 65534), width=st.integers(1, 100), protocol=st.sampled_from(["tcp", "udp"]))
def test_port_ranges_round_trip(first: int, width: int, protocol: str) -> None:
    last = min(first + width, 65535)
    parsed = units.parse_exposed_port(f"{first}-{last}/{protocol}")
    assert (parsed.first, parsed.last, parsed.protocol) == (first, last, protocol)
    assert units.parse_exposed_port(parsed.key()) == parsed


def test_connections_per_dialect() -> None:
    uuid = "9931560c-be75-4f60-9abf-08297d905332"
    assert units.parse_connection(f"{uuid}/8087-8088/tcp", dialect=1)
    assert units.parse_connection("hello-world/8087:8088/tcp", dialect=2)
    with pytest.raises(ValueError, match="UUID"):
        units.parse_connection("hello-world/80/tcp", dialect=1)
    with pytest.raises(ValueError, match="three parts"):
        units.parse_connection(f"{uuid}/80", dialect=1)


@pytest.mark.parametrize(("mode", "canonical"), [("r", "r"), ("wr", "rw"), ("rwm", "rwm"), ("m", "m")])
def test_device_modes(mode: str, canonical: str) -> None:
    assert units.parse_device_mode(mode) == canonical


@pytest.mark.parametrize("mode", ["", "x", "rr", "read", "RW"])
def test_device_modes_reject(mode: str) -> None:
    with pytest.raises(ValueError):
        units.parse_device_mode(mode)


@pytest.mark.parametrize(
    ("count", "text"),
    [(64_000_000, "64 MB"), (67_108_864, "64 MiB"), (1500, "1.5 kB"), (65536, "64 KiB"), (999, "999 B"), (0, "0 B")],
)
def test_human_bytes(count: int, text: str) -> None:
    assert units.human_bytes(count) == text
