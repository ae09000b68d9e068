"""What a node may listen on, announce and use as a relay: address rules, as text.

Kept free of libp2p so that the command line can check a configuration without loading it.
A node listens on `/ip4|ip6/<ip>/tcp/<port>` (port 0: any free one). It announces what
peers should dial: the same shape with a real port and a real interface (not 0.0.0.0), or
a relayed address `<relay>/p2p-circuit`, where `<relay>` is a relay's dialable address
with its `/p2p/<peer id>`. libp2p keeps listen and announce apart for the same reason:
behind a port mapping, or bound to all interfaces, the bound address is not the one to dial.
"""

from __future__ import annotations

import ipaddress

#: What a relayed address ends with: `<relay address>/p2p/<relay id>/p2p-circuit`.
CIRCUIT = "/p2p-circuit"
_BASE58 = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


def is_circuit(addr: object) -> bool:
    """Whether a multiaddr (text or object) goes through a relay."""
    return CIRCUIT in str(addr)


def circuit_address(relay: str) -> str:
    """Where a node holding a reservation at `relay` (…/p2p/<relay id>) is dialled."""
    return f"{relay}{CIRCUIT}"


def check_listen(addr: str, what: str = "listen") -> None:
    """`/ip4|ip6/<ip>/tcp/<port>`, or ValueError naming `what` was wrong."""
    parts = addr.split("/")
    if len(parts) != 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
        raise ValueError(f"{what} address must be /ip4|ip6/<ip>/tcp/<port>, got {addr!r}")
    try:
        ipaddress.ip_address(parts[2])
        port = int(parts[4])
    except ValueError:
        raise ValueError(f"bad {what} address {addr!r}") from None
    if not 0 <= port <= 65535 or (what == "announce" and port == 0):
        raise ValueError(f"bad {what} port in {addr!r}")


def check_announce(addr: str) -> None:
    """A direct address peers can dial, or a relayed one (`<relay>/p2p-circuit`)."""
    if addr.endswith(CIRCUIT):
        check_relay(addr[: -len(CIRCUIT)], what="announce")
        return
    check_listen(addr, what="announce")
    if is_unspecified(addr):
        raise ValueError(f"announce a dialable address, not {addr!r}")


def check_relay(addr: str, what: str = "relay") -> None:
    """A relay's address: a dialable /ip4|ip6/<ip>/tcp/<port> with /p2p/<relay peer id>."""
    head, sep, peer = addr.rpartition("/p2p/")
    if not sep or not peer or not set(peer) <= _BASE58:
        raise ValueError(f"{what} address needs /p2p/<relay peer id>, got {addr!r}")
    check_listen(head, what=what)
    if is_unspecified(head) or head.endswith("/tcp/0"):
        raise ValueError(f"{what} address must be dialable, got {addr!r}")


def is_unspecified(addr: str) -> bool:
    """Whether a checked `/ip4|ip6/<ip>/...` address binds every interface (0.0.0.0, ::)."""
    return ipaddress.ip_address(addr.split("/")[2]).is_unspecified
