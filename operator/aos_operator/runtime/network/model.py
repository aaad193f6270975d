"""The pure half of the instance network: names, the CNI chain, /etc/hosts and /etc/resolv.conf,
and the nftables rules of the firewall and the traffic quotas, all computed from records.

No I/O here; `manager.py` runs what this computes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aos_operator.errors import PackageError, RuntimeFailure

# AosEdge's Go SM does not count these (traffic.go): loopback and the private ranges.
AOSEDGE_UNCOUNTED = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
DEFAULT_POOL = "10.231.0.0/16"
DEFAULT_PREFIX = 24
DEFAULT_PROVIDER = "default"
FALLBACK_DNS = "8.8.8.8"  # AosEdge's fallback when no name server is known
BURST_BITS = 12800  # AosEdge's bandwidth burst, in bits as the CNI bandwidth plugin reads it
_PROVIDER_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class NetworkConfig:
    """How a runtime networks its instances."""

    enabled: bool = True
    plugin_dirs: tuple[str, ...] = ("/usr/lib/cni", "/opt/cni/bin")
    pool: str = DEFAULT_POOL  # networks get subnets of `prefix` from here
    prefix: int = DEFAULT_PREFIX
    uncounted: tuple[str, ...] = AOSEDGE_UNCOUNTED  # not counted by uploadLimit/downloadLimit
    upstream_dns: tuple[str, ...] = ()  # the networks' DNS servers forward here; default: the node's
    netns_dir: str = "/run/netns"
    lock_file: str = "/run/lock/aos-operator-network.lock"  # shared by every runtime on the node
    dns_dir: str = "/run/aos-operator/network-dns"  # dnsmasq's files: readable after it drops root
    traffic_period: str = "day"  # day, hour or minute: when the traffic totals start again

    def __post_init__(self) -> None:
        try:
            pool = ipaddress.ip_network(self.pool)
            for cidr in self.uncounted:
                ipaddress.ip_network(cidr)
        except ValueError as error:
            raise ValueError(f"network config: {error}") from None
        if pool.version != 4 or not pool.prefixlen <= self.prefix <= 29:
            raise ValueError(f"network config: pool {self.pool} must be IPv4 and the network prefix "
                             f"between /{pool.prefixlen} and /29, got /{self.prefix}")
        if self.traffic_period not in ("day", "hour", "minute"):
            raise ValueError(f"network config: traffic_period must be day, hour or minute, got {self.traffic_period}")


@dataclass(frozen=True)
class PortRule:
    first: int
    last: int
    protocol: str = "tcp"

    def nft(self) -> str:
        ports = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.protocol} dport {ports}"

    def covers(self, other: PortRule) -> bool:
        return self.protocol == other.protocol and self.first <= other.first and other.last <= self.last


def _port(text: str, where: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise PackageError(f"{where}: {text!r} is not a port number (1-65535)")
    return int(text)


def parse_ports(text: str, protocol: str, where: str) -> PortRule:
    """`8080`, `8080-8090` or `8080:8090`, with a protocol."""
    protocol = protocol or "tcp"
    if protocol not in _PROTOCOLS:
        raise PackageError(f"{where}: unknown protocol {protocol!r}; use tcp or udp")
    for separator in "-:":
        if separator in text:
            first_text, _, last_text = text.partition(separator)
            first, last = _port(first_text, where), _port(last_text, where)
            if first > last:
                raise PackageError(f"{where}: a port range must go from the lower to the higher port")
            return PortRule(first, last, protocol)
    port = _port(text, where)
    return PortRule(port, port, protocol)


def parse_exposed(text: str, where: str) -> PortRule:
    ports, _, protocol = text.partition("/")
    if "/" in protocol:
        raise PackageError(f"{where}: {text!r} is not <port>[/<tcp|udp>]")
    return parse_ports(ports, protocol, where)


@dataclass(frozen=True)
class Connection:
    service_id: str
    ports: PortRule


def parse_connection(text: str, where: str) -> Connection:
    """`<serviceID>/<port or range>[/<tcp|udp>]` (2 or 3 parts, as AosEdge's CM reads it)."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not parts[0]:
        raise PackageError(f"{where}: {text!r} is not <serviceID>/<port>[/<tcp|udp>]")
    return Connection(parts[0], parse_ports(parts[1], parts[2] if len(parts) == 3 else "tcp", where))


def check_provider(provider: str) -> str:
    if not _PROVIDER_RE.match(provider):
        raise RuntimeFailure(f"network provider {provider!r} is not a DNS label (a-z, 0-9, '-', at most 63)")
    return provider


def short_hash(*parts: str, length: int = 10) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def bridge_name(scope: str, provider: str) -> str:
    return f"aosb{short_hash(scope, provider)}"  # 14 characters: under IFNAMSIZ


def netns_name(scope: str, instance_id: str) -> str:
    return f"aos-{scope}-{instance_id}"


@dataclass(frozen=True)
class Network:
    """One provider's network on this node."""

    provider: str
    bridge: str
    subnet: str

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.subnet).hosts()))


