"""Sender histories (fai_core.deltasoup_history): the domain and quality checks across rounds.

Real signed batches of the shipped corpus (texts with their own all-MiniLM-L6-v2 vectors, so
every check against the receiver's re-embedding passes) through DeltaSoup, round after round,
as a hostile sender would send them: another domain's lessons under this domain's tag,
inflated quality claims, a round flooded with colluding senders.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fai_core.corpus import load_pattern_corpus
from fai_core.deltasoup import DeltaSoup, DeltaSoupConfig
from fai_core.deltasoup_filters import vote_weights
from fai_core.deltasoup_history import HistoryVerdict, SenderHistory
from fai_core.deltasoup_reference import SenderSummary, reference
from fai_core.domain_anchors import builtin_anchors
from fai_core.embedding import DEFAULT_MODEL
from fai_core.identity import NodeKey
from fai_core.refusals import Drop
from fai_eval.attacks import signed_batch
from fai_eval.scenario import TableEmbedder, shipped_embeddings

T0 = 1_760_000_000_000
ROUND_MS = 60_000

TEXTS, VECTORS = shipped_embeddings("patterns")
DOMAIN_OF = np.array([d for d, _ in load_pattern_corpus()])


def _pool(domain: str) -> np.ndarray:
    return np.flatnonzero(domain == DOMAIN_OF)


class Fleet:
    """Senders and one receiver; `round` sends each sender's rows and returns the result."""

    def __init__(self, seed: int = 3, history: SenderHistory | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.soup = DeltaSoup(TableEmbedder(), history=history)
        self.seq: dict[bytes, int] = {}
        self.r = 0

    def batch(self, key: NodeKey, rows: np.ndarray, tag: str, quality=None):
        seq = self.seq[key.public_key] = self.seq.get(key.public_key, 0) + 1
        q = self.rng.beta(4.0, 3.0, len(rows)) if quality is None else np.asarray(quality)
        return signed_batch(
            key, [TEXTS[i] for i in rows], VECTORS[rows], domain=tag, quality=q, seq=seq,
            timestamp_ms=T0 + self.r * ROUND_MS, model=DEFAULT_MODEL,
        ).batch  # fmt: skip

    def honest(self, key: NodeKey, domain: str, n: int = 1):
        return self.batch(key, self.rng.choice(_pool(domain), n, replace=False), domain)

    def round(self, batches):
        result = self.soup.aggregate(batches, T0 + self.r * ROUND_MS + 1000)
        self.r += 1
        return result


def _fates(result, keys) -> list:
    wanted = {k.public_key for k in keys}
    return [d for s, d in zip(result.row_sender, result.row_drop, strict=True) if s in wanted]


HONEST = [NodeKey.generate() for _ in range(8)]


HISTORY_DROPS = {Drop.DOMAIN_MISMATCH, Drop.QUALITY_OUTLIER}


def test_spoofed_domain_tag_is_refused_once_the_domain_has_a_reference():
    """Writing lessons tagged security, three a round, beside eight honest security
    senders: the first two batches wait in the backlog (their margin to the domain is
    suspicious but not yet proof), and from the third round every row is refused, the
    waiting ones with them: no spoofed row is ever kept."""
    fleet, spoofer = Fleet(), NodeKey.generate()
    spoofed, honest_fates, standing = [], [], []
    for _ in range(12):
        batches = [fleet.honest(k, "security") for k in HONEST]
        batches.append(fleet.batch(spoofer, fleet.rng.choice(_pool("writing"), 3), "security"))
        result = fleet.round(batches)
        spoofed.append(_fates(result, [spoofer]))
        honest_fates += _fates(result, HONEST)
        standing.append(fleet.soup.history.refused("security", spoofer.public_key))
    # What recall reads (fai_net/api/recall.py): refused from the third round on, in that
    # domain only; no honest sender ever.
    assert standing == [False, False] + [True] * 10
    assert not fleet.soup.history.refused("writing", spoofer.public_key)
    assert not any(fleet.soup.history.refused("security", k.public_key) for k in HONEST)
    assert set(spoofed[0]) == set(spoofed[1]) == {Drop.DEFERRED}
    assert Drop.DOMAIN_MISMATCH in spoofed[2] and None not in spoofed[2]
    # Refused stays refused (hysteresis) while honest senders' spread grows with their rows.
    assert all(d is Drop.DOMAIN_MISMATCH for fates in spoofed[3:] for d in fates)
    # Honest senders at the edge of the domain may wait, and are kept when the wait ends.
    assert set(honest_fates) <= {None, Drop.DEFERRED}
    assert fleet.soup.reputation.score(spoofer.public_key) == 1.0  # relative: never charged


def test_inflated_quality_is_refused_and_honest_claims_are_not():
    fleet, liar = Fleet(seed=5), NodeKey.generate()
    lied, honest_fates = [], []
    for _ in range(12):
        batches = [fleet.honest(k, "devops") for k in HONEST]
        rows = fleet.rng.choice(_pool("devops"), 3, replace=False)
        batches.append(fleet.batch(liar, rows, "devops", quality=[0.99, 0.98, 0.995]))
        result = fleet.round(batches)
        lied.append(_fates(result, [liar]))
        honest_fates += _fates(result, HONEST)
    assert None not in {d for fates in lied for d in fates}
    assert all(d is Drop.QUALITY_OUTLIER for fates in lied[4:] for d in fates)
    assert not HISTORY_DROPS & set(honest_fates)
    assert fleet.soup.history.refused("devops", liar.public_key)
    assert not any(fleet.soup.history.refused("devops", k.public_key) for k in HONEST)


def test_colluders_that_dominate_rounds_refuse_no_honest_row():
    """Ten fresh keys send the same three design lessons, tagged coding, at inflated claims,
    round after round, against the history of eight honest senders. No colluder row is
    kept (they wait, then are refused), and no honest row is refused by any check: the
    round's own scale check (c) counts the ten identical senders as one vote too."""
    fleet = Fleet(seed=9)
    for _ in range(8):
        fleet.round([fleet.honest(k, "coding", 2) for k in HONEST])
    colluders = [NodeKey.generate() for _ in range(10)]
    same = _pool("design")[:3]
    colluder_fates = []
    for _ in range(5):
        batches = [fleet.honest(k, "coding", 2) for k in HONEST]
        batches += [fleet.batch(c, same, "coding", quality=[0.99] * 3) for c in colluders]
        result = fleet.round(batches)
        assert set(_fates(result, HONEST)) <= {None, Drop.DEFERRED}
        colluder_fates.append(set(_fates(result, colluders)))
    assert all(None not in fates for fates in colluder_fates)
    assert colluder_fates[-1] <= HISTORY_DROPS


def test_identical_senders_vote_once():
    rng = np.random.default_rng(1)
    distinct = rng.standard_normal((2, 16))
    same = np.repeat(rng.standard_normal((1, 16)), 3, axis=0)
    weights = vote_weights(np.concatenate([same, distinct]), 0.98)
    assert weights.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0, 1.0])


