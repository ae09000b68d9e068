"""Issue 20, "Beyond one machine": six real node processes in six network namespaces on
two routed sites (fai_net/devnet/netns.py), driven through their control sockets.

`Lab.standard(per_site=3)` gives a1..a3 on site 1 (10.91.1.0/24) and b1..b3 on site 2
(10.91.2.0/24), joined through a router namespace (the lab's `relay` and `hidden` hosts are
not used here). Each host runs `fai node run` listening on its own address, port 4001. Every
node's key is made before any node starts (`identity.load_or_create`), so every seed address
carries its /p2p/ peer id from the start.

Seeds: a1 and b1 start first, with none; then a2 and a3 seed a1 and b1, b2 and b3 seed b1
and a1. So each site stays connected by itself when the router's leg to site 2 is cut
(a1-a2, a1-a3; b1-b2, b1-b3), and every node has a peer on the other site, reached through
the router (a2-b1, a3-b1, b2-a1, b3-a1).

One module-scoped fleet (start-up is the expensive part); each test compares against what
the nodes hold at that moment, so the tests do not depend on their order. Teardown stops
every node (SIGTERM, then SIGKILL), then removes the lab, also after a failure; a failing
test prints each node's status and the tail of its log.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fai_net.devnet.netns import Lab, lab_unavailable
from fai_net.node.identity import load_or_create
from tests.support.fleet import corpus_by_domain, wait_for
from tests.support.lab_nodes import (
    DOMAIN,
    LabNode,
    assert_no_traceback,
    launch_in_lab,
    stop_all,
    tear_down,
)

_UNAVAILABLE = lab_unavailable()
pytestmark = [
    pytest.mark.slow,  # starts six node processes
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE)),
]

SITE_1 = ("a1", "a2", "a3")
SITE_2 = ("b1", "b2", "b3")
NAMES = SITE_1 + SITE_2
#: Started first, without seeds; every other node seeds both.
FIRST_WAVE = ("a1", "b1")
#: Anti-entropy period of every node: short, so that healing is quick to observe.
REPAIR_S = 5.0
DISCOVERY_S = 1.0
#: How long the sites stay apart.
CUT_S = 30.0
#: After the heal, every node must hold every batch within REPAIR_S + MARGIN_S. A node that
#: lost its connection to the other site during the cut dials it again at its next discovery
#: tick (DISCOVERY_S), and a dial already under way when the router comes back may take the
#: rest of discovery's 5 s per dial; the new connection wakes a repair pass at once on the
#: dialling side, the other side's pass comes within REPAIR_S; a few seconds more for the
#: handshakes and the repair round trips on two shared cores.
MARGIN_S = DISCOVERY_S + 5 + 4
#: How long to wait for the heal at all, to report how late it came (and still check the
#: rest) when it misses the bound: TCP resumes a connection stalled by the cut at its next
#: retransmission, which backs off to about as long as the cut lasted.
HEAL_WAIT_S = REPAIR_S + CUT_S + 15
TEXTS = corpus_by_domain()[DOMAIN]
_used = {"n": 0}


def fresh_text() -> str:
    """A corpus sentence not used before in this module (a new experience id)."""
    _used["n"] += 1
    return TEXTS[_used["n"] - 1]


class NetnsFleet:
    """Six nodes, one per lab host."""

    def __init__(self, lab: Lab, root: Path) -> None:
        self.lab, self.root = lab, root
        self.nodes: dict[str, LabNode] = {}
        for name in NAMES:
            data_dir = root / name  # /tmp/fai-ns-XXXXXXXX/a1: far below the socket limit
            identity = load_or_create(data_dir)  # node.key now: the peer id is known
            self.nodes[name] = LabNode(name, lab.hosts[name], data_dir, str(identity.peer_id))

    def seeds(self, name: str) -> list[LabNode]:
        return [] if name in FIRST_WAVE else [self.nodes[n] for n in FIRST_WAVE]

    def neighbours(self, name: str) -> set[str]:
        """The nodes `name` connects to: its seeds and the nodes it seeds."""
        seeds = {n.name for n in self.seeds(name)}
        return seeds | {n for n in NAMES if name in {s.name for s in self.seeds(n)}}

    def start(self, timeout: float = 120.0) -> None:
        """The first wave, then the rest: a seed must listen when it is first dialled, as
        py-libp2p does not dial a peer again for 60 s after a failed dial."""
        for wave in (FIRST_WAVE, [n for n in NAMES if n not in FIRST_WAVE]):
            for name in wave:
                self.launch(self.nodes[name])
            for name in wave:
                node = self.nodes[name]
                info = node.launched.wait_ready(timeout, tail_lines=60)
                assert info["peer_id"] == node.peer_id, info

    def launch(self, node: LabNode) -> None:
        seeds = [seed.addr for seed in self.seeds(node.name)]
        log = self.root / f"{node.name}.log"
        launch_in_lab(node, log, seeds=seeds, repair_s=REPAIR_S, discovery_s=DISCOVERY_S)

    def site(self, number: int) -> list[LabNode]:
        return [n for n in self.nodes.values() if n.site == number]

    def stop(self) -> None:
        stop_all(self.nodes.values())

    def report(self) -> str:
        parts = []
        for node in self.nodes.values():
            try:
                status = node.call("status")
                brief = {k: status[k] for k in ("peers", "batches_stored", "rejections")}
                brief["evidence"] = status["evidence"]
            except Exception as exc:  # a dead node is part of the diagnosis
                brief = {"unreachable": repr(exc)}
            head = f"===== {node.name} {node.host.ip} {node.peer_id}"
            parts.append(f"{head}\n{brief}\n{node.tail()}")
        return "\n".join(parts)

    @contextmanager
    def explained(self) -> Iterator[None]:
        """On failure, print every node's status and log tail (pytest shows it)."""
        try:
            yield
        except BaseException:
            print(self.report())
            raise


