"""`fai sim`'s flags for issue 17's adversary: plausible attacks, Sybils, feedback."""

from __future__ import annotations

import json

import pytest

from fai_net.cli.entry import main

SMALL = ["sim", "--nodes", "9", "--rounds", "4", "--seed", "3", "--eval-every", "2"]


def test_plausible_harmful_with_feedback_and_sybils(capsys):
    argv = [
        *SMALL, "--byzantine", "N/3", "--attack", "plausible_harmful", "--feedback",
        "--sybils", "registry", "--sybil-budget", "25", "--min-bond", "10",
    ]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    cfg = report["config"]
    assert (cfg["feedback"], cfg["sybils"], cfg["sybil_budget"]) == (True, "registry", 25.0)
    adv = report["adversary"]
    assert (adv["identities_per_attacker"], adv["byzantine_identities"]) == (2, 6)
    assert [p["round"] for p in adv["poisoned_by_round"]] == [2, 4]
    assert "feedback" in adv and "poisoned_unreported" in report["final"]["fai"]
    assert main(argv) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("attack identities 6 (registry Sybils); FAI poisoned@3 by round 2: ")
    assert "reports on attack rows" in last


def test_default_run_prints_no_adversary_line(capsys):
    assert main(SMALL) == 0
    assert "attack identities" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sybils", "many"], "invalid choice: 'many'"),
        (["--sybil-identities", "0"], "must be at least 1, got 0"),
        (["--min-bond", "0"], "must be positive, got 0"),
        (["--adaptive-rounds", "-1"], "must be at least 0, got -1"),
    ],
)
def test_bad_adversary_flags(capsys, args, message):
    with pytest.raises(SystemExit, match=r"^2$"):
        main([*SMALL, *args])
    assert message in capsys.readouterr().err
