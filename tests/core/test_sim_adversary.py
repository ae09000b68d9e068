"""The simulator's opt-in adversary of issue 17: plausible attacks, Sybils, adaptive
attackers, and agents that recall and report outcomes (fai_eval/sim/feedback.py).

Runs are small (10-20 nodes, at most 30 rounds); expectations are directions (feedback
lowers what hurts), not tuned figures.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields

import numpy as np
import pytest

from fai_core import wire
from fai_core.identity import NodeKey
from fai_core.ranking import MUTE_MIN_REPORTS, Tally, standing, utility
from fai_eval.scenario import TableEmbedder
from fai_eval.sim import adversary, feedback, workload
from fai_eval.sim.simulator import SimConfig, Simulation
from fai_net.api.outcome_book import OutcomeBook

KEY = NodeKey(bytes(range(32)))
TS = 1_760_000_123_456
#: SimConfig's fields before issue 17: a default run's report must be what it was.
OLD_FIELDS = [
    "nodes",
    "rounds",
    "seed",
    "byzantine",
    "attack",
    "fanout",
    "loss",
    "latency_ms",
    "round_s",
    "fail_prob",
    "mean_down_rounds",
    "eval_every",
    "eval_tasks",
    "eval_nodes",
    "hit_cos",
    "share",
    "wire_version",
    "baseline_drift",
]
#: sha256 of `_digest`'s canonical report for the run in `test_default_run_is_unchanged`,
#: first recorded with the simulator as it was before issue 17 (git HEAD ea191f8's fai_eval).
#: A change of fai_core's behaviour changes it too: then re-record. Re-recorded when the
#: sender histories got domain anchors and margins (fai_core.domain_anchors); the new
#: simulator options still leave a default run as it was. Re-recorded when honest nodes
#: began to publish their own record of every id (not only those that won the library) and
#: the "fai" figures became what recall offers (rows of refused sources withheld).
GOLDEN = "697169d30f1b72795e7af6f5c87675be1591d55db0ff4cadfe6cc45da28a1b35"


@pytest.fixture(scope="module")
def world():
    return workload.World(5)


@pytest.fixture(scope="module")
def table():
    return TableEmbedder()


def _batch(world, attack, domain=2, round_index=0, honest_rounds=10, seed=1):
    sb = adversary.attack_batch(
        attack, world, KEY, domain, seq=3, timestamp_ms=TS, rng=np.random.default_rng(seed),
        round_index=round_index, honest_rounds=honest_rounds,
    )  # fmt: skip
    return wire.decode_envelope(sb.envelope).batch


def _consistent(b, table) -> np.ndarray:
    """Cosine of each row's BitDelta reconstruction with the embedding of its own text."""
    own = table.embed(list(b.texts))
    rec = b.embeddings()
    rec = rec / np.linalg.norm(rec, axis=1, keepdims=True)
    return (rec * own).sum(axis=1)


@pytest.mark.parametrize("domain", range(8))
def test_plausible_harmful_rows_are_consistent_harmful_and_inflated(world, table, domain):
    b = _batch(world, "plausible_harmful", domain)
    idx = [world.harm_index[t] for t in b.texts]  # KeyError unless a harmful lesson
    assert len(set(b.texts)) == adversary.ROWS
    assert set(world.harmful_domain[idx].tolist()) == {domain}, "written for the tagged domain"
    assert np.all(world.harmful_usefulness[idx] < 0)
    assert b.quality.min() >= 0.95 and b.quality.max() < 1.0
    # Text and embedding agree as an honest row's do (BitDelta's floor is ~0.76).
    assert _consistent(b, table).min() > 0.7
    rows, _, _ = adversary.plausible_rows(
        "plausible_harmful", world, domain, np.random.default_rng(1)
    )
    assert np.array_equal(table.embed(rows), world.harmful_vectors[idx])


def test_stealth_harmful_rows_are_harmful_at_honest_claims(world, table):
    b = _batch(world, "stealth_harmful", 2)
    idx = [world.harm_index[t] for t in b.texts]
    assert set(world.harmful_domain[idx].tolist()) == {2}
    assert np.all(world.harmful_usefulness[idx] < 0)
    assert _consistent(b, table).min() > 0.7
    # Claimed as honest nodes claim (Beta(4, 3)), not inflated: over many batches the
    # mean sits near 4/7 and few claims pass 0.9.
    claims = np.concatenate(
        [_batch(world, "stealth_harmful", 2, seed=s).quality for s in range(60)]
    )
    assert abs(claims.mean() - 4 / 7) < 0.05 and (claims > 0.9).mean() < 0.05


def test_plausible_useless_rows_are_real_least_useful_patterns(world, table):
    b = _batch(world, "plausible_useless")
    idx = [world.index[t] for t in b.texts]
    members = world.by_domain[2]
    cutoff = np.sort(world.usefulness[members])[int(np.ceil(0.1 * len(members))) - 1]
    assert set(idx) <= set(members.tolist())
    assert world.usefulness[idx].max() <= cutoff
    assert b.quality.min() >= 0.95
    assert _consistent(b, table).min() > 0.7


