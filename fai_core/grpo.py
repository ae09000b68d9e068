"""Group-relative advantages (GRPO) and the quality score of an extracted pattern.

GRPO judges an attempt only against other attempts at the same task, so rewards on
different scales (test pass rates, user ratings, ticket resolutions) need no calibration
against each other: an advantage is a z-score inside its group.

The paper fixes G = 4, K = 3, alpha = 0.7, beta = 0.3 (Appendix D) but never says what
alpha and beta weigh. Here they weigh the two things a pattern's quality should reflect:

* alpha: contrast. How far the best attempt stands above its own group, as a fraction of
  the largest possible z-score: c = A_best / sqrt(n - 1). With population std, no member
  of n values can sit more than sqrt(n - 1) standard deviations above the mean, so
  c is in [0, 1]; c = 1 when one attempt alone did well, and c is 0 when nothing differs.
* beta: absolute outcome. The fraction s of the group's attempts whose return exceeds the
  success threshold (default 0). Without it, the "least bad" of four failures would look
  as good as a real success.

    x = alpha * c + beta * s          (alpha + beta = 1, so x is in [0, 1])
    q = floor + (1 - 2 * floor) * x   (floor = 0.02, so q is in [0.02, 0.98])

The affine squeeze keeps q strictly inside (0, 1) as Experience requires, keeps the
ordering of x, and keeps a documented, invertible meaning (unlike a sigmoid, whose
steepness would be one more unexplained constant). q is strictly increasing in A_best
and in s. Groups whose returns are all equal carry no learning signal (every advantage
is 0) and yield no pattern at all; see `has_signal`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GROUP_SIZE = 4
MAX_ITERATIONS = 3
ALPHA = 0.7
BETA = 0.3
EPS = 1e-8
QUALITY_FLOOR = 0.02
SUCCESS_THRESHOLD = 0.0


def group_advantages(returns: np.ndarray | list[float], eps: float = EPS) -> np.ndarray:
    """A_i = (r_i - mean r) / (std r + eps), population std, as in GRPO (Shao et al. 2024)."""
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1 or r.shape[0] == 0:
        raise ValueError("returns must be a non-empty vector")
    if not np.isfinite(r).all():
        raise ValueError("returns must be finite")
    if r.max() == r.min():
        return np.zeros_like(r)
    centred = r - r.mean()
    centred -= centred.mean()  # second pass: the first mean's rounding would not sum to 0
    return centred / (float(np.sqrt(np.mean(centred * centred))) + eps)


def has_signal(returns: np.ndarray | list[float], rel_tol: float = 1e-9) -> bool:
    """False when all returns are (numerically) equal: then no attempt can be preferred."""
    r = np.asarray(returns, dtype=np.float64)
    spread = float(r.max() - r.min())
    return spread > rel_tol * max(1.0, float(np.abs(r).max()))


@dataclass(frozen=True, slots=True)
class QualityWeights:
    """The weights of the quality score (see the module doc): `alpha` for contrast,
    `beta` for absolute success (summing to 1), and the `floor` that keeps q inside
    (0, 1). Validated once here, so a bad configuration fails before any extraction."""

    alpha: float = ALPHA
    beta: float = BETA
    floor: float = QUALITY_FLOOR

    def __post_init__(self) -> None:
        if not (self.alpha >= 0 and self.beta >= 0 and math.isclose(self.alpha + self.beta, 1)):
            raise ValueError("alpha and beta must be non-negative and sum to 1")
        if not 0 < self.floor < 0.5:
            raise ValueError("floor must lie in (0, 0.5)")


DEFAULT_WEIGHTS = QualityWeights()


def contrast(best_advantage: float, group_size: int) -> float:
    """A_best / sqrt(n - 1), clipped to [0, 1] (the clip only absorbs rounding)."""
    if group_size < 2:
        raise ValueError("a group needs at least two attempts")
    return min(1.0, max(0.0, best_advantage / math.sqrt(group_size - 1)))


def quality(
    best_advantage: float,
    success_rate: float,
    group_size: int = GROUP_SIZE,
    weights: QualityWeights = DEFAULT_WEIGHTS,
) -> float:
    """q = floor + (1 - 2 floor) (alpha * contrast + beta * success_rate); see module doc."""
    if not (math.isfinite(best_advantage) and 0.0 <= success_rate <= 1.0):
        raise ValueError("best_advantage must be finite and success_rate in [0, 1]")
    x = weights.alpha * contrast(best_advantage, group_size) + weights.beta * success_rate
    return weights.floor + (1.0 - 2.0 * weights.floor) * min(1.0, max(0.0, x))


@dataclass(frozen=True, slots=True)
class GroupScore:
    """GRPO result for one group: advantages in input order, best/worst index, quality."""

    returns: tuple[float, ...]
    advantages: tuple[float, ...]
    best: int
    worst: int
    success_rate: float
    quality: float


def score_group(
    returns: list[float] | np.ndarray,
    *,
    success_threshold: float = SUCCESS_THRESHOLD,
    weights: QualityWeights = DEFAULT_WEIGHTS,
    eps: float = EPS,
) -> GroupScore | None:
    """Advantages and quality of one group, or None when the group has no signal.

    Ties for best (or worst) go to the earliest attempt, so results are deterministic.
    """
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1 or r.shape[0] < 2:
        raise ValueError("a group needs at least two returns")
    if not has_signal(r):
        return None
    adv = group_advantages(r, eps)
    best, worst = int(np.argmax(r)), int(np.argmin(r))
    success = float(np.mean(r > success_threshold))
    q = quality(float(adv[best]), success, int(r.shape[0]), weights)
    return GroupScore(
        tuple(float(v) for v in r), tuple(float(a) for a in adv), best, worst, success, q
    )


def iteration_groups(
    n_trajectories: int, group_size: int = GROUP_SIZE, max_iterations: int = MAX_ITERATIONS
) -> list[range]:
    """Index ranges of the successive complete groups of one task's attempts.

    Offline, iteration k (1-based) is the k-th block of `group_size` attempts in start
    order: attempts 1-4 are iteration 1, 5-8 iteration 2, 9-12 iteration 3. An agent
    that retries a task after learning from earlier attempts produces exactly this shape.
    A trailing incomplete block, and anything past `max_iterations` blocks, is not scored.
    """
    if group_size < 2 or not 1 <= max_iterations <= 255:
        raise ValueError("group_size must be >= 2 and max_iterations in [1, 255]")
    count = min(n_trajectories // group_size, max_iterations)
    return [range(k * group_size, (k + 1) * group_size) for k in range(count)]