def _summary(vec: np.ndarray, q: float, rows: int = 4) -> SenderSummary:
    unit = vec / np.linalg.norm(vec)
    return SenderSummary.empty(len(vec)).plus(
        np.repeat(unit[None], rows, 0), np.full(rows, q), 8, 0
    )


def test_a_reference_needs_enough_senders():
    cfg = DeltaSoupConfig()
    rng = np.random.default_rng(2)
    four = [_summary(rng.standard_normal(8), 0.5) for _ in range(4)]
    assert reference(four, cfg) is None
    ref = reference([*four, _summary(rng.standard_normal(8), 0.6)], cfg)
    assert ref is not None and ref.quality_sigma >= cfg.history_quality_sigma


def test_the_history_survives_a_restart(tmp_path):
    path = tmp_path / "sender_history.npz"
    fleet = Fleet(seed=4, history=SenderHistory(384, path))
    for _ in range(6):
        fleet.round([fleet.honest(k, "research", 2) for k in HONEST])
    fleet.soup.history.save()
    again = SenderHistory(384, path)
    assert again.same_as(fleet.soup.history)
    assert again.domains() == ["research"] and len(again.senders("research")) == len(HONEST)


def test_a_damaged_history_file_is_refused(tmp_path):
    path = tmp_path / "h.npz"
    history = SenderHistory(384, path)
    fleet = Fleet(seed=6, history=history)
    fleet.round([fleet.honest(k, "writing") for k in HONEST])
    history.save()
    with pytest.raises(ValueError, match="not a sender history"):
        SenderHistory(128, path)
    with np.load(path) as data:
        arrays = dict(data)
    arrays["d0_q_sum"][0] = np.nan
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="not finite"):
        SenderHistory(384, path)


