"""Deferral of over-cap rows (per-sender backlog) and replay-guard pruning, on real embeddings."""

from __future__ import annotations

import numpy as np

from fai_core.deltasoup import DeltaSoup, DeltaSoupConfig, Drop
from fai_core.identity import NodeKey
from fai_eval.scenario import NOW_MS, Node

#: Filters that depend on small-sample luck (domain centroids, quality quantile) are off: these
#: tests are about the cap and the backlog, and every row here is honest.
CFG = DeltaSoupConfig(domain_min_senders=99, quality_quantile=1.0, history_min_senders=99)
PER = 20  # rows each ordinary node sends per round


def _round_batches(scenario, rnd, extra=None):
    """Each of honest nodes 1..5 sends its next PER texts; `extra` = (node, count) too."""
    ts = NOW_MS + rnd * 60_000
    out = []
    for node in scenario.honest[1:6]:
        out += _slice_batches(node, rnd * PER, (rnd + 1) * PER, ts, rnd)
    if extra is not None:
        node, lo, hi = extra
        out += _slice_batches(node, lo, hi, ts, rnd)
    return out, ts + 1000


def _slice_batches(node, lo, hi, ts, rnd):
    sl = slice(lo, hi)
    part = Node(node.key, node.texts[sl], node.domains[sl], node.vectors[sl], node.quality[sl])
    return [b.batch for b in part.batches(ts=ts, seq0=1 + 10 * rnd)]


def _kept(result, sender):
    return [
        t
        for s, t, d in zip(result.row_sender, result.row_text, result.row_drop, strict=True)
        if s == sender and d is None
    ]


def _big_node(scenario, key_byte, idx):
    return scenario._node(0, idx, NodeKey(bytes([key_byte]) * 32))


def test_productive_honest_node_loses_nothing(scenario, embedder):
    """3x the median rate for two rounds: deferred, then merged in full over later rounds."""
    big = _big_node(scenario, 0x55, scenario.pool_idx[:120])
    soup = DeltaSoup(embedder, config=CFG)
    merged: list[str] = []
    for rnd in range(6):
        extra = (big, 3 * PER * rnd, 3 * PER * (rnd + 1)) if rnd < 2 else None
        batches, now = _round_batches(scenario, rnd, extra)
        r = soup.aggregate(batches, now)
        mine = _kept(r, big.key.public_key)
        assert len(mine) <= PER
        merged += mine
        drops = {
            d for s, d in zip(r.row_sender, r.row_drop, strict=True) if s == big.key.public_key
        }
        assert drops <= {None, Drop.DEFERRED}
        deferred = sum(o.deferred_rows for o in r.outcomes if o.sender == big.key.public_key)
        assert deferred == soup.backlog_rows(big.key.public_key)
    assert sorted(merged) == sorted(big.texts)
    assert soup.backlog_rows() == 0
    assert soup.reputation.score(big.key.public_key) == 1.0


def test_quiet_round_drains_backlog(scenario, embedder):
    big = _big_node(scenario, 0x56, scenario.pool_idx[:60])
    soup = DeltaSoup(embedder, config=CFG)
    batches, now = _round_batches(scenario, 0, (big, 0, 60))
    first = _kept(soup.aggregate(batches, now), big.key.public_key)
    assert len(first) == PER and soup.backlog_rows(big.key.public_key) == 60 - PER
    rest: list[str] = []
    for k in range(1, 6):  # no new traffic: the cap is min_cap = 8 rows per sender
        got = _kept(soup.aggregate([], now + k * 60_000), big.key.public_key)
        assert len(got) == CFG.min_cap
        rest += got
    assert sorted(first + rest) == sorted(big.texts)
    assert soup.backlog_rows() == 0


def test_flooder_share_bounded_and_overflow_counted(scenario, embedder):
    cfg = DeltaSoupConfig(domain_min_senders=99, quality_quantile=1.0, max_backlog_rows=100)
    flood = _big_node(scenario, 0x66, scenario.honest_idx[:800])
    soup = DeltaSoup(embedder, config=cfg)
    kept_flood = kept_all = 0
    offered = 0
    over_cap = 0
    for rnd in range(4):
        batches, now = _round_batches(scenario, rnd, (flood, 200 * rnd, 200 * (rnd + 1)))
        r = soup.aggregate(batches, now)
        mine = len(_kept(r, flood.key.public_key))
        assert mine <= PER
        kept_flood += mine
        kept_all += sum(d is None for d in r.row_drop)
        over_cap += sum(
            o.dropped_rows.get(Drop.OVER_CAP, 0)
            for o in r.outcomes
            if o.sender == flood.key.public_key
        )
        offered += 200
        assert soup.backlog_rows(flood.key.public_key) == 100
    assert kept_flood / kept_all <= 1 / 6 + 1e-9
    assert over_cap == offered - kept_flood - 100 > 0
    assert soup.reputation.score(flood.key.public_key) == 1.0


def test_backlog_round_independent_of_arrival_order(scenario, embedder):
    big = _big_node(scenario, 0x57, scenario.pool_idx[:120])
    results = []
    for shuffle in (False, True):
        soup = DeltaSoup(embedder, config=CFG)
        for rnd in range(2):
            batches, now = _round_batches(scenario, rnd, (big, 60 * rnd, 60 * (rnd + 1)))
            if shuffle:
                np.random.default_rng(rnd).shuffle(batches)
            r = soup.aggregate(batches, now)
        results.append(r)
    a, b = results
    assert a.texts == b.texts
    assert np.array_equal(a.embeddings, b.embeddings)


def test_replay_guard_memory_bounded(scenario, embedder):
    """A long run: the guard holds at most ~2 T_max of batches; replays inside it are refused."""
    node = scenario.honest[0]
    soup = DeltaSoup(embedder, config=CFG)
    step = 60_000  # one batch a minute, T_max = 5 min: the horizon holds ~10-15 batches
    sizes = []
    prev = first = None
    for k in range(200):
        ts = NOW_MS + k * step
        b = Node(node.key, node.texts[:2], node.domains[:2], node.vectors[:2], node.quality[:2])
        batch = b.batches(ts=ts, seq0=1 + 10 * k)[0].batch
        assert soup.verify(batch, ts + 1000) is None
        if prev is not None:
            assert soup.verify(prev, ts + 1000) is Drop.REPLAY  # within the window
        prev, first = batch, first or batch
        sizes.append(len(soup.replay))
    assert max(sizes) <= 2 * 16
    assert max(sizes[100:]) == max(sizes[20:100])  # flat, not growing
    assert soup.replay._newest[node.key.public_key] >= 1 + 10 * 199  # kept per sender
    assert first.cid not in soup.replay._cids  # pruned, and still refused by freshness:
    assert soup.verify(first, NOW_MS + 200 * step) is Drop.STALE