def test_adaptive_attacker_switches_at_round_r(world, table):
    members = world.by_domain[2]
    median = np.median(world.usefulness[members])
    for r in (0, 9):
        honest = _batch(world, "adaptive_harmful", round_index=r, honest_rounds=10)
        idx = [world.index[t] for t in honest.texts]
        assert set(idx) <= set(members.tolist())
        assert world.usefulness[idx].min() >= median, "useful lessons while honest"
        assert np.abs(honest.quality - world.usefulness[idx]).max() < 0.3, "honest claims"
    for r in (10, 40):
        harmful = _batch(world, "adaptive_harmful", round_index=r, honest_rounds=10)
        assert all(t in world.harm_index for t in harmful.texts)
        assert harmful.quality.min() >= 0.95
        assert _consistent(harmful, table).min() > 0.7


def test_plausible_rows_refuses_other_attacks(world):
    with pytest.raises(ValueError, match="is not a plausible attack"):
        adversary.plausible_rows("alie", world, 0, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("kw", "per_attacker"),
    [
        ({}, 1),
        ({"sybils": "open", "sybil_identities": 4}, 4),
        ({"sybils": "registry", "sybil_budget": 25.0, "min_bond": 10.0}, 2),
        ({"sybils": "registry", "sybil_budget": 30.0, "min_bond": 10.0}, 3),
        ({"sybils": "registry", "sybil_budget": 9.0, "min_bond": 10.0}, 0),
        (
            {"sybils": "open", "sybil_identities": 4, "sybil_budget": 0.0},
            4,
        ),  # budget: registry only
    ],
)
def test_sybil_identities_open_vs_registry(kw, per_attacker):
    cfg = SimConfig(
        nodes=10, rounds=2, byzantine=3, attack="plausible_harmful", fail_prob=0.0, **kw
    )
    sim = Simulation(cfg)
    byz = [n for n in sim.nodes if n.byzantine]
    assert [len(n.identities) for n in byz] == [per_attacker] * 3
    keys = {k.public_key for n in byz for k in n.identities}
    assert len(keys) == 3 * per_attacker
    assert all(n.identities[0] is n.key for n in byz if n.identities)
    report = sim.run()
    batches = sum(per_attacker * len(n.profile.domains) for n in byz) * cfg.rounds
    assert report["network"]["byzantine_batches"] == batches
    assert report["adversary"]["byzantine_identities"] == 3 * per_attacker


def test_bad_adversary_config_raises():
    with pytest.raises(ValueError, match="sybils must be one of none, open, registry"):
        SimConfig(sybils="many")
    with pytest.raises(ValueError, match="sybil_identities must be at least 1"):
        SimConfig(sybil_identities=0)


