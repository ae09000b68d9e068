from __future__ import annotations

import math

import numpy as np
import pytest

from fai_core.privacy import (
    PrivacyAccountant,
    PrivacyBudgetExceeded,
    gaussian_sigma,
    noisy_scales,
    privatize,
)
from tests.support import wire as kit


def test_sigma_eq27():
    assert gaussian_sigma(0.5, 1e-5, 0.1) == pytest.approx(
        0.1 * math.sqrt(2 * math.log(1.25e5)) / 0.5
    )


def test_noise_clipped_nonnegative():
    out = noisy_scales(np.full((100, 3), 0.05), 0.5, 0.1, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.min() >= 0 and out.std() > 0.1


@pytest.mark.parametrize("composition", ["basic", "advanced"])
def test_accountant_refuses_past_budget(composition):
    acc = PrivacyAccountant(epsilon_budget=1.0, delta_budget=1e-3, composition=composition)
    spent = 0
    with pytest.raises(PrivacyBudgetExceeded):
        for _ in range(1000):
            acc.charge(0.1, 1e-6)
            spent += 1
    assert acc.spent()[0] <= 1.0 and spent == len(acc.charges)


def test_advanced_beats_basic_for_many_small_rounds():
    basic = PrivacyAccountant(10.0, 1e-2, "basic")
    adv = PrivacyAccountant(10.0, 1e-2, "advanced")
    n_basic = n_adv = 0
    for acc in (basic, adv):
        try:
            while True:
                acc.charge(0.01, 1e-7)
        except PrivacyBudgetExceeded:
            pass
    n_basic, n_adv = len(basic.charges), len(adv.charges)
    assert n_adv > n_basic


def test_privatize_resigns_and_charges():
    signed = kit.encode()
    acc = PrivacyAccountant(1.0, 1e-3)
    noisy = privatize(
        signed, kit.KEY, acc, epsilon=0.5, delta=1e-5, clip=1.0, rng=np.random.default_rng(0)
    )
    assert noisy.cid != signed.cid and noisy.batch.sender == signed.batch.sender
    assert not np.array_equal(noisy.batch.scales, signed.batch.scales)
    assert np.array_equal(noisy.batch.signs, signed.batch.signs)
    assert len(acc.charges) == 1


def test_dp_epsilon_inverts_eq27():
    from fai_eval.scenario import dp_epsilon

    eps = dp_epsilon(0.002, clip=0.05, delta=1e-5)
    assert gaussian_sigma(eps, 1e-5, 0.05) == pytest.approx(0.002)
