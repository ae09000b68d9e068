"""The gate's results in full (fai_net/admission/gate.py): for each rule, the verdict, the
reason, the decoded batch handed back, and the detail the refusal log line gives an
operator; and the exact edges of the time and seq windows. These are the edges
`make mutate` found untested (docs/mutation.md).
"""

from __future__ import annotations

import time

import pytest

from fai_core.baseline_block import make_baseline_block
from fai_core.embedding import HashingEmbedder
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_core.refusals import Ignore, Refusal, Reject
from fai_core.reputation import ReputationBook
from fai_core.wire import decode_envelope, encode_batch, encode_batch_v2
from fai_net.admission import gate as gate_module
from fai_net.admission.gate import BatchGate, GatePolicy, RefusalCache, Verdict
from fai_net.admission.membership import OpenMembership
from fai_net.admission.store import BatchStore

EMB = HashingEmbedder(384)
SENDER = NodeKey(bytes([7]) * 32)
RELAY = NodeKey(bytes([8]) * 32).public_key
NOW = time.time_ns() // 1_000_000


def experiences(texts, stamp, domain="coding"):
    vectors = EMB.embed(list(texts))
    exps = [
        Experience.create(t, v, 0.6, domain, SENDER.public_key, stamp)
        for t, v in zip(texts, vectors, strict=True)
    ]
    return exps, vectors


def batch(seq, *, ts=NOW, domain="coding", texts=("retry flaky calls with backoff",)):
    exps, vectors = experiences(texts, ts, domain)
    return encode_batch(
        exps,
        key=SENDER,
        seq=seq,
        timestamp_ms=ts,
        model=EMB.model_id,
        baseline=vectors.mean(axis=0),
    )


def batch_v2(seq, *, model=EMB.model_id, attach=False):
    exps, vectors = experiences(["pin the lockfile before release"], NOW)
    block = make_baseline_block(vectors.mean(axis=0), model)
    return encode_batch_v2(
        exps, key=SENDER, seq=seq, timestamp_ms=NOW, baseline=block, attach_baseline=attach
    )


class Lines:
    """Stands in for the gate's rate-limited log: every refusal line, none suppressed."""

    def __init__(self):
        self.lines: list[tuple] = []

    def info(self, key, msg, *args):
        self.lines.append((key, msg % args))
        return True


@pytest.fixture
def lines(monkeypatch):
    recorder = Lines()
    monkeypatch.setattr(gate_module, "_ratelog", recorder)
    return recorder


@pytest.fixture
def store(tmp_path):
    s = BatchStore.open(tmp_path / "store")
    yield s
    s.close()


def make_gate(store, **kwargs) -> BatchGate:
    rejected: list = []
    g = BatchGate(
        store,
        kwargs.pop("membership", OpenMembership()),
        kwargs.pop("reputation", ReputationBook()),
        GatePolicy(EMB.model_id, EMB.dimension),
        on_reject=rejected.append,
        **kwargs,
    )
    g.domains = {"coding"}
    g.rejected = rejected
    return g


def test_an_accepted_batch_comes_back_decoded(store):
    g = make_gate(store)
    b = batch(0)
    result = g.admit(b.envelope, NOW, origin="gossip")
    assert (result.verdict, result.reason) == (Verdict.ACCEPT, None)
    assert result.signed.cid == b.cid and result.detail is None


def test_a_duplicate_and_an_unsubscribed_batch_come_back_decoded(store):
    g = make_gate(store)
    b = batch(0)
    g.admit(b.envelope, NOW, origin="gossip")
    again = g.admit(b.envelope, NOW, origin="gossip")
    assert (again.verdict, again.reason, again.signed.cid) == (
        Verdict.IGNORE,
        Ignore.DUPLICATE,
        b.cid,
    )
    other = batch(1, domain="writing")
    ignored = g.admit(other.envelope, NOW, origin="gossip")
    assert (ignored.verdict, ignored.reason, ignored.signed.cid) == (
        Verdict.IGNORE,
        Ignore.UNSUBSCRIBED,
        other.cid,
    )


def test_a_new_gate_is_subscribed_to_nothing(store):
    g = BatchGate(store, OpenMembership(), ReputationBook(), GatePolicy(EMB.model_id, 384))
    result = g.admit(batch(0).envelope, NOW, origin="gossip")
    assert (result.verdict, result.reason) == (Verdict.IGNORE, Ignore.UNSUBSCRIBED)


def test_a_matching_topic_version_is_accepted(store):
    g = make_gate(store)
    b = batch(0)
    version = decode_envelope(b.envelope).batch.version
    result = g.admit(b.envelope, NOW, origin="gossip", topic_domain="coding", topic_version=version)
    assert result.verdict is Verdict.ACCEPT


