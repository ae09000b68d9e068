"""Issue 20, "a node reachable only through a relay", as real processes in the namespace lab.

`Lab.standard(per_site=1)` (fai_net/devnet/netns.py): a1 on site 1, b1 on site 2 (joined
through the router), `relay` on site 1 with a second leg on site 3, and `hidden` on site 3
with no route anywhere: it can reach the relay's site-3 address and nothing else, and no
one can reach it.

- relay: `--relay-server`, listening on both legs, subscribed to "writing" only, so it
  carries no "coding" batch itself: whatever hidden and the others exchange went through
  circuits, end to end encrypted between them.
- hidden: `--relay <relay's site-3 address>` and `--announce <relay's site-1
  address>/p2p-circuit` (the relay address the others can reach).
- a1 and b1 seed the relay and hidden's circuit address; b1 also seeds a1.

The test: hidden holds its reservation and a1 and b1 reach it through the relay; it
publishes and receives; then the relay process stops, b1 publishes while it is down, the
relay starts again on the same address, and hidden gets the batch it missed by repair,
with no evidence and nothing charged.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from fai_net.devnet.netns import Lab, lab_unavailable
from fai_net.node.identity import load_or_create
from tests.support.fleet import corpus_by_domain, wait_for
from tests.support.lab_nodes import (
    DOMAIN,
    PORT,
    LabNode,
    assert_no_traceback,
    launch_in_lab,
    tear_down,
)

_UNAVAILABLE = lab_unavailable()
pytestmark = [
    pytest.mark.slow,  # starts four node processes
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE)),
]

REPAIR_S = 3.0
DISCOVERY_S = 1.0
TEXTS = iter(corpus_by_domain()[DOMAIN][40:])


class RelayLab:
    def __init__(self, lab: Lab, root: Path) -> None:
        self.lab, self.root = lab, root
        self.nodes: dict[str, LabNode] = {}
        for name in ("relay", "hidden", "a1", "b1"):
            data_dir = root / name
            peer_id = str(load_or_create(data_dir).peer_id)
            self.nodes[name] = LabNode(name, lab.hosts[name], data_dir, peer_id)
        relay = self.nodes["relay"]
        relay_ips = relay.host.ips  # [site 1, site 3]
        self.relay_site1 = f"/ip4/{relay_ips[0]}/tcp/{PORT}/p2p/{relay.peer_id}"
        self.relay_site3 = f"/ip4/{relay_ips[1]}/tcp/{PORT}/p2p/{relay.peer_id}"
        self.hidden_circuit = f"{self.relay_site1}/p2p-circuit/p2p/{self.nodes['hidden'].peer_id}"

    def launch(self, name: str) -> None:
        node, log = self.nodes[name], self.root / f"{name}.log"
        timers = dict(repair_s=REPAIR_S, discovery_s=DISCOVERY_S)
        if name == "relay":
            listen = ("--listen", f"/ip4/{node.host.ips[1]}/tcp/{PORT}", "--relay-server")
            launch_in_lab(node, log, seeds=[], domains=("writing",), extra=listen, **timers)
        elif name == "hidden":
            extra = ("--relay", self.relay_site3, "--announce", f"{self.relay_site1}/p2p-circuit")
            launch_in_lab(node, log, seeds=[], extra=extra, **timers)
        else:
            seeds = [self.relay_site1, self.hidden_circuit]
            seeds += [self.nodes["a1"].addr] if name == "b1" else []
            launch_in_lab(node, log, seeds=seeds, **timers)

    def start(self, names, timeout: float = 120.0) -> None:
        for name in names:
            self.launch(name)
        for name in names:
            self.nodes[name].launched.wait_ready(timeout, tail_lines=60)

    def relayed_peers(self, name: str) -> set[str]:
        return {p["node_id"] for p in self.nodes[name].call("peers")["peers"] if p["connected"]}

    def report(self) -> str:
        parts = []
        for node in self.nodes.values():
            try:
                brief = node.call("status")["relay"]
            except Exception as exc:  # a dead node is part of the diagnosis
                brief = {"unreachable": repr(exc)}
            parts.append(f"===== {node.name} {node.host.ips}\n{brief}\n{node.tail()}")
        return "\n".join(parts)


def test_a_node_reachable_only_through_a_relay_joins_and_catches_up_after_a_relay_restart():
    root = Path(tempfile.mkdtemp(prefix="fai-rl-", dir="/tmp"))
    lab = Lab.standard(per_site=1)
    fleet = RelayLab(lab, root)
    try:
        try:
            _scenario(fleet)
        except BaseException:
            print(fleet.report())
            raise
    finally:
        logs = tear_down(list(fleet.nodes.values()), lab, root)
    assert_no_traceback(logs)


def _scenario(fleet: RelayLab) -> None:
    nodes = fleet.nodes
    hidden, a1, b1, relay = nodes["hidden"], nodes["a1"], nodes["b1"], nodes["relay"]
    fleet.start(["relay", "a1"])
    fleet.start(["hidden", "b1"])
    assert hidden.call("info")["addrs"] == [f"{fleet.hidden_circuit}"]

    def joined() -> bool:
        reserved = hidden.call("status")["relay"]["reserved_at"] == [relay.peer_id]
        return reserved and {a1.peer_id, b1.peer_id} <= fleet.relayed_peers("hidden")

    wait_for(joined, 60, "hidden to reserve at the relay and a1, b1 to reach it")
    assert hidden.call("status")["relay"]["relayed_connections"] >= 2
    time.sleep(3)  # gossipsub heartbeats build the coding mesh over the circuits

    from_hidden = hidden.publish(next(TEXTS))
    from_b1 = b1.publish(next(TEXTS))
    wait_for(lambda: from_hidden in a1.cids() and from_hidden in b1.cids(), 30, "hidden's batch")
    wait_for(lambda: from_b1 in hidden.cids(), 30, "hidden to receive b1's batch")
    assert not relay.cids(), "the relay carried no coding batch itself"

    relay.launched.send_signal()
    relay.launched.stop(grace=15)
    wait_for(lambda: hidden.peer_id not in fleet.relayed_peers("b1"), 30, "the circuits to end")
    missed = b1.publish(next(TEXTS))
    time.sleep(2)
    assert missed not in hidden.cids()

    restarted = time.monotonic()
    fleet.start(["relay"])
    wait_for(lambda: missed in hidden.cids(), 60, "hidden to repair what it missed")
    print(f"hidden caught up {time.monotonic() - restarted:.1f} s after the relay restarted")
    status = hidden.call("status")
    assert status["relay"]["reserved_at"] == [relay.peer_id]
    for node in (hidden, a1, b1):
        status = node.call("status")
        assert status["evidence"] == 0, (node.name, status)
        reasons = {k for k, v in status["rejections"].items() if v}
        assert reasons <= {"duplicate", "refused_again"}, (node.name, status["rejections"])
        assert all(p["reputation"] == 1.0 for p in node.call("peers")["peers"]), node.name
