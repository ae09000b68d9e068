"""A multi-host lab on one machine: Linux network namespaces joined by veth pairs and bridges.

Each host is a network namespace with its own IP address; the tests (and the devnet on
several hosts) run node processes in them (`ip netns exec`). Every address lives inside
namespaces this module creates (the 10.91.0.0/16 block, on bridges inside a switch
namespace), never on the machine's own interfaces, and everything is torn down on exit,
also after a failure.

Topology (`Lab.standard`): two sites, each a bridge (10.91.1.0/24 and 10.91.2.0/24), joined
through one router namespace with forwarding on; hosts route to the other site through it.
A third bridge (10.91.3.0/24) holds only a relay host's second leg and the unreachable
host: nothing routes there, so the unreachable host can dial the relay and nobody can dial
it. `cut`/`heal` take the router's leg on one site down and up (a partition between sites).

Needs root and iproute2 (`ip`). `lab_unavailable()` says why not, for a plain skip reason:
CI runs as root, so the tests run there.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field

SUBNET = "10.91"


def lab_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` command"
    probe = f"faiprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


@dataclass
class Host:
    """One namespace with its addresses (the first is the one peers dial)."""

    name: str
    ns: str
    ips: list[str] = field(default_factory=list)

    @property
    def ip(self) -> str:
        return self.ips[0]

    def argv(self, *cmd: str) -> list[str]:
        """`cmd` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *cmd]


class Lab:
    """Namespaces, bridges and links; a context manager that removes them all on exit."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.switch = f"fai{self.tag}sw"
        self.namespaces: list[str] = []
        self.hosts: dict[str, Host] = {}
        self._links = 0
        self._next_ip: dict[int, int] = {}
        self.router: Host | None = None

    # -- building ----------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        if self.switch not in self.namespaces:
            self._netns(self.switch)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()

    def _netns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("link", "set", "lo", "up", ns=ns)

    def site(self, number: int) -> str:
        """The bridge of site `number` (10.91.<number>.0/24), created on first use."""
        bridge = f"br{number}"
        if number not in self._next_ip:
            _ip("link", "add", bridge, "type", "bridge", ns=self.switch)
            _ip("link", "set", bridge, "up", ns=self.switch)
            self._next_ip[number] = 10
        return bridge

    def _leg(self, host: Host, site: int, ip_last: int | None = None) -> str:
        """A veth from `host` to site `site`'s bridge, with an address on that site."""
        bridge = self.site(site)
        self._links += 1
        inner, outer = f"e{self._links}", f"s{self.tag}{self._links}"[:15]
        _ip("link", "add", inner, "netns", host.ns, "type", "veth", "peer", "name", outer,
            ns=self.switch)  # fmt: skip
        _ip("link", "set", outer, "master", bridge, ns=self.switch)
        _ip("link", "set", outer, "up", ns=self.switch)
        if ip_last is None:
            ip_last = self._next_ip[site]
            self._next_ip[site] += 1
        address = f"{SUBNET}.{site}.{ip_last}"
        _ip("addr", "add", f"{address}/24", "dev", inner, ns=host.ns)
        _ip("link", "set", inner, "up", ns=host.ns)
        host.ips.append(address)
        return outer

    def add_router(self, sites: tuple[int, ...] = (1, 2)) -> Host:
        """The router joining `sites` (10.91.<site>.1 on each), forwarding on."""
        router = self.hosts["router"] = Host("router", f"fai{self.tag}r")
        self._netns(router.ns)
        self._router_legs = {site: self._leg(router, site, ip_last=1) for site in sites}
        subprocess.run(router.argv("sysctl", "-q", "-w", "net.ipv4.ip_forward=1"), check=True)
        self.router = router
        return router

    def add_host(self, name: str, site: int, *, routed: bool = True) -> Host:
        """A host on `site`; `routed`: its default route is the site's router."""
        host = self.hosts[name] = Host(name, f"fai{self.tag}{name}")
        self._netns(host.ns)
        self._leg(host, site)
        if routed:
            _ip("route", "add", "default", "via", f"{SUBNET}.{site}.1", ns=host.ns)
        return host

    def add_leg(self, name: str, site: int) -> str:
        """A second address for host `name`, on `site` (a relay's leg to a hidden site)."""
        host = self.hosts[name]
        self._leg(host, site)
        return host.ips[-1]

    # -- faults ------------------------------------------------------------------------------

    def cut(self, site: int) -> None:
        """Partition: the router's leg to `site` goes down (no traffic between sites)."""
        _ip("link", "set", self._router_legs[site], "down", ns=self.switch)

    def heal(self, site: int) -> None:
        _ip("link", "set", self._router_legs[site], "up", ns=self.switch)

    @classmethod
    def standard(cls, per_site: int = 3) -> Lab:
        """Two routed sites of `per_site` hosts (a1.., b1..), a relay on site 1 with a leg on
        hidden site 3, and host `hidden` on site 3 with no route anywhere."""
        lab = cls().__enter__()
        try:
            lab.add_router((1, 2))
            for i in range(1, per_site + 1):
                lab.add_host(f"a{i}", 1)
                lab.add_host(f"b{i}", 2)
            lab.add_host("relay", 1)
            lab.add_leg("relay", 3)
            lab.add_host("hidden", 3, routed=False)
        except BaseException:
            lab.close()
            raise
        return lab