def test_a_topic_of_another_version_is_refused_and_says_so(store, lines):
    g = make_gate(store)
    b = batch(0)
    version = decode_envelope(b.envelope).batch.version
    result = g.admit(
        b.envelope,
        NOW,
        origin="gossip",
        topic_domain="coding",
        topic_version=version + 1,
        forwarder=RELAY,
    )
    assert (result.verdict, result.reason, result.signed.cid) == (
        Verdict.REJECT,
        Refusal.TOPIC_MISMATCH,
        b.cid,
    )
    assert lines.lines == [
        (
            Refusal.TOPIC_MISMATCH,
            f"rejected batch: topic_mismatch: v{version} coding on v{version + 1} coding",
        )
    ]


def test_an_unrequested_repair_reply_names_its_forwarder(store, lines):
    g = make_gate(store)
    b = batch(0)
    result = g.admit(b.envelope, NOW, origin="repair", forwarder=RELAY, wanted=set())
    assert (result.reason, result.signed.cid) == (Refusal.UNREQUESTED, b.cid)
    assert lines.lines == [
        (Refusal.UNREQUESTED, f"rejected batch: unrequested: repair reply from {RELAY.hex()[:12]}")
    ]
    g.admit(b.envelope, NOW, origin="repair", wanted=set())
    assert lines.lines[-1][1] == "rejected batch: unrequested: repair reply from ?"


def test_a_decode_failure_names_what_failed_and_the_forwarder(store, lines):
    g = make_gate(store)
    result = g.admit(b"\x00junk", NOW, origin="gossip", forwarder=RELAY)
    assert result.verdict is Verdict.REJECT and isinstance(result.reason, Reject)
    assert result.signed is None
    [(key, line)] = lines.lines
    assert key == result.reason
    assert line.startswith(f"rejected batch: {result.reason}: ")
    assert line.endswith(f" (from {RELAY.hex()[:12]})")


@pytest.mark.parametrize("origin", ["gossip", "repair"])
def test_the_time_windows_include_their_edges(store, lines, origin):
    g = make_gate(store)
    policy = g.policy
    oldest = policy.max_age_ms if origin == "gossip" else policy.repair_max_age_ms
    at_edge = batch(0, ts=NOW - oldest)
    assert g.admit(at_edge.envelope, NOW, origin=origin).verdict is Verdict.ACCEPT
    too_old = batch(1, ts=NOW - oldest - 1)
    stale = g.admit(too_old.envelope, NOW, origin=origin)
    assert (stale.reason, stale.signed.cid) == (Refusal.STALE, too_old.cid)
    ahead = batch(2, ts=NOW + policy.max_age_ms)
    assert g.admit(ahead.envelope, NOW, origin=origin).verdict is Verdict.ACCEPT
    too_far = batch(3, ts=NOW + policy.max_age_ms + 1)
    future = g.admit(too_far.envelope, NOW, origin=origin)
    assert (future.reason, future.signed.cid) == (Refusal.FUTURE, too_far.cid)
    assert [line for _, line in lines.lines] == [
        f"rejected batch: stale: {oldest + 1} ms old",
        f"rejected batch: future: {policy.max_age_ms + 1} ms ahead",
    ]


def test_a_wrong_model_is_refused_with_the_model_it_named(store, lines):
    g = make_gate(store)
    g.policy = GatePolicy("another-model", EMB.dimension)
    b = batch(0)
    result = g.admit(b.envelope, NOW, origin="gossip")
    assert (result.reason, result.signed.cid) == (Refusal.WRONG_MODEL, b.cid)
    assert lines.lines == [
        (Refusal.WRONG_MODEL, f"rejected batch: wrong_model: {EMB.model_id}/384/g128")
    ]


def test_an_unresolved_version_2_batch_is_checked_against_our_model(store):
    g = make_gate(store)
    unresolved = batch_v2(0)
    assert decode_envelope(unresolved.envelope).batch.model is None
    assert g.admit(unresolved.envelope, NOW, origin="gossip").verdict is Verdict.ACCEPT
    named = batch_v2(1, model="another-model", attach=True)
    result = g.admit(named.envelope, NOW, origin="gossip")
    assert (result.reason, result.signed.cid) == (Refusal.WRONG_MODEL, named.cid)


class Refusing(OpenMembership):
    def check(self, signed):
        return Refusal.NOT_MEMBER


def test_a_membership_refusal_names_the_sender(store, lines):
    g = make_gate(store, membership=Refusing())
    b = batch(0)
    result = g.admit(b.envelope, NOW, origin="gossip")
    assert (result.reason, result.signed.cid) == (Refusal.NOT_MEMBER, b.cid)
    sender = SENDER.public_key.hex()[:12]
    assert lines.lines == [(Refusal.NOT_MEMBER, f"rejected batch: not_member: {sender}")]


