"""Byzantine publishers for the simulator, built on the attack module (fai_eval.attacks).

Every attack yields a well-formed batch signed with the attacker's own key, exactly what
a sender that controls its key can publish: the receiver's decoder accepts it, so only
DeltaSoup (or nothing, for naive averaging) stands between it and the library. Each
Byzantine node publishes one such batch per domain it is subscribed to every round (per
identity it holds, with Sybils: SimConfig.sybils).

The plausible attacks (`PLAUSIBLE`) send rows whose text and embedding agree: real texts
with their own shipped MiniLM vectors, so every embedding-space check passes and only what
using them does (their hidden usefulness, which outcome feedback reports) tells them apart.
"""

from __future__ import annotations

import numpy as np

from fai_core import wire
from fai_core.embedding import DEFAULT_MODEL
from fai_core.identity import NodeKey
from fai_eval import attacks
from fai_eval.sim.workload import World

#: Rows per attack batch (flooding sends FLOOD_FACTOR times as many). Honest nodes publish
#: ~0.25 experiences per round, so an attacker already out-publishes ~10 honest nodes.
ROWS = 3
FLOOD_FACTOR = 10
#: The quality plausible attack rows claim: inflated, inside the wire's open interval (0, 1).
INFLATED_QUALITY = (0.95, 0.999)
#: plausible_useless draws from this least useful share of the domain's patterns.
USELESS_SHARE = 0.1
#: adaptive_harmful publishes honestly for this many rounds unless told otherwise
#: (SimConfig.adaptive_rounds).
ADAPTIVE_ROUNDS = 20
#: Std of an adaptive attacker's honest-phase quality claims around the true usefulness
#: (an honest node's noise is 0.05-0.2, workload.QUALITY_NOISE).
HONEST_CLAIM_NOISE = 0.05

#: name -> what it does; every name is accepted by `attack_batch`.
ATTACKS: dict[str, str] = {
    "benign": "Byzantine nodes behave exactly like honest ones (a control)",
    "random_signs": "random signs, scales U(0,1): the paper's only Byzantine model",
    "sign_flip": "every delta reversed",
    "scale_inflation": "scales x3",
    "ipm": "inner-product manipulation: embeddings -1 x the honest mean",
    "alie": "a little is enough: embeddings mean + 1 std of the honest domain",
    "gaussian": "random Gaussian embeddings (sigma 0.05)",
    "mismatch": "harmful texts behind the embedding of a benign pattern",
    "confidence_inflation": "the least useful patterns, claimed at quality 0.97-0.999",
    "domain_spoof": "patterns of another domain tagged with this one",
    "flooding": "10x the rows of honest copies every round",
    "plausible_useless": "real patterns from the least useful tenth of the domain, their own "
    "vectors, claimed at quality 0.95-0.999",
    "plausible_harmful": "harmful lessons written for the domain, their own vectors (every "
    "embedding check passes), claimed at quality 0.95-0.999",
    "adaptive_harmful": "useful real patterns at honest claims for adaptive_rounds rounds "
    "(default 20), then plausible_harmful",
    "stealth_harmful": "harmful lessons written for the domain, their own vectors, claimed "
    "as honest nodes claim (Beta(4, 3)): nothing a receiver measures sets them apart",
}
#: Attacks whose texts and embeddings agree (see the module doc).
PLAUSIBLE = frozenset(
    {"plausible_useless", "plausible_harmful", "adaptive_harmful", "stealth_harmful"}
)


