"""Real nodes in the test's own trio process: real libp2p hosts on 127.0.0.1, real stores
and libraries on disk, no node processes (so these tests stay in `make test-fast`)."""

from __future__ import annotations

from pathlib import Path

import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from fai_net.node.config import NodeConfig
from fai_net.node.node import Node
from fai_net.p2p.gossip import parse_multiaddrs


def config(root: Path, name: str, **overrides) -> NodeConfig:
    """A quiet open-mode node under `root`: hashing embedder, fast rounds, and repair,
    discovery and broadcast timers long enough that a test drives them itself."""
    settings = dict(
        data_dir=root / name,
        domains=("coding",),
        embedder="hashing",
        open_membership=True,
        metrics_port=None,
        control_socket=root / f"{name}.sock",
        round_interval_s=0.3,
        repair_interval_s=3600,
        discovery_interval_s=3600,
        broadcast_interval_s=3600,
        broadcast_threshold=1000,
    )
    settings.update(overrides)
    return NodeConfig(**settings)


async def start(nursery: trio.Nursery, cfg: NodeConfig, **node_options) -> Node:
    """Run a node in `nursery` (no signal handlers) and return it once it is up."""
    node = Node(cfg, **node_options)
    return await nursery.start(
        lambda task_status: node.run(handle_signals=False, task_status=task_status)
    )


def addr_of(node: Node):
    """The node's first listen address with its /p2p/ id, as a multiaddr."""
    return parse_multiaddrs([f"{node.addrs[0].split('/p2p/')[0]}/p2p/{node.peer_id}"])[0]


async def connect(a: Node, b: Node) -> None:
    """Dial b from a."""
    await a.host.connect(info_from_p2p_addr(addr_of(b)))
