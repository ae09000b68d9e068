"""The simulator's in-memory libraries follow the LanceDB library's merge rule exactly.

The simulator keeps each node's library as a dict (1,000 LanceDB tables would dominate a
run); this replays every write one simulated node made into a real ExperienceLibrary and
checks that both end with the same record for every id.
"""

from __future__ import annotations

import itertools

import numpy as np

from fai_core.library import ExperienceLibrary
from fai_eval.sim.simulator import SimConfig, Simulation


class _Recording(Simulation):
    def __init__(self, *args, watch: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.watch = watch
        self.writes: list = []

    def _fai_put(self, node, e):
        if node.idx == self.watch:
            self.writes.append(e)
        return super()._fai_put(node, e)


def test_sim_library_equals_lancedb_library(tmp_path):
    sim = _Recording(SimConfig(nodes=16, rounds=30, seed=5, fail_prob=0.0, eval_every=30), watch=0)
    sim.run()
    node = sim.nodes[0]
    assert len(sim.writes) > len(node.fai) > 5  # some ids were written more than once
    with ExperienceLibrary.open(tmp_path / "lib", 384) as lib:
        # Consecutive writes of one origin go in one call: a merge keeps the greatest record
        # per id whether the records come in one call or one by one.
        for local, group in itertools.groupby(
            sim.writes, key=lambda e: e.source == node.key.public_key
        ):
            if local:
                lib.add_local(list(group))
            else:
                lib.merge(list(group), received_from=bytes(32))
        stored = {x.id: x for x in lib.experiences()}
        assert set(stored) == set(node.fai)
        for ident, e in node.fai.items():
            s = stored[ident]
            assert (s.quality, s.source, s.created_ms, s.iteration) == (
                e.quality,
                e.source,
                e.created_ms,
                e.iteration,
            )
            np.testing.assert_array_equal(s.embedding, e.embedding)
        # The baseline a simulated node compresses against is the library's own mean.
        np.testing.assert_allclose(node.fai_sum / len(node.fai), lib.baseline(), atol=1e-9)
