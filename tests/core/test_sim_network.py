"""The simulator's gossip model: mesh construction and eager-push propagation.

`propagate` relaxes shortest paths with a vectorised Bellman-Ford; these tests check it
against a plain heapq Dijkstra over the very same per-(batch, edge) hop latencies and losses,
obtained by replaying the function's RNG draws (uniform latencies, then the loss draws, both
of shape (batches, edges), in the mesh's edge order) on a second generator with the same seed.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import pytest

from fai_eval.sim import network
from fai_eval.sim.network import Mesh, propagate

LAT = network.LATENCY_MS


def _edges(mesh: Mesh) -> list[tuple[int, int]]:
    return list(zip(mesh.src.tolist(), mesh.dst.tolist(), strict=True))


def _mesh_from_pairs(n: int, pairs: list[tuple[int, int]]) -> Mesh:
    """A hand-made mesh laid out as Mesh.build lays it out (directed edges grouped by dst)."""
    und = np.array(sorted({(min(a, b), max(a, b)) for a, b in pairs}), dtype=np.int64)
    und = und.reshape(-1, 2)
    src = np.concatenate([und[:, 0], und[:, 1]])
    dst = np.concatenate([und[:, 1], und[:, 0]])
    order = np.lexsort((src, dst))
    return Mesh(np.arange(n, dtype=np.int64), src[order], dst[order], np.bincount(src, minlength=n))


def _replayed_hops(mesh: Mesh, batches: int, seed: int, loss: float) -> np.ndarray:
    """The hop latencies propagate draws from default_rng(seed), lost hops set to inf."""
    rng = np.random.default_rng(seed)
    e = len(mesh.src)
    hop = rng.uniform(*LAT, size=(batches, e))
    lost = rng.random((batches, e)) < loss
    return np.where(lost, np.inf, hop)


def _dijkstra(n: int, edges, weights, source: int, alive) -> np.ndarray:
    """First arrival at every member: dead members neither receive nor forward."""
    adj: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for (a, b), w in zip(edges, weights, strict=True):
        if alive[a] and alive[b] and math.isfinite(w):
            adj[a].append((b, float(w)))
    dist = np.full(n, np.inf)
    dist[source] = 0.0
    heap = [(0.0, source)]
    while heap:
        d, u = heapq.heappop(heap)
        if d > dist[u]:
            continue
        for v, w in adj[u]:
            if d + w < dist[v]:
                dist[v] = d + w
                heapq.heappush(heap, (d + w, v))
    return dist


def _live_degree(n: int, edges, alive) -> np.ndarray:
    deg = np.zeros(n, dtype=np.int64)
    for a, b in edges:
        if alive[a] and alive[b]:
            deg[a] += 1
    return deg


# -- Mesh.build ------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k", "seed"), [(2, 8, 0), (9, 8, 1), (10, 8, 2), (40, 8, 3)])
def test_mesh_is_a_simple_undirected_graph(n, k, seed):
    members = np.random.default_rng(seed).choice(1000, size=n, replace=False)
    mesh = Mesh.build(members, k, np.random.default_rng(seed))
    assert np.array_equal(mesh.members, np.sort(members))
    edges = _edges(mesh)
    assert all(a != b for a, b in edges), "self-loop"
    assert len(set(edges)) == len(edges), "duplicate directed edge"
    assert set(edges) == {(b, a) for a, b in edges}, "an edge without its reverse"
    assert all(0 <= a < n and 0 <= b < n for a, b in edges)
    # The degree array is the number of (undirected) neighbours of each member.
    assert np.array_equal(mesh.degree, np.bincount(mesh.src, minlength=n))
    assert np.array_equal(mesh.degree, np.bincount(mesh.dst, minlength=n))
    # propagate's reduceat needs edges grouped (sorted) by destination.
    assert np.all(np.diff(mesh.dst) >= 0)
    # Mesh.positions maps node ids back to member positions.
    assert np.array_equal(mesh.positions(mesh.members), np.arange(n))


@pytest.mark.parametrize(("n", "k"), [(1, 8), (2, 8), (5, 8), (9, 8), (4, 3)])
def test_small_topic_is_a_full_mesh(n, k):
    mesh = Mesh.build(np.arange(100, 100 + n), k, np.random.default_rng(n))
    assert set(_edges(mesh)) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert np.array_equal(mesh.degree, np.full(n, n - 1))


@pytest.mark.parametrize("k", [4, 8])
def test_large_topic_mean_degree_close_to_k(k):
    n = 600
    mesh = Mesh.build(np.arange(n), k, np.random.default_rng(k))
    # Each member grafts k/2 distinct others: degree >= k/2; duplicates of a pair grafted
    # from both ends pull the mean slightly under k (expected k - 2k^2/(4(n-1)) ~ k - 0.05).
    assert mesh.degree.min() >= k // 2
    assert abs(mesh.degree.mean() - k) < 0.15
    assert len(mesh.src) == mesh.degree.sum()
    # Not a full mesh: far fewer edges than n(n-1).
    assert mesh.degree.max() < 4 * k


def test_mesh_build_is_seed_deterministic():
    a = Mesh.build(np.arange(50), 8, np.random.default_rng(7))
    b = Mesh.build(np.arange(50), 8, np.random.default_rng(7))
    c = Mesh.build(np.arange(50), 8, np.random.default_rng(8))
    assert np.array_equal(a.src, b.src) and np.array_equal(a.dst, b.dst)
    assert not (
        len(a.src) == len(c.src) and np.array_equal(a.src, c.src) and np.array_equal(a.dst, c.dst)
    )


# -- propagate against Dijkstra --------------------------------------------------------------


def _check_against_reference(mesh: Mesh, pubs: np.ndarray, alive: np.ndarray, seed, loss):
    n = len(mesh.members)
    spread = propagate(mesh, pubs, alive, np.random.default_rng(seed), loss=loss)
    hops = _replayed_hops(mesh, len(pubs), seed, loss)
    edges = _edges(mesh)
    live_deg = _live_degree(n, edges, alive)
    assert spread.arrival_ms.shape == spread.sends.shape == (len(pubs), n)
    for b, p in enumerate(pubs.tolist()):
        ref = _dijkstra(n, edges, hops[b], p, alive)
        got = spread.arrival_ms[b]
        assert got[p] == 0.0
        assert np.array_equal(np.isinf(got), np.isinf(ref)), f"batch {b}: reach differs"
        fin = np.isfinite(ref)
        np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-12, atol=0)
        # Dead members are never reached (a dead publisher keeps only its own 0).
        dead = ~alive
        dead[p] = False
        assert np.all(np.isinf(got[dead]))
        # Sends: the publisher pushes to every live peer, a reached node to all but one,
        # an unreached node to none.
        want = np.where(fin, np.maximum(live_deg - 1, 0), 0)
        want[p] = live_deg[p]
        assert np.array_equal(spread.sends[b], want), f"batch {b}: sends"
    return spread


@pytest.mark.parametrize(("n", "seed"), [(3, 0), (9, 1), (12, 2), (30, 3), (80, 4)])
def test_arrivals_equal_dijkstra_without_loss(n, seed):
    mesh = Mesh.build(np.arange(n) * 3 + 1, 8, np.random.default_rng(seed))
    pubs = np.random.default_rng(seed + 100).integers(0, n, size=5)
    alive = np.ones(n, dtype=bool)
    spread = _check_against_reference(mesh, pubs, alive, seed, loss=0.0)
    # A connected mesh without loss reaches everyone, and nothing is faster than one hop.
    reached = np.isfinite(spread.arrival_ms)
    assert reached.all()
    others = spread.arrival_ms[spread.arrival_ms > 0]
    assert others.min() >= LAT[0]


@pytest.mark.parametrize(("n", "seed", "loss", "dead"), [(20, 5, 0.3, 0.0), (40, 6, 0.1, 0.25)])
def test_arrivals_equal_dijkstra_with_loss_and_dead_members(n, seed, loss, dead):
    mesh = Mesh.build(np.arange(n), 6, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    alive = rng.random(n) >= dead
    pubs = np.flatnonzero(alive)[:6]
    spread = _check_against_reference(mesh, pubs, alive, seed, loss=loss)
    # The scenario exercises what it claims: some live members are missed, and any dead
    # ones are never reached.
    missed = np.isinf(spread.arrival_ms[:, alive])
    assert missed.any() and not missed.all()
    assert (~alive).any() == (dead > 0)
    assert np.isinf(spread.arrival_ms[:, ~alive]).all()


def test_long_line_needs_many_relaxation_rounds():
    """A path of 60 members: the far end is 59 hops away, reached through the sum of them."""
    n = 60
    mesh = _mesh_from_pairs(n, [(i, i + 1) for i in range(n - 1)])
    spread = _check_against_reference(mesh, np.array([0, n - 1]), np.ones(n, bool), 11, 0.0)
    hops = _replayed_hops(mesh, 2, 11, 0.0)
    w = {e: hops[0, j] for j, e in enumerate(_edges(mesh))}
    assert spread.arrival_ms[0, -1] == pytest.approx(sum(w[(i, i + 1)] for i in range(n - 1)))


def test_dead_cut_vertex_partitions_the_mesh():
    # Two triangles {0, 1, 2} and {2, 3, 4} joined at member 2.
    mesh = _mesh_from_pairs(5, [(0, 1), (0, 2), (1, 2), (2, 3), (2, 4), (3, 4)])
    alive = np.array([True, True, False, True, True])
    spread = _check_against_reference(mesh, np.array([0, 3]), alive, 3, 0.0)
    assert np.isfinite(spread.arrival_ms[0, [0, 1]]).all()
    assert np.isinf(spread.arrival_ms[0, [2, 3, 4]]).all()
    assert np.isfinite(spread.arrival_ms[1, [3, 4]]).all()
    assert np.isinf(spread.arrival_ms[1, [0, 1, 2]]).all()
    # 0 pushes only to 1 (2 is dead); 1 heard it from 0 and has no one else alive.
    assert spread.sends[0].tolist() == [1, 0, 0, 0, 0]
    # With the cut vertex alive, everyone is reached.
    spread = propagate(mesh, np.array([0]), np.ones(5, bool), np.random.default_rng(3), loss=0.0)
    assert np.isfinite(spread.arrival_ms).all()
    assert spread.sends[0].tolist() == [2, 1, 3, 1, 1]


def test_dead_publisher_reaches_nobody():
    mesh = Mesh.build(np.arange(6), 8, np.random.default_rng(0))
    alive = np.ones(6, bool)
    alive[2] = False
    spread = propagate(mesh, np.array([2]), alive, np.random.default_rng(0), loss=0.0)
    assert spread.arrival_ms[0, 2] == 0.0
    assert np.isinf(np.delete(spread.arrival_ms[0], 2)).all()
    assert not spread.sends.any()


def test_total_loss_reaches_only_the_publisher():
    mesh = Mesh.build(np.arange(15), 8, np.random.default_rng(1))
    pubs = np.array([0, 7, 14])
    spread = propagate(mesh, pubs, np.ones(15, bool), np.random.default_rng(1), loss=1.0)
    for b, p in enumerate(pubs):
        assert spread.arrival_ms[b, p] == 0.0
        assert np.isinf(np.delete(spread.arrival_ms[b], p)).all()
        # The publisher still pushes its copies (all lost); nobody else sends.
        assert spread.sends[b, p] == mesh.degree[p]
        assert spread.sends[b].sum() == mesh.degree[p]


def test_no_batches_and_no_edges():
    mesh = Mesh.build(np.arange(5), 8, np.random.default_rng(0))
    spread = propagate(mesh, np.zeros(0, np.int64), np.ones(5, bool), np.random.default_rng(0))
    assert spread.arrival_ms.shape == (0, 5) and spread.sends.shape == (0, 5)
    lone = Mesh.build(np.array([4]), 8, np.random.default_rng(0))
    spread = propagate(lone, np.array([0]), np.ones(1, bool), np.random.default_rng(0))
    assert spread.arrival_ms.tolist() == [[0.0]] and spread.sends.tolist() == [[0]]
