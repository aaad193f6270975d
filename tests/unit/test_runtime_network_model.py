"""The pure half of the instance network: names, CNI chain, files, nftables rules."""

from __future__ import annotations

import pytest

from aos_operator.errors import PackageError, RuntimeFailure
from aos_operator.runtime.identity import InstanceIdentity
from aos_operator.runtime.network.model import (
    Connection,
    InstanceNetwork,
    Network,
    NetworkConfig,
    PortRule,
    bridge_name,
    check_provider,
    cni_chain,
    dns_names,
    firewall_ruleset,
    free_subnet,
    host_nameservers,
    hosts_file,
    next_free_ip,
    parse_connection,
    parse_exposed,
    resolv_conf,
    traffic_add,
    traffic_remove,
)
from aos_operator.runtime.service_config import ServiceConfig, parse_image_config, parse_service_config
from aos_operator.runtime.spec import InstanceSetup, NodeFacts, build_runtime_spec

NETWORK = Network("team-a", "aosb0123456789", "10.231.3.0/24")


def record(ip: str, service_id: str, provider: str = "team-a", subnet: str = "10.231.3.0/24", tag: str = "t",
           exposed: tuple[PortRule, ...] = (), connections: tuple[Connection, ...] = (), **changes) -> InstanceNetwork:
    return InstanceNetwork(instance_id=f"id-{tag}", service_id=service_id, provider=provider, bridge="aosbx",
                           subnet=subnet, gateway=subnet.rsplit(".", 1)[0] + ".1", ip=ip, netns=f"/run/netns/{tag}",
                           hostname="", names=(), exposed=exposed, connections=connections, tag=tag, **changes)


def test_bandwidth_plugin_follows_aosedge_and_is_left_out_without_speeds() -> None:
    assert [p["type"] for p in cni_chain(NETWORK, "10.231.3.2", "/ipam", 0, 0)] == ["bridge"]
    bridge, bandwidth = cni_chain(NETWORK, "10.231.3.2", "/ipam", upload_speed=500, download_speed=2000)
    assert bandwidth == {"type": "bandwidth", "ingressRate": 2_000_000, "ingressBurst": 12800,
                         "egressRate": 500_000, "egressBurst": 12800}
    only_upload = cni_chain(NETWORK, "10.231.3.2", "/ipam", upload_speed=100, download_speed=0)[1]
    assert only_upload == {"type": "bandwidth", "egressRate": 100_000, "egressBurst": 12800}
    assert bridge["bridge"] == NETWORK.bridge and bridge["isGateway"] and bridge["ipMasq"] and bridge["hairpinMode"]
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.231.3.0/24", "rangeStart": "10.231.3.2",
                                          "rangeEnd": "10.231.3.2", "gateway": "10.231.3.1"}]]
    assert bridge["ipam"]["dataDir"] == "/ipam"


def test_hosts_and_resolv_conf() -> None:
    assert hosts_file("10.231.3.2", ["web", "web.team-a"]).endswith("10.231.3.2\tweb web.team-a\n")
    assert resolv_conf(["10.231.3.1"], ["team-a"]) == "search team-a\nnameserver 10.231.3.1\n"
    assert resolv_conf([]) == "nameserver 8.8.8.8\n"  # AosEdge's fallback
    assert host_nameservers("# x\nnameserver 10.0.0.53\nnameserver bogus\nsearch lan\nnameserver ::1\n") == (
        "10.0.0.53", "::1")


def test_dns_names_are_aosedge_aliases_also_under_the_network_domain() -> None:
    assert dns_names("web", "svc", "subj", 0, "team-a") == (
        "web", "0.subj.svc", "subj.svc", "web.team-a", "0.subj.svc.team-a", "subj.svc.team-a")
    assert dns_names(None, "svc", "subj", 2, "team-a") == ("2.subj.svc", "2.subj.svc.team-a")
    assert dns_names(None, "bad name", "subj", 1, "n") == ()  # not a DNS name: not registered


def test_ports_and_connections_are_parsed_and_bad_ones_refused() -> None:
    assert parse_exposed("8080", "x") == PortRule(8080, 8080, "tcp")
    assert parse_exposed("53/udp", "x") == PortRule(53, 53, "udp")
    assert parse_exposed("9000-9010/tcp", "x") == PortRule(9000, 9010, "tcp")
    assert parse_connection("svc/8087:8088", "x") == Connection("svc", PortRule(8087, 8088, "tcp"))
    assert parse_connection("svc/53/udp", "x") == Connection("svc", PortRule(53, 53, "udp"))
    for bad in ("0", "70000", "80/sctp", "90-80", "8080/tcp/x", "٨٠"):
        with pytest.raises(PackageError, match="ExposedPorts"):
            parse_exposed(bad, "image config ExposedPorts")
    for bad in ("svc", "/80", "svc/80/tcp/x", "svc/http"):
        with pytest.raises(PackageError):
            parse_connection(bad, "allowedConnections")


