"""The firewall of a sandbox with internet on: what it blocks, checked as nftables loads it."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess

from corral.sandbox.local.network import attached_networks, host_addresses, host_networks, ruleset

from ..conftest import require_tool
from .local_support import require_network_tools


def _blocked(rules: str) -> list[ipaddress.IPv4Network]:
    line = next(line for line in rules.splitlines() if "reject" in line and "daddr {" in line)
    return [ipaddress.IPv4Network(e.strip()) for e in line.split("{", 1)[1].split("}", 1)[0].split(",")]


def test_the_hosts_own_networks_are_blocked_and_documentation_ranges_are_not() -> None:
    blocked = _blocked(ruleset(["192.0.2.2", "192.0.2.0/24", "10.1.2.3", "8.8.8.8"]))
    assert ipaddress.IPv4Network("192.0.2.0/24") in blocked  # a LAN in a documentation range is still the host's LAN
    assert ipaddress.IPv4Network("8.8.8.8/32") in blocked
    for address in ("203.0.113.80", "198.51.100.7", "198.18.0.1", "1.1.1.1"):  # proxies live there on some networks
        assert not any(ipaddress.IPv4Address(address) in net for net in blocked), address
    for address in ("127.0.0.1", "10.0.2.2", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "224.0.0.1"):
        assert any(ipaddress.IPv4Address(address) in net for net in blocked), address
    assert not any(a != b and a.overlaps(b) for a in blocked for b in blocked), "nftables refuses overlapping elements"


def _route(destination: str, gateway: str, mask: str, iface: str = "eth0") -> str:
    def hexed(address: str) -> str:
        return ipaddress.IPv4Address(address).packed[::-1].hex().upper()

    return f"{iface}\t{hexed(destination)}\t{hexed(gateway)}\t0001\t0\t0\t0\t{hexed(mask)}\t0\t0\t0"


ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"


def test_attached_networks_are_the_interfaces_subnets_not_tunnels_or_gateways() -> None:
    table = "\n".join([
        ROUTE_HEADER,
        _route("0.0.0.0", "192.0.2.1", "0.0.0.0"),                        # default route: the internet
        _route("192.0.2.0", "0.0.0.0", "255.255.255.0"),                  # eth0's own subnet
        _route("10.20.0.0", "192.0.2.1", "255.255.0.0"),                  # behind a router
        _route("128.0.0.0", "0.0.0.0", "128.0.0.0", "wg0"),               # a VPN's catch-all half
        _route("1.0.0.0", "0.0.0.0", "255.0.0.0", "utun"),                # a TUN proxy's /8, holds no address of ours
        _route("198.51.100.0", "0.0.0.0", "255.255.255.0", "docker0"),    # a bridge this host is on
        "garbage line that is not a route",
        "eth1\tZZZZZZZZ\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
    ])
    own = ["127.0.0.1", "192.0.2.2", "198.51.100.1", "128.1.2.3"]
    assert attached_networks(table, own) == ["192.0.2.0/24", "198.51.100.0/24"]


def test_this_hosts_addresses_and_subnets_are_blocked() -> None:
    blocked = _blocked(ruleset(host_addresses() + host_networks()))
    for address in host_addresses():
        assert any(ipaddress.IPv4Address(address) in net for net in blocked), address
    for net in host_networks():
        assert any(ipaddress.IPv4Network(net).subnet_of(b) for b in blocked), net


def test_nftables_loads_the_rules_of_this_host() -> None:
    require_network_tools()
    require_tool("root", os.geteuid() == 0, "a network namespace of its own needs root")
    unshare = shutil.which("unshare")
    require_tool("unshare", unshare is not None, "apt-get install util-linux")
    nft = shutil.which("nft", path="/usr/sbin:/usr/bin")
    rules = ruleset(host_addresses() + host_networks() + ["10.9.8.7", "8.8.4.4"])
    loaded = subprocess.run([str(unshare), "--net", "sh", "-c", f"{nft} -f - && {nft} list ruleset"],
                            input=rules, capture_output=True, text=True, timeout=30)
    assert loaded.returncode == 0, loaded.stderr
    assert "reject with icmpx admin-prohibited" in loaded.stdout, loaded.stdout
    for net in host_networks():
        assert net.split("/")[0] in loaded.stdout, (net, loaded.stdout)
