"""`fai experiences recall|feedback` and `fai node broadcast|stop` against a real node.

One node process (coding, hashing embedder, open membership, no peers) that publishes only
when told. The commands run in this process through `fai_net.cli.entry.main`, as the `fai`
entry point runs them (argv in, exit code out, stdout and stderr captured), except `fai
node stop`, which runs as a subprocess exactly as a user types it. Settings from the
caller's environment and any fai.toml are kept out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from fai_net.api.client import FaiClient
from fai_net.cli.entry import main as fai_main
from tests.support.fleet import ROOT, Fleet, wait_for

TASK = "the integration tests fail with a database timeout in ci"
LESSONS = (
    "when the integration tests fail with a database timeout in ci raise the pool size first",
    "when the integration tests fail with a database timeout in ci check for leaked "
    "connections first",
)
UNRELATED = "zebra quartz violin"


@pytest.fixture(scope="module")
def node() -> Iterator:
    f = Fleet()
    try:
        yield f.add("a", ("coding",), seeds=[], **{"broadcast-interval": 3600})
    finally:
        f.stop_all()
        shutil.rmtree(f.root, ignore_errors=True)


@pytest.fixture(scope="module")
def lesson_ids(node) -> dict[str, str]:
    result = FaiClient.from_data_dir(node.data_dir).add(
        [{"text": text} for text in LESSONS], domain="coding"
    )
    return dict(zip(LESSONS, result["ids"], strict=True))


@pytest.fixture
def fai(node, capsys, monkeypatch, tmp_path):
    """Run `fai ARGS --data-dir <node>`; returns (exit code, stdout, stderr)."""
    for name in ("FAI_SOCKET", "FAI_DATA_DIR", "FAI_CONFIG", "FAI_DEVNET_STATE"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "fai.toml"
    empty.write_text("")
    monkeypatch.setenv("FAI_CONFIG", str(empty))
    monkeypatch.setenv("FAI_DEVNET_STATE", str(tmp_path / "none.json"))

    def run(*args: str, expect: int = 0) -> tuple[str, str]:
        capsys.readouterr()
        try:
            code = fai_main([*args, "--data-dir", str(node.data_dir)])
        except SystemExit as exc:  # argparse refusals and --help
            code = exc.code
        out, err = capsys.readouterr()
        assert code == expect, (code, out, err)
        assert "Traceback" not in err
        return out, err

    return run


def test_every_new_command_has_help_json_and_the_node_flags(fai):
    for command in (
        ["experiences", "recall"],
        ["experiences", "feedback"],
        ["node", "broadcast"],
        ["node", "stop"],
    ):
        out, _ = fai(*command, "--help")
        assert "--json" in out and "--data-dir" in out and "--socket" in out, command
    out, _ = fai("experiences", "recall", "--help")
    assert "--prompt" in out and "--max-distance" in out and "-k" in out


def test_recall_table_json_and_prompt(fai, node, lesson_ids):
    client = FaiClient.from_data_dir(node.data_dir)
    expected = client.recall(TASK, k=5)
    assert [e["text"] for e in expected["experiences"]] and set(LESSONS) <= {
        e["text"] for e in expected["experiences"]
    }

    out, _ = fai("experiences", "recall", TASK, "-k", "5")
    lines = out.splitlines()
    assert lines[0].split() == [
        "SCORE",
        "RELEVANCE",
        "UTILITY",
        "SOURCES",
        "DOMAIN",
        "TEXT",
        "ID",
    ]
    rows = lines[1:]
    assert len(rows) == len(expected["experiences"])
    for row, e in zip(rows, expected["experiences"], strict=True):
        cells = row.split()
        assert cells[:5] == [
            f"{e['score']:.3f}",
            f"{e['relevance']:.3f}",
            f"{e['utility']:.2f}",
            str(e["sources"]),
            "coding",
        ]
        assert e["text"] in row and cells[-1] == e["id"][:16]

    out, _ = fai("experiences", "recall", TASK, "--json")
    found = json.loads(out)
    assert [e["id"] for e in found["experiences"]] == [e["id"] for e in expected["experiences"]]
    assert {e["id"] for e in found["experiences"]} >= set(lesson_ids.values())

    out, _ = fai("experiences", "recall", TASK, "--domain", "coding", "--prompt")
    assert out == expected["prompt"] + "\n"
    assert all(text in out for text in LESSONS) and "SCORE" not in out

    # Nothing within the cutoff: an empty --prompt (safe to paste), a plain note otherwise.
    assert fai("experiences", "recall", UNRELATED, "--prompt") == ("", "")
    out, _ = fai("experiences", "recall", UNRELATED)
    assert out == "no experiences within distance 0.65 of this task\n"
    # A looser cutoff is passed on.
    loose = json.loads(fai("experiences", "recall", TASK, "--max-distance", "1.5", "--json")[0])
    assert loose["max_distance"] == 1.5


def test_recall_refusals_exit_2_with_the_reason(fai):
    _, err = fai("experiences", "recall", TASK, "-k", "99", expect=2)
    assert "must be in 1..50" in err
    _, err = fai("experiences", "recall", TASK, "--max-distance", "3", expect=2)
    assert err == "fai: error: max_distance must be a number in (0, 2]\n"
    _, err = fai("experiences", "recall", TASK, "--domain", "devops", expect=2)
    assert err == "fai: error: domain 'devops' is not subscribed\n"
    _, err = fai("experiences", "recall", TASK, "--domain", "Not A Domain", expect=2)
    assert err.startswith("fai: error: domain must match")


def test_feedback_hurt_takes_a_lesson_out_of_recall_and_leaves_the_others(fai, node, lesson_ids):
    client = FaiClient.from_data_dir(node.data_dir)
    before = client.recall(TASK, k=5)["experiences"]
    top = before[0]
    assert top["text"] in LESSONS
    other = next(e for e in before if e["text"] in LESSONS and e["id"] != top["id"])

    out, _ = fai("experiences", "feedback", top["id"], "hurt")
    assert out.splitlines()[0] == (
        f"recorded hurt for {top['id'][:16]}…: utility 0.33 after 1 report; "
        "its source's standing 0.40"
    )
    # Its utility (1/3) is below MIN_UTILITY: it is not offered again (fai_core.ranking).
    after = [e["id"] for e in client.recall(TASK, k=5)["experiences"]]
    assert top["id"] not in after and other["id"] in after

    report = json.loads(fai("experiences", "feedback", other["id"], "0.5", "--json")[0])
    assert report["id"] == other["id"] and report["reward"] == 0.5 and report["reports"] == 1
    assert report["utility"] > 0.5 and report["source_muted"] is False


def test_feedback_refusals_exit_2_with_the_reason(fai, lesson_ids):
    full = next(iter(lesson_ids.values()))
    _, err = fai("experiences", "feedback", full[:16], "helped", expect=2)
    assert "too short for an experience id" in err and "recall TASK --json" in err
    _, err = fai("experiences", "feedback", full, "great", expect=2)
    assert "OUTCOME must be helped, no_effect, hurt or a number in [-1, 1]" in err
    _, err = fai("experiences", "feedback", full, "-2", expect=2)
    assert "a reward must be a finite number in [-1, 1]" in err
    _, err = fai("experiences", "feedback", "ab" * 36, "helped", expect=2)
    assert f"no experience {'ab' * 36} in this node's library" in err


def test_broadcast_publishes_the_outbox_and_says_what_it_sent(fai, node, lesson_ids):
    stored = len(node.call("batches", domain="coding")["cids"])
    out, _ = fai("node", "broadcast", "coding")
    lines = out.splitlines()
    assert lines[0].startswith("sent 2 experiences in coding to 0 peers, in 1 batch: bafy")
    assert "no peer is on this domain's topic" in lines[1]
    cid = lines[0].rsplit(" ", 1)[1]
    assert cid in node.call("batches", domain="coding")["cids"]
    assert len(node.call("batches", domain="coding")["cids"]) == stored + 1

    assert fai("node", "broadcast", "coding")[0] == "nothing new to send in coding\n"
    again = json.loads(fai("node", "broadcast", "coding", "--json")[0])
    assert again["domain"] == "coding" and again["experiences_sent"] == 0
    _, err = fai("node", "broadcast", "devops", expect=2)
    assert "not subscribed to devops" in err


def test_node_stop_then_commands_say_no_node_runs(fai, node):  # last: stops the node
    env = {"PATH": "/usr/bin:/bin", "FAI_CONFIG": "/dev/null"}
    proc = subprocess.run(
        [sys.executable, "-m", "fai_net.cli", "node", "stop", "--data-dir", str(node.data_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"stopped the node at {node.data_dir / 'control.sock'}\n"
    wait_for(lambda: node.proc.poll() is not None, 30, "the node process to exit")
    assert node.proc.returncode == 0
    _, err = fai("experiences", "recall", TASK, expect=1)
    assert "no node is running at" in err
    _, err = fai("node", "stop", expect=1)
    assert "no node is running at" in err
