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

The devnet on several hosts (`fai devnet up --hosts`, fai_net/devnet/fleet.py) builds its own
layout (`devnet_lab`) and keeps it after its process ends: it records the namespace names,
and `fai devnet down`, another process, deletes exactly those (`delete_namespaces`, which
deletes nothing that is not named like a lab's). `in_netns` runs a function on a thread
inside one namespace, for the steps that must reach a lab address from this process.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

SUBNET = "10.91"
T = TypeVar("T")


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


# -- a lab that outlives its process (the devnet on several hosts) ----------------------------

#: The names `Lab` gives its namespaces: "fai", its 6-hex tag, then "sw", "r" or a host name.
#: `delete_namespaces` removes nothing else, whatever a (possibly stale or edited) state file
#: lists: it must never take down a namespace some other tool made.
LAB_NAMESPACE = re.compile(r"fai[0-9a-f]{6}[a-z0-9]{1,12}")
#: setns(2)'s flag for a network namespace (<sched.h>).
CLONE_NEWNET = 0x40000000


def devnet_lab(nodes: int) -> Lab:
    """The devnet's lab: the router, host `chain` on site 1, and hosts node0..node<N-1> taking
    the sites in turn (node0 on site 1, node1 on site 2, ...), so every other node's peers
    and chain are behind the router. Built whole or not at all."""
    lab = Lab().__enter__()
    try:
        lab.add_router((1, 2))
        lab.add_host("chain", 1)
        for i in range(nodes):
            lab.add_host(f"node{i}", 1 + i % 2)
    except BaseException:
        lab.close()
        raise
    return lab


def namespaces() -> set[str]:
    """The names of the network namespaces that exist now (`ip netns list`)."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip netns list: {done.stderr.strip()}")
    return {line.split()[0] for line in done.stdout.splitlines() if line.strip()}


def delete_namespaces(names: list[str]) -> list[str]:
    """Delete the lab namespaces `names` (in reverse, as `Lab.close` does); returns those
    that existed and are gone. Another process's lab is closed by the names it recorded:
    a `Lab` object does not survive its process, the namespaces do. Names that are not a
    lab's (LAB_NAMESPACE) raise ValueError before anything is deleted."""
    foreign = [n for n in names if not LAB_NAMESPACE.fullmatch(n)]
    if foreign:
        raise ValueError(f"not namespaces of a lab: {', '.join(foreign)}")
    present = namespaces()
    removed = []
    for ns in reversed(names):
        if ns in present:
            _ip("netns", "del", ns)
            removed.append(ns)
    return removed


def in_netns(ns: str, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on a new thread that first enters network namespace `ns` (setns on
    /run/netns/ns); its result, or its exception re-raised here.

    Why a thread: a network namespace belongs to a thread, not a process, so the caller
    (and every other thread) stays in its own namespace, and the thread that entered ends
    with the call; nothing else ever runs on it. Every socket `fn` opens (web3's HTTP
    connections, a readiness probe) is in `ns`, so the orchestrating process reaches the
    lab's 10.91.x addresses without any address or route on the machine's own namespace.
    A subprocess per step (`ip netns exec ... python -c`) would do the same at the cost of
    an interpreter start and serialising every argument and result."""
    outcome: dict[str, Any] = {}

    def enter_and_run() -> None:
        try:
            _setns(ns)
            outcome["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=enter_and_run, name=f"netns-{ns}", daemon=True)
    thread.start()
    try:
        thread.join()
    except BaseException:  # Ctrl-C: let the step finish, so that whatever it started is
        thread.join()  # known to the caller, whose clean-up then stops it
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class NetnsError(OSError):
    """A thread cannot enter a namespace: it is gone (deleted), or we are not root."""


def _setns(ns: str) -> None:
    """Move the calling thread into network namespace `ns`."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsError(exc.errno, f"network namespace {ns}: {exc.strerror}") from None
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(err, f"entering network namespace {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)