def test_senders_per_domain_are_bounded():
    cfg = dataclasses.replace(DeltaSoupConfig(), history_max_senders=3)
    fleet = Fleet(seed=8)
    fleet.soup.config = cfg
    for k in HONEST:
        fleet.round([fleet.honest(k, "design")])
    kept = fleet.soup.history.senders("design")
    assert set(kept) == {k.public_key for k in HONEST[-3:]}


def test_a_refused_sender_is_forgotten_last():
    """Recall withholds the rows of refused senders, so forgetting one would offer them
    again: a crowd of fresh keys pushes out the least recently heard honest senders, and
    the refused one only when nobody else is left to forget."""
    history = SenderHistory(4)
    cfg = dataclasses.replace(DeltaSoupConfig(), history_max_senders=3)
    liar, fresh = b"L" * 32, [bytes([i]) * 32 for i in range(5)]
    summary = SenderSummary.empty(4)
    history.apply(
        HistoryVerdict(updates={"ops": {liar: dataclasses.replace(summary, refused=True)}}), cfg
    )
    for key in fresh[:4]:
        history.apply(HistoryVerdict(updates={"ops": {key: summary}}), cfg)
        assert history.refused("ops", liar)
    assert set(history.senders("ops")) == {liar, fresh[2], fresh[3]}
    cfg = dataclasses.replace(cfg, history_max_senders=1)
    history.apply(HistoryVerdict(updates={"ops": {fresh[4]: summary}}), cfg)
    assert set(history.senders("ops")) == {liar}


# -- what a majority of keys can and cannot move ------------------------------------------------


def _anchored_fleet(seed: int, anchored: bool) -> Fleet:
    anchors = builtin_anchors(TableEmbedder()) if anchored else None
    return Fleet(seed=seed, history=SenderHistory(384, anchors=anchors))


@pytest.mark.parametrize("anchored", [True, False])
def test_spoofers_that_outnumber_a_domains_honest_senders(anchored):
    """Eight keys send writing lessons (three different ones each a round) tagged security to
    a receiver subscribed to security alone, beside four honest senders. Without anchors
    the spoofers are the domain's majority and own its centroid: most of their rows are
    kept. With the built-in anchors not one is kept after the first round, and no honest
    row is refused."""
    fleet = _anchored_fleet(11, anchored)
    honest, spoofers = HONEST[:4], [NodeKey.generate() for _ in range(8)]
    spoofed, honest_fates = [], []
    for _ in range(8):
        batches = [fleet.honest(k, "security") for k in honest]
        pool = _pool("writing")
        batches += [
            fleet.batch(s, fleet.rng.choice(pool, 3, replace=False), "security") for s in spoofers
        ]
        result = fleet.round(batches)
        spoofed.append(_fates(result, spoofers))
        honest_fates += _fates(result, honest)
    kept = sum(d is None for fates in spoofed[1:] for d in fates)
    if anchored:
        assert kept == 0
        assert not HISTORY_DROPS & set(honest_fates)
    else:
        assert kept > 0.5 * sum(len(f) for f in spoofed[1:])


def test_colluders_heard_before_any_honest_sender_end_up_refused():
    """Ten keys send the same three devops lessons at 0.99 from round 0, before six honest
    senders are heard (from round 1). Their first rows wait (ten keys, one vote: the
    domain is crowded), none is kept, and every colluder ends refused, for good: recall
    reads that (`SenderHistory.refused`), so had a row of theirs slipped in earlier it
    would no longer be offered. No honest sender is ever refused."""
    fleet = _anchored_fleet(13, anchored=True)
    honest, colluders = HONEST[:6], [NodeKey.generate() for _ in range(10)]
    same = _pool("devops")[:3]
    kept, standing = 0, []
    for r in range(12):
        batches = [fleet.batch(c, same, "devops", quality=[0.99] * 3) for c in colluders]
        batches += [fleet.honest(k, "devops") for k in honest] if r else []
        result = fleet.round(batches)
        kept += sum(d is None for d in _fates(result, colluders))
        assert not HISTORY_DROPS & set(_fates(result, honest))
        standing.append([fleet.soup.history.refused("devops", c.public_key) for c in colluders])
    assert kept == 0
    assert all(all(row) for row in standing[2:])
    assert not any(fleet.soup.history.refused("devops", k.public_key) for k in honest)