@pytest.fixture(scope="module")
def fleet():
    root = Path(tempfile.mkdtemp(prefix="fai-ns-", dir="/tmp"))
    lab = Lab.standard(per_site=3)
    f: NetnsFleet | None = None
    try:
        f = NetnsFleet(lab, root)
        with f.explained():
            f.start()
            wait_for(
                lambda: all(
                    n.call("status")["peers"] >= len(f.neighbours(n.name)) for n in f.nodes.values()
                ),
                60,
                "every node to connect to its seeds and to the nodes it seeds",
            )
            time.sleep(3)  # a few gossipsub heartbeats (1 s) to build the meshes
        yield f
    finally:
        logs = tear_down(list(f.nodes.values()) if f is not None else [], lab, root)
        assert_no_traceback(logs)


def _agree(fleet: NetnsFleet) -> list[set[str]] | None:
    """[what every node holds], once they all hold the same (None before)."""
    held = [n.cids() for n in fleet.nodes.values()]
    return [held[0]] if all(h == held[0] for h in held) else None


def test_six_nodes_on_two_sites_share_every_batch(fleet):
    with fleet.explained():
        started = time.monotonic()
        published = {node.name: node.publish(fresh_text()) for node in fleet.nodes.values()}
        assert len(set(published.values())) == 6
        want = set(published.values())
        for node in fleet.nodes.values():
            wait_for(lambda node=node: want <= node.cids(), 30, f"{node.name} to hold all six")
        print(f"six batches on six nodes in {time.monotonic() - started:.1f} s")
        # The batches crossed the router: each site holds the other site's ...
        for node in fleet.nodes.values():
            other = {published[n.name] for n in fleet.site(3 - node.site)}
            assert len(other) == 3 and other <= node.cids()
        # ... which only reach it through a peer on the other site (its 10.91.x subnet).
        for node in fleet.nodes.values():
            others = {n.peer_id for n in fleet.site(3 - node.site)}
            peers = {p["node_id"] for p in node.call("peers")["peers"] if p["connected"]}
            assert peers & others, f"{node.name} has no peer on the other site"


def test_partition_then_heal_repairs_without_charging_anyone(fleet):
    lab = fleet.lab
    with fleet.explained():
        [before] = wait_for(lambda: _agree(fleet), 30, "the nodes to agree before the cut")
        lab.cut(2)
        cut_at = time.monotonic()
        try:
            # Two batches per node during the cut, ten seconds apart.
            mine: dict[int, set[str]] = {1: set(), 2: set()}
            for _ in range(2):
                for node in fleet.nodes.values():
                    mine[node.site].add(node.publish(fresh_text()))
                time.sleep(10)
            assert len(mine[1]) == len(mine[2]) == 6
            # Each side gets its own side's batches by gossip, and none of the other's.
            for node in fleet.nodes.values():
                wait_for(
                    lambda node=node: mine[node.site] <= node.cids(),
                    max(CUT_S - (time.monotonic() - cut_at) - 1, 1),
                    f"{node.name} to hold its own site's batches during the cut",
                )
            for node in fleet.nodes.values():
                got = mine[3 - node.site] & node.cids()
                assert not got, f"{node.name} got {got} across the cut router"
            time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))
        finally:
            lab.heal(2)
        healed_at = time.monotonic()
        want = before | mine[1] | mine[2]
        took: dict[str, float] = {}
        while len(took) < len(fleet.nodes) and time.monotonic() - healed_at < HEAL_WAIT_S:
            for node in fleet.nodes.values():
                if node.name not in took and want <= node.cids():
                    took[node.name] = round(time.monotonic() - healed_at, 1)
            time.sleep(0.25)
        missing = {n.name: len(want - n.cids()) for n in fleet.nodes.values() if n.name not in took}
        assert not missing, f"batches still missing {HEAL_WAIT_S} s after the heal: {missing}"
        # Nothing was charged for the outage: no evidence, no refusal but copies of batches
        # already held, every peer's reputation untouched.
        for node in fleet.nodes.values():
            status = node.call("status")
            assert status["evidence"] == 0, (node.name, status)
            reasons = {k for k, v in status["rejections"].items() if v}
            assert reasons <= {"duplicate", "refused_again"}, (node.name, status["rejections"])
            peers = node.call("peers")["peers"]
            assert len(peers) >= len(fleet.neighbours(node.name)), (node.name, peers)
            assert all(p["reputation"] == 1.0 for p in peers), (node.name, peers)
        # ... and it was over within one repair interval (and the margin) of the heal.
        how = {n.name: n.arrivals(mine[3 - n.site]) for n in fleet.nodes.values()}
        print(f"healed after {took} s; the other site's batches came by {how}")
        assert max(took.values()) <= REPAIR_S + MARGIN_S, (
            f"every node held every batch only {max(took.values())} s after the heal, not "
            f"within {REPAIR_S} + {MARGIN_S} s: {took}; the other site's batches came by {how}"
        )