@dataclass(frozen=True)
class InstanceNetwork:
    """What an instance got: kept on disk from setup to teardown, read again after a restart."""

    instance_id: str
    service_id: str
    provider: str
    bridge: str
    subnet: str
    gateway: str
    ip: str
    netns: str  # path
    hostname: str
    names: tuple[str, ...]  # DNS names in the network's server
    exposed: tuple[PortRule, ...] = ()
    connections: tuple[Connection, ...] = ()
    upload_speed: int = 0  # kbit/s
    download_speed: int = 0
    upload_limit: int = 0  # bytes per period
    download_limit: int = 0
    plugins: tuple[Mapping[str, Any], ...] = ()  # the CNI chain, for DEL
    result: Mapping[str, Any] = field(default_factory=dict)  # the chain's ADD result
    tag: str = ""  # short, unique per instance: nftables names

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["plugins"] = [dict(plugin) for plugin in self.plugins]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InstanceNetwork:
        values = dict(data)
        values["names"] = tuple(values["names"])
        values["exposed"] = tuple(PortRule(**rule) for rule in values["exposed"])
        values["connections"] = tuple(Connection(c["service_id"], PortRule(**c["ports"]))
                                      for c in values["connections"])
        values["plugins"] = tuple(values["plugins"])
        return cls(**values)


def dns_names(hostname: str | None, service_id: str, subject_id: str, index: int, domain: str) -> tuple[str, ...]:
    """AosEdge's aliases: the hostname, `<index>.<subject>.<service>` and for index 0
    `<subject>.<service>`, each also under the network's domain."""
    base = [f"{index}.{subject_id}.{service_id}"]
    if index == 0:
        base.append(f"{subject_id}.{service_id}")
    names = ([hostname] if hostname else []) + base
    valid = [name for name in names if _is_dns_name(name)]
    return tuple(dict.fromkeys(valid + [f"{name}.{domain}" for name in valid]))


