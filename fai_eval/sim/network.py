"""Gossip on a simulated network: who receives each batch, when, and at what byte cost.

One mesh per domain topic, over the topic's subscribers: every subscriber grafts `k / 2`
random others, so every member has at least k / 2 mesh peers and the mean degree tends to k
(gossipsub's D; the paper's fanout k = 8) as the topic grows (about 7.5 at 40 members,
where two nodes often graft each other); a topic of at most k + 1 members is a full mesh.
A published batch is pushed eagerly along the mesh: each live node that receives it for
the first time forwards it to its other live mesh peers. Every hop takes U(10, 100) ms
and is lost with probability 1%, independently per (batch, hop), so a node's first
arrival time is the shortest path through the surviving hops. Paths are relaxed for all of
a topic's batches of a round at once (Bellman-Ford over the edge list, vectorised over
batches), which gives exactly the per-hop event order of a discrete-event run without one
Python event per hop.

Latency decides only the reported delivery percentiles: every batch is delivered in the
round it was published, and receivers aggregate at the end of each round. What is not
modelled: gossipsub's lazy IHAVE/IWANT gossip (a node the eager push missed is
recovered by FAI's repair protocol in the next round instead) and mesh maintenance (the
mesh is drawn once; dead members simply stop forwarding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LATENCY_MS = (10.0, 100.0)
LOSS = 0.01


@dataclass
class Mesh:
    members: np.ndarray  # node ids, sorted
    src: np.ndarray  # directed edges (both directions), positions into members
    dst: np.ndarray
    degree: np.ndarray  # per member

    @classmethod
    def build(cls, members: np.ndarray, k: int, rng: np.random.Generator) -> Mesh:
        members = np.sort(np.asarray(members, dtype=np.int64))
        n = len(members)
        pairs: set[tuple[int, int]] = set()
        if n <= k + 1:
            pairs = {(a, b) for a in range(n) for b in range(a + 1, n)}
        else:
            for a in range(n):
                others = rng.choice(n - 1, size=k // 2, replace=False)
                for b in others:
                    b = int(b) + (b >= a)
                    pairs.add((min(a, b), max(a, b)))
        und = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
        src = np.concatenate([und[:, 0], und[:, 1]])
        dst = np.concatenate([und[:, 1], und[:, 0]])
        order = np.lexsort((src, dst))
        return cls(members, src[order], dst[order], np.bincount(src, minlength=n))

    def positions(self, nodes: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.members, nodes)


@dataclass
class Spread:
    arrival_ms: np.ndarray  # (batches, members): first arrival after publish; inf = missed
    sends: np.ndarray  # (batches, members): copies each member pushed


def propagate(
    mesh: Mesh,
    publishers: np.ndarray,
    alive: np.ndarray,
    rng: np.random.Generator,
    *,
    latency_ms: tuple[float, float] = LATENCY_MS,
    loss: float = LOSS,
) -> Spread:
    """Eager push of one batch per entry of `publishers` (member positions) over the mesh.

    `alive` is a boolean per member: dead members neither receive nor forward.
    """
    b, n = len(publishers), len(mesh.members)
    arrival = np.full((b, n), np.inf)
    arrival[np.arange(b), publishers] = 0.0
    if b == 0 or len(mesh.src) == 0:
        return Spread(arrival, np.zeros((b, n), dtype=np.int64))
    e = len(mesh.src)
    usable = alive[mesh.src] & alive[mesh.dst]
    hop = rng.uniform(*latency_ms, size=(b, e))
    hop[(rng.random((b, e)) < loss) | ~usable[None, :]] = np.inf
    starts = np.flatnonzero(np.r_[True, mesh.dst[1:] != mesh.dst[:-1]])
    targets = mesh.dst[starts]
    for _ in range(4 * n):
        cand = arrival[:, mesh.src] + hop
        best = np.minimum.reduceat(cand, starts, axis=1)
        improved = best < arrival[:, targets]
        if not improved.any():
            break
        arrival[:, targets] = np.minimum(arrival[:, targets], best)
    # Each reached node pushes to its live mesh peers except the one it heard from first;
    # the publisher pushes to all of them.
    live_degree = np.bincount(mesh.src[usable], minlength=n)
    reached = np.isfinite(arrival)
    sends = np.where(reached, live_degree[None, :] - 1, 0)
    sends[np.arange(b), publishers] = live_degree[publishers]
    return Spread(arrival, np.maximum(sends, 0))
