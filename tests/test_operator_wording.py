"""Operator friction (issue 19): what the CLI, the embedder and the fleet bench print.

Tiny simulated fleets print "n/a (why)" instead of crashing; help text shows no literal
"%%"; counts that can be 1 are worded for 1; an experience's source reads as a peer id, as
`fai node peers` lists peers; encoding draws no tqdm bar in a node's log; and the fleet
bench reports every figure it measured when a part (replay, bare baseline) is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fai_net.cli import node as cli_node
from fai_net.cli.entry import build_parser, main
from fai_net.cli.node import format_status, plural, source_text
from fai_net.peer_ids import peer_id_of_hex

ROOT = Path(__file__).resolve().parent.parent


# -- fai sim on tiny fleets ------------------------------------------------------------------


@pytest.mark.parametrize("nodes", ["1", "2"])
def test_sim_prints_tiny_fleets_without_crashing(capsys, nodes):
    assert main(["sim", "--nodes", nodes, "--rounds", "2"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    first, *_, network, soup = out.splitlines()
    assert first.startswith(f"{nodes} node{'s' if nodes != '1' else ''} (0 Byzantine")
    # Nothing is delivered in these fleets: the latency and the retention say why.
    assert "delivery p50/p95 n/a (" in network
    assert "honest rows kept n/a (no honest row was received)" in soup


def test_single_node_latency_reason_names_the_cause(capsys):
    assert main(["sim", "--nodes", "1", "--rounds", "1"]) == 0
    assert "n/a (a single node has no peers)" in capsys.readouterr().out


def test_sim_report_with_every_optional_figure_missing():
    from fai_net.cli.sim import format_report

    row = {"proxy": None, "poisoned": 0.0, "Q": 0.5, "library": 1.0}
    report = {
        "config": {"nodes": 3, "rounds": 1, "seed": 7, "byzantine": 1, "attack": "alie"},
        "final": {m: dict(row) for m in ("isolated", "central", "naive", "fai")},
        "network": {
            "batches": 0,
            "honest_batches": 0,
            "experiences_per_batch": 0.0,
            "bytes_per_batch": 0.0,
            "gossip_bytes_per_node_per_round": 0.0,
            "latency_p50_ms": None,
            "latency_p95_ms": None,
            "failures": 1,
            "rejoins": 0,
            "repaired": 0,
        },
        "deltasoup": {
            "honest_rows_received": 0,
            "honest_retention": 0.0,
            "byzantine_kept_share": None,
        },
        "timing": {"wall_s": 0.1},
    }
    text = format_report(report)
    assert text.splitlines()[0] == "3 nodes (1 Byzantine, attack alie), 1 round, seed 7"
    assert "n/a (not evaluated)" in text
    assert "n/a (no honest batch was published)" in text
    assert "Byzantine rows kept n/a (no Byzantine row was received)" in text


# -- help text -------------------------------------------------------------------------------


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_no_help_or_description_shows_a_doubled_percent_sign():
    """argparse %-formats help strings but not descriptions: '%%' in a description shows
    literally. Every parser of every command, so a new one cannot regress."""
    seen = 0
    for parser in _all_parsers(build_parser()):
        text = parser.format_help()
        assert "%%" not in text, parser.prog
        seen += 1
    assert seen > 20
    sim = next(p for p in _all_parsers(build_parser()) if p.prog.endswith(" sim"))
    assert "1% loss" in " ".join(sim.format_help().split())


# -- plurals ---------------------------------------------------------------------------------


def test_plural():
    assert plural(1, "experience") == "1 experience"
    assert plural(0, "experience") == "0 experiences"
    assert plural(2, "batch", "batches") == "2 batches"
    assert plural(1, "batch", "batches") == "1 batch"


def test_status_counts_of_one():
    text = format_status({"library_size": 1, "outbox": 1, "evidence": 1})
    assert "1 experience\n" in text + "\n"
    assert "1 experience waiting to be published" in text
    assert "1 equivocation file" in text and "1 equivocation files" not in text


class _FakeNode:
    """Stands in for the control client: canned replies, and the calls it saw."""

    def __init__(self, replies: dict) -> None:
        self.replies, self.calls = replies, []

    def call(self, action: str, **args):
        self.calls.append((action, args))
        return self.replies[action]


def test_added_one_experience(monkeypatch, capsys):
    node = _FakeNode({"add": {"added": 1, "inserted": 1}})
    monkeypatch.setattr(cli_node, "_Node", lambda args: node)
    argv = ["experiences", "add", "--text", "pin the version", "--domain", "coding"]
    assert main([*argv, "--socket", "/nonexistent.sock"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("added 1 experience (1 new to the library): coding 1")


# -- sources as peer ids ---------------------------------------------------------------------


def _identity(byte: int):
    from fai_net.node.identity import NodeIdentity

    return NodeIdentity.from_seed(bytes([byte]) * 32)


@pytest.mark.parametrize("byte", [0, 1, 7, 200, 255])
def test_peer_id_of_key_is_libp2ps_peer_id(byte):
    identity = _identity(byte)
    assert peer_id_of_hex(identity.public_key.hex()) == str(identity.peer_id)


def test_peer_id_of_key_refuses_what_is_not_a_key():
    assert peer_id_of_hex(None) is None
    assert peer_id_of_hex("zz") is None
    assert peer_id_of_hex("ab" * 31) is None


def test_peer_ids_do_not_import_libp2p_or_numpy():
    """The CLI stays fast: libp2p takes ~0.7 s to import, numpy is kept out of `fai`."""
    code = (
        "import sys; from fai_net.cli import entry; "
        "from fai_net.peer_ids import peer_id_of_hex; "
        "peer_id_of_hex('00' * 32); print('libp2p' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_source_text():
    me, other = _identity(1), _identity(2)
    own = str(me.peer_id)
    assert source_text(me.public_key.hex(), own) == "this node"
    shown = source_text(other.public_key.hex(), own)
    peer = str(other.peer_id)
    assert shown == f"{peer[:4]}…{peer[-10:]}"  # as `fai node peers` shortens ids
    assert source_text("", own) == "?"


def _hits(me, other) -> list[dict]:
    return [
        {"text": "mine", "domain": "coding", "quality": 0.5, "distance": 0.1,
         "origin": "local", "source": me.public_key.hex()},
        {"text": "theirs", "domain": "coding", "quality": 0.5, "distance": 0.2,
         "origin": "remote", "source": other.public_key.hex()},
    ]  # fmt: skip


def test_search_shows_sources_as_peer_ids(monkeypatch, capsys):
    me, other = _identity(1), _identity(2)
    node = _FakeNode({"search": {"hits": _hits(me, other)}, "info": {"node_id": str(me.peer_id)}})
    monkeypatch.setattr(cli_node, "_Node", lambda args: node)
    assert main(["experiences", "search", "q", "--socket", "/nonexistent.sock"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["DISTANCE", "QUALITY", "DOMAIN", "ORIGIN", "TEXT"]
    assert "local (this node)" in lines[1] and lines[1].endswith("mine")
    peer = str(other.peer_id)
    assert f"remote ({peer[:4]}…{peer[-10:]})" in lines[2]
    assert me.public_key.hex() not in "\n".join(lines)


def test_search_json_keeps_source_and_adds_its_source_node(monkeypatch, capsys):
    me, other = _identity(1), _identity(2)
    node = _FakeNode({"search": {"hits": _hits(me, other)}})
    monkeypatch.setattr(cli_node, "_Node", lambda args: node)
    assert main(["experiences", "search", "q", "--json", "--socket", "/nonexistent.sock"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["source"] for h in hits] == [me.public_key.hex(), other.public_key.hex()]
    assert [h["source_node"] for h in hits] == [str(me.peer_id), str(other.peer_id)]
    assert [action for action, _ in node.calls] == ["search"]  # --json needs no info call


def test_recall_table_says_how_many_close_matches_were_withheld(monkeypatch, capsys):
    me = _identity(4)
    item = {"id": "cd" * 36, "text": "pin it", "source": me.public_key.hex(), "score": 0.5}
    replies = [
        {"max_distance": 0.65, "prompt": "", "experiences": [item], "withheld": 2},
        {"max_distance": 0.65, "prompt": "", "experiences": [item], "withheld": 0},
    ]

    class Client:
        def recall(self, *args):
            return replies.pop(0)

    monkeypatch.setattr(cli_node, "_client", lambda args: Client())
    sock = ["--socket", "/nonexistent.sock"]
    assert main(["experiences", "recall", "task", *sock]) == 0
    out = capsys.readouterr().out
    assert "pin it" in out and "2 more within distance not offered" in out
    assert main(["experiences", "recall", "task", *sock]) == 0
    assert "not offered" not in capsys.readouterr().out


def test_recall_and_feedback_json_add_source_node(monkeypatch, capsys):
    me = _identity(3)
    found = {
        "max_distance": 0.65,
        "prompt": "",
        "experiences": [{"id": "ab" * 36, "text": "t", "source": me.public_key.hex()}],
    }
    feedback = {"id": "ab" * 36, "reports": 1, "source": me.public_key.hex()}

    class Client:
        def recall(self, *args):
            return found

        def feedback(self, *args):
            return feedback

    monkeypatch.setattr(cli_node, "_client", lambda args: Client())
    sock = ["--socket", "/nonexistent.sock"]
    assert main(["experiences", "recall", "task", "--json", *sock]) == 0
    got = json.loads(capsys.readouterr().out)["experiences"][0]
    assert got["source"] == me.public_key.hex() and got["source_node"] == str(me.peer_id)
    assert main(["experiences", "feedback", "ab" * 36, "helped", "--json", *sock]) == 0
    assert json.loads(capsys.readouterr().out)["source_node"] == str(me.peer_id)


# -- no progress bars in node logs ------------------------------------------------------------


def test_encoding_draws_no_progress_bar(capfd, monkeypatch):
    """A node logs at INFO, and sentence-transformers draws a tqdm 'Batches:' bar on every
    encode whenever its logger is at INFO: the real model, as a node runs it."""
    from fai_core.embedding import SentenceTransformerEmbedder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    logger = logging.getLogger("sentence_transformers")
    monkeypatch.setattr(logger, "level", logging.INFO)
    emb = SentenceTransformerEmbedder()
    emb.embed(["load the model first"])
    capfd.readouterr()
    vectors = emb.embed(["run the failing test alone", "pin the dependency", "rotate keys"])
    assert vectors.shape == (3, 384)
    err = capfd.readouterr().err
    assert "Batches" not in err and "it/s" not in err, err


# -- bench/fleet.py: a summary with parts missing ---------------------------------------------


@pytest.fixture(scope="module")
def fleet():
    """bench/fleet.py as a module (it sets thread variables on import: restored after)."""
    saved, name = dict(os.environ), "fleet_bench_under_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench/fleet.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield module
    sys.modules.pop(name, None)


def _node(sent: int | None = 4000) -> dict:
    return {
        "received_batches": 10,
        "received_texts": 200,
        "cpu_s": 5.0,
        "idle_cpu_s_per_s": 0.01,
        "threads_cpu_s": {"lancedb-tokio-w": 0.5, "main (event loop)": 2.0},
        "metrics": {
            "stage": {"validate": 0.2, "round": 1.0, "embed": 0.6},
            "fai_bytes_sent_total": 3000.0,
            "fai_bytes_received_total": 2500.0,
            "fai_experiences_merged_total": 190.0,
            "dropped": {"stale": 1.0},
            "rejected": {},
        },
        "tcp": {"sent": sent, "received": 3500} if sent is not None else None,
    }


def _fai(published: int = 30) -> dict:
    """What `summarise` reads of `fai_figures` plus the per-node CPU, metrics and TCP."""
    return {
        "per_node": [_node(), _node(None)],
        "window_s": 60.0,
        "published_batches": published,
        "lost_batches": 0,
        "latency_s": {"publish_to_merged": {"p95": 0.8}, "publish_to_accepted": {"p95": 0.3}},
    }


def _bare() -> dict:
    return {
        "per_node": [
            {"delivered_batches": 10, "cpu_s": 1.0, "idle_cpu_s_per_s": 0.0, "tcp": None}
            for _ in range(2)
        ],
        "window_s": 50.0,
        "latency_s": {"publish_to_delivered": {"p95": 0.2}},
        "lost_batches": 0,
    }


REPLAY = {
    "batches": 10,
    "embed_cpu_per_text_s": 0.002,
    "round_minus_embed_ms_per_batch": 20.0,
    "other_threads_ms_per_batch": 5.0,
}
REEMBED = "reembed_cpu_ms_per_batch (replay cpu/text x texts)"


def test_summarise_without_replay_or_bare_keeps_every_measured_figure(fleet):
    settings = fleet.Settings(nodes=2, replay=False)
    out = fleet.summarise(settings, _fai(), None, None)
    cpu = out["fai"]["cpu"]
    assert cpu["received_batches"] == 20 and cpu["validate_ms_per_batch"] == 20.0
    assert cpu["process_cpu_ms_per_received_batch"] == 500.0
    for key in (REEMBED, "reembed_share_of_receive", "receive_ms_per_batch_without_reembed"):
        assert cpu[key] is None, key
    assert out["fai"]["bytes_per_node_per_round"]["fai_bytes_sent_counter"] == 200.0
    assert out["fai"]["experiences_dropped"] == {"stale": 2.0}
    assert out["targets"] == {"fai_lost_batches": 0, "zero_lost": True}
    assert "--no-replay" in out["missing"]["re-embedding split (replay)"]
    assert "--no-bare" in out["missing"]["bare gossipsub comparison"]


def test_summarise_with_bare_but_no_replay(fleet):
    out = fleet.summarise(fleet.Settings(nodes=2), _fai(), _bare(), None)
    targets = out["targets"]
    assert targets["p95_merged_over_bare"] == pytest.approx(4.0)
    assert targets["cost_target_met (<= 0.10)"] is None
    assert targets["validate_only_over_libp2p_delivery"] == pytest.approx(0.2)
    assert out["bare"]["cpu"]["process_cpu_ms_per_delivered_batch"] == 100.0


@pytest.mark.parametrize(
    ("replay", "reason"),
    [({"error": "RuntimeError('moved')"}, "failed: RuntimeError"), ({"batches": 0}, "no batch")],
)
def test_summarise_with_an_unusable_replay_says_why(fleet, replay, reason):
    out = fleet.summarise(fleet.Settings(nodes=2), _fai(), None, replay)
    assert out["fai"]["cpu"][REEMBED] is None
    assert reason in out["missing"]["re-embedding split (replay)"]


def test_summarise_with_everything(fleet):
    out = fleet.summarise(fleet.Settings(nodes=2), _fai(), _bare(), dict(REPLAY))
    cpu = out["fai"]["cpu"]
    assert cpu[REEMBED] == pytest.approx(40.0)  # 0.002 s x 400 texts / 20 batches
    assert cpu["receive_ms_per_batch_without_reembed"] == pytest.approx(40.0)  # 20 + 20
    assert out["targets"]["cost_target_met (<= 0.10)"] is False
    assert "re-embedding split (replay)" not in out["missing"]


def test_summarise_with_nothing_published(fleet):
    out = fleet.summarise(fleet.Settings(nodes=2), _fai(published=0), None, None)
    assert set(out["fai"]["bytes_per_node_per_round"].values()) == {None}
    assert "no batch was published" in out["missing"]["bytes per node per round"]


def test_a_failing_summary_still_prints_the_raw_figures(fleet, monkeypatch, capsys):
    raw = _fai()
    monkeypatch.setattr(fleet, "run_fai", lambda s, root, procs: {"result": raw})

    def broken(*args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(fleet, "summarise", broken)
    report = fleet.measure(fleet.Settings(nodes=2, replay=False), True, Path("/nonexistent"), [])
    assert report["fai"] is raw and "TypeError" in report["summary_error"]
    assert fleet.emit(report, as_json=False) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["fai"]["window_s"] == 60.0 and printed["settings"]["nodes"] == 2
