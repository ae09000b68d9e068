"""`fai node status|peers|subscribe|unsubscribe` and `fai experiences ...` against real nodes.

Three node processes (hashing embedder, open membership): `a` (coding + writing) and `b`
(coding, seeded with a) gossip; `c` (writing) has no peers, so its library changes only
through what these tests send it. The command line runs as a subprocess, exactly as a user
runs it, with settings isolated from the caller's environment and any fai.toml.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from tests.support.fleet import ROOT, Fleet, wait_for

SAMPLE = ROOT / "fai_core" / "data" / "sample_telemetry.jsonl"


@pytest.fixture(scope="module")
def fleet():
    f = Fleet()
    try:
        # c has no seeds and nobody seeds from it; start it alongside a to save a start-up.
        c = f.spawn("c", ("writing",), seeds=[])
        f.add("a", ("coding", "writing"), seeds=[])
        c.wait_ready()
        f.add("b", ("coding",), seeds=[f["a"].addr])
        yield f
    finally:
        f.stop_all()
        shutil.rmtree(f.root, ignore_errors=True)


@pytest.fixture(scope="module")
def clean_env(tmp_path_factory) -> dict[str, str]:
    """The caller's FAI_* settings and fai.toml must not leak into these runs."""
    empty = tmp_path_factory.mktemp("cfg") / "fai.toml"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAI_")}
    env.update(FAI_CONFIG=str(empty), FAI_DEVNET_STATE=str(empty.parent / "none.json"))
    return env


@pytest.fixture(scope="module")
def fai(clean_env):
    def run(*args: str, node=None, env: dict | None = None, check: int | None = 0):
        argv = [sys.executable, "-m", "fai_net.cli", *args]
        if node is not None:
            argv += ["--data-dir", str(node.data_dir)]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**clean_env, **(env or {})},
            timeout=120,
        )
        if check is not None:
            assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    probe = run("experiences", "--help", check=None)
    assert probe.returncode == 0, (
        "fai_net.cli.entry does not wire fai_net.cli.node yet: call "
        "add_node_client_commands(sub, commands) in _add_node_commands\n" + probe.stderr
    )
    return run


def js(proc) -> dict:
    return json.loads(proc.stdout)


def search_texts(fai, node, query: str, domain: str) -> list[str]:
    hits = js(
        fai("experiences", "search", query, "--domain", domain, "-k", "5", "--json", node=node)
    )
    return [h["text"] for h in hits["hits"]]


def test_help_is_instant_and_every_command_has_it(fai):
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, fai_net.cli.entry as c; c.build_parser(); "
            "print(sorted(m for m in ('trio', 'numpy', 'lancedb', 'torch', 'libp2p') "
            "if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert imported.stdout.strip() == "[]"
    for command in (
        ["node", "status"],
        ["node", "peers"],
        ["node", "subscribe"],
        ["node", "unsubscribe"],
        ["experiences", "add"],
        ["experiences", "search"],
        ["experiences", "import-telemetry"],
        ["experiences", "export"],
    ):
        out = fai(*command, "--help").stdout
        assert "--json" in out and "--data-dir" in out, command


def test_add_from_flags_and_file_then_search_here_and_on_a_peer(fleet, fai, tmp_path):
    a, b = fleet["a"], fleet["b"]
    flag_texts = [
        "run the single failing test with verbose output before touching the code",
        "read the whole traceback bottom up and fix the first frame in our code",
    ]
    added = js(
        fai(
            "experiences",
            "add",
            "--domain",
            "coding",
            "--quality",
            "0.8",
            "--text",
            flag_texts[0],
            "--text",
            flag_texts[1],
            "--json",
            node=a,
        )
    )
    assert added["added"] == 2 and added["by_domain"] == {"coding": 2}
    file_items = [
        {
            "text": "open with the conclusion and keep each paragraph to one idea",
            "domain": "writing",
        },
        {"text": "pin the dependency before bisecting a regression", "quality": 0.9},
    ]
    path = tmp_path / "exps.jsonl"
    path.write_text("\n".join(json.dumps(item) for item in file_items) + "\n\n")
    out = fai("experiences", "add", "--file", str(path), "--domain", "coding", node=a).stdout
    assert "added 2 experiences" in out and "coding 1" in out and "writing 1" in out

    assert search_texts(fai, a, flag_texts[0], "coding")[0] == flag_texts[0]
    assert search_texts(fai, a, file_items[0]["text"], "writing")[0] == file_items[0]["text"]
    human = fai("experiences", "search", file_items[1]["text"], "-k", "3", node=a).stdout
    assert human.splitlines()[0].split() == ["DISTANCE", "QUALITY", "DOMAIN", "ORIGIN", "TEXT"]
    assert file_items[1]["text"] in human and "local" in human

    # b follows coding only: the coding experiences reach it, through gossip or repair.
    for text in (flag_texts[1], file_items[1]["text"]):
        wait_for(lambda t=text: t in search_texts(fai, b, t, "coding"), 45, f"{text!r} on b")
    hits = js(fai("experiences", "search", flag_texts[1], "-k", "1", "--json", node=b))["hits"]
    assert hits[0]["origin"] != "local" and hits[0]["source"] != ""


