"""Receive budgets (fai_net/admission/budgets.py) and the seq clock floor
(fai_net/node/seq_clock.py): the edges `make mutate` found untested (docs/mutation.md).

Each test pins one rule with numbers small enough to follow: how a stake weight scales a
bucket's size *and* its refill, when a request larger than a full bucket fits, that time
only refills from the last charge, which bucket is forgotten first, and that one forwarder's
bytes are not another's.
"""

from __future__ import annotations

import pytest

from fai_core.refusals import Refusal
from fai_net.admission.budgets import BudgetPolicy, Rate, ReceiveBudget, TokenBuckets
from fai_net.node import seq_clock

SENDER = b"\x01" * 32
HUGE = Rate(per_s=1e9, burst=1e12)


def test_a_rate_needs_a_positive_rate_and_burst():
    with pytest.raises(ValueError, match=r"^a rate and its burst must be positive$"):
        Rate(per_s=1.0, burst=0.0)
    with pytest.raises(ValueError, match=r"^a rate and its burst must be positive$"):
        Rate(per_s=0.0, burst=1.0)
    assert Rate(per_s=0.5, burst=0.5).burst == 0.5


def test_the_default_weight_is_one():
    buckets = TokenBuckets(Rate(per_s=1.0, burst=10.0), max_tracked=10)
    buckets.take("k", 10, 0.0)
    assert buckets.level("k", 1.0) == 1.0
    assert buckets.allows("k", 1, 1.0) and not buckets.allows("k", 2, 1.0)


def test_time_refills_only_from_the_last_charge():
    buckets = TokenBuckets(Rate(per_s=1.0, burst=10.0), max_tracked=10)
    buckets.take("k", 10, 100.0)
    assert buckets.level("k", 100.0) == 0.0
    assert buckets.level("k", 103.0) == 3.0
    assert buckets.level("k", 99.0) == 0.0  # a clock behind the charge refills nothing


def test_a_weight_scales_the_burst_and_the_refill():
    buckets = TokenBuckets(Rate(per_s=1.0, burst=10.0), max_tracked=10)
    assert buckets.level("k", 0.0, weight=2.0) == 20.0
    buckets.take("k", 20, 0.0, weight=2.0)
    assert buckets.level("k", 1.0, weight=2.0) == 2.0
    assert buckets.level("k", 1.0, weight=0.5) == 0.5


def test_more_than_a_full_bucket_fits_only_a_full_bucket():
    buckets = TokenBuckets(Rate(per_s=1.0, burst=10.0), max_tracked=10)
    assert buckets.allows("k", 25, 0.0, weight=2.0)  # full (20): it goes into debt
    buckets.take("k", 5, 0.0, weight=2.0)
    assert not buckets.allows("k", 25, 0.0, weight=2.0)  # 15 left: wait until full
    assert buckets.allows("k", 15, 0.0, weight=2.0)


def test_the_least_recently_charged_bucket_is_forgotten_first():
    buckets = TokenBuckets(Rate(per_s=1.0, burst=10.0), max_tracked=2)
    buckets.take("a", 4, 0.0)
    buckets.take("b", 4, 0.0)
    buckets.take("a", 4, 0.0)  # "a" is now the most recent
    buckets.take("c", 4, 0.0)
    assert len(buckets) == 2
    assert buckets.level("a", 0.0) == 2.0 and buckets.level("c", 0.0) == 6.0
    assert buckets.level("b", 0.0) == 10.0  # forgotten: a full bucket again


def policy(**rates) -> BudgetPolicy:
    base = dict(
        sender_rows=HUGE,
        sender_bytes=HUGE,
        forwarder_messages=HUGE,
        forwarder_bytes=HUGE,
        forwarder_rows=HUGE,
    )
    return BudgetPolicy(**(base | rates))


@pytest.mark.parametrize("unit", ["rows", "bytes"])
def test_a_staked_sender_refills_at_its_weight(unit):
    budget = ReceiveBudget(policy(**{f"sender_{unit}": Rate(1.0, 10.0)}), forwarders=False)

    def admit(amount, now, weight=2.0):
        rows, size = (amount, 1) if unit == "rows" else (1, amount)
        return budget.admit(SENDER, None, rows, size, now, weight)

    assert admit(15, 0.0) is None  # a weight of 2 doubles the burst: 20
    assert admit(5, 0.0) is None
    assert admit(1, 0.0) is Refusal.SENDER_BUDGET
    assert admit(2, 1.0) is None  # ... and the refill: 2 per second
    assert admit(1, 1.0) is Refusal.SENDER_BUDGET


def test_a_refused_batch_charges_nothing():
    budget = ReceiveBudget(policy(sender_bytes=Rate(1.0, 10.0)), forwarders=False)
    assert budget.admit(SENDER, None, 1, 10, 0.0) is None
    assert budget.admit(SENDER, None, 1, 5, 100.0) is None
    assert budget.admit(SENDER, None, 1, 6, 100.0) is Refusal.SENDER_BUDGET
    assert budget.admit(SENDER, None, 1, 5, 100.0) is None  # the refusal took nothing


def test_registry_mode_never_budgets_the_forwarder():
    budget = ReceiveBudget(
        policy(forwarder_rows=Rate(1.0, 1.0), forwarder_messages=Rate(1.0, 1.0)),
        forwarders=False,
    )
    for _ in range(5):
        assert budget.before_decode("relay", 100, 0.0) is None
        assert budget.admit(SENDER, "relay", 10, 100, 0.0) is None


def test_open_mode_budgets_each_forwarders_rows():
    budget = ReceiveBudget(policy(forwarder_rows=Rate(1.0, 10.0)), forwarders=True)
    assert budget.admit(SENDER, "relay", 10, 1, 0.0) is None
    assert budget.admit(SENDER, "relay", 1, 1, 0.0) is Refusal.FORWARDER_BUDGET
    assert budget.admit(SENDER, "other", 10, 1, 0.0) is None
    assert budget.admit(SENDER, None, 10, 1, 0.0) is None  # our own batches: no forwarder


def test_each_forwarder_has_its_own_byte_bucket():
    budget = ReceiveBudget(policy(forwarder_bytes=Rate(1.0, 100.0)), forwarders=True)
    assert budget.before_decode("a", 100, 0.0) is None
    assert budget.before_decode("a", 1, 0.0) is Refusal.FORWARDER_BUDGET
    assert budget.before_decode("b", 100, 0.0) is None


def test_each_forwarder_has_its_own_message_bucket():
    budget = ReceiveBudget(policy(forwarder_messages=Rate(1.0, 2.0)), forwarders=True)
    assert budget.before_decode("a", 1, 0.0) is None
    assert budget.before_decode("a", 1, 0.0) is None
    assert budget.before_decode("a", 1, 0.0) is Refusal.FORWARDER_BUDGET
    assert budget.before_decode("b", 1, 0.0) is None


@pytest.mark.parametrize(("now", "floor"), [(0, 0), (-5, 0), (1, 4096), (3, 3 << 12)])
def test_the_seq_floor_of_a_time(now, floor):
    assert seq_clock.floor(now) == floor


def test_a_seq_is_usable_up_to_its_own_millisecond():
    seq = seq_clock.floor(1_000) + 4095
    assert seq_clock.usable(seq, 1_000)
    assert not seq_clock.usable(seq + 1, 1_000)
