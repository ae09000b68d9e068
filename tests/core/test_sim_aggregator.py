"""The simulator takes its "fai" aggregator as an object (a factory per receiver)."""

from __future__ import annotations

from fai_core.aggregation import Aggregator
from fai_core.deltasoup import DeltaSoup
from fai_eval.sim.simulator import AGGREGATORS, METHODS, SimConfig, Simulation
from tests.support.aggregation import KeepNothing


def test_custom_aggregator_is_the_one_used():
    """With an aggregator that keeps nothing, the "fai" library is the isolated one, every
    receiver was built by the factory and was called, and no DeltaSoup ran."""
    made: list[KeepNothing] = []

    def factory(sim: Simulation) -> Aggregator:
        made.append(KeepNothing())
        return made[-1]

    cfg = SimConfig(nodes=8, rounds=6, eval_every=3, seed=3, fail_prob=0.0)
    sim = Simulation(cfg, aggregator=factory)
    report = sim.run()
    assert made and all(isinstance(a, Aggregator) for a in made)
    assert {id(n.receiver.aggregator) for n in sim.honest} <= {id(a) for a in made}
    assert not any(isinstance(n.receiver.aggregator, DeltaSoup) for n in sim.honest)
    assert sum(a.batches for a in made) > 0
    for point in report["curves"]:
        assert point["fai"] == point["isolated"]
    default = Simulation(cfg).run()
    assert default["final"]["fai"] != default["final"]["isolated"]
    assert set(report["final"]) == {"round", *METHODS}


def test_default_factories_are_the_named_ones():
    """Report names meet objects only in AGGREGATORS: "fai" is DeltaSoup, "naive" averaging."""
    sim = Simulation(SimConfig(nodes=4, rounds=1))
    rec = sim.honest[0].receiver
    assert isinstance(rec.aggregator, DeltaSoup)
    assert type(rec.naive) is type(AGGREGATORS["naive"](sim))
    assert set(AGGREGATORS) <= set(METHODS)
