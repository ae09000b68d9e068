"""What a devnet operator does by hand: pick the unbonding delay, fund a fresh key, move the
chain's clock, name nodes with `--node N`, make a node equivocate and submit the evidence,
and read errors that show the usage of the command typed.

The first tests need no devnet (`fai_net.cli.entry.main` in-process, settings isolated). The
others share one devnet of 2 nodes (hashing embedder, `--allow-raw-publish`, a 1 h
unbonding delay), started after a 1-node devnet was brought up and down in the same state
directory, as a user who runs `devnet up` twice would; every step is a `fai` subprocess.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fai_net.api.control import ControlClient
from fai_net.cli.entry import main
from fai_net.cli.node import resolve_socket
from fai_net.devnet import fleet as devnet
from fai_net.settings import SettingsError
from tests.support.devnet import run_fai

ROOT = Path(__file__).resolve().parents[1]


# -- no devnet -------------------------------------------------------------------------------


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No FAI_* setting, fai.toml or devnet of the caller's leaks in."""
    for name in list(os.environ):
        if name.startswith("FAI_"):
            monkeypatch.delenv(name)
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("FAI_CONFIG", str(tmp_path / "empty.toml"))
    monkeypatch.setenv("FAI_DEVNET_STATE", str(tmp_path / "none.json"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fake_devnet(directory: Path, **extra) -> Path:
    """A devnet.json naming nodes 0..3 (no process runs): enough for name resolution."""
    nodes = [
        {
            "name": f"node{i}",
            "operator_key_file": str(directory / f"node{i}.operator.key"),
            "data_dir": str(directory / f"node{i}"),
            "control_socket": str(directory / f"node{i}" / "control.sock"),
        }
        for i in range(4)
    ]
    state = {"rpc_url": "http://127.0.0.1:1", "registry": "0x" + "ab" * 20, "nodes": nodes}
    path = directory / "devnet.json"
    path.write_text(json.dumps({**state, "state_dir": str(directory), **extra}))
    return path


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["node", "status", "--bogus"], "usage: fai node status [-h]"),
        (["experiences", "search", "a query", "--bogus", "x"], "usage: fai experiences search"),
        (["devnet", "status", "--bogus"], "usage: fai devnet status [-h]"),
        (["stake", "--bogus"], "usage: fai stake [-h]"),
    ],
)
def test_an_unknown_argument_shows_the_usage_of_the_command_typed(isolated, capsys, argv, usage):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith(usage), err
    assert "unrecognized arguments: --bogus" in err and "fai [-h] COMMAND" not in err


