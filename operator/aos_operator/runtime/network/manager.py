"""The instance network on the node: set up once per instance, torn down at its end, adopted
after a restart, leftovers swept. Runs what `model.py` computes with `ip`, the CNI plugins,
`nft` and `dnsmasq`.

Every instance gets a named netns (`/run/netns/aos-<scope>-<instance ID>`) that outlives
container restarts, joined through the CNI bridge plugin to its provider's bridge. Each
provider network has one dnsmasq on its gateway address. A node-wide lock serialises the
runtimes of one node while they pick subnets and create bridges; a per-runtime lock guards the
records.

On disk (`<state_root>/network/`): `networks.json` (provider → bridge and subnet),
`instances/<id>.json` (an InstanceNetwork), `ipam/` (host-local's leases), `traffic.json`
(the period each quota was last reset in).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aos_operator.bounded import parse_json
from aos_operator.errors import RuntimeFailure
from aos_operator.runtime.files import file_lock, read_state, write_atomically
from aos_operator.runtime.network import cni
from aos_operator.runtime.network.model import (
    Network,
    NetworkConfig,
    InstanceNetwork,
    bridge_name,
    check_provider,
    cni_chain,
    dns_names,
    dnsmasq_hosts,
    firewall_ruleset,
    firewall_table,
    free_subnet,
    host_nameservers,
    hosts_file,
    netns_name,
    next_free_ip,
    parse_connection,
    parse_exposed,
    resolv_conf,
    short_hash,
    traffic_add,
    traffic_remove,
    traffic_skeleton,
    traffic_table,
)
from aos_operator.runtime.service_config import ImageConfig, ServiceConfig

log = logging.getLogger("aos_operator.runtime.network")
_BRIDGE_RE = re.compile(r"aosb[0-9a-f]{10}")  # bridge_name's form: the sweep deletes no other link
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_TRAFFIC_CACHE_SECONDS = 1.0


@dataclass(frozen=True)
class Traffic:
    """One limited direction of an instance: bytes counted this period, the limit, blocked or not."""

    direction: str  # upload or download
    used: int
    limit: int

    @property
    def blocked(self) -> bool:
        # The kernel's quota stops counting at its limit: used == limit means it is over.
        return self.used >= self.limit


def _run(argv: Sequence[str], *, input_text: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        completed = subprocess.run(list(argv), input=input_text, capture_output=True, text=True, timeout=30,
                                   env={"PATH": _SBIN_PATH}, check=False)
    except FileNotFoundError:
        raise RuntimeFailure(f"{argv[0]} is not installed", hint="install iproute2, nftables and dnsmasq-base, "
                                                                   "or turn the instance network off") from None
    if check and completed.returncode != 0:
        detail = " ".join((completed.stderr or completed.stdout).split())[:500]
        raise RuntimeFailure(f"{' '.join(argv[:4])} failed: {detail}")
    return completed


def _nft(script: str) -> None:
    _run(["nft", "-f", "-"], input_text=script)


def _period_key(period: str, now: float) -> str:
    moment = time.gmtime(now)
    formats = {"day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H", "minute": "%Y-%m-%dT%H:%M"}
    return time.strftime(formats[period], moment)


class NetworkManager:
    def __init__(self, config: NetworkConfig, state_dir: Path, scope: str) -> None:
        self.config = config
        self.state_dir = state_dir
        self.scope = scope
        self.ipam_dir = state_dir / "ipam"
        self._traffic_cache: tuple[float, dict[str, int]] | None = None

    # --- records -------------------------------------------------------------------------------

    def _record_path(self, instance_id: str) -> Path:
        return self.state_dir / "instances" / f"{instance_id}.json"

    def record(self, instance_id: str) -> InstanceNetwork | None:
        path = self._record_path(instance_id)
        record = read_state(path, InstanceNetwork.from_json)
        wrong = [] if record is None else self._misplaced(record, instance_id)
        if wrong:
            raise RuntimeFailure(f"{path}: names what is not this instance's: {'; '.join(wrong)}",
                                 hint="remove the file, or the instance it belongs to (aosctl rm -f)")
        return record

    def records(self) -> list[InstanceNetwork]:
        directory = self.state_dir / "instances"
        if not directory.is_dir():
            return []
        found = []
        for path in sorted(directory.glob("*.json")):
            try:
                record = InstanceNetwork.from_json(parse_json(path.read_text()))
                wrong = self._misplaced(record, path.stem)
            except (ValueError, KeyError, TypeError, AttributeError):
                wrong = ["unreadable"]
            if wrong:
                log.warning("%s: network record removed, not acted on: %s", path, "; ".join(wrong))
                path.unlink(missing_ok=True)
                continue
            found.append(record)
        return found

    def _misplaced(self, record: InstanceNetwork, instance_id: str) -> list[str]:
        """What a record names otherwise than this manager derives for the instance: its teardown
        deletes the netns and bridge it names and runs CNI DEL with its plugins, as root."""
        try:
            network = self._network_named(record.provider, record.subnet)
            in_subnet = ipaddress.ip_address(record.ip) in ipaddress.ip_network(record.subnet)
        except (ValueError, TypeError, RuntimeFailure) as error:
            return [str(error)]
        expected = [
            ("instance_id", record.instance_id, instance_id), ("bridge", record.bridge, network.bridge),
            ("gateway", record.gateway, network.gateway),
            ("netns", record.netns, str(Path(self.config.netns_dir) / netns_name(self.scope, instance_id))),
            ("tag", record.tag, short_hash(self.scope, instance_id, length=12)),
        ]
        wrong = [f"{field} {value!r}, not {want!r}" for field, value, want in expected if value != want]
        if not in_subnet:
            wrong.append(f"ip {record.ip!r} outside {record.subnet}")
        if list(record.plugins) != cni_chain(network, record.ip, str(self.ipam_dir), record.upload_speed,
                                             record.download_speed):
            wrong.append("CNI plugins other than the instance's bridge and bandwidth")
        return wrong

    def _network_named(self, provider: str, subnet: str) -> Network:
        """The network of `provider` as this manager names it (ValueError for a subnet that is none)."""
        ipaddress.ip_network(subnet)
        return Network(check_provider(provider), bridge_name(self.scope, provider), subnet)

    def _networks(self) -> dict[str, Network]:
        path = self.state_dir / "networks.json"
        found = read_state(path, lambda data: {provider: Network(**value) for provider, value in data.items()}) or {}
        for provider, network in found.items():
            try:
                own = self._network_named(provider, network.subnet) == network
                problem = "" if own else f"bridge {network.bridge!r} for provider {network.provider!r}"
            except (ValueError, TypeError, RuntimeFailure) as error:
                problem = str(error)
            if problem:
                raise RuntimeFailure(f"{path}: names what is not provider {provider!r}'s network: {problem}",
                                     hint="remove the file once no instance uses the network")
        return found

    def _save_networks(self, networks: dict[str, Network]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.state_dir / "networks.json", json.dumps(
            {provider: {"provider": n.provider, "bridge": n.bridge, "subnet": n.subnet}
             for provider, n in sorted(networks.items())}, indent=1))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with file_lock(Path(self.config.lock_file)), file_lock(self.state_dir / "network.lock"):
            yield

    # --- set up --------------------------------------------------------------------------------------

    def setup(self, *, instance_id: str, service_id: str, subject_id: str, index: int, provider: str,
              service: ServiceConfig, image: ImageConfig) -> InstanceNetwork:
        """The instance's network, set up now unless it already is (its netns survives restarts)."""
        check_provider(provider)
        exposed = tuple(parse_exposed(port, f"image config ExposedPorts {port!r}") for port in image.exposed_ports)
        connections = tuple(parse_connection(text, f"service config allowedConnections {text!r}")
                            for text in service.allowed_connections)
        with self._locked():
            existing = self.record(instance_id)
            if existing is not None:
                if Path(existing.netns).exists() and existing.provider == provider:
                    return existing
                self._teardown(existing)
            network = self._network_for(provider)
            ip = next_free_ip(network.subnet, [r.ip for r in self.records() if r.provider == provider])
            quotas = service.quotas
            record = InstanceNetwork(
                instance_id=instance_id, service_id=service_id, provider=provider, bridge=network.bridge,
                subnet=network.subnet, gateway=network.gateway, ip=ip,
                netns=str(Path(self.config.netns_dir) / netns_name(self.scope, instance_id)),
                hostname=service.hostname or "",
                names=dns_names(service.hostname, service_id, subject_id, index, provider),
                exposed=exposed, connections=connections,
                upload_speed=quotas.upload_speed or 0, download_speed=quotas.download_speed or 0,
                upload_limit=quotas.upload_limit or 0, download_limit=quotas.download_limit or 0,
                plugins=tuple(cni_chain(network, ip, str(self.ipam_dir), quotas.upload_speed or 0,
                                        quotas.download_speed or 0)),
                tag=short_hash(self.scope, instance_id, length=12),
            )
            # Written first, so a failure halfway is torn down like any other record.
            self._save_record(record)
            try:
                _run(["ip", "netns", "add", netns_name(self.scope, instance_id)])
                _run(["ip", "-n", netns_name(self.scope, instance_id), "link", "set", "lo", "up"])
                result = cni.add_chain(list(record.plugins), **self._cni_context(record))
                record = replace(record, result=result)
                self._save_record(record)
                self._add_traffic(record)
                self._apply_firewall()
                self._update_dns(provider)
            except BaseException:
                self._teardown(record)
                raise
            return record

    def _save_record(self, record: InstanceNetwork) -> None:
        path = self._record_path(record.instance_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(record.to_json(), sort_keys=True, indent=1))

    def _cni_context(self, record: InstanceNetwork) -> dict[str, Any]:
        return {"network_name": f"aos-{self.scope}-{record.provider}", "container_id": Path(record.netns).name,
                "netns": record.netns, "ifname": "eth0", "plugin_dirs": self.config.plugin_dirs}

    def _network_for(self, provider: str) -> Network:
        networks = self._networks()
        if provider in networks:
            return networks[provider]
        taken = [n.subnet for n in networks.values()] + self._host_subnets()
        network = Network(provider, bridge_name(self.scope, provider),
                          free_subnet(self.config.pool, self.config.prefix, taken))
        networks[provider] = network
        self._save_networks(networks)
        return network

    @staticmethod
    def _host_subnets() -> list[str]:
        """Every IPv4 network configured on the node's interfaces (also other runtimes' bridges)."""
        output = _run(["ip", "-j", "-4", "addr", "show"]).stdout
        found = []
        for link in parse_json(output or "[]"):
            for address in link.get("addr_info", []):
                if address.get("local") and address.get("prefixlen") is not None:
                    found.append(str(ipaddress.ip_network(f"{address['local']}/{address['prefixlen']}", strict=False)))
        return found

    # --- what the instance sees ----------------------------------------------------------------------------

    def hosts_text(self, record: InstanceNetwork) -> str:
        return hosts_file(record.ip, record.names)

    def resolv_text(self, record: InstanceNetwork) -> str:
        return resolv_conf([record.gateway], [record.provider])

    def upstream_dns(self) -> tuple[str, ...]:
        if self.config.upstream_dns:
            return self.config.upstream_dns
        try:
            return host_nameservers(Path("/etc/resolv.conf").read_text())
        except OSError:
            return ()

    # --- DNS -----------------------------------------------------------------------------------------------

    def _dns_dir(self, bridge: str) -> Path:
        return Path(self.config.dns_dir) / self.scope / bridge

    def _dnsmasq_pid(self, bridge: str) -> int | None:
        try:
            pid = int((self._dns_dir(bridge) / "dnsmasq.pid").read_text().strip())
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        # "(dnsmasq) S ...": a zombie (its reaper is the node's init) counts as gone
        name, _, rest = stat.partition(") ")
        return pid if name.endswith("(dnsmasq") and not rest.startswith("Z") else None

    def _update_dns(self, provider: str) -> None:
        """Write the network's hosts file and start its dnsmasq, or make it re-read the file."""
        members = [r for r in self.records() if r.provider == provider]
        if not members:
            return
        first = members[0]
        directory = self._dns_dir(first.bridge)
        directory.mkdir(parents=True, exist_ok=True)
        for part in (directory, directory.parent, directory.parent.parent):
            os.chmod(part, 0o755)  # dnsmasq re-reads the file as nobody
        hosts = directory / "hosts"
        write_atomically(hosts, dnsmasq_hosts(members))
        os.chmod(hosts, 0o644)
        pid = self._dnsmasq_pid(first.bridge)
        if pid is not None:
            os.kill(pid, signal.SIGHUP)
            return
        upstream = self.upstream_dns() or ("8.8.8.8",)
        _run(["dnsmasq", "--conf-file=/dev/null", f"--pid-file={directory / 'dnsmasq.pid'}",
              f"--listen-address={first.gateway}", "--bind-interfaces", "--no-hosts",
              f"--addn-hosts={hosts}", "--no-resolv", *[f"--server={server}" for server in upstream],
              f"--domain={provider}", f"--local=/{provider}/", "--domain-needed", "--bogus-priv",
              "--no-dhcp-interface=", "--cache-size=150"])

    def _stop_dns(self, bridge: str) -> None:
        pid = self._dnsmasq_pid(bridge)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    if self._dnsmasq_pid(bridge) != pid:
                        break
                    time.sleep(0.02)
            except ProcessLookupError:
                pass
        directory = self._dns_dir(bridge)
        for name in ("hosts", "dnsmasq.pid"):
            (directory / name).unlink(missing_ok=True)
        for path in (directory, directory.parent):
            try:
                path.rmdir()
            except OSError:
                break

    # --- nftables ------------------------------------------------------------------------------------------

    def _table_exists(self, table: str) -> bool:
        return _run(["nft", "list", "table", "inet", table], check=False).returncode == 0

    def _apply_firewall(self) -> None:
        records = self.records()
        if records:
            _nft(firewall_ruleset(self.scope, records, self.config.pool))
        elif self._table_exists(firewall_table(self.scope)):
            _nft(f"delete table inet {firewall_table(self.scope)}\n")

    def _add_traffic(self, record: InstanceNetwork) -> None:
        script = traffic_add(self.scope, record, self.config.uncounted)
        if not script:
            return
        if not self._table_exists(traffic_table(self.scope)):
            _nft(traffic_skeleton(self.scope))
        _nft(script)
        self._mark_period(record.tag, _period_key(self.config.traffic_period, time.time()))

    def _quota_objects(self) -> dict[str, int]:
        """name → bytes used, for every quota of this runtime's traffic table."""
        completed = _run(["nft", "-j", "list", "table", "inet", traffic_table(self.scope)], check=False)
        if completed.returncode != 0:
            return {}
        found = {}
        for item in parse_json(completed.stdout).get("nftables", []):
            quota = item.get("quota")
            if quota:
                found[quota["name"]] = int(quota.get("used", 0))
        return found

    def _remove_traffic(self, record: InstanceNetwork) -> None:
        script = traffic_remove(self.scope, record, list(self._quota_objects()))
        if script:
            _nft(script)
        self._mark_period(record.tag, None)
        if not any(r.upload_limit or r.download_limit for r in self.records() if r.instance_id != record.instance_id):
            if self._table_exists(traffic_table(self.scope)):
                _nft(f"delete table inet {traffic_table(self.scope)}\n")

    def _periods(self) -> dict[str, str]:
        try:
            return parse_json((self.state_dir / "traffic.json").read_text())
        except FileNotFoundError:
            return {}

    def _mark_period(self, tag: str, key: str | None) -> None:
        periods = self._periods()
        if key is None:
            periods.pop(tag, None)
        else:
            periods[tag] = key
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.state_dir / "traffic.json", json.dumps(periods, sort_keys=True))

    def traffic(self, record: InstanceNetwork, now: float | None = None) -> list[Traffic]:
        """The limited directions of an instance; starts a new period's count when it is due."""
        if not (record.upload_limit or record.download_limit):
            return []
        now = time.time() if now is None else now
        cached = self._traffic_cache
        if cached is None or time.monotonic() - cached[0] > _TRAFFIC_CACHE_SECONDS:
            cached = (time.monotonic(), self._quota_objects())
            self._traffic_cache = cached
        used = cached[1]
        current = _period_key(self.config.traffic_period, now)
        if self._periods().get(record.tag, current) != current:
            for direction in ("download", "upload"):
                name = f"{direction[0]}_{record.tag}"
                if name in used:
                    _run(["nft", "reset", "quota", "inet", traffic_table(self.scope), name], check=False)
                    used[name] = 0
            self._mark_period(record.tag, current)
        found = []
        for direction, limit in (("upload", record.upload_limit), ("download", record.download_limit)):
            if limit:
                found.append(Traffic(direction, used.get(f"{direction[0]}_{record.tag}", 0), limit))
        return found

    # --- tear down --------------------------------------------------------------------------------------------

    def teardown(self, instance_id: str) -> None:
        """Remove all the instance's network: CNI (veth, masquerade, bandwidth, lease), netns,
        traffic and firewall rules; with the network's last instance, its DNS server and bridge."""
        with self._locked():
            record = self.record(instance_id)
            if record is not None:
                self._teardown(record)

    def _teardown(self, record: InstanceNetwork) -> None:
        failures = []
        netns_exists = Path(record.netns).exists()
        context = self._cni_context(record)
        if not netns_exists:
            context["netns"] = ""
        failures += cni.delete_chain(list(record.plugins), prev_result=record.result or None, **context)
        if netns_exists:
            deleted = _run(["ip", "netns", "delete", Path(record.netns).name], check=False)
            if deleted.returncode != 0:
                failures.append(deleted.stderr.strip())
        try:
            self._remove_traffic(record)
        except RuntimeFailure as error:
            failures.append(str(error))
        self._record_path(record.instance_id).unlink(missing_ok=True)
        try:
            self._apply_firewall()
        except RuntimeFailure as error:
            failures.append(str(error))
        if any(r.provider == record.provider for r in self.records()):
            self._update_dns(record.provider)
        else:
            self._remove_network(record.provider)
        if failures:
            log.warning("network teardown of %s: %s", record.instance_id, "; ".join(failures))

    def _remove_network(self, provider: str) -> None:
        networks = self._networks()
        network = networks.pop(provider, None)
        if network is None:
            return
        self._stop_dns(network.bridge)
        if Path(f"/sys/class/net/{network.bridge}").exists():
            _run(["ip", "link", "delete", network.bridge], check=False)
        lease_dir = self.ipam_dir / f"aos-{self.scope}-{provider}"
        if lease_dir.is_dir():
            for entry in lease_dir.iterdir():
                entry.unlink(missing_ok=True)
            lease_dir.rmdir()
        self._save_networks(networks)

    # --- after a restart ---------------------------------------------------------------------------------------

    def adopt(self, live: set[str]) -> None:
        """Keep the network of every live instance (restart a DNS server that died, restore the
        rules), tear down the rest, and sweep what no record explains."""
        with self._locked():
            for record in self.records():
                if record.instance_id not in live or not Path(record.netns).exists():
                    self._teardown(record)
            records = self.records()
            limited = [r for r in records if r.upload_limit or r.download_limit]
            if limited and not self._table_exists(traffic_table(self.scope)):
                for record in limited:  # the table was lost (a reboot of nftables): count again
                    self._add_traffic(record)
            self._apply_firewall()
            for provider in {r.provider for r in records}:
                self._update_dns(provider)
            self._sweep(records)

    def _sweep(self, records: list[InstanceNetwork]) -> None:
        prefix = f"aos-{self.scope}-"
        kept = {Path(r.netns).name for r in records}
        netns_dir = Path(self.config.netns_dir)
        if netns_dir.is_dir():
            for entry in netns_dir.iterdir():
                if entry.name.startswith(prefix) and entry.name not in kept:
                    _run(["ip", "netns", "delete", entry.name], check=False)
        for provider in set(self._networks()) - {r.provider for r in records}:
            self._remove_network(provider)
        # DNS servers (and their bridges) of networks no record names, e.g. after lost state
        in_use = {r.bridge for r in records}
        dns_root = Path(self.config.dns_dir) / self.scope
        if dns_root.is_dir():
            for directory in dns_root.iterdir():
                if directory.name not in in_use and _BRIDGE_RE.fullmatch(directory.name):
                    self._stop_dns(directory.name)
                    if Path(f"/sys/class/net/{directory.name}").exists():
                        _run(["ip", "link", "delete", directory.name], check=False)
