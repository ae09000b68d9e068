"""GRPO advantages, the quality formula and iteration blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fai_core.grpo import (
    ALPHA,
    BETA,
    QualityWeights,
    contrast,
    group_advantages,
    has_signal,
    iteration_groups,
    quality,
    score_group,
)

finite = st.floats(-1e3, 1e3, allow_nan=False)
groups = st.lists(finite, min_size=2, max_size=8)


def spread(r) -> float:
    return max(r) - min(r)


@settings(max_examples=100, deadline=None)
@given(groups)
def test_advantages_sum_to_zero_and_have_unit_std(r):
    a = group_advantages(r)
    assert abs(a.sum()) < 1e-6 * len(r)
    if spread(r) > 1e-3:
        assert np.std(a) == pytest.approx(1.0, rel=1e-4)
    else:
        assert np.all(np.abs(a) <= math.sqrt(len(r) - 1) + 1e-9)


@settings(max_examples=100, deadline=None)
@given(groups, st.floats(0.1, 1e2), st.floats(-1e3, 1e3))
def test_advantages_are_shift_and_scale_invariant(r, scale, shift):
    assume(spread(r) > 0.1)
    moved = [scale * x + shift for x in r]
    # exact up to eps = 1e-8 in the denominator
    np.testing.assert_allclose(group_advantages(moved), group_advantages(r), atol=1e-4)


@settings(max_examples=100, deadline=None)
@given(groups)
def test_best_advantage_never_exceeds_sqrt_n_minus_1(r):
    a = group_advantages(r)
    assert a.max() <= math.sqrt(len(r) - 1) + 1e-9
    assert 0 <= contrast(float(a.max()), len(r)) <= 1


def test_advantages_known_values():
    np.testing.assert_allclose(
        group_advantages([1, 0, 0, 0]), [math.sqrt(3), *[-1 / math.sqrt(3)] * 3]
    )
    np.testing.assert_allclose(group_advantages([2, 2, 2, 2]), [0, 0, 0, 0])


def test_advantages_refuse_bad_input():
    for bad, why in (
        ([], "a non-empty vector"),
        ([[1, 2]], "a non-empty vector"),
        ([1, float("nan")], "finite"),
    ):
        with pytest.raises(ValueError, match=rf"^returns must be {why}$"):
            group_advantages(bad)


@settings(max_examples=100, deadline=None)
@given(st.floats(-10, 10), st.floats(0, 1), st.integers(2, 16))
def test_quality_is_strictly_inside_unit_interval(best, success, n):
    q = quality(best, success, n)
    assert 0.0 < q < 1.0
    assert 0.02 <= q <= 0.98


@settings(max_examples=100, deadline=None)
@given(st.floats(0, math.sqrt(3)), st.floats(0, math.sqrt(3)), st.floats(0, 1))
def test_quality_is_monotone_in_best_advantage(a, b, s):
    lo, hi = sorted((a, b))
    assert quality(lo, s) <= quality(hi, s)
    if hi - lo > 1e-9:
        assert quality(lo, s) < quality(hi, s)


@settings(max_examples=100, deadline=None)
@given(st.floats(0, math.sqrt(3)), st.floats(0, 1), st.floats(0, 1))
def test_quality_is_monotone_in_success_rate(a, s1, s2):
    lo, hi = sorted((s1, s2))
    assert quality(a, lo) <= quality(a, hi)


def test_quality_formula_by_hand():
    # (1, 0, 0, 0): contrast 1, success 1/4
    assert quality(math.sqrt(3), 0.25) == pytest.approx(0.02 + 0.96 * (ALPHA + BETA * 0.25))
    assert score_group([1, 0, 0, 0]).quality == pytest.approx(0.764, abs=1e-3)
    assert score_group([1, 1, 1, 0]).quality == pytest.approx(0.02 + 0.96 * (0.7 / 3 + 0.225))
    assert quality(0.0, 0.0) == pytest.approx(0.02)
    assert quality(math.sqrt(3), 1.0) == pytest.approx(0.98)


def test_weights_are_checked():
    with pytest.raises(ValueError, match=r"^alpha and beta must be non-negative and sum to 1$"):
        QualityWeights(alpha=0.5, beta=0.6)
    with pytest.raises(ValueError, match=r"^floor must lie in \(0, 0\.5\)$"):
        QualityWeights(floor=0.5)
    only_success = QualityWeights(alpha=0.0, beta=1.0)
    assert quality(1.0, 0.5, weights=only_success) == quality(0.0, 0.5, weights=only_success)


def test_score_group_picks_first_of_ties_and_skips_flat_groups():
    score = score_group([0.5, 1.0, 1.0, -1.0])
    assert (score.best, score.worst) == (1, 3)
    assert score.success_rate == 0.75
    assert score_group([0.3, 0.3, 0.3, 0.3]) is None
    assert not has_signal([1e12, 1e12 + 1e-6])
    assert has_signal([0.0, 1e-6])
    with pytest.raises(ValueError, match=r"^a group needs at least two returns$"):
        score_group([1.0])


def test_success_threshold():
    assert score_group([0.4, 0.6, 0.0, 0.0], success_threshold=0.5).success_rate == 0.25


def test_iteration_blocks():
    assert iteration_groups(3) == []
    assert iteration_groups(4) == [range(0, 4)]
    assert iteration_groups(13) == [range(0, 4), range(4, 8), range(8, 12)]
    assert iteration_groups(40) == iteration_groups(12)
    assert iteration_groups(9, group_size=3, max_iterations=5) == [
        range(0, 3),
        range(3, 6),
        range(6, 9),
    ]
    with pytest.raises(
        ValueError, match=r"^group_size must be >= 2 and max_iterations in \[1, 255\]$"
    ):
        iteration_groups(4, group_size=1)
