"""Parsers for the value syntaxes of config.yaml: sizes, speeds, durations, versions, ports.

Every parser raises ValueError with a message that says what is allowed; the models turn it
into a field error. Arithmetic is exact (Decimal), never float.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation

from aos_operator import values

# --- sizes -------------------------------------------------------------------------------------

# aos-signer's schema for schema-version-1 sizes: digits, an optional decimal part, one
# optional space, an optional SI suffix. The multipliers are decimal (k = 1000).
V1_SIZE_PATTERN = r"^\d*(\.?\d*) ?(k|K|kb|kB|KB|m|M|mb|MB|g|G|gb|GB)?$"
V1_SPEED_PATTERN = r"^\d*(\.?\d*) ?(k|K|kb|Kibits|Kb|kB|KB|m|M|mb|MB|g|G|gb|GB)?$"
_V1_SIZE_RE = re.compile(V1_SIZE_PATTERN)
_V1_SPEED_RE = re.compile(V1_SPEED_PATTERN)

_SI = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_IEC = {"ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}

# number, optional space, prefix (SI or IEC, any case), then the unit: B/b/bit(s)/bps
_SIZE_RE = re.compile(
    r"^(?P<number>\d+(?:\.\d+)?|\.\d+) ?(?P<prefix>[kKmMgGtT]i?)?(?P<unit>B|b|bits?|bps|Bps)?$"
)

SIZE_HELP_V1 = 'a quoted size such as "100M", "64KB", "1.5G" (k, K, kB, KB, M, MB, G, GB; decimal: k = 1000)'
SIZE_HELP_V2 = 'a number of bytes or a size such as "512MiB", "100M", "1GB" (SI: k/M/G = 1000^n; IEC: Ki/Mi/Gi = 1024^n)'
SPEED_HELP = 'a speed such as "32Kb" (kilobits/s), "128KB" (kilobytes/s), "1M" (megabits/s) or "10Kibits"'


@dataclass(frozen=True)
class Quantity:
    """A parsed size or speed: its value in base units (bytes, or bits per second)."""

    value: int
    text: str


def _match_quantity(text: str) -> re.Match[str] | None:
    return _SIZE_RE.fullmatch(text.strip())


def _multiplier(prefix: str | None) -> int:
    if not prefix:
        return 1
    lowered = prefix.lower()
    return _IEC[lowered] if lowered.endswith("i") else _SI[lowered]


def _scaled(number: str, multiplier: int) -> int:
    try:
        # Truncate like the reference converter does; exact decimal, so "4.35k" is 4350.
        return _bounded(int(Decimal(number) * multiplier))
    except InvalidOperation as error:  # pragma: no cover - the regex admits only numbers
        raise ValueError(f"{number!r} is not a number") from error


def _bounded(count: int) -> int:
    if count > values.LARGEST_LIMIT:  # the device would refuse the package at install
        raise ValueError(f"{count:.3g} is beyond the largest limit a device takes (2^63 - 1)")
    return count


def parse_size(value: int | str, *, dialect: int = 2) -> int:
    """Bytes from a size; `dialect` 1 applies the schema-version-1 syntax, 2 the wider one."""
    if isinstance(value, bool):
        raise ValueError("expected a size, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative; sizes are counts of bytes")
        return _bounded(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size, got {type(value).__name__}")
    text = value.strip()
    if dialect == 1 and not _V1_SIZE_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a size; use {SIZE_HELP_V1}")
    match = _match_quantity(text)
    if match is None:
        help_text = SIZE_HELP_V1 if dialect == 1 else SIZE_HELP_V2
        raise ValueError(f"{value!r} is not a size; use {help_text}")
    unit = match["unit"] or ""
    if unit not in ("", "B", "b"):
        raise ValueError(f"{value!r} is a speed unit; sizes are in bytes, use {SIZE_HELP_V2}")
    return _scaled(match["number"], _multiplier(match["prefix"]))


def parse_speed(value: int | str, *, dialect: int = 2) -> int:
    """Bits per second from a speed.

    A lowercase `b` (`Kb`, `kb`, `Kibits`, `kbit`) means bits, an uppercase `B` (`KB`, `kB`)
    means bytes; a bare prefix (`K`, `M`) or a plain number means bits, as aos-signer's
    schema-version-2 model documents ("bits per second").
    """
    if isinstance(value, bool):
        raise ValueError("expected a speed, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative")
        return _bounded(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a speed, got {type(value).__name__}")
    if dialect == 1 and not _V1_SPEED_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a speed; use {SPEED_HELP}")
    text = value.strip()
    if dialect == 1 and text.endswith("Kibits"):
        number = text[: -len("Kibits")].strip()
        if not number:
            raise ValueError(f"{value!r} has no number; use {SPEED_HELP}")
        return _scaled(number, 1024)
    match = _match_quantity(text)
    if match is None:
        raise ValueError(f"{value!r} is not a speed; use {SPEED_HELP}")
    bits = _scaled(match["number"], _multiplier(match["prefix"]))
    unit = match["unit"] or ""
    return _bounded(bits * 8) if unit in ("B", "Bps") else bits


def bits_to_kbits(bits_per_second: int) -> int:
    """kbit/s for the service config; rounded up so a small non-zero limit never becomes 0 (= none)."""
    return math.ceil(bits_per_second / 1000)


def is_blank_size(value: object) -> bool:
    """aos-signer treats an empty size string as absent."""
    return isinstance(value, str) and value == ""


# --- durations ---------------------------------------------------------------------------------

# ISO 8601 durations: PnYnMnDTnHnMnS, or PnW alone (weeks do not combine with other units).
_NUMBER = r"\d+(?:[.,]\d+)?"
_ISO_DURATION_RE = re.compile(
    rf"^P(?:(?P<weeks>{_NUMBER})W|(?!$)(?:(?P<years>{_NUMBER})Y)?(?:(?P<months>{_NUMBER})M)?"
    rf"(?:(?P<days>{_NUMBER})D)?(?:T(?=\d)(?:(?P<hours>{_NUMBER})H)?(?:(?P<minutes>{_NUMBER})M)?"
    rf"(?:(?P<seconds>{_NUMBER})S)?)?)$"
)
DURATION_HELP = 'an ISO 8601 duration such as "PT10S", "PT1M30S", "P1DT3H" or "P7D"'


@dataclass(frozen=True)
class Duration:
    """An ISO 8601 duration kept in its calendar components (months and years have no fixed length)."""

    years: int = 0
    months: int = 0
    days: int = 0
    seconds: int = 0  # hours, minutes and seconds folded together

    def iso(self) -> str:
        """The canonical text: integer components only, which every AosEdge device parser reads."""
        date = "".join(f"{n}{unit}" for n, unit in ((self.years, "Y"), (self.months, "M"), (self.days, "D")) if n)
        hours, rest = divmod(self.seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
        if not date and not time:
            return "PT0S"
        return "P" + date + (f"T{time}" if time else "")

    def approximate_seconds(self) -> int:
        """Seconds, counting a month as 30 days and a year as 365 (only for local timers)."""
        return ((self.years * 365 + self.months * 30 + self.days) * 86400) + self.seconds


def parse_iso_duration(text: str) -> tuple[Duration, bool]:
    """Parse an ISO 8601 duration; the flag says whether a fraction of a second was rounded up."""
    if not isinstance(text, str):
        raise ValueError(f"expected {DURATION_HELP}, got {type(text).__name__}")
    match = _ISO_DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not {DURATION_HELP}")
    parts = {key: Decimal(value.replace(",", ".")) if value else Decimal(0) for key, value in match.groupdict().items()}
    years, months = parts["years"], parts["months"]
    if years != int(years) or months != int(months):
        raise ValueError(f"{text!r}: fractional years or months have no fixed length; use days instead")
    total_days = parts["weeks"] * 7 + parts["days"]
    seconds = total_days * 86400 + parts["hours"] * 3600 + parts["minutes"] * 60 + parts["seconds"]
    whole_days = int(total_days) if total_days == int(total_days) else 0
    seconds -= whole_days * 86400
    rounded = seconds != int(seconds)
    return Duration(int(years), int(months), whole_days, math.ceil(seconds)), rounded


def duration_from_timedelta(value: timedelta) -> tuple[Duration, bool]:
    total = Decimal(value.days) * 86400 + Decimal(value.seconds) + Decimal(value.microseconds) / 1_000_000
    if total < 0:
        raise ValueError("durations cannot be negative")
    days, seconds = divmod(total, 86400)
    return Duration(days=int(days), seconds=math.ceil(seconds)), seconds != int(seconds)


# --- versions ----------------------------------------------------------------------------------

# SemVer 2.0.0 (semver.org), the grammar aos-signer's `semver` package checks.
_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
SEMVER_HELP = 'a SemVer 2.0.0 version such as "1.0.0", "2.1.3-rc.1" or "1.0.0+build.5"'


@dataclass(frozen=True, order=False)
class SemVer:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...]
    build: str

    def sort_key(self) -> tuple:
        # A pre-release sorts before its release; numeric identifiers before alphanumeric ones.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)


def parse_semver(text: str) -> SemVer:
    if not isinstance(text, str):
        raise ValueError(f"expected {SEMVER_HELP}, got {type(text).__name__}")
    match = _SEMVER_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not {SEMVER_HELP}")
    major, minor, patch, pre, build = match.groups()
    return SemVer(int(major), int(minor), int(patch), tuple(pre.split(".")) if pre else (), build or "")


# --- ports and connections ---------------------------------------------------------------------

PORT_HELP = 'a port or port range with an optional protocol: 8080, "8080", "53/udp", "8089-8090/tcp"'
PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class PortRange:
    first: int
    last: int
    protocol: str

    def key(self) -> str:
        """The form image configs use in ExposedPorts: `port/proto` or `first-last/proto`."""
        ports = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{ports}/{self.protocol}"


def _port_number(text: str, whole: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{text!r} is not a port number" + (f" in {whole!r}" if text != whole else ""))
    number = int(text)
    if not 1 <= number <= 65535:
        raise ValueError(f"{whole!r}: port {number} is outside 1-65535")
    return number


def parse_port_range(text: str, whole: str, separators: str = "-") -> tuple[int, int]:
    for separator in separators:
        if separator in text:
            first_text, _, last_text = text.partition(separator)
            first, last = _port_number(first_text, whole), _port_number(last_text, whole)
            if first >= last:
                raise ValueError(f"{whole!r}: a range must go from a lower to a higher port")
            return first, last
    port = _port_number(text, whole)
    return port, port


def parse_protocol(text: str, whole: str) -> str:
    if text not in PROTOCOLS:
        raise ValueError(f"{whole!r}: unknown protocol {text!r}; use tcp or udp")
    return text


def parse_exposed_port(value: int | str) -> PortRange:
    if isinstance(value, bool):
        raise ValueError(f"expected {PORT_HELP}, got a boolean")
    if isinstance(value, int):
        port = _port_number(str(value), str(value))
        return PortRange(port, port, "tcp")
    if not isinstance(value, str):
        raise ValueError(f"expected {PORT_HELP}, got {type(value).__name__}")
    ports, slash, protocol = value.partition("/")
    if "/" in protocol:
        raise ValueError(f"{value!r} has too many '/'; use {PORT_HELP}")
    first, last = parse_port_range(ports, value)
    return PortRange(first, last, parse_protocol(protocol, value) if slash else "tcp")


CONNECTION_HELP_V1 = '"<service UUID>/<port or first-last>/<tcp|udp>", e.g. "9931560c-be75-4f60-9abf-08297d905332/8087-8088/tcp"'
CONNECTION_HELP_V2 = '"<service name>/<port or first:last>/<tcp|udp>", e.g. "hello-world/8087:8088/tcp"'


def parse_connection(text: str, *, dialect: int) -> str:
    """Validate an allowedConnections entry and return it in the service config's key form."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string such as {CONNECTION_HELP_V1 if dialect == 1 else CONNECTION_HELP_V2}")
    parts = text.split("/")
    help_text = CONNECTION_HELP_V1 if dialect == 1 else CONNECTION_HELP_V2
    if len(parts) != 3:
        raise ValueError(f"{text!r} must have three parts separated by '/': {help_text}")
    target, ports, protocol = parts
    if dialect == 1:
        try:
            uuid.UUID(target)
        except ValueError:
            raise ValueError(f"{text!r}: {target!r} is not a service UUID; use {help_text}") from None
    elif not target:
        raise ValueError(f"{text!r}: the service name is empty; use {help_text}")
    parse_port_range(ports, text, "-" if dialect == 1 else ":-")
    parse_protocol(protocol, text)
    return text