@pytest.mark.parametrize("own_rows", [0, 12])
def test_own_rows_bound_the_quality_middle_that_inflators_outnumbering_honest_senders_set(
    own_rows,
):
    """Eight keys send real devops lessons claimed at 0.97-0.99 beside four honest senders.
    They are the majority, so the middle claim is theirs and, on senders alone, they pass.
    With twelve rows of the node's own in the domain (claims around 0.57), the middle is
    never above the node's own mean claim: every inflator is refused from the third round,
    and no honest row is refused."""
    fleet = Fleet(seed=12)
    rng = np.random.default_rng(0)
    if own_rows:
        rows = fleet.rng.choice(_pool("devops"), own_rows, replace=False)
        fleet.soup.history.record_own("devops", VECTORS[rows], rng.beta(4.0, 3.0, own_rows))
    honest, inflators = HONEST[:4], [NodeKey.generate() for _ in range(8)]
    lied, honest_fates = [], []
    for _ in range(8):
        batches = [fleet.honest(k, "devops") for k in honest]
        for s in inflators:
            rows = fleet.rng.choice(_pool("devops"), 3, replace=False)
            batches.append(fleet.batch(s, rows, "devops", quality=rng.uniform(0.97, 0.99, 3)))
        result = fleet.round(batches)
        lied.append(_fates(result, inflators))
        honest_fates += _fates(result, honest)
    if own_rows:
        assert all(d is Drop.QUALITY_OUTLIER for fates in lied[2:] for d in fates)
        assert not HISTORY_DROPS & set(honest_fates)
    else:
        assert sum(d is None for fates in lied for d in fates) > 0.5 * sum(map(len, lied))


def test_own_rows_are_checked_and_survive_a_restart(tmp_path):
    path = tmp_path / "sender_history.npz"
    history = SenderHistory(384, path)
    with pytest.raises(ValueError, match=r"want \(2, 384\) embeddings"):
        history.record_own("coding", np.zeros((3, 384)), [0.5, 0.5])
    with pytest.raises(ValueError, match="not finite"):
        history.record_own("coding", np.full((1, 384), np.nan), [0.5])
    history.record_own("coding", VECTORS[_pool("coding")[:9]], np.full(9, 0.6))
    history.save()
    again = SenderHistory(384, path)
    assert again.own("coding").rows == 9 and again.own("coding").q_sum == pytest.approx(5.4)
    assert again.same_as(history)


def test_margins_and_refusals_survive_a_restart_and_a_format_1_file_still_loads(tmp_path):
    path = tmp_path / "sender_history.npz"
    fleet = Fleet(seed=13, history=SenderHistory(384, path, builtin_anchors(TableEmbedder())))
    spoofer = NodeKey.generate()
    for _ in range(4):
        batches = [fleet.honest(k, "design") for k in HONEST]
        batches.append(fleet.batch(spoofer, fleet.rng.choice(_pool("coding"), 3), "design"))
        fleet.round(batches)
    fleet.soup.history.save()
    again = SenderHistory(384, path)
    mine = again.senders("design")[spoofer.public_key]
    assert mine.refused and mine.margin_rows == 12 and mine.margin_sum < 0
    assert again.same_as(fleet.soup.history)
    with np.load(path) as data:  # what a node before margins wrote
        old = {k: v for k, v in data.items() if "margin" not in k and "refused" not in k}
    old["format"] = np.array(1)
    np.savez(path, **old)
    before = SenderHistory(384, path).senders("design")[spoofer.public_key]
    assert (before.rows, before.margin_rows, before.refused) == (12, 0, False)


def test_damaged_margins_are_refused(tmp_path):
    path = tmp_path / "h.npz"
    history = SenderHistory(384, path, builtin_anchors(TableEmbedder()))
    fleet = Fleet(seed=14, history=history)
    fleet.round([fleet.honest(k, "writing") for k in HONEST])
    history.save()
    with np.load(path) as data:
        arrays = dict(data)
    arrays["d0_margin_rows"] = arrays["d0_margin_rows"] + 1000
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="inconsistent margins"):
        SenderHistory(384, path)