def test_an_input_error_shows_the_message_then_the_command_usage(isolated, capsys):
    assert main(["node", "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fai: error: which node?") and "--node N" in err
    assert "\nusage: fai node status [-h]" in err and "[--node N]" in err
    assert main(["devnet", "fund", "0x12", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fai: error: ADDRESS '0x12' is not an address")
    assert "\nusage: fai devnet fund" in err


def test_a_devnet_node_that_does_not_answer_points_at_the_devnet(isolated, monkeypatch, capsys):
    monkeypatch.setenv("FAI_DEVNET_STATE", str(fake_devnet(isolated)))
    assert main(["node", "status", "--node", "1", "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert f"no node is running at {isolated / 'node1' / 'control.sock'}" in err
    assert "is the devnet up? `fai devnet status`" in err and "fai node run" not in err
    assert main(["node", "status", "--data-dir", str(isolated / "mine"), "--timeout", "2"]) == 1
    assert f"fai node run --data-dir {isolated / 'mine'}" in capsys.readouterr().err


def test_node_flag_is_on_every_node_command_and_names_a_devnet_node(isolated, monkeypatch):
    state = fake_devnet(isolated)
    monkeypatch.setenv("FAI_DEVNET_STATE", str(state))
    from fai_net.cli.entry import build_parser

    parser = build_parser()
    for argv in (
        ["node", "status"],
        ["node", "peers"],
        ["node", "subscribe", "coding"],
        ["node", "unsubscribe", "coding"],
        ["node", "broadcast", "coding"],
        ["node", "stop"],
        ["experiences", "add", "--text", "t"],
        ["experiences", "search", "q"],
        ["experiences", "recall", "t"],
        ["experiences", "feedback", "id", "helped"],
        ["experiences", "import-telemetry", "f.jsonl"],
        ["experiences", "export"],
    ):
        args = parser.parse_args([*argv, "--node", "2"])
        assert args.node == "2", argv
        assert resolve_socket(args) == (
            str(isolated / "node2" / "control.sock"),
            str(isolated / "node2"),
        )
    args = parser.parse_args(["node", "status", "--node", "node1"])
    assert resolve_socket(args)[0] == str(isolated / "node1" / "control.sock")
    # --node beats the environment; an explicit --data-dir beats --node.
    monkeypatch.setenv("FAI_SOCKET", "/env.sock")
    assert resolve_socket(args)[0] == str(isolated / "node1" / "control.sock")
    args = parser.parse_args(["node", "status", "--node", "1", "--data-dir", "/mine"])
    assert resolve_socket(args)[0] == "/mine/control.sock"
    args = parser.parse_args(["node", "status", "--node", "9"])
    with pytest.raises(SettingsError, match=r"it has: node0, node1, node2, node3"):
        resolve_socket(args)


def test_equivocate_refuses_a_devnet_without_raw_publish_by_its_up_flag(isolated, capsys):
    fake_devnet(isolated, allow_raw_publish=False)
    for which in ("3", "node3"):
        assert main(["devnet", "equivocate", "--node", which, "--state-dir", str(isolated)]) == 2
        err = capsys.readouterr().err
        assert "started without --allow-raw-publish" in err, err
        assert "`fai devnet down`, then `fai devnet up --allow-raw-publish ...`" in err
    assert main(["devnet", "equivocate", "--node", "7", "--state-dir", str(isolated)]) == 2
    assert "no such node (it has: node0, node1, node2, node3)" in capsys.readouterr().err


def test_operator_commands_refuse_bad_values_and_a_missing_devnet(isolated, capsys):
    sd = ["--state-dir", str(isolated)]
    cases = [
        (["devnet", "advance-time", "-5", *sd], "must be 0 or more"),
        (["devnet", "advance-time", str(10**11), *sd], "at most 63072000 (two years)"),
        (["devnet", "advance-time", "60", *sd], "no devnet is up"),
        (["devnet", "fund", "0x" + "ab" * 20, "1", *sd], "no devnet is up"),
        (["devnet", "fund", "0x" + "aB" * 20, "1", *sd], "bad checksum"),
        (["devnet", "fund", "1", *sd], "give the ADDRESS to fund or --key-file FILE"),
        (["devnet", "fund", "--key-file", "/nonexistent.key", "1", *sd], "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("fai: error: ") and message in err, (argv, err)
    for bad in ("0", str(366 * 86400), "soon"):
        with pytest.raises(SystemExit):
            main(["devnet", "up", "--unbonding-delay", bad, *sd])
        err = capsys.readouterr().err
        assert err.startswith("usage: fai devnet up") and "--unbonding-delay" in err, err


def test_a_stale_state_file_sends_nothing(isolated):
    """A devnet.json whose Anvil is gone: fund and advance-time say so, touching no chain."""
    state = json.loads(fake_devnet(isolated, anvil_pid=os.getpid()).read_text())
    with pytest.raises(devnet.DevnetError, match=r"chain .* is not running"):
        devnet.fund(state, "0x" + "ab" * 20, 1)
    with pytest.raises(devnet.DevnetError, match=r"chain .* is not running"):
        devnet.advance_time(state, 0)


# -- one devnet ------------------------------------------------------------------------------


def fai(*args: str, state_dir: Path, code: int = 0, timeout: float = 120):
    return run_fai(*args, state_dir=state_dir, code=code, timeout=timeout, clean_env=True)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def net():
    """A 1-node devnet up and down, then the 2-node devnet the tests share, in one state
    directory; what `down` and the second `up` printed is kept for the tests."""
    root = Path(tempfile.mkdtemp(prefix="fai-op-", dir="/tmp"))  # short: AF_UNIX limit
    sd = ["--state-dir", str(root)]
    try:
        fai("devnet", "up", "--nodes", "1", "--embedder", "hashing", "--quiet", *sd, state_dir=root)
        first = json.loads((root / "devnet.json").read_text())
        down = fai("devnet", "down", "--quiet", *sd, state_dir=root).stdout
        up = fai(
            "devnet",
            *("up", "--nodes", "2", "--embedder", "hashing", "--allow-raw-publish"),
            *("--unbonding-delay", "3600", "--quiet", *sd),
            state_dir=root,
        ).stdout
        state = json.loads((root / "devnet.json").read_text())
        yield {"root": root, "sd": sd, "state": state, "first": first, "down": down, "up": up}
    finally:
        if (root / "devnet.json").exists():
            subprocess.run(
                [sys.executable, "-m", "fai_net.cli", "devnet", "down", "--quiet", *sd],
                cwd=ROOT,
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(root, ignore_errors=True)


def test_down_keeps_the_run_directory_and_says_where(net):
    first_run = net["first"]["run_dir"]
    assert f"stay in {first_run}: nothing was deleted" in net["down"]
    assert Path(first_run, "node0", "node.key").exists()
    assert net["state"]["run_dir"] != first_run
    assert "1 run directory of earlier devnets stay in" in net["up"]
    assert "--node N" in net["up"]


def test_up_sets_the_registry_unbonding_delay_and_records_it(net):
    from web3 import Web3

    from fai_net.registry import RegistryClient

    state = net["state"]
    assert state["unbonding_delay"] == 3600 and state["allow_raw_publish"] is True
    assert "unbonding delay 1h 0m" in net["up"]
    reg = RegistryClient(Web3(Web3.HTTPProvider(state["rpc_url"])), state["registry"])
    assert reg.contract.functions.unbondingDelay().call() == 3600


def test_status_shows_each_node_as_peer_id_with_operator_and_data_dir(net):
    rows = json.loads(fai("devnet", "status", "--json", *net["sd"], state_dir=net["root"]).stdout)
    table = fai("devnet", "status", *net["sd"], state_dir=net["root"]).stdout
    for node, row in zip(net["state"]["nodes"], rows["nodes"], strict=True):
        assert row["data_dir"] == node["data_dir"] and row["operator"] == node["operator"]
        assert f"peer {node['peer_id']}  operator {node['operator']}" in table
        assert f"data {node['data_dir']}" in table


def test_advance_time_zero_mines_a_block_at_the_wall_clock(net):
    out = json.loads(
        fai("devnet", "advance-time", "0", "--json", *net["sd"], state_dir=net["root"]).stdout
    )
    assert out["advanced_s"] == 0 and out["timestamp"] >= int(time.time()) - 5
    again = fai("devnet", "advance-time", "0", *net["sd"], state_dir=net["root"]).stdout
    assert re.match(r"chain clock \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC at block \d+", again)


def test_a_fresh_key_funded_stakes_unbonds_and_withdraws_after_advance_time(net):
    root, sd = net["root"], net["sd"]
    key = root / "fresh.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, secrets.token_bytes(32).hex().encode())
    os.close(fd)
    out = fai("devnet", "fund", "--key-file", str(key), "25", *sd, state_dir=root).stdout
    address = re.search(r"to (0x[0-9a-fA-F]{40})", out).group(1)
    assert "it now holds 25 tokens" in out and "ETH for gas" in out
    funded = json.loads(
        fai("devnet", "fund", address.lower(), "5", "--json", *sd, state_dir=root).stdout
    )
    assert funded["token_balance"] == 30 * 10**18 and funded["eth_balance"] >= 10**18
    mine = ["--key-file", str(key)]
    fai("stake", *mine, state_dir=root)
    fai("unbond", "--amount", "10", *mine, state_dir=root)
    early = fai("withdraw", *mine, state_dir=root, code=1)
    assert "UnbondingNotReady" in early.stderr
    # No waiting out the hour: the chain's clock moves instead.
    moved = fai("devnet", "advance-time", "3600", *sd, state_dir=root).stdout
    assert "(moved 1h 0m;" in moved
    done = fai("withdraw", *mine, "--json", state_dir=root)
    assert json.loads(done.stdout)["amount"] == 10 * 10**18


def test_node_commands_reach_a_devnet_node_by_number(net):
    node1 = net["state"]["nodes"][1]
    text = "Read the whole traceback from the bottom before changing any code."
    add = ["experiences", "add", "--node", "1", "--domain", "coding", "--text", text]
    fai(*add, state_dir=net["root"])
    status = json.loads(
        fai("node", "status", "--node", "node1", "--json", state_dir=net["root"]).stdout
    )
    assert status["node_id"] == node1["peer_id"] and status["library_size"] >= 1


def test_equivocate_prints_the_evidence_file_and_the_command_that_submits_it(net):
    root, (node0, node1) = net["root"], net["state"]["nodes"]
    fai(
        *("experiences", "add", "--node", "1", "--domain", "coding", "--text"),
        "Pin dependency versions before upgrading the toolchain, then bump one at a time.",
        state_dir=root,
    )
    sent = json.loads(
        fai("node", "broadcast", "coding", "--node", "1", "--json", state_dir=root).stdout
    )
    batch = sent.get("batch_id") or sent["batch_ids"][-1]
    witness = ControlClient(node0["control_socket"])
    wait_for(lambda: batch in witness.call("batches")["cids"], 30, "node0 to store the batch")
    out = fai("devnet", "equivocate", "--node", "1", *net["sd"], state_dir=root).stdout
    path = Path(re.search(r"wrote the evidence to (\S+)", out).group(1))
    assert path.parent == Path(node0["data_dir"]) / "evidence" and path.is_file()
    command = re.search(r"submit it on-chain: (.+)", out).group(1)
    assert command.startswith(f"fai slash equivocation --evidence {path} ")
    slash = fai(*shlex.split(command)[1:], "--json", state_dir=root)
    assert node1["operator"].lower() in slash.stdout.lower()


def test_mcp_serves_a_devnet_node_named_by_node(isolated, monkeypatch):
    monkeypatch.setenv("FAI_DEVNET_STATE", str(fake_devnet(isolated)))
    seen = []
    monkeypatch.setattr("fai_net.api.mcp_server.main", seen.append)
    assert main(["mcp", "--node", "2"]) == 0
    assert seen[-1][seen[-1].index("--socket") + 1] == str(isolated / "node2" / "control.sock")
    assert main(["mcp", "--node", "2", "--data-dir", "/mine"]) == 0  # an explicit flag wins
    assert "--socket" not in seen[-1] and seen[-1][-2:] == ["--data-dir", "/mine"]