# --- device access modes ----------------------------------------------------------------------

DEVICE_MODE_HELP = 'cgroup access letters: any of r (read), w (write), m (mknod), e.g. "rw" or "rwm"'


def parse_device_mode(text: str) -> str:
    if not isinstance(text, str) or not text or set(text) - set("rwm") or len(set(text)) != len(text):
        raise ValueError(f"{text!r} is not a device mode; use {DEVICE_MODE_HELP}")
    return "".join(letter for letter in "rwm" if letter in text)


# --- human-readable output --------------------------------------------------------------------


def human_bytes(count: int) -> str:
    """`67108864` -> `64 MiB`, `64000000` -> `64 MB`: the exact form with the larger unit."""
    best = (0, f"{count} B")
    for base, suffixes in ((1024, ("KiB", "MiB", "GiB", "TiB")), (1000, ("kB", "MB", "GB", "TB"))):
        for power, suffix in enumerate(suffixes, start=1):
            if count >= base**power and count % base**power == 0 and power > best[0]:
                best = (power, f"{count // base**power} {suffix}")
    if best[0]:
        return best[1]
    for power, suffix in ((4, "TB"), (3, "GB"), (2, "MB"), (1, "kB")):
        if count >= 1000**power:
            return f"{(Decimal(count) / 1000**power).quantize(Decimal('0.001')).normalize():f} {suffix}"
    return f"{count} B"
