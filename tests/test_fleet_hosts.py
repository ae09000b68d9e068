"""bench/fleet_hosts.py (`bench/fleet.py --hosts`), its pure parts: no node is started.

The benchmark itself is not a test (minutes, root, noisy figures). What is checked here is
what makes its figures mean what they say: the seed graph starts every seed before anyone
dials it, the latency groups take exactly the (batch, receiver) pairs they name, the ratios
divide like with like and say None rather than guess, and without root it refuses in one
line before starting anything.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hosts():
    """bench/fleet_hosts.py as a module, with bench/fleet.py as the `fleet` it imports
    (fleet.py sets thread variables on import: restored after)."""
    saved = dict(os.environ)
    loaded = {}
    try:
        for name in ("fleet", "fleet_hosts"):
            spec = importlib.util.spec_from_file_location(name, ROOT / f"bench/{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses look their module up while it loads
            loaded[name] = module
            spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield loaded["fleet_hosts"]
    for name in loaded:
        sys.modules.pop(name, None)


def test_the_fleet_is_the_sites_then_the_relay_and_the_hidden_node(hosts):
    assert hosts.node_names(1) == ["a1", "b1", "relay", "hidden"]
    assert hosts.node_names(3) == ["a1", "b1", "a2", "b2", "a3", "b3", "relay", "hidden"]


@pytest.mark.parametrize("per_site", [1, 2, 3])
def test_every_seed_starts_in_an_earlier_wave_than_the_node_dialling_it(hosts, per_site):
    names = hosts.node_names(per_site)
    waves = hosts.start_waves(names)
    wave_of = {name: k for k, wave in enumerate(waves) for name, _ in wave}
    assert sorted(wave_of) == sorted(names)  # each node once
    for k, wave in enumerate(waves):
        for name, seeds in wave:
            assert all(wave_of[s] < k for s in seeds), (name, seeds)
    seeds = {name: set(targets) for wave in waves for name, targets in wave}
    assert seeds["hidden"] == {"relay"}  # the only host it can dial
    assert {n for n, t in seeds.items() if "hidden" in t} == {"a1", "b1"}


def _events() -> dict:
    """Three nodes, node 2 the hidden one. Batch x from 0, y from 2, z from 1; node 2 never
    merged x, and nobody but 0 accepted z."""
    return {
        "published": {
            "x": {"node": 0, "t": 100.0, "n": 20},
            "y": {"node": 2, "t": 200.0, "n": 20},
            "z": {"node": 1, "t": 300.0, "n": 20},
        },
        "accepted": [
            {"y": {"t": 200.4, "origin": "gossip"}, "z": {"t": 300.1, "origin": "repair"}},
            {"x": {"t": 100.1, "origin": "gossip"}, "y": {"t": 200.2, "origin": "gossip"}},
            {"x": {"t": 100.3, "origin": "gossip"}},
        ],
        "merged": [{"y": 201.0, "z": 301.0}, {"x": 101.0, "y": 202.0}, {}],
    }


def test_latency_groups_take_exactly_the_pairs_they_name(hosts):
    groups = hosts.latency_groups(_events(), 3, hidden=2)
    everything = groups["all"]
    assert everything["pairs_expected"] == 6 and everything["pairs_accepted"] == 5
    assert everything["delivered_by"] == {"gossip": 4, "repair": 1}
    direct = groups["direct"]  # x: 0 -> 1, z: 1 -> 0
    assert direct["pairs_expected"] == 2
    assert direct["publish_to_accepted"]["n"] == 2
    assert direct["publish_to_accepted"]["max"] == pytest.approx(0.1)
    assert direct["publish_to_merged"]["p50"] == pytest.approx(1.0)
    from_hidden = groups["from_hidden"]  # y: 2 -> 0 (0.4 s), 2 -> 1 (0.2 s)
    assert from_hidden["pairs_expected"] == 2
    assert from_hidden["publish_to_accepted"]["max"] == pytest.approx(0.4)
    assert from_hidden["publish_to_accepted_at_all"]["n"] == 1  # y reached both others
    assert from_hidden["publish_to_merged"]["max"] == pytest.approx(2.0)
    to_hidden = groups["to_hidden"]  # x: 0 -> 2 accepted, never merged; z: never reached 2
    assert to_hidden["pairs_expected"] == 2 and to_hidden["pairs_accepted"] == 1
    assert to_hidden["publish_to_accepted"]["p50"] == pytest.approx(0.3)
    assert to_hidden["publish_to_merged"]["n"] == 0
    assert to_hidden["publish_to_merged"]["p95"] is None  # nothing measured reads None
    assert to_hidden["publish_to_merged_at_all"]["n"] == 0


def _mode(p95_direct: float, p95_from: float | None) -> dict:
    """A mode's latency groups with p50 = p95 = the value given (to_hidden: none measured)."""

    def group(value: float | None) -> dict:
        return {
            m: {"p50": value, "p95": value} for m in ("publish_to_accepted", "publish_to_merged")
        }

    groups = {"all": p95_direct, "direct": p95_direct, "from_hidden": p95_from, "to_hidden": None}
    return {"latency_s": {name: group(v) for name, v in groups.items()}}


def test_ratios_divide_like_with_like_and_say_none_rather_than_guess(hosts):
    r = hosts.ratios({"loopback": _mode(0.5, 1.0), "namespaces": _mode(0.75, 1.5)})
    assert r["namespaces_over_loopback (direct pairs)"]["merged_p95"] == 1.5
    assert r["relayed_over_direct: from_hidden (namespaces)"]["accepted_p50"] == 2.0
    assert r["same slot, no relay: from_hidden over direct (loopback)"]["merged_p95"] == 2.0
    assert r["relayed_over_direct: to_hidden (namespaces)"]["merged_p95"] is None
    failed = hosts.ratios({"loopback": _mode(0.5, 1.0), "namespaces": {"error": "boom"}})
    assert failed["namespaces_over_loopback (all pairs)"] == {
        "accepted_p50": None,
        "accepted_p95": None,
        "merged_p50": None,
        "merged_p95": None,
    }


def test_without_root_it_refuses_in_one_line_and_starts_nothing(hosts, monkeypatch, capsys):
    monkeypatch.setattr(hosts, "lab_unavailable", lambda: "needs root to create namespaces")
    monkeypatch.setattr(hosts, "measure", lambda *a: pytest.fail("it measured"))
    fleet = sys.modules["fleet"]
    assert fleet.main(["--hosts", "--quick", "--json"]) == 2  # dispatched by bench/fleet.py
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "bench/fleet.py --hosts: needs root to create namespaces; nothing was run"
    ]
