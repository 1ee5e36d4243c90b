"""Internet for a sandbox that asks for it: slirp4netns in its network namespace, behind a firewall.

slirp4netns gives the namespace a tap device, a default route through 10.0.2.2 and DNS at
10.0.2.3, making the connections from the host as an ordinary unprivileged process. It runs
as the sandbox's own host uid (never root) and inside the sandbox's cgroups, so it is
frozen, limited and killed with the sandbox. `--disable-host-loopback` stops 10.0.2.2 from
reaching the host's 127.0.0.1; the nftables rules that the provider (root) installs in the
namespace before the sandbox's first process starts reject everything else that is not the
internet: private and shared ranges, link-local, multicast, all of IPv6, every address of the
host itself and every network it is attached to. The sandbox's user has no capability over that
namespace, so it cannot change them.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import stat
from pathlib import Path

TAP = "tap0"
DNS = "10.0.2.3"
MTU = 65520
# Never the internet: this host, private and shared address space, link-local, IETF protocol
# assignments, multicast and reserved. Documentation and benchmarking ranges are not here: they
# route nowhere on the internet, and some networks put their proxies there; the host's own
# networks, whatever their range, are added from its routing table (`host_networks`).
BLOCKED_V4 = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "224.0.0.0/3",
)
TUN_MAJOR, TUN_MINOR = 10, 200


def host_addresses() -> list[str]:
    """Every IPv4 address of this host's own interfaces (the kernel's LOCAL routes)."""
    found: set[str] = set()
    try:
        with open("/proc/net/fib_trie") as f:
            previous = ""
            for line in f:
                text = line.strip()
                if text.startswith("/32 host LOCAL") and previous.startswith("|--"):
                    found.add(previous.split()[1])
                previous = text
    except FileNotFoundError:
        pass
    return sorted(found, key=lambda a: ipaddress.ip_address(a))


def host_networks() -> list[str]:
    """The IPv4 networks this host's interfaces are on (its LAN neighbours)."""
    try:
        with open("/proc/net/route") as f:
            table = f.read()
    except FileNotFoundError:
        return []
    return attached_networks(table, host_addresses())


def attached_networks(route_table: str, own_addresses: list[str]) -> list[str]:
    """From a /proc/net/route text: the directly attached networks that hold one of this host's
    addresses and are no wider than /8. That is an interface's own subnet, not a VPN's or a TUN
    proxy's catch-all routes (0.0.0.0/1, 128.0.0.0/1, 1.0.0.0/8 on a tunnel), which are the internet."""
    own = [ipaddress.IPv4Address(a) for a in own_addresses if ipaddress.ip_address(a).version == 4]
    found: set[ipaddress.IPv4Network] = set()
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[2] != "00000000":
            continue  # through a gateway: the internet, or a network behind a router
        try:
            destination = ipaddress.IPv4Address(bytes.fromhex(fields[1])[::-1])
            mask = ipaddress.IPv4Address(bytes.fromhex(fields[7])[::-1])
            net = ipaddress.IPv4Network(f"{destination}/{mask}", strict=False)
        except ValueError:
            continue  # a line this parser does not understand says nothing about the others
        if net.prefixlen >= 8 and not net.is_loopback and any(a in net for a in own):
            found.add(net)
    return [str(n) for n in sorted(found)]


def ruleset(extra_blocked: list[str]) -> str:
    """The nftables rules of a sandbox's network namespace; `extra_blocked` holds addresses and
    networks of this host's own."""
    nets = [ipaddress.IPv4Network(n) for n in BLOCKED_V4]
    for entry in extra_blocked:
        net = ipaddress.ip_network(entry, strict=False)
        if isinstance(net, ipaddress.IPv4Network):
            nets.append(net)
    # An nftables interval set refuses overlapping elements: keep only the widest of nested ones.
    kept = sorted({n for n in nets if not any(n != m and n.subnet_of(m) for m in nets)})
    blocked = [str(n) if n.num_addresses > 1 else str(n.network_address) for n in kept]
    return (
        "table inet corral {\n"
        "  chain output {\n"
        "    type filter hook output priority filter; policy accept;\n"
        '    oifname "lo" accept\n'
        "    meta nfproto ipv6 reject with icmpx type admin-prohibited\n"
        f"    ip daddr {DNS} meta l4proto {{ tcp, udp }} th dport 53 accept\n"
        f"    ip daddr {{ {', '.join(blocked)} }} reject with icmpx type admin-prohibited\n"
        "  }\n"
        "}\n"
    )


def ensure_tun_node(path: Path) -> None:
    """A private /dev/net/tun node that slirp4netns (unprivileged) can open; bound over the real one
    in slirp's own mount namespace, so the host's device keeps its permissions."""
    try:
        st = os.lstat(path)
        if stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == TUN_MAJOR and os.minor(st.st_rdev) == TUN_MINOR:
            return
        path.unlink()
    except FileNotFoundError:
        pass
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(TUN_MAJOR, TUN_MINOR))
    os.chmod(path, 0o666)


def slirp_argv(*, tun_node: Path, join_files: list[Path], host_uid: int, userns_fd: int, netns_fd: int,
               ready_fd: int, slirp: str, setpriv: str, unshare: str, mount: str, nsenter: str) -> list[str]:
    """Root: join the sandbox's cgroups, bind the tun node in a private mount namespace, drop to the
    sandbox's host uid, enter the user namespace that owns the sandbox's network namespace (its
    root is that same host uid), and exec slirp4netns there, sandboxed and with seccomp."""
    joins = " && ".join(f"echo $$ > {shlex.quote(str(f))}" for f in join_files)
    script = (f"{joins} && {shlex.quote(mount)} --bind {shlex.quote(str(tun_node))} /dev/net/tun "
              f'&& exec {shlex.quote(setpriv)} --reuid {host_uid} --regid {host_uid} --clear-groups "$@"')
    return [
        unshare, "--mount", "--propagation", "private", "/bin/sh", "-c", script, "corral-slirp",
        nsenter, f"--user=/proc/self/fd/{userns_fd}", "--preserve-credentials",
        slirp, "--configure", "--mtu", str(MTU), "--disable-host-loopback", "--enable-sandbox",
        "--enable-seccomp", "--ready-fd", str(ready_fd), "--netns-type=path", f"/proc/self/fd/{netns_fd}", TAP,
    ]


def nft_argv(*, netns_fd: int, nsenter: str, nft: str) -> list[str]:
    """Root: load the ruleset (on stdin) into the sandbox's network namespace."""
    return [nsenter, f"--net=/proc/self/fd/{netns_fd}", nft, "-f", "-"]