def _is_dns_name(name: str) -> bool:
    return len(name) <= 253 and all(re.match(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$", label)
                                    for label in name.split("."))


def cni_chain(network: Network, ip: str, ipam_dir: str, upload_speed: int, download_speed: int) -> list[dict[str, Any]]:
    """The plugins an instance is ADDed with: AosEdge's bridge (gateway, masquerade, hairpin,
    one fixed address) and, when a speed is set, bandwidth (rate = kbit/s x 1000, burst 12800 bits)."""
    plugins: list[dict[str, Any]] = [{
        "type": "bridge", "bridge": network.bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
        "ipam": {"type": "host-local", "dataDir": ipam_dir,
                 "ranges": [[{"subnet": network.subnet, "rangeStart": ip, "rangeEnd": ip,
                              "gateway": network.gateway}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
    }]
    bandwidth: dict[str, Any] = {}
    if download_speed:
        bandwidth.update(ingressRate=download_speed * 1000, ingressBurst=BURST_BITS)
    if upload_speed:
        bandwidth.update(egressRate=upload_speed * 1000, egressBurst=BURST_BITS)
    if bandwidth:
        plugins.append({"type": "bandwidth", **bandwidth})
    return plugins


def hosts_file(ip: str | None, names: Sequence[str]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if ip and names:
        lines.append(f"{ip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def resolv_conf(nameservers: Sequence[str], search: Sequence[str] = ()) -> str:
    """With no name server known, AosEdge's fallback 8.8.8.8."""
    lines = [f"search {' '.join(search)}"] if search else []
    lines += [f"nameserver {server}" for server in (nameservers or (FALLBACK_DNS,))]
    return "\n".join(lines) + "\n"


def host_nameservers(resolv_text: str) -> tuple[str, ...]:
    found = []
    for line in resolv_text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                found.append(str(ipaddress.ip_address(parts[1])))
            except ValueError:
                continue
    return tuple(found)


def dnsmasq_hosts(records: Iterable[InstanceNetwork]) -> str:
    return "".join(f"{record.ip} {' '.join(record.names)}\n" for record in sorted(records, key=lambda r: r.ip)
                   if record.names)


def next_free_ip(subnet: str, used: Iterable[str]) -> str:
    network = ipaddress.ip_network(subnet)
    taken = set(used)
    hosts = network.hosts()
    next(hosts)  # the gateway
    for address in hosts:
        if str(address) not in taken:
            return str(address)
    raise RuntimeFailure(f"network {subnet} has no free address", hint="use a larger network prefix")


def free_subnet(pool: str, prefix: int, taken: Iterable[str]) -> str:
    """The first subnet of the pool that overlaps nothing in `taken` (networks in use on the node)."""
    used = [ipaddress.ip_network(cidr, strict=False) for cidr in taken]
    for candidate in ipaddress.ip_network(pool).subnets(new_prefix=prefix):
        if not any(candidate.overlaps(other) for other in used):
            return str(candidate)
    raise RuntimeFailure(f"no free /{prefix} subnet left in the network pool {pool}",
                         hint="give the runtime a larger pool (--network-pool)")


# --- nftables ------------------------------------------------------------------------------------


def firewall_table(scope: str) -> str:
    return f"aosfw_{scope}"


def traffic_table(scope: str) -> str:
    return f"aostraffic_{scope}"


def firewall_ruleset(scope: str, records: Sequence[InstanceNetwork], pool: str) -> str:
    """The whole firewall table, replaced atomically whenever an instance comes or goes.

    New flows routed to an instance are accepted from its own network; from another network of
    this node only to an exposed port and only from an instance whose service lists
    `<this serviceID>/<port>[/<proto>]` in allowedConnections; from outside the pool only to an
    exposed port. Everything else new towards an instance is dropped. Egress and replies pass.
    Traffic between instances of one network is switched by the bridge and never gets here.
    """
    table = firewall_table(scope)
    lines = [f"table inet {table} {{}}", f"delete table inet {table}", f"table inet {table} {{",
             "  chain forward {", "    type filter hook forward priority 0; policy accept;",
             "    ct state established,related accept"]
    chains = []
    for record in sorted(records, key=lambda r: r.ip):
        chain = f"in_{record.tag}"
        lines.append(f"    ip daddr {record.ip} ct state new jump {chain}")
        body = [f"  chain {chain} {{", f"    ip saddr {record.subnet} accept"]
        for source in sorted(records, key=lambda r: r.ip):
            if source.provider == record.provider:
                continue
            for connection in source.connections:
                if connection.service_id != record.service_id:
                    continue
                for exposed in record.exposed:
                    if exposed.covers(connection.ports):
                        body.append(f"    ip saddr {source.ip} {connection.ports.nft()} accept")
        for exposed in record.exposed:
            body.append(f"    ip saddr != {pool} {exposed.nft()} accept")
        body += ["    drop", "  }"]
        chains += body
    lines += ["  }", *chains, "}"]
    return "\n".join(lines) + "\n"


def traffic_skeleton(scope: str) -> str:
    """Counting chains on forward, input and output (AosEdge counts forward only; we also count
    traffic with the node itself), dispatching per instance address through two verdict maps."""
    table = traffic_table(scope)
    return "\n".join([
        f"table inet {table} {{",
        "  map download { type ipv4_addr : verdict; }",
        "  map upload { type ipv4_addr : verdict; }",
        "  chain forward { type filter hook forward priority -5; policy accept; "
        "ip daddr vmap @download; ip saddr vmap @upload; }",
        "  chain input { type filter hook input priority -5; policy accept; ip saddr vmap @upload; }",
        "  chain output { type filter hook output priority -5; policy accept; ip daddr vmap @download; }",
        "}",
    ]) + "\n"


def traffic_add(scope: str, record: InstanceNetwork, uncounted: Sequence[str]) -> str:
    """A quota object and a chain per limited direction: bytes to or from uncounted ranges
    return first; the rest is counted, and dropped once the quota is over."""
    table = traffic_table(scope)
    lines = []
    for direction, limit, peer in (("download", record.download_limit, "saddr"),
                                   ("upload", record.upload_limit, "daddr")):
        if not limit:
            continue
        name = f"{direction[0]}_{record.tag}"
        lines.append(f"add quota inet {table} {name} {{ over {limit} bytes }}")
        lines.append(f"add chain inet {table} {name}")
        if uncounted:
            lines.append(f"add rule inet {table} {name} ip {peer} {{ {', '.join(uncounted)} }} return")
        lines.append(f'add rule inet {table} {name} quota name "{name}" drop')
        lines.append(f"add element inet {table} {direction} {{ {record.ip} : jump {name} }}")
    return "\n".join(lines) + ("\n" if lines else "")


def traffic_remove(scope: str, record: InstanceNetwork, present: Sequence[str]) -> str:
    """Delete what traffic_add made; `present` are the object names that exist."""
    table = traffic_table(scope)
    lines = []
    for direction in ("download", "upload"):
        name = f"{direction[0]}_{record.tag}"
        if name not in present:
            continue
        lines.append(f"delete element inet {table} {direction} {{ {record.ip} }}")
        lines.append(f"flush chain inet {table} {name}")
        lines.append(f"delete chain inet {table} {name}")
        lines.append(f"delete quota inet {table} {name}")
    return "\n".join(lines) + ("\n" if lines else "")
