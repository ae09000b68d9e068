"""DeltaSoup's filters (fai_core/deltasoup_filters.py) on small hand-built rounds.

tests/core/test_deltasoup_filters.py checks the filters on the simulator's rounds; these
pin the arithmetic on rounds small enough to work out by hand: the robust statistics, the
per-sender cap ranking, the re-encoding scores against a plain recomputation of their
documented formulas, and each threshold at a value just inside and just outside it. They
are the edges `make mutate` found untested (docs/mutation.md).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from fai_core import bitdelta
from fai_core.deltasoup import DeltaSoupConfig
from fai_core.deltasoup_filters import (
    CapDeferral,
    ConfidenceInflation,
    DomainTag,
    OverCap,
    RoundRows,
    ScaleConsistency,
    ScaleOutlier,
    SemanticConsistency,
    domain_centroids,
    id_rank,
    offer_rank,
    re_encoding,
    robust_z,
    rowwise_cos,
    weighted_median,
    weighted_quantile,
)

CFG = DeltaSoupConfig()


# -- robust statistics -------------------------------------------------------------------


def test_id_rank_orders_bytes_and_shares_ranks():
    assert id_rank([]).dtype == np.int64 and id_rank([]).shape == (0,)
    ranks = id_rank([b"\x02", b"\x01\xff", b"\x02", b"\x00"])
    assert ranks.tolist() == [2, 1, 2, 0] and ranks.dtype == np.int64


def test_id_rank_compares_ids_as_bytes_not_as_numbers():
    # As bytes, b"\x01\x00" < b"\x02" (a numeric or fixed-width view would disagree).
    assert id_rank([b"\x02", b"\x01\x00\x00"]).tolist() == [1, 0]
    # Ids that differ only in trailing zero bytes are different ids (numpy's fixed-width
    # bytes would strip the zeros and make them one).
    assert id_rank([b"\x01\x00", b"\x01"]).tolist() == [1, 0]


def test_rowwise_cos_is_per_row_and_zero_for_a_zero_row():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(rowwise_cos(a, b), [1.0, -1 / math.sqrt(2), 0.0])


def test_weighted_quantile_uses_the_weights_and_the_lower_value():
    values = np.array([3.0, 1.0, 2.0, 10.0])
    assert weighted_median(values, np.ones(4)) == 2.0  # lower median of 1, 2, 3, 10
    assert np.shape(weighted_median(values, np.ones(4))) == ()  # a column in, a number out
    assert weighted_median(values, np.array([1.0, 1.0, 1.0, 5.0])) == 10.0
    assert weighted_quantile(values, np.ones(4), 0.75) == 3.0  # exactly 3/4 of the weight
    assert weighted_quantile(values, np.ones(4), 0.76) == 10.0
    assert weighted_quantile(values, np.ones(4), 1.0) == 10.0
    assert weighted_quantile(values, np.array([1.0, 1.0, 1.0, 0.0]), 1.0) == 3.0


def test_weighted_quantile_works_per_column():
    values = np.array([[1.0, 40.0], [2.0, 30.0], [3.0, 20.0], [4.0, 10.0]])
    out = weighted_median(values, np.ones(4))
    assert out.shape == (2,) and out.tolist() == [2.0, 20.0]
    assert weighted_median(values[:, :1], np.ones(4)).shape == (1,)


def test_weighted_quantile_keeps_ties_in_their_order():
    values = np.array([1.0, 1.0, 1.0, 5.0])
    # Stable sort: cumulated weights 3, 1, 0 for the tied ones; the median is the first
    # tie that reaches half the weight.
    assert weighted_median(values, np.array([3.0, 1.0, 0.0, 4.0])) == 1.0


def test_robust_z_is_the_distance_in_scaled_mads():
    cfg = replace(CFG, mad_scale=2.0, eps=0.0)
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    # median 3, absolute deviations 2 1 0 1 97 -> MAD 1 (lower median of 0 1 1 2 97).
    np.testing.assert_allclose(robust_z(values, np.ones(5), cfg), [1.0, 0.5, 0.0, 0.5, 48.5])
    cfg = replace(CFG, mad_scale=1.0, eps=1.0)
    np.testing.assert_allclose(robust_z(values, np.ones(5), cfg), [1.0, 0.5, 0.0, 0.5, 48.5])
    flat = robust_z(np.array([5.0, 5.0, 6.0]), np.ones(3), replace(CFG, eps=0.5))
    np.testing.assert_allclose(flat, [0.0, 0.0, 2.0])


# -- hand-built rounds --------------------------------------------------------------------

DIM, GROUP = 8, 2
RNG = np.random.default_rng(7)


class FakeBatch:
    """What the filters read of a `Batch`: sender, seq, domain, rows and their columns."""

    def __init__(
        self, sender: int, seq: int, n: int, *, domain="coding", quality=None, group=GROUP
    ):
        self.sender = bytes([sender]) * 32
        self.seq = seq
        self.domain = domain
        self.group = group
        self.ids = [bytes([sender, seq % 256, i]) for i in range(n)]
        self.texts = [f"text {sender} {seq} {i}" for i in range(n)]
        self.quality = np.full(n, 0.5, np.float32) if quality is None else np.asarray(quality)
        self.baseline = RNG.standard_normal(DIM).astype(np.float32)
        self.scales = np.ones((n, -(-DIM // group)), np.float32)
        self.received = np.zeros((n, DIM), np.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def embeddings(self) -> np.ndarray:
        return self.received


def rows_of(batches, n_backlog=0) -> RoundRows:
    return RoundRows.collect(batches, DIM, n_backlog)


def test_collect_lays_out_the_rows_of_every_batch():
    a, b = FakeBatch(2, 1, 2, quality=[0.25, 0.75]), FakeBatch(1, 9, 3)
    rows = rows_of([a, b], n_backlog=1)
    assert len(rows) == 5 and rows.sizes == [2, 3] and rows.n_senders == 2
    assert rows.batch.tolist() == [0, 0, 1, 1, 1]
    assert rows.node.tolist() == [1, 1, 0, 0, 0]  # senders in byte order
    assert rows.fresh.tolist() == [False, False, True, True, True]
    assert rows.ids == a.ids + b.ids and rows.texts == a.texts + b.texts
    assert rows.quality.tolist() == [0.25, 0.75, 0.5, 0.5, 0.5]
    assert rows.drop.tolist() == [0] * 5 and rows.drop.dtype == np.int64
    for grid in (rows.received, rows.own):
        assert grid.shape == (5, DIM) and grid.dtype == np.float32 and not grid.any()
    assert RoundRows.collect([a, b], DIM).fresh.all()  # no backlog unless told


def test_collect_of_nothing_is_an_empty_round():
    rows = rows_of([])
    assert len(rows) == 0 and rows.n_senders == 0
    assert rows.batch.shape == (0,) and rows.batch.dtype == np.int64
    assert rows.quality.shape == (0,) and rows.received.shape == (0, DIM)


def test_slices_walk_the_batches_in_order():
    a, b = FakeBatch(1, 1, 2), FakeBatch(2, 1, 3)
    rows = rows_of([a, b])
    assert [(x, s) for x, s in rows.slices()] == [(a, slice(0, 2)), (b, slice(2, 5))]
    rows.sizes = [2]
    with pytest.raises(ValueError, match="zip"):
        list(rows.slices())


def test_the_reference_weighs_each_sender_one_in_total():
    rows = rows_of([FakeBatch(1, 1, 2), FakeBatch(2, 1, 3), FakeBatch(3, 1, 1)])
    rows.drop[2] = 5  # one of sender 2's rows is out
    rows.drop[5] = 5  # sender 3 has no row left
    rows.fix_reference()
    assert rows.reference.tolist() == [True, True, False, True, True, False]
    assert rows.weight.tolist() == [0.5, 0.5, 0.0, 0.5, 0.5, 0.0]


# -- the cap --------------------------------------------------------------------------------


def test_offer_rank_is_computed_once_per_round():
    rows = rows_of([FakeBatch(1, 1, 3)])
    rank, cap = offer_rank(rows, CFG)
    again = offer_rank(rows, replace(CFG, min_cap=1))  # the cached answer, cap and all
    assert again is rows.cache["offer_rank"]
    assert again[0] is rank and again[1] == cap == CFG.min_cap


def test_a_backlog_only_sender_votes_zero_for_the_cap():
    # Sender 1: 3 new rows; sender 2: 5 backlog rows and nothing new. Median of (3, 0).
    rows = rows_of([FakeBatch(2, 1, 5), FakeBatch(1, 2, 3)], n_backlog=1)
    cfg = replace(CFG, min_cap=1, cap_factor=1.0, max_cap=None)
    assert offer_rank(rows, cfg)[1] == 1  # floor(1.5)


def test_the_cap_scales_with_the_factor_and_is_bounded():
    rows = rows_of([FakeBatch(1, 1, 3), FakeBatch(2, 1, 3)])
    assert offer_rank(rows_of(rows.batches), replace(CFG, min_cap=1, cap_factor=2.0))[1] == 6
    assert offer_rank(rows_of(rows.batches), replace(CFG, min_cap=1, cap_factor=0.5))[1] == 1
    assert offer_rank(rows_of(rows.batches), replace(CFG, min_cap=4, cap_factor=0.5))[1] == 4
    bounded = replace(CFG, min_cap=1, cap_factor=2.0, max_cap=5)
    assert offer_rank(rows_of(rows.batches), bounded)[1] == 5


def test_the_backlog_is_ranked_first_by_seq_then_new_rows_by_id():
    late, early, new = FakeBatch(1, 9, 2), FakeBatch(1, 3, 2), FakeBatch(1, 20, 2)
    new.ids = [b"\x09", b"\x01"]
    rows = rows_of([late, early, new], n_backlog=2)
    rank, _ = offer_rank(rows, replace(CFG, min_cap=1))
    # early (seq 3) before late (seq 9), then the new rows by id.
    assert rank.tolist() == [2, 3, 0, 1, 5, 4]


def test_new_rows_are_ranked_by_id_whatever_their_seq():
    older, newer = FakeBatch(1, 10, 1), FakeBatch(1, 20, 1)
    older.ids, newer.ids = [b"\x09"], [b"\x01"]
    rows = rows_of([older, newer])
    assert offer_rank(rows, replace(CFG, min_cap=1))[0].tolist() == [1, 0]


def test_over_cap_and_deferral_use_the_same_cap():
    rows = rows_of([FakeBatch(1, 1, 6)])
    cfg = replace(CFG, min_cap=2, max_cap=2, max_backlog_rows=3)
    assert CapDeferral().refuse(rows, cfg).refused.tolist() == [False] * 2 + [True] * 4
    assert OverCap().refuse(rows, cfg).refused.tolist() == [False] * 5 + [True]
    assert CapDeferral().refuse(rows, cfg).scores == {}


# -- re-encoding against the receiver's own embedding -------------------------------------


def encoded_round(*, eps=0.01, seed=7, spread=0.2):
    """Two batches whose sent scales are the receiver's own times known factors; row 2 is
    its baseline on both sides, row 1 sends the opposite signs, row 4 is not embedded."""
    rng = np.random.default_rng(seed)
    a, b = FakeBatch(1, 1, 3), FakeBatch(2, 1, 2)
    a.baseline = rng.standard_normal(DIM).astype(np.float32)
    b.baseline = rng.standard_normal(DIM).astype(np.float32)
    rows = rows_of([a, b])
    own = (0.1 * rng.standard_normal((5, DIM))).astype(np.float32)
    for batch, sl in rows.slices():
        own[sl] += batch.baseline
    own[2] = a.baseline
    rows.own[:] = own
    factors = np.exp(spread * rng.standard_normal((5, DIM // GROUP))).astype(np.float32)
    for batch, sl in rows.slices():
        code = bitdelta.encode(own[sl], batch.baseline, GROUP)
        batch.scales = (code.scales * factors[sl]).astype(np.float32)
        sent = bitdelta.Compressed(code.signs, batch.scales, DIM, GROUP)
        batch.received = bitdelta.decode(sent, batch.baseline)
    a.received[1] = 2 * a.baseline - a.received[1]  # every sign flipped
    rows.received = np.concatenate([a.received, b.received])
    rows.embedded = np.array([True, True, True, True, False])
    return rows, replace(CFG, eps=eps, scale_ratio_tol=0.07, scale_location_k=2.5)


def cos(x, y):
    n = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(np.dot(x, y)) / n if n else 0.0


def expected_re_encoding(rows, cfg):
    """The documented formulas, spelled out row by row."""
    n = len(rows)
    out = {k: np.zeros(n) for k in ("sem", "ratio", "row_med", "noise", "loc")}
    out["tol"] = np.full(n, cfg.scale_ratio_tol)
    for batch, sl in rows.slices():
        code = bitdelta.encode(rows.own[sl], batch.baseline, batch.group)
        mine = bitdelta.decode(code, batch.baseline)
        lr = np.log((batch.scales.astype(np.float64) + cfg.eps) / (code.scales + cfg.eps))
        for i, r in enumerate(range(sl.start, sl.stop)):
            sent_d, own_d = rows.received[r] - batch.baseline, mine[i] - batch.baseline
            zero = np.abs(sent_d).max() < 1e-7 and np.abs(own_d).max() < 1e-7
            out["sem"][r] = 1.0 if zero else cos(sent_d, own_d)
            out["ratio"][r] = np.abs(lr[i]).max()
            out["row_med"][r] = np.median(lr[i])
        lv = lr[rows.embedded[sl]]
        loc = np.median(lv)
        spread = 1.4826 * np.median(np.abs(lv - loc))
        out["noise"][sl], out["loc"][sl] = spread, loc
        out["tol"][sl] = cfg.scale_ratio_tol + cfg.scale_location_k * 1.2533 * spread / math.sqrt(
            lv.size
        )
    out["direct"] = np.array([cos(rows.received[r], rows.own[r]) for r in range(n)])
    return out


def test_re_encoding_scores_follow_their_formulas():
    rows, cfg = encoded_round()
    got, want = re_encoding(rows, cfg), expected_re_encoding(rows, cfg)
    np.testing.assert_allclose(got.sem_cos, want["sem"], atol=1e-6)
    assert got.sem_cos[2] == 1.0 and got.sem_cos[1] < -0.9
    np.testing.assert_allclose(got.direct, want["direct"], atol=1e-6)
    np.testing.assert_allclose(got.ratio, want["ratio"], rtol=1e-6)
    np.testing.assert_allclose(got.row_med, want["row_med"], rtol=1e-6)
    np.testing.assert_allclose(got.noise, want["noise"], rtol=1e-6)
    np.testing.assert_allclose(got.batch_loc, want["loc"], rtol=1e-6)
    np.testing.assert_allclose(got.batch_loc_tol, want["tol"], rtol=1e-6)
    assert re_encoding(rows, replace(cfg, eps=1.0)) is got  # computed once per round
    assert rows.cache["re_encoding"] is got


def test_one_sided_baseline_rows_are_not_forgiven():
    rows, cfg = encoded_round()
    rows.received[0] = rows.batches[0].baseline  # sent: no delta; own: a real one
    rows.own[3] = rows.batches[1].baseline  # own: no delta; sent: a real one
    r = re_encoding(rows, cfg)
    assert r.sem_cos[0] == 0.0 and r.sem_cos[3] == 0.0


def test_re_encoding_needs_phase_2():
    rows = rows_of([FakeBatch(1, 1, 2)])
    with pytest.raises(AssertionError, match=r"^phase 2 has not run$"):
        re_encoding(rows, CFG)


@pytest.mark.filterwarnings("error")
def test_zero_scales_give_infinite_ratios_without_warnings():
    rows, cfg = encoded_round(eps=0.0)
    rows.batches[0].scales[0, 0] = 0.0  # sent 0 against a real scale: log 0
    rows.batches[0].scales[2, :] = 0.0  # the baseline row: 0 / 0
    got = re_encoding(rows, cfg)
    assert got.ratio[0] == np.inf
    assert np.isnan(got.ratio[2])


def test_semantic_consistency_refuses_either_bad_cosine_of_embedded_rows():
    rows, cfg = encoded_round()
    r = re_encoding(rows, cfg)
    verdict = SemanticConsistency().refuse(rows, cfg)
    assert verdict.refused.tolist() == [False, True, False, False, False]
    assert set(verdict.scores) == {"semantic_cos", "direct_cos"}
    assert verdict.scores["semantic_cos"] is r.sem_cos and verdict.scores["direct_cos"] is r.direct
    # At exactly the bound a row passes; just above it, it is refused.
    at = replace(cfg, semantic_min_cos=float(r.sem_cos[0]), direct_min_cos=-1.0)
    assert not SemanticConsistency().refuse(rows, at).refused[0]
    above = replace(at, semantic_min_cos=float(r.sem_cos[0]) + 1e-9)
    assert SemanticConsistency().refuse(rows, above).refused[0]
    direct = replace(cfg, semantic_min_cos=-2.0, direct_min_cos=float(r.direct.max()) + 1e-9)
    refused = SemanticConsistency().refuse(rows, direct).refused
    assert refused[3] and not refused[4]  # row 4 was not embedded: not judged here
    at_direct = replace(direct, direct_min_cos=float(r.direct[3]))
    assert not SemanticConsistency().refuse(rows, at_direct).refused[3]


def expected_scale_refusals(rows, cfg):
    want = expected_re_encoding(rows, cfg)
    groups = max(b.scales.shape[1] for b in rows.batches)
    row_tol = cfg.scale_ratio_tol + cfg.scale_location_k * 1.2533 * want["noise"] / math.sqrt(
        groups
    )
    return (
        (want["ratio"] > cfg.scale_ratio_tol + cfg.scale_noise_k * want["noise"])
        | (np.abs(want["row_med"]) > row_tol)
        | (np.abs(want["loc"]) > want["tol"])
        | (want["noise"] > cfg.scale_noise_max)
    )


@pytest.mark.parametrize("seed", range(12))
def test_scale_consistency_applies_all_four_bounds(seed):
    refused_any = 0
    for spread in (0.02, 0.1, 0.3):
        for tol, noise_k, loc_k, noise_max in [
            (0.05, 4.0, 3.0, 0.15),
            (0.02, 1.0, 0.5, 0.4),
            (0.1, 0.5, 2.0, 0.05),
            (0.0, 2.0, 0.0, 1.0),
        ]:
            rows, base = encoded_round(seed=seed, spread=spread)
            cfg = replace(
                base,
                scale_ratio_tol=tol,
                scale_noise_k=noise_k,
                scale_location_k=loc_k,
                scale_noise_max=noise_max,
            )
            refused = ScaleConsistency().refuse(rows, cfg).refused
            assert refused.tolist() == expected_scale_refusals(rows, cfg).tolist()
            refused_any += int(refused.sum())
    assert refused_any  # the sweep exercises refusals, not only passes


def test_scale_consistency_scores_are_the_re_encoding():
    rows, cfg = encoded_round()
    r = re_encoding(rows, cfg)
    scores = ScaleConsistency().refuse(rows, cfg).scores
    assert scores == {
        "scale_log_ratio": r.ratio,
        "scale_log_median": r.row_med,
        "scale_noise": r.noise,
        "scale_batch_median": r.batch_loc,
    }


def isolated(rows, cfg, **bounds):
    """A config where only the named bounds can refuse (the others are out of reach)."""
    off = dict(scale_ratio_tol=1e9, scale_noise_k=0.0, scale_location_k=0.0, scale_noise_max=1e9)
    return replace(cfg, **(off | bounds))


def test_each_scale_bound_lets_its_exact_value_pass():
    rows, cfg = encoded_round()
    r = re_encoding(rows, cfg)  # the same numbers whatever the bounds below
    noise = float(r.noise[0])
    at = isolated(rows, cfg, scale_noise_max=noise)
    assert not ScaleConsistency().refuse(rows, at).refused[0]
    over = isolated(rows, cfg, scale_noise_max=noise * (1 - 1e-9))
    assert ScaleConsistency().refuse(rows, over).refused[0]
    ratio = float(r.ratio[0])
    at = isolated(rows, cfg, scale_ratio_tol=ratio, scale_location_k=1e9)
    assert not ScaleConsistency().refuse(rows, at).refused[0]
    noisy = isolated(rows, cfg, scale_ratio_tol=ratio - noise, scale_noise_k=1.0)
    noisy = replace(noisy, scale_location_k=1e9)
    assert not ScaleConsistency().refuse(rows, noisy).refused[0]
    noisy = replace(noisy, scale_ratio_tol=ratio - noise * (1 + 1e-6))
    assert ScaleConsistency().refuse(rows, noisy).refused[0]


def test_the_row_location_bound_widens_with_the_noise_over_the_groups():
    rows, cfg = encoded_round(spread=0.3)
    r = re_encoding(rows, cfg)
    i = int(np.argmax(np.abs(r.row_med[:4])))
    med, noise = abs(float(r.row_med[i])), float(r.noise[i])
    widening = 1.2533 * noise / math.sqrt(DIM // GROUP)  # per unit of scale_location_k
    k = 0.5 * med / widening
    loose = dict(scale_location_k=k, scale_noise_k=1e9, scale_noise_max=1e9)
    inside = replace(cfg, scale_ratio_tol=0.5 * med * (1 + 1e-6), **loose)
    outside = replace(cfg, scale_ratio_tol=0.5 * med * (1 - 1e-6), **loose)
    fresh = rows_of(rows.batches)
    fresh.own, fresh.received, fresh.embedded = rows.own, rows.received, rows.embedded
    r_in = re_encoding(fresh, inside)  # the batch bound is built with the same config
    refused = ScaleConsistency().refuse(fresh, inside).refused
    batch_refused = abs(float(r_in.batch_loc[i])) > float(r_in.batch_loc_tol[i])
    assert bool(refused[i]) == batch_refused
    fresh = rows_of(rows.batches)
    fresh.own, fresh.received, fresh.embedded = rows.own, rows.received, rows.embedded
    assert ScaleConsistency().refuse(fresh, outside).refused[i]


# -- relative checks ----------------------------------------------------------------------


def scaled_round(seed: int, *, outlier=20.0):
    """Three senders, 8 rows each, 4 scale groups; sender 3's last row is `outlier` times
    larger in one group."""
    rng = np.random.default_rng(seed)
    batches = [FakeBatch(s, 1, 8) for s in (1, 2, 3)]
    for b in batches:
        b.scales = np.exp(0.3 * rng.standard_normal((8, 4))).astype(np.float32)
    batches[2].scales[7, 1] *= outlier
    rows = rows_of(batches)
    rows.drop[rng.choice(23, 3, replace=False)] = 5  # a few rows already refused
    rows.fix_reference()
    return rows


def expected_scale_z(rows, cfg):
    scales = np.concatenate([b.scales for b in rows.batches]).astype(np.float64)
    logs = np.log(scales + cfg.eps)
    z = np.zeros(len(rows))
    live = rows.reference
    if live.sum() >= cfg.scale_min_rows:
        z[live] = robust_z(logs[live], rows.weight[live], cfg).max(axis=1)
    return z


@pytest.mark.parametrize("seed", range(6))
def test_scale_outliers_are_robust_z_scores_of_log_scales(seed):
    rows = scaled_round(seed)
    cfg = replace(CFG, scale_min_rows=10, eps=0.05, scale_tau=2.0)
    verdict = ScaleOutlier().refuse(rows, cfg)
    want = expected_scale_z(rows, cfg)
    np.testing.assert_allclose(verdict.scores["scale_z"], want, rtol=1e-9)
    assert set(verdict.scores) == {"scale_z"}
    assert verdict.refused.tolist() == (want > 2.0).tolist()
    assert want.max() > 2.0  # the outlier is one


def test_scale_outliers_need_enough_reference_rows():
    rows = scaled_round(0)
    live = int(rows.reference.sum())
    at = ScaleOutlier().refuse(rows, replace(CFG, scale_min_rows=live, scale_tau=2.0))
    assert at.scores["scale_z"].max() > 2.0 and at.refused.any()
    short = ScaleOutlier().refuse(rows, replace(CFG, scale_min_rows=live + 1, scale_tau=2.0))
    assert not short.scores["scale_z"].any() and not short.refused.any()


def test_a_scale_z_equal_to_tau_passes():
    rows = scaled_round(1)
    z = ScaleOutlier().refuse(rows, replace(CFG, scale_min_rows=1)).scores["scale_z"]
    top = int(np.argmax(z))
    verdict = ScaleOutlier().refuse(rows, replace(CFG, scale_min_rows=1, scale_tau=float(z[top])))
    assert not verdict.refused[top]


def test_relative_checks_need_the_reference():
    rows = scaled_round(0)
    rows.weight = None
    with pytest.raises(AssertionError, match=r"^reference not fixed$"):
        ScaleOutlier().refuse(rows, CFG)
    with pytest.raises(AssertionError, match=r"^reference not fixed$"):
        ConfidenceInflation().refuse(rows, CFG)


def quality_round(seed: int, *, inflated=0.95, counts=(6, 9, 12, 5)):
    rng = np.random.default_rng(seed)
    batches = []
    for s, n in enumerate(counts, start=1):
        q = np.clip(rng.normal(0.55, 0.12, n), 0.01, 0.99)
        batches.append(FakeBatch(s, 1, n, quality=q))
    batches[-1].quality = np.clip(rng.normal(inflated, 0.02, counts[-1]), 0.01, 0.999)
    rows = rows_of(batches)
    rows.drop[rng.choice(len(rows), 2, replace=False)] = 5
    rows.fix_reference()
    return rows


def expected_inflated(rows, cfg):
    live, w, q, node = rows.reference, rows.weight, rows.quality, rows.node
    refused = np.zeros(len(rows), dtype=bool)
    ceiling = weighted_quantile(q[live], w[live], cfg.quality_quantile)
    med = weighted_quantile(q[live], w[live], 0.5)
    sigma = 1.4826 * weighted_quantile(np.abs(q[live] - med), w[live], 0.5)
    for k in range(rows.n_senders):
        mine = q[live & (node == k)]
        if len(mine) < cfg.quality_min_rows:
            continue
        own_med = float(np.median(mine))
        own_sigma = 1.4826 * float(np.median(np.abs(mine - own_med)))
        err = 1.2533 * min(own_sigma, sigma) / math.sqrt(len(mine))
        if own_med > ceiling + cfg.quality_z * err:
            refused |= live & (node == k)
    return refused


@pytest.mark.parametrize("seed", range(8))
def test_confidence_inflation_follows_its_rule(seed):
    refusals = 0
    for inflated in (0.6, 0.7, 0.95):
        for z, quantile, min_rows in [(3.0, 0.66, 4), (0.5, 0.5, 5), (8.0, 0.9, 2), (1.0, 0.66, 6)]:
            rows = quality_round(seed, inflated=inflated)
            cfg = replace(CFG, quality_z=z, quality_quantile=quantile, quality_min_rows=min_rows)
            refused = ConfidenceInflation().refuse(rows, cfg).refused
            assert refused.tolist() == expected_inflated(rows, cfg).tolist()
            refusals += int(refused.sum())
    assert refusals


def test_a_small_sender_first_does_not_stop_the_check():
    rows = quality_round(0, counts=(2, 9, 12, 8))
    rows.quality[rows.node == 3] = 0.99
    rows.quality[rows.node == 0] = 0.99  # inflated too, but with too few rows to judge
    cfg = replace(CFG, quality_min_rows=3, quality_z=1.0, quality_quantile=0.4)
    refused = ConfidenceInflation().refuse(rows, cfg).refused
    assert not refused[rows.node == 0].any()
    assert refused[rows.reference & (rows.node == 3)].all()
    assert not refused[~rows.reference].any()  # rows already out are not refused again


def test_a_sender_with_exactly_the_minimum_rows_is_judged():
    rows = quality_round(0, counts=(6, 9, 12, 8))
    rows.quality[rows.node == 3] = 0.99
    n = int((rows.reference & (rows.node == 3)).sum())
    judged = replace(CFG, quality_min_rows=n, quality_z=1.0)
    assert ConfidenceInflation().refuse(rows, judged).refused[rows.node == 3].any()
    skipped = replace(judged, quality_min_rows=n + 1)
    assert not ConfidenceInflation().refuse(rows, skipped).refused.any()


def test_a_median_equal_to_the_ceiling_passes():
    q = [0.5, 0.5, 0.5, 0.5]
    rows = rows_of([FakeBatch(1, 1, 4, quality=q), FakeBatch(2, 1, 4, quality=q)])
    rows.fix_reference()
    cfg = replace(CFG, quality_min_rows=1, quality_z=0.0, quality_quantile=0.5)
    assert not ConfidenceInflation().refuse(rows, cfg).refused.any()


def test_no_reference_no_verdict():
    rows = rows_of([FakeBatch(1, 1, 3)])
    rows.drop[:] = 5
    rows.fix_reference()
    verdict = ConfidenceInflation().refuse(rows, CFG)
    assert verdict.refused.tolist() == [False] * 3 and verdict.scores == {}


# -- domain tags ----------------------------------------------------------------------------


def domain_round(seed: int, *, scale=0.1, liar_weight=1.0):
    """Domains a, b, c around three directions; senders 1-3 tag a, 4-6 tag b, 7-8 tag c;
    sender 9 tags a but writes like b (by `liar_weight`). Embeddings are short (`scale`)."""
    rng = np.random.default_rng(seed)
    axes = {d: np.eye(DIM)[i] for i, d in enumerate("abc")}
    plan = [(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "b"), (6, "b"), (7, "c"), (8, "c")]
    plan.append((9, "a"))
    batches = [FakeBatch(s, 1, 3, domain=d) for s, d in plan]
    rows = rows_of(batches)
    for b, sl in rows.slices():
        centre = axes[b.domain]
        if b.sender[0] == 9:
            centre = (1 - liar_weight) * axes["a"] + liar_weight * axes["b"]
        noise = 0.3 * rng.standard_normal((3, DIM))
        rows.own[sl] = (scale * (centre + noise)).astype(np.float32)
    return rows


def expected_centroids(rows, kept, cfg):
    cents, names = [], []
    for dom in sorted({b.domain for b in rows.batches}):
        mask = kept & np.array([rows.batches[i].domain == dom for i in rows.batch], dtype=bool)
        senders = sorted(set(rows.node[mask].tolist()))
        if len(senders) < cfg.domain_min_senders:
            continue
        means = np.stack([rows.own[mask & (rows.node == k)].mean(axis=0) for k in senders])
        c = np.median(means, axis=0)
        cents.append(c / np.linalg.norm(c))
        names.append(dom)
    return cents, names


@pytest.mark.parametrize("seed", range(4))
def test_domain_centroids_are_unit_medians_of_sender_means(seed):
    rows = domain_round(seed)
    kept = np.ones(len(rows), dtype=bool)
    kept[:2] = False
    for min_senders in (2, 3, 4):
        cfg = replace(CFG, domain_min_senders=min_senders)
        cents, names = domain_centroids(rows, kept, cfg)
        want, want_names = expected_centroids(rows, kept, cfg)
        assert names == want_names
        for c, w in zip(cents, want, strict=True):
            np.testing.assert_allclose(c, w, rtol=1e-6, atol=1e-9)
            assert np.linalg.norm(c) == pytest.approx(1.0)
    assert domain_centroids(rows, kept, replace(CFG, domain_min_senders=3))[1] == ["a", "b"]


def expected_margins(rows, cfg):
    ok = rows.drop == 0
    cents, names = expected_centroids(rows, ok, cfg)
    margins = np.zeros(len(rows))
    refused = np.zeros(len(rows), dtype=bool)
    if len(cents) < 2:
        return margins, refused
    for b, sl in rows.slices():
        if b.domain not in names:
            continue
        own = rows.own[sl][ok[sl]] if ok[sl].any() else rows.own[sl]
        mean = own.mean(axis=0)
        sims = [float(np.dot(c, mean / np.linalg.norm(mean))) for c in cents]
        j = names.index(b.domain)
        margin = sims[j] - max(s for i, s in enumerate(sims) if i != j)
        margins[sl] = margin
        if margin < -cfg.domain_margin:
            refused[sl] = ok[sl]
    return margins, refused


@pytest.mark.parametrize("seed", range(4))
def test_domain_tag_refuses_a_batch_nearer_another_domain(seed):
    for liar_weight, min_senders, margin in [(1.0, 2, 0.1), (0.6, 2, 0.05), (1.0, 3, 0.1)]:
        rows = domain_round(seed, liar_weight=liar_weight)
        rows.drop[25] = 5  # one of the liar's rows is already out
        rows.drop[3:6] = 5  # and all of sender 2's
        cfg = replace(CFG, domain_min_senders=min_senders, domain_margin=margin)
        verdict = DomainTag().refuse(rows, cfg)
        margins, refused = expected_margins(rows, cfg)
        np.testing.assert_allclose(verdict.scores["domain_margin"], margins, atol=1e-6)
        assert verdict.refused.tolist() == refused.tolist()
    assert verdict.refused[24] and not verdict.refused[25]  # only rows still kept


def test_domain_tag_needs_two_domains_with_centroids():
    rows = domain_round(0)
    two = replace(CFG, domain_min_senders=3, domain_margin=0.1)  # a and b qualify, c not
    verdict = DomainTag().refuse(rows, two)
    assert verdict.refused[24:].all() and set(verdict.scores) == {"domain_margin"}
    one = replace(CFG, domain_min_senders=4)  # only a qualifies (with the liar)
    verdict = DomainTag().refuse(rows, one)
    assert not verdict.refused.any() and not verdict.scores["domain_margin"].any()


def test_a_batch_whose_domain_has_no_centroid_is_skipped_not_the_rest():
    rows = domain_round(0)
    rows.batches = [rows.batches[6], *rows.batches[:6], *rows.batches[7:]]  # c first
    rows = rows_of(rows.batches)
    fresh = domain_round(0)
    order = [6, 0, 1, 2, 3, 4, 5, 7, 8]
    rows.own[:] = np.concatenate([fresh.own[3 * i : 3 * i + 3] for i in order])
    verdict = DomainTag().refuse(rows, replace(CFG, domain_min_senders=3, domain_margin=0.1))
    assert not verdict.refused[:3].any() and verdict.refused[-3:].all()


def test_a_margin_equal_to_the_bound_passes():
    rows = domain_round(0)
    cfg = replace(CFG, domain_min_senders=2, domain_margin=0.1)
    margin = float(DomainTag().refuse(rows, cfg).scores["domain_margin"][24])
    assert margin < 0
    at = replace(cfg, domain_margin=-margin)
    assert not DomainTag().refuse(rows, at).refused[24]
    assert DomainTag().refuse(rows, replace(cfg, domain_margin=-margin * (1 - 1e-6))).refused[24]


def test_a_batch_with_no_row_left_is_measured_on_all_its_rows():
    rows = domain_round(0)
    rows.drop[24:] = 5
    cfg = replace(CFG, domain_min_senders=2, domain_margin=0.1)
    verdict = DomainTag().refuse(rows, cfg)
    margins, _ = expected_margins(rows, cfg)
    assert verdict.scores["domain_margin"][24] == pytest.approx(margins[24]) and margins[24] < 0
    assert not verdict.refused[24:].any()  # nothing left to refuse


@pytest.mark.parametrize("seed", range(4))
def test_the_location_bounds_let_their_exact_value_pass(seed):
    rows, base = encoded_round(seed=seed, spread=0.3)
    r = re_encoding(rows, base)
    loose = dict(scale_location_k=0.0, scale_noise_k=1e9, scale_noise_max=1e9)
    row_med, batch_loc = np.abs(r.row_med), np.abs(r.batch_loc)
    # A row whose own median is the larger: at a bound equal to it, only it could fail.
    i = int(np.argmax(np.where(row_med > batch_loc, row_med, -1.0)))
    if row_med[i] > batch_loc[i]:
        at = replace(base, scale_ratio_tol=float(row_med[i]), **loose)
        fresh, _ = encoded_round(seed=seed, spread=0.3)
        assert not ScaleConsistency().refuse(fresh, at).refused[i]
    j = int(np.argmax(np.where(batch_loc > row_med, batch_loc, -1.0)))
    if batch_loc[j] > row_med[j]:
        at = replace(base, scale_ratio_tol=float(batch_loc[j]), **loose)
        fresh, _ = encoded_round(seed=seed, spread=0.3)
        assert not ScaleConsistency().refuse(fresh, at).refused[j]
    assert row_med[i] > batch_loc[i] or batch_loc[j] > row_med[j]


def inflation_margin(rows, cfg, k):
    """(own median - ceiling, the standard error) of sender k, as the filter computes them."""
    live, w, q = rows.reference, rows.weight, rows.quality
    ceiling = weighted_quantile(q[live], w[live], cfg.quality_quantile)
    med = weighted_quantile(q[live], w[live], 0.5)
    sigma = 1.4826 * weighted_quantile(np.abs(q[live] - med), w[live], 0.5)
    mine = q[live & (rows.node == k)]
    own_med = float(np.median(mine))
    own_sigma = 1.4826 * float(np.median(np.abs(mine - own_med)))
    return (
        own_med - ceiling,
        1.2533 * min(own_sigma, sigma) / math.sqrt(len(mine)),
        (own_sigma < sigma),
    )


@pytest.mark.parametrize("tight_sender", [True, False])
def test_the_inflation_bound_uses_the_smaller_spread(tight_sender):
    rng = np.random.default_rng(3)
    wide, tight = 0.15, 0.01
    round_spread, own_spread = (wide, tight) if tight_sender else (tight, wide)
    batches = [
        FakeBatch(s, 1, 9, quality=np.clip(rng.normal(0.5, round_spread, 9), 0, 1))
        for s in (1, 2, 3, 4)
    ]
    batches.append(FakeBatch(5, 1, 9, quality=np.clip(rng.normal(0.62, own_spread, 9), 0, 1)))
    rows = rows_of(batches)
    rows.fix_reference()
    cfg = replace(CFG, quality_min_rows=3, quality_quantile=0.66)
    gap, err, own_smaller = inflation_margin(rows, cfg, 4)
    assert gap > 0 and err > 0 and own_smaller == tight_sender
    sender = rows.node == 4
    refused = ConfidenceInflation().refuse(rows, replace(cfg, quality_z=gap / err * 0.999))
    assert refused.refused[sender].all()
    passed = ConfidenceInflation().refuse(rows, replace(cfg, quality_z=gap / err * 1.001))
    assert not passed.refused.any()
