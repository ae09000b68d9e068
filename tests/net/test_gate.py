"""The gate's decisions, one per rule, on real signed batches and a real batch store.

Several of these are regressions for attacks found in review: a relay framing an honest
sender with `topic_mismatch`, repair pushing unrequested or future batches, unbounded
evidence for one (sender, seq), and a membership check that raised out of the validator.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from fai_core.embedding import HashingEmbedder
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_core.reputation import ReputationBook
from fai_core.wire import encode_batch
from fai_net.admission.gate import BatchGate, GatePolicy, Verdict
from fai_net.admission.membership import OpenMembership
from fai_net.admission.store import BatchStore

EMB = HashingEmbedder(384)
SENDER = NodeKey(bytes([7]) * 32)
RELAY = NodeKey(bytes([8]) * 32).public_key


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def batch(
    seq: int, *, texts=("retry flaky calls with backoff",), ts=None, domain="coding", group=128
):
    vectors = EMB.embed(list(texts))
    stamp = now_ms() if ts is None else ts
    exps = [
        Experience.create(t, v, 0.6, domain, SENDER.public_key, stamp)
        for t, v in zip(texts, vectors, strict=True)
    ]
    return encode_batch(
        exps,
        key=SENDER,
        seq=seq,
        timestamp_ms=stamp,
        model=EMB.model_id,
        baseline=vectors.mean(axis=0),
        group=group,
    )


@pytest.fixture
def gate(tmp_path):
    store = BatchStore.open(tmp_path / "store")
    rejected: list[str] = []
    g = BatchGate(
        store,
        OpenMembership(),
        ReputationBook(),
        GatePolicy(EMB.model_id, EMB.dimension),
        on_reject=rejected.append,
    )
    g.domains = {"coding"}
    g.rejected = rejected
    yield g
    store.close()


def test_accepts_stores_and_then_ignores_the_duplicate(gate):
    b = batch(0)
    first = gate.admit(b.envelope, now_ms(), origin="gossip", topic_domain="coding")
    assert first.verdict is Verdict.ACCEPT and gate.store.has(b.cid)
    again = gate.admit(b.envelope, now_ms(), origin="gossip", topic_domain="coding")
    assert (again.verdict, again.reason) == (Verdict.IGNORE, "duplicate")


def test_topic_mismatch_charges_the_relay_not_the_sender(gate):
    b = batch(0, domain="writing")
    for _ in range(15):
        r = gate.admit(
            b.envelope, now_ms(), origin="gossip", topic_domain="coding", forwarder=RELAY
        )
        assert r.reason == "topic_mismatch"
    assert gate.reputation.score(SENDER.public_key) == 1.0
    assert gate.reputation.deprioritised(RELAY)
    honest = batch(1)
    ok = gate.admit(honest.envelope, now_ms(), origin="gossip", topic_domain="coding")
    assert ok.verdict is Verdict.ACCEPT


def test_other_group_size_is_wrong_model(gate):
    r = gate.admit(batch(0, group=64).envelope, now_ms(), origin="gossip", topic_domain="coding")
    assert r.reason == "wrong_model"


def test_freshness_windows_by_origin(gate):
    hour = 3_600_000
    old = batch(0, ts=now_ms() - hour)
    assert gate.admit(old.envelope, now_ms(), origin="gossip", topic_domain="coding").reason == (
        "stale"
    )
    assert gate.admit(old.envelope, now_ms(), origin="repair").verdict is Verdict.ACCEPT
    future = batch(1, ts=now_ms() + hour)
    assert gate.admit(future.envelope, now_ms(), origin="repair").reason == "future"


def test_repair_refuses_what_was_not_asked_for(gate):
    asked, pushed = batch(0), batch(1, texts=("pin versions before upgrading",))
    r = gate.admit(pushed.envelope, now_ms(), origin="repair", forwarder=RELAY, wanted={asked.cid})
    assert r.reason == "unrequested" and not gate.store.has(pushed.cid)
    r = gate.admit(asked.envelope, now_ms(), origin="repair", forwarder=RELAY, wanted={asked.cid})
    assert r.verdict is Verdict.ACCEPT


def test_old_seq_refused_live_but_repaired_late(gate):
    gate.admit(batch(10_000).envelope, now_ms(), origin="gossip", topic_domain="coding")
    late = batch(5, texts=("read the traceback first",))
    live = gate.admit(late.envelope, now_ms(), origin="gossip", topic_domain="coding")
    assert live.reason == "old_seq"
    assert gate.admit(late.envelope, now_ms(), origin="repair").verdict is Verdict.ACCEPT


def test_equivocation_keeps_one_proof_per_seq(gate):
    seen = []
    gate.on_equivocation = seen.append
    gate.admit(batch(3).envelope, now_ms(), origin="gossip", topic_domain="coding")
    for i in range(5):
        other = batch(3, texts=(f"variant number {i} of a pattern",))
        r = gate.admit(other.envelope, now_ms(), origin="gossip", topic_domain="coding")
        assert r.reason == "equivocation" and not gate.store.has(other.cid)
    assert gate.store.evidence_count() == 1 and len(seen) == 1
    assert seen[0].conflicting is not None
    assert gate.rejected.count("equivocation") == 5


def test_a_failing_membership_check_costs_a_batch_not_the_node(gate):
    class Broken(OpenMembership):
        def check(self, signed):
            raise ConnectionError("rpc down")

    gate.membership = Broken()
    r = gate.admit(batch(0).envelope, now_ms(), origin="gossip", topic_domain="coding")
    assert (r.verdict, r.reason) == (Verdict.REJECT, "internal")
    assert gate.rejected == ["internal"]


def test_registry_membership_check_never_calls_the_chain():
    """A peer can attach any operator_sig; check() must answer from the snapshot alone."""
    from fai_net.admission.membership import RegistryMembership

    class NoChain:
        chain_id, address = 31337, "0x" + "11" * 20

        def __getattr__(self, name):
            raise AssertionError(f"check() touched the chain: {name}")

    m = RegistryMembership(NoChain())
    b = batch(0)
    assert m.check(b) == "not_member"
    m._live = {SENDER.public_key: type("P", (), {"operator": "0x" + "22" * 20})()}
    assert m.check(b) == "no_operator_sig"
    forged = type(b)(b.envelope, b.batch, b.signature, bytes(np.arange(65, dtype=np.uint8)))
    assert m.check(forged) == "bad_operator_sig"


def test_a_deprioritised_sender_is_admitted_again_after_recovery(tmp_path):
    """The node's book recovers with time, so an honest peer that fell below the floor is
    evaluated again instead of being refused for good."""
    now = [now_ms()]
    book = ReputationBook(recovery_half_life_ms=3_600_000, clock_ms=lambda: now[0])
    store = BatchStore.open(tmp_path / "s")
    gate = BatchGate(store, OpenMembership(), book, GatePolicy(EMB.model_id, EMB.dimension))
    gate.domains = {"coding"}
    for _ in range(12):
        book.record(SENDER.public_key, passed=False)
    b = batch(0)
    assert gate.admit(b.envelope, now[0], origin="repair").reason == "low_reputation"
    now[0] += 3_600_000
    assert gate.admit(b.envelope, now[0], origin="repair").verdict is Verdict.ACCEPT
    store.close()


def test_refusal_cache_expires_and_stays_bounded():
    from fai_net.admission.gate import RefusalCache

    cache = RefusalCache(ttl_s=2.0, max_entries=3)
    cache.add(b"a", 100.0)
    assert cache.seen(b"a", 101.5) and not cache.seen(b"a", 102.5)
    for i, key in enumerate((b"1", b"2", b"3", b"4")):
        cache.add(key, 200.0 + i)
    assert len(cache) == 3 and not cache.seen(b"1", 203.0) and cache.seen(b"4", 203.0)


def test_an_over_budget_batch_is_refused_temporarily_uncharged_and_not_stored(gate):
    """The admission hook runs last: after every check that can charge someone, and its
    refusal charges nobody, so a budget can never cost an honest sender reputation."""
    from fai_net.admission.budgets import BudgetPolicy, Rate, ReceiveBudget
    from fai_net.admission.gate import TEMPORARY_REFUSALS

    budget = ReceiveBudget(BudgetPolicy(sender_rows=Rate(1.0, 2.0)), forwarders=False)
    gate.admission = lambda signed, fwd, origin, size: budget.admit(
        signed.batch.sender, fwd, len(signed.batch), size, now_s=0.0
    )
    texts = ("retry flaky calls with backoff", "pin the toolchain version")
    first, second = batch(1, texts=texts), batch(2, texts=texts)
    assert gate.admit(first.envelope, now_ms(), origin="gossip").verdict is Verdict.ACCEPT
    result = gate.admit(second.envelope, now_ms(), origin="gossip", forwarder=RELAY)
    assert (result.verdict, result.reason) == (Verdict.REJECT, "sender_budget")
    assert result.reason in TEMPORARY_REFUSALS
    assert not gate.store.has(second.batch.cid)
    assert gate.reputation.score(SENDER.public_key) == 1.0
    assert gate.reputation.score(RELAY) == 1.0
    # Once the budget allows it (here: a fresh budget), the same batch is accepted.
    gate.admission = None
    assert gate.admit(second.envelope, now_ms(), origin="gossip").verdict is Verdict.ACCEPT
