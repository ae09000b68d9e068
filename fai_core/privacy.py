"""Optional differential privacy for broadcasts (paper Definition 9, Eq. 27), with a budget.

Gaussian noise N(0, sigma^2), sigma = Delta_s * sqrt(2 ln(1.25/delta)) / epsilon, is added
to every per-group scale before a batch is signed; signs are not perturbed (the paper's
choice, so the guarantee covers the scales only, and says nothing about the text, which
travels in clear: DP here protects the magnitude of the deltas, not the pattern).

Sensitivity: a scale is a mean |delta| over a group, so it is unbounded unless clipped.
`noisy_scales` clips each scale to [0, clip] before adding noise, which bounds the change
one experience can make to its own scales by `clip` = Delta_s. Noisy scales are clipped at 0
afterwards (the decoder refuses negative scales); post-processing keeps the guarantee.

Every broadcast costs (epsilon, delta). A node's `PrivacyAccountant` adds the costs up with
basic composition (sum) or advanced composition (Dwork & Roth, Theorem 3.20: for k
mechanisms each (eps, delta), total eps' = sqrt(2k ln(1/delta')) eps + k eps (e^eps - 1),
delta' + k delta) and refuses, with `PrivacyBudgetExceeded`, the broadcast that would go
past the configured budget, so a node cannot leak more than it was configured to by simply
running longer.

Receivers (deltasoup.py, phase 3b) accept noised scales when the noise is small next to
the scales (sigma <= ~0.003 for scales ~0.038, i.e. epsilon >= ~80 at clip 0.05) and refuse
noisier batches as uncheckable; at epsilon < 1 sigma exceeds the scales several times and
e_hat itself is destroyed. Note also that a receiver with the model recomputes the exact
scales from the clear text and the batch's baseline. docs/deltasoup.md has the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fai_core import dagcbor, wire
from fai_core.errors import FaiError
from fai_core.identity import NodeKey


class PrivacyBudgetExceeded(FaiError):
    """The next broadcast would spend more privacy budget than the node is configured for."""


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Eq. 27; the classic Gaussian mechanism, valid for epsilon < 1."""
    if not (epsilon > 0 and 0 < delta < 1 and sensitivity > 0):
        raise ValueError("need epsilon > 0, 0 < delta < 1, sensitivity > 0")
    return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def noisy_scales(
    scales: np.ndarray, sigma: float, clip: float, rng: np.random.Generator
) -> np.ndarray:
    """Clip to [0, clip], add N(0, sigma^2) per scale, clip at 0 again; float32 out."""
    clipped = np.clip(np.asarray(scales, dtype=np.float64), 0.0, clip)
    noisy = clipped + rng.normal(0.0, sigma, size=clipped.shape)
    return np.maximum(noisy, 0.0).astype(np.float32)


@dataclass
class PrivacyAccountant:
    """One node's spent privacy; `charge` before each broadcast, which raises past budget."""

    epsilon_budget: float
    delta_budget: float
    composition: str = "advanced"  # or "basic"
    #: delta' of advanced composition (the slack bought for the sqrt(k) bound).
    delta_slack: float = 1e-6
    charges: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.composition not in ("basic", "advanced"):
            raise ValueError("composition must be 'basic' or 'advanced'")
        self._sum_eps = sum(e for e, _ in self.charges)
        self._sum_delta = sum(d for _, d in self.charges)
        self._max_eps = max((e for e, _ in self.charges), default=0.0)
        self._max_delta = max((d for _, d in self.charges), default=0.0)

    def spent(self, extra: tuple[float, float] | None = None) -> tuple[float, float]:
        """(epsilon, delta) spent so far (plus `extra`), under the configured composition."""
        k = len(self.charges) + (1 if extra else 0)
        if k == 0:
            return 0.0, 0.0
        add_e, add_d = extra or (0.0, 0.0)
        basic = (self._sum_eps + add_e, self._sum_delta + add_d)
        if self.composition == "basic":
            return basic
        eps, delta = max(self._max_eps, add_e), max(self._max_delta, add_d)
        adv_eps = math.sqrt(2 * k * math.log(1 / self.delta_slack)) * eps + k * eps * math.expm1(
            eps
        )
        # Advanced composition is a valid bound for any k; basic may be tighter for small k.
        if adv_eps < basic[0]:
            return adv_eps, k * delta + self.delta_slack
        return basic

    def charge(self, epsilon: float, delta: float) -> None:
        """Record one broadcast's (epsilon, delta), or raise PrivacyBudgetExceeded and
        record nothing if it would take spending past the budget."""
        eps_total, delta_total = self.spent((epsilon, delta))
        if eps_total > self.epsilon_budget or delta_total > self.delta_budget:
            raise PrivacyBudgetExceeded(
                f"broadcast would bring spending to (eps={eps_total:.3g}, delta={delta_total:.3g})"
                f", budget ({self.epsilon_budget:g}, {self.delta_budget:g})"
            )
        self.charges.append((epsilon, delta))
        self._sum_eps += epsilon
        self._sum_delta += delta
        self._max_eps = max(self._max_eps, epsilon)
        self._max_delta = max(self._max_delta, delta)


def privatize(
    signed: wire.SignedBatch,
    key: NodeKey,
    accountant: PrivacyAccountant,
    *,
    epsilon: float,
    delta: float,
    clip: float,
    rng: np.random.Generator,
) -> wire.SignedBatch:
    """The same batch with DP-noised scales, re-signed; charges the accountant first."""
    accountant.charge(epsilon, delta)
    sigma = gaussian_sigma(epsilon, delta, clip)
    fields = dict(dagcbor.decode(dagcbor.decode(signed.envelope)["batch"]))
    dtype = wire.bitdelta.SCALE_DTYPES[fields["scale_dtype"]]
    scales = noisy_scales(signed.batch.scales, sigma, clip, rng)
    fields["scales"] = scales.astype(dtype).tobytes()
    block = dagcbor.encode(fields)
    envelope = dagcbor.encode(
        {"batch": block, "sig": key.sign(wire.BATCH_SIGNATURE_CONTEXT, dagcbor.cid_of(block))}
    )
    return wire.decode_envelope(envelope)
