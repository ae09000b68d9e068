"""Receive budgets, the fair pending queue and rate-limited logs, attacked directly.

Each test is what a hostile peer would try against one rule: more rows than its budget, a
flood of fresh keys through one connection, one huge legal batch, a queue filled by one
principal, a refusal log that grows with the flood.
"""

from __future__ import annotations

import logging

import pytest

from fai_net.admission.budgets import BudgetPolicy, Rate, ReceiveBudget, TokenBuckets
from fai_net.node.pending import FairQueue, QueueLimits
from fai_net.ratelog import RateLimitedLog

SENDER = b"s" * 32
OTHER = b"o" * 32


def tight(**overrides) -> BudgetPolicy:
    rates = dict(
        sender_rows=Rate(per_s=10.0, burst=100.0),
        sender_bytes=Rate(per_s=1e9, burst=1e9),
        forwarder_messages=Rate(per_s=5.0, burst=10.0),
        forwarder_bytes=Rate(per_s=1e9, burst=1e9),
        forwarder_rows=Rate(per_s=20.0, burst=200.0),
    )
    rates.update(overrides)
    return BudgetPolicy(**rates)


def test_a_sender_over_its_rows_budget_is_refused_until_the_bucket_refills():
    budget = ReceiveBudget(tight(), forwarders=False)
    assert budget.admit(SENDER, None, 60, 1_000, now_s=0.0) is None
    assert budget.admit(SENDER, None, 40, 1_000, now_s=0.0) is None
    assert budget.admit(SENDER, None, 1, 1_000, now_s=0.0) == "sender_budget"
    # Another sender is not affected by the first one's flood.
    assert budget.admit(OTHER, None, 100, 1_000, now_s=0.0) is None
    # 10 rows/s: after 2 s, 20 rows fit again, 21 do not.
    assert budget.admit(SENDER, None, 21, 1_000, now_s=2.0) == "sender_budget"
    assert budget.admit(SENDER, None, 20, 1_000, now_s=2.0) is None


def test_the_bytes_budget_binds_independently_of_rows():
    policy = tight(sender_bytes=Rate(per_s=1_000.0, burst=10_000.0))
    budget = ReceiveBudget(policy, forwarders=False)
    assert budget.admit(SENDER, None, 1, 9_000, now_s=0.0) is None
    assert budget.admit(SENDER, None, 1, 2_000, now_s=0.0) == "sender_budget"


def test_one_legal_batch_larger_than_the_burst_passes_once_then_the_sender_waits():
    budget = ReceiveBudget(tight(), forwarders=False)
    # 1,024 rows against a burst of 100: admitted from a full bucket (never refused forever)...
    assert budget.admit(SENDER, None, 1024, 1_000, now_s=0.0) is None
    # ...and the debt makes the sender wait ~92 s before anything else fits.
    assert budget.admit(SENDER, None, 1, 1_000, now_s=60.0) == "sender_budget"
    assert budget.admit(SENDER, None, 1, 1_000, now_s=93.0) is None


def test_stake_weight_scales_rate_and_burst():
    budget = ReceiveBudget(tight(), forwarders=False)
    assert budget.admit(SENDER, None, 400, 1, now_s=0.0, weight=4.0) is None
    assert budget.admit(SENDER, None, 1, 1, now_s=0.0, weight=4.0) == "sender_budget"
    assert budget.admit(OTHER, None, 30, 1, now_s=0.0, weight=0.5) is None
    assert budget.admit(OTHER, None, 21, 1, now_s=0.0, weight=0.5) == "sender_budget"
    assert budget.admit(OTHER, None, 20, 1, now_s=0.0, weight=0.5) is None


def test_fresh_keys_through_one_connection_meet_the_forwarder_budget():
    """Open mode: 2,000 keys cost nothing, the connection that carries them is one."""
    budget = ReceiveBudget(tight(), forwarders=True)
    admitted = sum(
        budget.admit(i.to_bytes(32, "big"), b"F" * 32, 10, 100, now_s=0.0) is None
        for i in range(2_000)
    )
    assert admitted == 20  # 200 rows of forwarder burst / 10 rows each
    # An honest sender's batch relayed by another connection is unaffected.
    assert budget.admit(OTHER, b"H" * 32, 10, 100, now_s=0.0) is None