def attack_batch(
    attack: str,
    world: World,
    key: NodeKey,
    domain: int,
    *,
    seq: int,
    timestamp_ms: int,
    rng: np.random.Generator,
    round_index: int = 0,
    honest_rounds: int = ADAPTIVE_ROUNDS,
) -> wire.SignedBatch:
    """One attack batch on `domain`, signed by `key`. `round_index` and `honest_rounds`
    matter to adaptive_harmful only: honest before round `honest_rounds`, harmful from it."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")
    dom_name = world.domains[domain]
    if attack in PLAUSIBLE:
        if attack == "adaptive_harmful":
            attack = "honest_phase" if round_index < honest_rounds else "plausible_harmful"
        texts, vectors, quality = plausible_rows(attack, world, domain, rng)
        return attacks.signed_batch(
            key, texts, vectors, domain=dom_name, quality=quality, seq=seq,
            timestamp_ms=timestamp_ms, model=DEFAULT_MODEL,
        )  # fmt: skip
    members = world.by_domain[domain]
    rows = ROWS * (FLOOD_FACTOR if attack == "flooding" else 1)
    if attack == "flooding":
        pick = rng.choice(members, size=min(rows, len(members)), replace=False)
    elif attack == "confidence_inflation":
        pick = members[np.argsort(world.usefulness[members], kind="stable")[:rows]]
    else:
        pick = rng.choice(members, size=rows, replace=False)
    texts = [world.texts[i] for i in pick]
    vectors = world.vectors[pick]
    quality = np.clip(rng.beta(4.0, 3.0, len(pick)), 0.01, 0.99)

    def signed(texts, vectors, quality, domain_name=dom_name):
        return attacks.signed_batch(
            key,
            texts,
            vectors,
            domain=domain_name,
            quality=quality,
            seq=seq,
            timestamp_ms=timestamp_ms,
            model=DEFAULT_MODEL,
        )

    dom_vectors = world.vectors[members]
    if attack in ("benign", "flooding"):
        return signed(texts, vectors, quality)
    if attack == "random_signs":
        return attacks.random_signs(signed(texts, vectors, quality), key, rng)
    if attack == "sign_flip":
        return attacks.sign_flip(signed(texts, vectors, quality), key)
    if attack == "scale_inflation":
        return attacks.scale_inflation(signed(texts, vectors, quality), key, 3.0)
    if attack == "ipm":
        return signed(texts, attacks.ipm_embeddings(dom_vectors.mean(0), rows, 1.0, rng), quality)
    if attack == "alie":
        emb = attacks.alie_embeddings(dom_vectors.mean(0), dom_vectors.std(0), rows, 1.0, rng)
        return signed(texts, emb, quality)
    if attack == "gaussian":
        emb = attacks.gaussian_embeddings(rows, vectors.shape[1], 0.05, rng)
        return signed(texts, emb, quality)
    if attack == "mismatch":
        harm = rng.choice(len(world.harmful_texts), size=rows, replace=False)
        sims = world.harmful_vectors[harm] @ dom_vectors.T
        cover = dom_vectors[sims.argmax(axis=1)]
        return signed([world.harmful_texts[i] for i in harm], cover, np.full(rows, 0.8))
    if attack == "confidence_inflation":
        return signed(texts, vectors, rng.uniform(0.97, 0.999, rows))
    # domain_spoof: another domain's patterns under this domain's tag
    other = (domain + 1 + int(rng.integers(0, len(world.domains) - 1))) % len(world.domains)
    pick = rng.choice(world.by_domain[other], size=rows, replace=False)
    return signed([world.texts[i] for i in pick], world.vectors[pick], quality)


def plausible_rows(
    attack: str, world: World, domain: int, rng: np.random.Generator
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, their own vectors, claimed qualities) of one plausible batch.

    `attack` is plausible_useless, plausible_harmful, stealth_harmful, or honest_phase (what
    an adaptive attacker sends before it switches: useful patterns that agents are likely to recall,
    drawn by task popularity from the domain's more useful half, claimed near their true
    usefulness as an honest node would, so that they earn standing)."""
    members = world.by_domain[domain]
    if attack in ("plausible_harmful", "stealth_harmful"):
        pool = np.flatnonzero(world.harmful_domain == domain)
        pick = rng.choice(pool, size=min(ROWS, len(pool)), replace=False)
        if attack == "stealth_harmful":  # as an honest node's claims are drawn (workload.py)
            quality = np.clip(rng.beta(4.0, 3.0, len(pick)), 0.01, 0.99)
        else:
            quality = rng.uniform(*INFLATED_QUALITY, len(pick))
        return [world.harmful_texts[i] for i in pick], world.harmful_vectors[pick], quality
    if attack == "plausible_useless":
        n = max(ROWS, int(np.ceil(USELESS_SHARE * len(members))))
        pool = members[np.argsort(world.usefulness[members], kind="stable")[:n]]
        pick = rng.choice(pool, size=ROWS, replace=False)
        quality = rng.uniform(*INFLATED_QUALITY, ROWS)
        return [world.texts[i] for i in pick], world.vectors[pick], quality
    if attack != "honest_phase":
        raise ValueError(f"{attack!r} is not a plausible attack")
    useful = world.usefulness[members] >= np.median(world.usefulness[members])
    weights = world.popularity[domain][useful]
    pick = rng.choice(members[useful], size=ROWS, replace=False, p=weights / weights.sum())
    claim = world.usefulness[pick] + rng.normal(0.0, HONEST_CLAIM_NOISE, ROWS)
    return [world.texts[i] for i in pick], world.vectors[pick], np.clip(claim, 0.01, 0.99)