def test_service_and_image_config_carry_the_network_keys() -> None:
    service = parse_service_config({"quotas": {"uploadSpeed": 10, "downloadSpeed": 20, "uploadLimit": 30,
                                               "downloadLimit": 40},
                                    "allowedConnections": {"svc/80/tcp": {}}}, "service config")
    assert (service.quotas.upload_speed, service.quotas.download_speed) == (10, 20)
    assert (service.quotas.upload_limit, service.quotas.download_limit) == (30, 40)
    assert service.allowed_connections == ("svc/80/tcp",)
    image = parse_image_config({"os": "linux", "config": {"Cmd": ["x"], "ExposedPorts": {"80/tcp": {}}}}, "image")
    assert image.exposed_ports == ("80/tcp",)
    with pytest.raises(PackageError, match="allowedConnections"):
        parse_service_config({"allowedConnections": 5}, "service config")


def test_subnets_and_addresses_from_the_pool() -> None:
    assert free_subnet("10.231.0.0/16", 24, []) == "10.231.0.0/24"
    assert free_subnet("10.231.0.0/16", 24, ["10.231.0.0/24", "10.231.1.7/24"]) == "10.231.2.0/24"
    with pytest.raises(RuntimeFailure, match="no free /24"):
        free_subnet("10.231.0.0/23", 24, ["10.231.0.0/24", "10.231.1.0/24"])
    assert next_free_ip("10.231.3.0/24", []) == "10.231.3.2"  # .1 is the gateway
    assert next_free_ip("10.231.3.0/24", ["10.231.3.2", "10.231.3.4"]) == "10.231.3.3"
    with pytest.raises(RuntimeFailure, match="no free address"):
        next_free_ip("10.231.3.0/30", ["10.231.3.2"])


def test_names_fit_the_kernel_and_providers_are_dns_labels() -> None:
    assert len(bridge_name("abcdef12", "a-very-long-provider-name-indeed")) <= 15
    assert bridge_name("s1", "p") != bridge_name("s2", "p")
    assert check_provider("team-a") == "team-a"
    for bad in ("Team", "-x", "a_b", "x" * 64, ""):
        with pytest.raises(RuntimeFailure, match="DNS label"):
            check_provider(bad)
    with pytest.raises(ValueError, match="prefix"):
        NetworkConfig(pool="10.231.0.0/16", prefix=8)


def test_firewall_rules_follow_exposed_ports_and_allowed_connections() -> None:
    server = record("10.231.3.2", "svc-server", tag="s", exposed=(PortRule(8080, 8080), PortRule(53, 53, "udp")))
    allowed = record("10.231.4.2", "svc-client", provider="team-b", subnet="10.231.4.0/24", tag="a",
                     connections=(Connection("svc-server", PortRule(8080, 8080)),
                                  Connection("svc-server", PortRule(9999, 9999))))
    same_net = record("10.231.3.3", "svc-peer", tag="p", connections=(Connection("svc-server", PortRule(53, 53, "udp")),))
    rules = firewall_ruleset("scope", [server, allowed, same_net], "10.231.0.0/16")
    chain = rules[rules.index("chain in_s {"):].split("}", 1)[0]
    assert "ip daddr 10.231.3.2 ct state new jump in_s" in rules
    assert "ct state established,related accept" in rules
    lines = [line.strip() for line in chain.splitlines()[1:] if line.strip()]
    assert lines == [
        "ip saddr 10.231.3.0/24 accept",  # its own network
        "ip saddr 10.231.4.2 tcp dport 8080 accept",  # listed and exposed; 9999 is not exposed
        "ip saddr != 10.231.0.0/16 tcp dport 8080 accept",  # from outside the pool: exposed ports
        "ip saddr != 10.231.0.0/16 udp dport 53 accept",
        "drop",
    ]
    assert rules.startswith("table inet aosfw_scope {}\ndelete table inet aosfw_scope\n")  # replaced atomically


def test_traffic_quota_per_direction_with_uncounted_ranges() -> None:
    limited = record("10.231.3.2", "svc", tag="q", upload_limit=1000, download_limit=0)
    script = traffic_add("scope", limited, ("10.0.0.0/8",))
    assert "add quota inet aostraffic_scope u_q { over 1000 bytes }" in script
    assert "add rule inet aostraffic_scope u_q ip daddr { 10.0.0.0/8 } return" in script
    assert 'add rule inet aostraffic_scope u_q quota name "u_q" drop' in script
    assert "add element inet aostraffic_scope upload { 10.231.3.2 : jump u_q }" in script
    assert "d_q" not in script
    assert "return" not in traffic_add("scope", limited, ())
    assert traffic_add("scope", record("10.231.3.2", "svc"), ()) == ""
    removal = traffic_remove("scope", limited, ["u_q"])
    assert removal.splitlines() == ["delete element inet aostraffic_scope upload { 10.231.3.2 }",
                                    "flush chain inet aostraffic_scope u_q", "delete chain inet aostraffic_scope u_q",
                                    "delete quota inet aostraffic_scope u_q"]


def test_spec_joins_the_instance_network_namespace() -> None:
    image = parse_image_config({"os": "linux", "config": {"Cmd": ["x"]}}, "image")
    setup = InstanceSetup(identity=InstanceIdentity("svc", "subj", 0), uid=5000, gid=5000, rootfs="/r",
                          cgroups_path="/aos/x", network_namespace="/run/netns/aos-s-x")
    spec = build_runtime_spec(image, ServiceConfig(), setup, NodeFacts(cores=2, dmips=20000))
    network = [ns for ns in spec["linux"]["namespaces"] if ns["type"] == "network"]
    assert network == [{"type": "network", "path": "/run/netns/aos-s-x"}]
