"""`fai sim`: flags, output formats and user mistakes (exit 2, a message, no traceback)."""

from __future__ import annotations

import json

import pytest

from fai_eval.sim.adversary import ATTACKS
from fai_eval.sim.simulator import METHODS
from fai_net.cli.entry import main
from fai_net.cli.sim import byzantine_count

SMALL = ["sim", "--nodes", "6", "--rounds", "4", "--seed", "3"]


def _json_run(capsys, *extra: str) -> dict:
    assert main([*SMALL, "--json", *extra]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return json.loads(out)


def test_json_report(capsys):
    report = _json_run(capsys)
    assert set(report) >= {"config", "curves", "final", "network", "deltasoup", "timing"}
    cfg = report["config"]
    assert (cfg["nodes"], cfg["rounds"], cfg["seed"], cfg["byzantine"]) == (6, 4, 3, 0)
    assert cfg["share"] is True
    for m in METHODS:
        assert set(report["final"][m]) == {"Q", "proxy", "poisoned", "library"}
        assert all(isinstance(v, float) for v in report["final"][m].values())
    # --eval-every 5 > --rounds 4: one evaluation, at the last round.
    assert [c["round"] for c in report["curves"]] == [4]


def test_json_flags_reach_the_config(capsys):
    cfg = _json_run(
        capsys, "--exact", "--loss", "0.2", "--fail-prob", "0.1", "--eval-every", "2",
        "--byzantine", "2", "--attack", "alie",
    )["config"]  # fmt: skip
    assert cfg["share"] is False
    assert (cfg["loss"], cfg["fail_prob"], cfg["eval_every"]) == (0.2, 0.1, 2)
    assert (cfg["byzantine"], cfg["attack"]) == (2, "alie")


def test_table_output(capsys):
    assert main([*SMALL, "--byzantine", "2", "--attack", "mismatch"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    lines = out.splitlines()
    assert lines[0].startswith("6 nodes (2 Byzantine, attack mismatch), 4 rounds, seed 3")
    for m in METHODS:
        row = [line for line in lines if line.split() and line.split()[0] == m]
        assert len(row) == 1, f"no table row for {m}"
        assert len(row[0].split()) == 5  # method, proxy, poisoned, Q, library
    assert "DeltaSoup: honest rows kept" in out and "Byzantine rows kept" in out


@pytest.mark.parametrize(
    ("spec", "nodes", "want"),
    [
        ("5", 10, 5),
        ("0", 10, 0),
        ("N/3", 10, 3),
        ("n/3", 9, 3),
        ("N/3", 2, 0),
        ("10%", 10, 1),
        ("10%", 25, 2),
        ("33%", 100, 33),
    ],
)
def test_byzantine_count(spec, nodes, want):
    assert byzantine_count(spec, nodes) == want


@pytest.mark.parametrize(("spec", "nodes", "want"), [("N/3", 9, 3), ("N/3", 10, 3), ("20%", 10, 2)])
def test_byzantine_flag_maps_to_config(capsys, spec, nodes, want):
    argv = ["sim", "--nodes", str(nodes), "--rounds", "2", "--json", "--byzantine", spec]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["config"]["byzantine"] == want


def test_list_attacks(capsys):
    assert main(["sim", "--list-attacks"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert listed == list(ATTACKS)
    for name, what in ATTACKS.items():
        assert what in out, name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--byzantine", "10"], "gives 10 of 10 nodes"),
        (["--byzantine", "11"], "gives 11 of 10 nodes"),
        (["--attack", "nope"], "unknown attack 'nope'"),
    ],
)
def test_user_mistakes_exit_2(capsys, args, message):
    assert main(["sim", "--nodes", "10", "--rounds", "2", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("fai: error:") and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--byzantine", "x"], "a count (5), a fraction of N (N/3, 1/4) or a percentage (10%)"),
        (["--byzantine", "N/1"], "expected a count"),
        (["--byzantine", "150%"], "expected a count"),
        (["--byzantine", "N/-3"], "expected a count"),
        (["--byzantine", "x/3"], "expected a count"),
        (["--byzantine", "1.5%"], "expected a count"),
        (["--byzantine", "N/0"], "expected a count"),
        (["--byzantine", "3/0"], "expected a count"),
        (["--byzantine", "-1"], "a count (5)"),
        (["--nodes", "0"], "must be at least 1"),
        (["--rounds", "-2"], "must be at least 1"),
        (["--eval-every", "0"], "must be at least 1"),
        (["--nodes", "ten"], "invalid _positive value"),
        (["--fail-prob", "1"], "must lie in [0, 1)"),
        (["--loss", "-0.1"], "must lie in [0, 1)"),
    ],
)
def test_argparse_rejections_exit_2(capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["sim", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_plain_fraction_is_not_silently_zero(capsys):
    rc = main(["sim", "--nodes", "9", "--rounds", "2", "--json", "--byzantine", "1/3"])
    out, _ = capsys.readouterr()
    # A plain fraction is read as a fraction of N, like N/3 (byzantine_count).
    assert rc == 0 and json.loads(out)["config"]["byzantine"] == 3


@pytest.mark.parametrize("nodes", ["1", "2", "3"])
def test_tiny_fleets_print_the_whole_report(capsys, nodes):
    """Every legal --nodes prints its table and figures; what a tiny fleet cannot measure
    (no delivery, no received row) reads "n/a (why)" instead of a traceback."""
    assert main(["sim", "--nodes", nodes, "--rounds", "2"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    lines = out.splitlines()
    assert lines[0].split()[0] == nodes
    assert lines[-2].startswith("batches ") and "delivery p50/p95 " in lines[-2]
    assert lines[-1].startswith("DeltaSoup: honest rows kept ")
    assert "None" not in out


@pytest.mark.parametrize("value", ["0", "-1", "-10"])
def test_nodes_below_one_are_refused_by_argparse(capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(["sim", "--nodes", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --nodes: must be at least 1, got {value}" in err