def test_status_and_peers_show_what_the_node_reports(fleet, fai):
    a, b = fleet["a"], fleet["b"]
    wait_for(lambda: any(p["connected"] for p in a.call("peers")["peers"]), 30, "a connected to b")
    reported = a.call("status")
    status = js(fai("node", "status", "--json", node=a))
    for key in ("node_id", "domains", "membership"):
        assert status[key] == reported[key]
    assert status["peers"] >= 1
    assert set(status["library_by_domain"]) >= {"coding", "writing"}
    assert status["library_size"] == sum(status["library_by_domain"].values())

    human = fai("node", "status", node=a).stdout
    fields = dict(line.split(None, 1) for line in human.splitlines() if not line[0].isspace())
    assert fields["node"] == reported["node_id"]
    assert fields["membership"] == "open"
    assert fields["domains"] == "coding, writing"
    assert fields["peers"].endswith("connected")
    assert fields["last"].startswith("sync") and ("ago" in fields["last"] or "never" in human)
    assert {"library", "batches", "outbox", "traffic", "rejections", "evidence"} <= set(fields)
    assert any(line.split()[:1] == ["coding"] for line in human.splitlines())

    peers = js(fai("node", "peers", "--json", node=a))["peers"]
    b_id = b.call("info")["node_id"]
    assert b_id in {p["node_id"] for p in peers}
    assert {p["node_id"] for p in a.call("peers")["peers"]} == {p["node_id"] for p in peers}
    table = fai("node", "peers", node=a).stdout.splitlines()
    assert table[0].split() == ["NODE", "CONNECTED", "LATENCY", "MS", "REPUTATION", "LAST", "SEEN"]
    row = next(line for line in table[1:] if b_id[-10:] in line)
    assert " yes " in row
    assert "connected" in table[-1]


def test_subscribe_and_unsubscribe(fleet, fai):
    b = fleet["b"]
    assert "subscribed to support" in fai("node", "subscribe", "support", node=b).stdout
    assert "support" in b.call("info")["domains"]
    again = js(fai("node", "subscribe", "support", "--json", node=b))
    assert again == {"domain": "support", "subscribed": False}
    assert "unsubscribed from support" in fai("node", "unsubscribe", "support", node=b).stdout
    assert "support" not in b.call("info")["domains"]
    assert "was not subscribed" in fai("node", "unsubscribe", "support", node=b).stdout
    bad = fai("node", "subscribe", "Not A Domain", node=b, check=2)
    assert bad.stderr.startswith("fai: error: domain must match")


def test_import_telemetry_with_subscribe_grows_the_library_by_what_it_reports(fleet, fai):
    c = fleet["c"]
    before = c.call("status")["library_by_domain"]
    proc = fai(
        "experiences",
        "import-telemetry",
        str(SAMPLE),
        "--subscribe",
        "--source-name",
        "sample",
        "--progress",
        "--chunk-size",
        "10",
        "--json",
        node=c,
    )
    report = js(proc)
    assert report["records"] == 734 and report["bad_lines"] == 0
    imported = report["imported"]
    assert set(imported) == {"coding", "devops", "data-analysis", "writing", "support"}
    assert sum(imported.values()) == report["experiences"] == report["added"]
    assert report["inserted"] == report["added"]  # c had none of them
    assert report["skipped_unsubscribed"] == {}
    assert sorted(report["subscribed"]) == ["coding", "data-analysis", "devops", "support"]
    total = report["added"]
    assert "imported 10/" in proc.stderr and f"imported {total}/{total}" in proc.stderr

    after = c.call("status")["library_by_domain"]
    for domain, n in imported.items():
        assert after.get(domain, 0) - before.get(domain, 0) == n, domain

    # Importing again adds nothing new (experience ids are content addresses); the human
    # report lists the same per-domain counts.
    again = fai("experiences", "import-telemetry", str(SAMPLE), node=c).stdout
    assert f"imported {total} experiences (0 new to the library)" in again
    rows = dict(line.split()[:2] for line in again.splitlines() if line.split()[:1] != [])
    for domain, n in imported.items():
        assert rows[domain] == str(n)
    assert c.call("status")["library_by_domain"] == after