def test_the_forwarder_message_budget_is_charged_before_decoding():
    budget = ReceiveBudget(tight(), forwarders=True)
    verdicts = [budget.before_decode("hostile", 500, now_s=0.0) for _ in range(50)]
    assert verdicts.count(None) == 10 and verdicts.count("forwarder_budget") == 40
    assert budget.before_decode("honest", 500, now_s=0.0) is None
    assert budget.before_decode("hostile", 500, now_s=1.0) is None  # 5 msgs/s refill


def test_registry_mode_has_no_forwarder_budget():
    budget = ReceiveBudget(tight(), forwarders=False)
    assert all(budget.before_decode("peer", 10**6, now_s=0.0) is None for _ in range(100))


def test_bucket_memory_is_bounded_under_key_churn():
    buckets = TokenBuckets(Rate(per_s=1.0, burst=5.0), max_tracked=100)
    for i in range(10_000):
        buckets.take(i.to_bytes(4, "big"), 1, now_s=0.0)
    assert len(buckets) == 100


def test_rate_must_be_positive():
    with pytest.raises(ValueError, match=r"^a rate and its burst must be positive$"):
        Rate(per_s=0.0, burst=1.0)


# -- the fair queue --------------------------------------------------------------------------


def test_an_honest_batch_is_served_in_the_next_round_whatever_a_flooder_queued():
    queue: FairQueue[str] = FairQueue(QueueLimits(max_batches=1_000, max_rows=100_000, share=1))
    for i in range(500):
        queue.put("flooder", f"junk{i}", 50)
    queue.put("honest", "mine", 20)
    taken = queue.take(row_budget=256)
    assert "mine" in taken
    assert len(taken) <= 6  # ~256 rows: a bounded round, not everything pending


def test_take_round_robins_and_always_serves_one_batch():
    queue: FairQueue[str] = FairQueue()
    for p in ("a", "b", "c"):
        for i in range(3):
            queue.put(p, f"{p}{i}", 10)
    assert queue.take(row_budget=30) == ["a0", "b0", "c0"]
    assert queue.take(row_budget=1) == ["a1"]
    assert queue.take(row_budget=1_000) == ["b1", "c1", "a2", "b2", "c2"]
    assert queue.batches == 0 and queue.rows == 0 and queue.principals() == 0
    assert queue.take(row_budget=10) == []


def test_one_principal_cannot_fill_the_queue():
    queue: FairQueue[int] = FairQueue(QueueLimits(max_batches=100, max_rows=10_000, share=0.25))
    accepted = 0
    for i in range(1_000):
        if queue.fits("flooder", 10):
            queue.put("flooder", i, 10)
            accepted += 1
    assert accepted == 25
    assert queue.fits("honest", 10)


def test_totals_bound_the_queue_and_a_first_batch_is_never_locked_out_by_share():
    queue: FairQueue[int] = FairQueue(QueueLimits(max_batches=10, max_rows=1_000, share=0.1))
    assert queue.fits("big", 900)  # larger than its 10% share, but the first it queues
    queue.put("big", 0, 900)
    assert not queue.fits("big", 1)
    assert not queue.fits("other", 101)  # over the total rows
    for i in range(9):
        queue.put(f"p{i}", i, 1)
    assert not queue.fits("new", 1)  # over the total batches


# -- bounded logs ----------------------------------------------------------------------------


def test_refusal_logs_are_bounded_per_reason_and_count_what_they_skip(caplog):
    now = [0.0]
    ratelog = RateLimitedLog(logging.getLogger("fai.test.ratelog"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="fai.test.ratelog"):
        written = sum(ratelog.info("bad_signature", "refused %d", i) for i in range(1_000))
        assert ratelog.info("stale", "refused stale")  # another reason has its own quota
        now[0] = 10.5
        assert ratelog.info("bad_signature", "refused again")
    assert written == 1
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused 0", "refused stale", "refused again (+999 like it in the last 10 s)"]