def _digest(report: dict) -> str:
    """sha256 of the report without timing and the new config keys, floats to 10 digits
    (so that a BLAS kernel's last bit on another CPU does not count as a change)."""

    def canon(x):
        if isinstance(x, float):
            return float(f"{x:.10g}")
        if isinstance(x, dict):
            return {k: canon(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [canon(v) for v in x]
        return x

    rep = {k: v for k, v in report.items() if k != "timing"}
    rep["config"] = {k: v for k, v in rep["config"].items() if k in OLD_FIELDS}
    return hashlib.sha256(json.dumps(canon(rep), sort_keys=True).encode()).hexdigest()


def test_default_run_is_unchanged():
    new = {f.name: f.default for f in fields(SimConfig) if f.name not in OLD_FIELDS}
    assert new["feedback"] is False and new["sybils"] == "none"
    cfg = SimConfig(nodes=10, rounds=6, byzantine=2, attack="confidence_inflation", eval_every=3)
    report = Simulation(cfg).run()
    assert "adversary" not in report
    assert all(set(c["fai"]) == {"Q", "proxy", "poisoned", "library"} for c in report["curves"])
    assert _digest(report) == GOLDEN, "a default run's report changed (see GOLDEN)"


def test_ledger_follows_the_real_outcome_book(tmp_path):
    """The same reports into fai_net's OutcomeBook and the simulator's copy of its rules."""
    book, ledger = OutcomeBook(tmp_path / "outcomes.sqlite"), feedback.OutcomeLedger()
    rng = np.random.default_rng(3)
    sources = [bytes([s]) * 32 for s in range(3)]
    ids = [bytes([i]) * 32 for i in range(3 * MUTE_MIN_REPORTS)]
    for _ in range(400):
        i = int(rng.integers(len(ids)))
        source = sources[i % 3]
        reward = float(rng.uniform(-1, 1)) if i % 3 else -1.0  # source 0 only ever hurts
        real, mine = book.record(ids[i], source, reward), ledger.record(ids[i], source, reward)
        for a, b in zip(real, mine, strict=True):
            assert a.helped == pytest.approx(b.helped) and a.hurt == pytest.approx(b.hurt)
    assert book.muted() == frozenset(ledger.muted) == {sources[0]}
    book.close()


def test_feedback_moves_utility_and_standing_with_hidden_usefulness():
    ledger, rng = feedback.OutcomeLedger(), np.random.default_rng(0)
    good, bad = b"g" * 32, b"b" * 32
    for i in range(MUTE_MIN_REPORTS + 2):
        for src, value in ((good, 0.8), (bad, -0.9)):
            e = type("E", (), {"id": src[:1] + bytes([i]) * 31, "source": src})()
            feedback.report_outcomes(ledger, [e], [value], 0.3, rng)
    assert min(utility(ledger.items[b"g" + bytes([i]) * 31]) for i in range(8)) > 0.5
    assert max(utility(ledger.items[b"b" + bytes([i]) * 31]) for i in range(8)) < 0.5
    assert standing(ledger.sources[good]) > 0.5 > standing(ledger.sources[bad])
    assert ledger.muted == {bad}
    assert standing(Tally()) == 0.5


def test_hidden_value(world):
    task = int(world.by_domain[3][0])
    assert feedback.hidden_value(world, world.texts[task], task, 0.8) == world.usefulness[task]
    harm = int(np.flatnonzero(world.harmful_domain == 3)[0])
    assert feedback.hidden_value(world, world.harmful_texts[harm], task, 0.8) < 0
    other = int(world.by_domain[4][0])
    assert feedback.hidden_value(world, world.texts[other], task, 0.8) == 0.0
    assert feedback.hidden_value(world, "not a lesson", task, 0.8) == 0.0


@pytest.fixture(scope="module")
def harmful_pair():
    """N = 20, 30 rounds of plausible_harmful at f = 6, without and with feedback."""
    base = {"nodes": 20, "rounds": 30, "byzantine": 6, "attack": "plausible_harmful"}
    off = Simulation(SimConfig(**base, eval_every=10)).run()
    on_sim = Simulation(SimConfig(**base, eval_every=10, feedback=True))
    return off, on_sim, on_sim.run()


def test_feedback_lowers_poisoning_by_plausible_harmful_rows(harmful_pair):
    off, _, on = harmful_pair
    # The same traffic: feedback only changes what the agents' nodes rank and mute.
    assert on["network"]["byzantine_batches"] == off["network"]["byzantine_batches"]
    assert off["final"]["fai"]["poisoned"] > 0, "the attack gets through DeltaSoup"
    assert on["final"]["fai"]["poisoned"] < off["final"]["fai"]["poisoned"]
    # The reports' part alone is not visible at this size: libraries of ~20 rows hold
    # too few candidates within the cutoff for a down-ranked harmful row to leave the top
    # 3 (measured: equal; at N = 100 it is). It must never make things worse.
    assert on["final"]["fai"]["poisoned"] <= on["final"]["fai"]["poisoned_unreported"]
    assert on["final"]["fai"]["poisoned_nearest"] == off["final"]["fai"]["poisoned"]
    fb = on["adversary"]["feedback"]
    assert fb["reports_on_byzantine_rows"] > 0
    assert fb["byzantine_standing_mean"] < fb["honest_standing_mean"]
    assert [p["round"] for p in on["adversary"]["poisoned_by_round"]] == [10, 20, 30]


def test_rows_only_refused_sources_sent_are_not_offered(harmful_pair):
    """The attackers' rows that slipped in before their refusal stay in the libraries, but
    recall does not offer them (fai_net/api/recall.py's rule): every withheld row is an
    attacker's, and none that an unrefused source also sent is withheld."""
    _, sim, report = harmful_pair
    attack_keys = {k.public_key for n in sim.nodes if n.byzantine for k in n.identities}
    withheld = 0
    for node in sim.measured:
        history = node.receiver.aggregator.history
        offered = {e.id for e in sim._recallable(node)}
        for e in node.fai.values():
            senders = node.sightings.get(e.id) or {e.source}
            refused = all(history.refused(e.domain, s) for s in senders)
            assert (e.id not in offered) == refused
            if refused:
                assert senders <= attack_keys
                withheld += 1
    assert withheld > 0, "the run must exercise the rule"
    adv = report["adversary"]
    assert adv["byzantine_rows_recallable"] < adv["byzantine_rows_in_library"]


def test_feedback_sinks_harmful_rows_utility(harmful_pair):
    _, sim, _ = harmful_pair
    harmful, honest = [], []
    for node in sim.measured:
        for e in node.fai.values():
            tally = node.ledger.items.get(e.id)
            if tally is not None:
                (harmful if e.text in sim.world.harm_index else honest).append(utility(tally))
    assert harmful and honest
    assert np.mean(harmful) < 0.5 < np.mean(honest)


def test_feedback_leaves_a_clean_fleet_traffic_alone():
    """Without attackers and with no source muted, feedback changes no byte on the wire and
    no library: the nearest-neighbour figures are those of the run without it."""
    base = {"nodes": 10, "rounds": 8, "eval_every": 4}
    off = Simulation(SimConfig(**base)).run()
    on = Simulation(SimConfig(**base, feedback=True)).run()
    assert on["adversary"]["feedback"]["honest_rows_muted"] == 0
    assert on["network"] == off["network"]
    for a, b in zip(off["curves"], on["curves"], strict=True):
        assert b["fai"]["proxy_nearest"] == a["fai"]["proxy"]
        assert b["fai"]["library"] == a["fai"]["library"]
