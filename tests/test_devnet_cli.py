"""End to end through the command line, as a user would: devnet up, experiences flow,
an equivocation is caught, slashed from the evidence file, the slashed node is dropped,
status reports it, and devnet down leaves no process behind.

Every step is a `fai` subprocess; nodes use the explicit hashing test embedder to keep CI
fast (the main job, `make demo`, runs the real model).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from fai_net.api.control import ControlClient
from fai_net.devnet.launch import poll_until
from tests.support.devnet import run_fai

ROOT = Path(__file__).resolve().parents[1]


def fai(*args: str, state_dir: Path, check: bool = True, timeout: float = 240):
    return run_fai(*args, state_dir=state_dir, code=0 if check else None, timeout=timeout)


def wait_for(predicate, timeout: float, what: str):
    last = poll_until(predicate, timeout, 0.5)
    if last:
        return last
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def state_dir():
    path = Path(f"/tmp/fai-e2e-{os.getpid()}")
    yield path
    if (path / "devnet.json").exists():  # never leave a devnet running after a failure
        fai("devnet", "down", "--state-dir", str(path), state_dir=path, check=False)


def test_devnet_through_the_cli(state_dir: Path):
    sd = ["--state-dir", str(state_dir)]
    up = fai(
        "devnet",
        "up",
        "--nodes",
        "4",
        "--embedder",
        "hashing",
        "--allow-raw-publish",
        "--json",
        *sd,
        state_dir=state_dir,
    )
    state = json.loads(up.stdout)
    nodes = state["nodes"]
    pids = [state["anvil_pid"], *(n["pid"] for n in nodes)]
    assert all(alive(p) for p in pids)
    # A second `up` refuses while this one runs.
    again = fai("devnet", "up", "--nodes", "1", *sd, state_dir=state_dir, check=False)
    assert again.returncode == 2 and "already up" in again.stderr

    def status():
        return json.loads(fai("devnet", "status", "--json", *sd, state_dir=state_dir).stdout)

    wait_for(lambda: all((r["peers"] or 0) >= 2 for r in status()["nodes"]), 60, "peers")
    time.sleep(2)
    # Experiences added on node0 reach every other node's library.
    texts = [
        "Rerun a failing test alone before editing it, to separate regressions from flakes.",
        "Pin dependency versions before upgrading the toolchain, then bump one at a time.",
        "Read the whole traceback from the bottom before changing any code.",
    ]
    add = ["experiences", "add", "--data-dir", nodes[0]["data_dir"], "--domain", "coding"]
    for t in texts:
        add += ["--text", t]
    fai(*add, state_dir=state_dir)
    fai(
        "node", "status", "--data-dir", nodes[0]["data_dir"], state_dir=state_dir
    )  # readable form works
    # Publish now rather than at the 60 s interval.
    ControlClient(nodes[0]["control_socket"]).call("broadcast", domain="coding")

    def everyone_has_it():
        for n in nodes[1:]:
            out = fai(
                "experiences",
                "search",
                texts[2],
                "--domain",
                "coding",
                "-k",
                "1",
                "--json",
                "--data-dir",
                n["data_dir"],
                state_dir=state_dir,
            )
            hits = json.loads(out.stdout)
            hits = hits["hits"] if isinstance(hits, dict) else hits
            if not hits or hits[0]["text"] != texts[2]:
                return False
        return True

    wait_for(everyone_has_it, 60, "the experiences to reach every node")

    # node3 publishes a batch; everyone stores it.
    fai(
        "experiences",
        "add",
        "--data-dir",
        nodes[3]["data_dir"],
        "--domain",
        "writing",
        "--text",
        "Cut every sentence that restates the heading above it.",
        state_dir=state_dir,
    )
    sent = ControlClient(nodes[3]["control_socket"]).call("broadcast", domain="writing")
    assert sent["experiences_sent"] == 1
    for n in nodes[:3]:
        wait_for(
            lambda n=n: (
                sent["batch_id"] in ControlClient(n["control_socket"]).call("batches")["cids"]
            ),
            30,
            f"{n['name']} to store node3's batch",
        )
    # node3 equivocates; a node writes the evidence; the CLI slashes from the file.
    eq = json.loads(
        fai("devnet", "equivocate", "--node", "node3", "--json", *sd, state_dir=state_dir).stdout
    )
    assert eq["first"] != eq["second"]

    def evidence_file():
        for n in nodes[:3]:
            found = sorted((Path(n["data_dir"]) / "evidence").glob("equivocation-*.json"))
            if found:
                return (n, found[0])
        return None

    witness, proof = wait_for(evidence_file, 30, "equivocation evidence")
    slash = fai(
        "slash",
        "equivocation",
        "--evidence",
        str(proof),
        "--key-file",
        witness["operator_key_file"],
        "--json",
        state_dir=state_dir,
    )
    assert nodes[3]["operator"].lower() in slash.stdout.lower()

    def dropped():
        rows = {r["name"]: r for r in status()["nodes"]}
        if rows["node3"]["live"] or not rows["node3"]["jailed"]:
            return False
        for n in nodes[:3]:
            peers = ControlClient(n["control_socket"]).call("peers")["peers"]
            if any(p["node_id"] == nodes[3]["peer_id"] and p["connected"] for p in peers):
                return False
        return True

    wait_for(dropped, 40, "the slashed node to be dropped")
    table = fai("devnet", "status", *sd, state_dir=state_dir).stdout
    # The table's own columns: name, run, peers, stake, live, jailed, ...
    cells = [line.split() for line in table.splitlines() if line[:4] == "node"]
    rows = {c[0]: c for c in cells if c[0][4:].isdigit()}  # not the header's "node"
    assert sorted(rows) == ["node0", "node1", "node2", "node3"]
    assert rows["node3"][4:6] == ["False", "True"]  # not live, jailed
    assert all(rows[f"node{i}"][4:6] == ["True", "False"] for i in range(3))

    down = json.loads(fai("devnet", "down", "--json", *sd, state_dir=state_dir).stdout)
    assert set(down["stopped"]) >= {"anvil", "node0", "node1", "node2", "node3"}
    wait_for(lambda: not any(alive(p) for p in pids), 20, "every devnet process to exit")
    assert not (state_dir / "devnet.json").exists()