def test_equivocation_keeps_both_envelopes_and_names_the_sender_again(store, lines):
    seen = []
    g = make_gate(store, on_equivocation=seen.append)
    first, second = batch(5), batch(5, texts=("a different batch at the same seq",))
    g.admit(first.envelope, NOW, origin="gossip")
    result = g.admit(second.envelope, NOW, origin="gossip")
    assert (result.reason, result.signed.cid, result.conflicting) == (
        Refusal.EQUIVOCATION,
        second.cid,
        first.envelope,
    )
    assert seen == [result]
    third = batch(5, texts=("yet another batch at that seq",))
    again = g.admit(third.envelope, NOW, origin="gossip")
    assert (again.reason, again.signed.cid) == (Refusal.EQUIVOCATION, third.cid)
    sender = SENDER.public_key.hex()[:12]
    assert lines.lines == [(Refusal.EQUIVOCATION, f"rejected batch: equivocation: {sender} again")]


def test_the_seq_window_includes_its_edge_for_gossip_only(store, lines):
    g = make_gate(store)
    window = g.policy.seq_window
    g.admit(batch(window + 10).envelope, NOW, origin="gossip")
    assert g.admit(batch(10).envelope, NOW, origin="gossip").verdict is Verdict.ACCEPT
    old = batch(9)
    result = g.admit(old.envelope, NOW, origin="gossip")
    assert (result.reason, result.signed.cid) == (Refusal.OLD_SEQ, old.cid)
    assert lines.lines == [
        (Refusal.OLD_SEQ, f"rejected batch: old_seq: seq 9, newest {window + 10}")
    ]
    assert g.admit(old.envelope, NOW, origin="repair").verdict is Verdict.ACCEPT


def test_a_low_reputation_refusal_names_the_sender(store, lines):
    book = ReputationBook()
    for _ in range(12):
        book.record(SENDER.public_key, passed=False)
    g = make_gate(store, reputation=book)
    b = batch(0)
    result = g.admit(b.envelope, NOW, origin="gossip")
    assert (result.reason, result.signed.cid) == (Refusal.LOW_REPUTATION, b.cid)
    sender = SENDER.public_key.hex()[:12]
    assert lines.lines == [(Refusal.LOW_REPUTATION, f"rejected batch: low_reputation: {sender}")]


def test_the_admission_hook_sees_the_batch_and_may_refuse_it(store, lines):
    calls = []

    def admission(signed, forwarder, origin, size):
        calls.append((signed.cid, forwarder, origin, size))
        return Refusal.BUSY

    g = make_gate(store, admission=admission)
    b = batch(0)
    result = g.admit(b.envelope, NOW, origin="repair", forwarder=RELAY)
    assert (result.verdict, result.reason, result.signed.cid) == (
        Verdict.REJECT,
        Refusal.BUSY,
        b.cid,
    )
    assert calls == [(b.cid, RELAY, "repair", len(b.envelope))]
    assert not store.has(b.cid) and g.rejected == [Refusal.BUSY]
    sender = SENDER.public_key.hex()[:12]
    assert lines.lines == [(Refusal.BUSY, f"rejected batch: busy: {sender}")]


def test_a_gate_failure_costs_one_batch_and_says_why(store):
    g = make_gate(store)

    def broken(cid):
        raise RuntimeError("disk on fire")

    store.has = broken
    result = g.admit(batch(0).envelope, NOW, origin="gossip")
    assert (result.verdict, result.reason, result.signed) == (
        Verdict.REJECT,
        Refusal.INTERNAL,
        None,
    )
    assert (result.conflicting, result.detail) == (None, "disk on fire")
    assert g.rejected == [Refusal.INTERNAL]


def test_the_refusal_cache_forgets_after_its_ttl_and_bounds_its_size():
    cache = RefusalCache(ttl_s=10)
    assert cache.max_entries == 8192
    cache.add(b"k", 100.0)
    assert cache.seen(b"k", 110.0)  # exactly the TTL: still seen
    assert not cache.seen(b"k", 110.5)
    assert len(cache) == 0
    small = RefusalCache(ttl_s=10, max_entries=2)
    for key in (b"a", b"b", b"a", b"c"):
        small.add(key, 0.0)
    assert len(small) == 2
    assert small.seen(b"a", 0.0) and small.seen(b"c", 0.0) and not small.seen(b"b", 0.0)


def test_a_duplicate_carrying_the_missing_block_leaves_the_block(store):
    g = make_gate(store)
    stripped, attached = batch_v2(0), batch_v2(0, attach=True)
    assert stripped.cid == attached.cid  # the block travels outside the signed batch
    assert g.admit(stripped.envelope, NOW, origin="gossip").verdict is Verdict.ACCEPT
    block = attached.baseline_block
    assert store.get_block(block.cid) is None
    again = g.admit(attached.envelope, NOW + 5, origin="gossip")
    assert (again.verdict, again.reason) == (Verdict.IGNORE, Ignore.DUPLICATE)
    assert store.get_block(block.cid) == block.data
    store.prune(NOW + 6)  # kept while the stored batch names it, however old
    assert store.get_block(block.cid) == block.data
    store.mark_merged([stripped.cid])
    store.prune(NOW + 1)  # the batch goes; the block, used at the copy's arrival, stays
    assert not store.has(stripped.cid) and store.get_block(block.cid) == block.data
    store.prune(NOW + 6)
    assert store.get_block(block.cid) is None