def test_import_telemetry_skips_and_counts_unsubscribed_domains(fleet, fai, tmp_path):
    b = fleet["b"]
    broken = tmp_path / "telemetry.jsonl"
    broken.write_text(SAMPLE.read_text() + "{not json\n" + '{"task_id": "x"}\n')
    proc = fai("experiences", "import-telemetry", str(broken), "--json", node=b)
    report = js(proc)
    assert report["bad_lines"] == 2 and "skipped 2 bad telemetry line(s)" in proc.stderr
    assert set(report["imported"]) == {"coding"}
    assert set(report["skipped_unsubscribed"]) == {"devops", "data-analysis", "writing", "support"}
    assert report["added"] + sum(report["skipped_unsubscribed"].values()) == report["experiences"]
    assert "imported" not in proc.stderr  # no progress: stderr is a pipe, no --progress
    human = fai("experiences", "import-telemetry", str(SAMPLE), node=b).stdout
    assert "not subscribed" in human and "use --subscribe" in human
    assert "devops" not in b.call("info")["domains"]


def test_refusals_exit_2_with_the_node_message(fleet, fai, tmp_path):
    a = fleet["a"]
    long_text = " ".join(["word"] * 40)
    proc = fai("experiences", "add", "--domain", "coding", "--text", long_text, node=a, check=2)
    assert proc.stderr.startswith("fai: error: ") and "40 words, at most 32" in proc.stderr
    proc = fai("experiences", "add", "--domain", "devops", "--text", "ok text", node=a, check=2)
    assert "'devops' is not subscribed" in proc.stderr
    proc = fai(
        "experiences",
        "add",
        "--domain",
        "coding",
        "--text",
        "ok text",
        "--quality",
        "1.5",
        node=a,
        check=2,
    )
    assert "quality must be a number in (0, 1)" in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine text", "domain": "coding"}\n{"text": "two  spaces"}\n')
    proc = fai("experiences", "add", "--file", str(bad), "--domain", "coding", node=a, check=2)
    assert "line 2: text is empty or not normalized" in proc.stderr
    proc = fai("experiences", "add", node=a, check=2)
    assert "nothing to add" in proc.stderr


def test_no_node_running_exit_1_with_a_hint(fai):
    tmp_path = Path(tempfile.mkdtemp(prefix="fai-cli-", dir="/tmp"))  # short: AF_UNIX limit
    try:
        proc = fai("node", "status", "--data-dir", str(tmp_path), check=1)
        sock = tmp_path / "control.sock"
        assert proc.stderr.strip() == (
            f"fai: error: no node is running at {sock} "
            f"(start one with `fai node run --data-dir {tmp_path} --domain ...`)"
        )
        proc = fai("experiences", "search", "query", env={"FAI_SOCKET": str(sock)}, check=1)
        assert f"no node is running at {sock}" in proc.stderr
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    proc = fai("node", "peers", check=2)
    assert "which node?" in proc.stderr and "--data-dir" in proc.stderr


def test_settings_from_the_environment_find_the_node(fleet, fai):
    a = fleet["a"]
    env = {"FAI_DATA_DIR": str(a.data_dir)}
    assert js(fai("node", "status", "--json", env=env))["node_id"] == a.call("info")["node_id"]
    env = {"FAI_SOCKET": str(a.data_dir / "control.sock"), "FAI_DATA_DIR": "/nonexistent"}
    assert js(fai("node", "peers", "--json", env=env))["peers"] is not None


def test_export_writes_the_library_as_jsonl(fleet, fai, tmp_path):
    c = fleet["c"]
    c.call("export", limit=1)  # the action exists: an unknown action raises ControlError
    texts = ["state the reader's question in the first sentence", "cut every adverb you can"]
    fai("experiences", "add", "--domain", "writing", "--text", texts[0], "--text", texts[1], node=c)
    status = c.call("status")  # c has no peers: its library changes only through us
    out = tmp_path / "lib.jsonl"
    summary = js(fai("experiences", "export", "-o", str(out), "--page-size", "7", "--json", node=c))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary == {
        "exported": status["library_size"],
        "file": str(out),
        "by_domain": {d: n for d, n in status["library_by_domain"].items() if n},
    }
    assert len(rows) == status["library_size"] == len({r["id"] for r in rows})
    assert Counter(r["domain"] for r in rows) == Counter(
        {d: n for d, n in status["library_by_domain"].items() if n}
    )
    assert set(texts) <= {r["text"] for r in rows}
    assert {"id", "text", "domain", "quality", "origin", "source", "created_ms"} <= set(rows[0])

    piped = fai("experiences", "export", "--domain", "writing", "--page-size", "3", node=c)
    writing = [json.loads(line) for line in piped.stdout.splitlines()]
    assert {r["domain"] for r in writing} == {"writing"}
    assert sorted(r["id"] for r in writing) == sorted(
        r["id"] for r in rows if r["domain"] == "writing"
    )
    assert not Path(str(out) + ".partial").exists()
