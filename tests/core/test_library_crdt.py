"""CRDT laws of the library: replicas that saw the same experiences hold the same library.

The library state is compared as {id: winning record}, where a record is everything that
travels with an experience (quality, source, created_ms, iteration, embedding bytes).
Provenance (who forwarded it, when) is per replica and deliberately not compared. Each
law is also checked against a reference model: keep the greatest record per id, then the
`capacity` greatest (quality, id).
"""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fai_core.experience import Experience
from fai_core.library import ExperienceLibrary, record_key
from tests.support.library import assert_baseline_matches_rows

DIM = 8
PEER = b"\x07" * 32
TEXTS = ["alpha works", "beta works", "gamma works", "delta works", "epsilon works"]
SOURCES = [b"\x01" * 32, b"\x02" * 32]
QUALITIES = [0.25, 0.5, 0.75]  # few values so that quality ties are common

SETTINGS = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def records(draw):
    text = draw(st.sampled_from(TEXTS))
    domain = draw(st.sampled_from(["coding", "ops"]))
    # Same id (domain, text) with different embeddings: ties broken down to the bytes.
    wiggle = draw(st.integers(0, 2))
    vec = np.zeros(DIM, dtype=np.float32)
    vec[TEXTS.index(text)] = 1.0
    vec[-1] = 0.1 * wiggle
    return Experience(
        text,
        vec,
        draw(st.sampled_from(QUALITIES)),
        domain,
        draw(st.sampled_from(SOURCES)),
        draw(st.integers(1, 2)),
        draw(st.integers(0, 1)),
    )


def batches_of(items, cuts):
    """Split `items` at the (sorted, deduplicated) cut points into consecutive batches."""
    points = sorted({c % (len(items) + 1) for c in cuts})
    edges = [0, *points, len(items)]
    return [items[a:b] for a, b in itertools.pairwise(edges) if b > a]


def snapshot(lib):
    return {
        e.id: (e.quality, e.source, e.created_ms, e.iteration, e.embedding.tobytes())
        for e in lib.experiences()
    }


def model(experiences, capacity):
    best = {}
    for e in experiences:
        if e.id not in best or record_key(e) > record_key(best[e.id]):
            best[e.id] = e
    kept = sorted(best.values(), key=lambda e: (e.quality, e.id), reverse=True)
    if capacity is not None:
        kept = kept[:capacity]
    return {
        e.id: (e.quality, e.source, e.created_ms, e.iteration, e.embedding.tobytes()) for e in kept
    }


class Replicas:
    def __init__(self, root, capacity):
        self.root = root
        self.capacity = capacity
        self.n = 0
        self.open = []

    def new(self):
        self.n += 1
        lib = ExperienceLibrary.open(self.root / f"r{self.n}", DIM, capacity=self.capacity)
        self.open.append(lib)
        return lib

    def close(self):
        for lib in self.open:
            lib.close()


def fill(lib, batches):
    for i, batch in enumerate(batches):
        if i % 2:
            lib.add_local(batch)
        else:
            lib.merge(batch, received_from=PEER)


@SETTINGS
@given(
    items=st.lists(records(), min_size=1, max_size=12),
    data=st.data(),
    capacity=st.sampled_from([None, 2, 4]),
)
def test_any_order_and_split_converges(tmp_path_factory, items, data, capacity):
    replicas = Replicas(tmp_path_factory.mktemp("conv"), capacity)
    try:
        states = []
        for _ in range(2):
            order = data.draw(st.permutations(items))
            cuts = data.draw(st.lists(st.integers(0, 20), max_size=3))
            # Duplicates: some records arrive twice.
            extra = data.draw(st.lists(st.sampled_from(items), max_size=3))
            lib = replicas.new()
            fill(lib, batches_of(order + extra, cuts))
            states.append(snapshot(lib))
            assert_baseline_matches_rows(lib)
        assert states[0] == states[1] == model(items, capacity)
    finally:
        replicas.close()


@SETTINGS
@given(
    a=st.lists(records(), max_size=6),
    b=st.lists(records(), max_size=6),
    c=st.lists(records(), max_size=6),
    capacity=st.sampled_from([None, 3]),
)
def test_state_merge_is_commutative_associative_idempotent(tmp_path_factory, a, b, c, capacity):
    """Replica states merged via export: (A+B)+C == A+(B+C), A+B == B+A, A+A == A."""
    replicas = Replicas(tmp_path_factory.mktemp("laws"), capacity)
    try:

        def replica(*parts):
            lib = replicas.new()
            for part in parts:
                exported = list(part.experiences()) if isinstance(part, ExperienceLibrary) else part
                if exported:
                    lib.merge(exported, received_from=PEER)
            return lib

        ra, rb, rc = replica(a), replica(b), replica(c)
        ab = replica(ra, rb)
        ba = replica(rb, ra)
        assert snapshot(ab) == snapshot(ba)
        left = replica(ab, rc)
        bc = replica(rb, rc)
        right = replica(ra, bc)
        assert snapshot(left) == snapshot(right) == model(a + b + c, capacity)
        version = ra.version
        before = snapshot(ra)
        ra.merge(list(ra.experiences()), received_from=PEER)
        assert snapshot(ra) == before
        assert ra.version == version  # nothing won, nothing written
        for lib in (ab, left, right):
            assert_baseline_matches_rows(lib)
    finally:
        replicas.close()
