"""Operator friction in the registry commands (issue 19), as a user meets it: subprocesses
against a real Anvil.

Addresses are checked before anything is sent; a withdrawal refused by the chain's clock
says so; `--node N` stands for a devnet node's operator; peers and operators are shown by
their libp2p peer id; a wrong evidence file is one plain line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from fai_core.identity import NodeKey
from fai_net.admission import evidence
from fai_net.cli import registry as cli_registry
from fai_net.devnet.anvil import Anvil
from fai_net.node.identity import NodeIdentity
from fai_net.registry import RegistryClient, deploy_registry
from fai_net.registry.deploy import DEFAULT_MIN_BOND as MIN
from fai_net.registry.deploy import TOKEN, RegistryParams
from fai_net.registry.possession import multiaddr_problem, peer_id_of

from .conftest import Env, fund_eth
from .test_cli_registry import Fai, equivocation_file, go_live, key_file

utc = cli_registry.format_utc


def node_dir(path: Path, seed: bytes, addrs: list[str] | None = None) -> Path:
    """A node's data directory as `fai node run` leaves it: node.key (0600), node.json."""
    path.mkdir(parents=True)
    fd = os.open(path / "node.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, seed)
    os.close(fd)
    if addrs is not None:
        (path / "node.json").write_text(json.dumps({"addrs": addrs}))
    return path


def ad_state(env: Env, op: LocalAccount) -> tuple:
    info = env.reg.operator(op.address)
    return (env.w3.eth.block_number, info.ad_nonce, info.ad_expiry, info.multiaddrs_hash)


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    return stderr


# -- 1. advertised addresses -------------------------------------------------------------


def test_peer_ids_are_libp2p_peer_ids():
    for seed in (bytes(32), bytes(range(32)), b"\xff" * 32):
        identity = NodeIdentity.from_seed(seed)
        assert peer_id_of(identity.public_key) == str(identity.peer_id)
    pid = peer_id_of(NodeKey(bytes(range(32))).public_key)
    key = NodeKey(bytes(range(32))).public_key
    assert multiaddr_problem(f"/dns4/example.org/tcp/4001/p2p/{pid}", key) is None
    assert multiaddr_problem("/ip6/::1/tcp/4001", key) == "it has no /p2p/<peer id>"
    assert multiaddr_problem("/ip6/::1/tcp/4001", key, need_peer_id=False) is None
    assert "only /p2p/" in multiaddr_problem(f"/ip4/1.2.3.4/tcp/1/ws/p2p/{pid}", key)


def test_advertise_refuses_unusable_multiaddrs_before_sending(env: Env, anvil, tmp_path: Path):
    op, other = env.ops[0], NodeKey(bytes([9]) * 32)
    node = go_live(env, op, 1)  # an advertisement already on-chain, which must survive
    pid, other_pid = peer_id_of(node.public_key), peer_id_of(other.public_key)
    data_dir = node_dir(tmp_path / "node", bytes([1]) * 32)
    wildcard = node_dir(tmp_path / "wild", bytes([1]) * 32, [f"/ip4/0.0.0.0/tcp/4001/p2p/{pid}"])
    proof = env.reg.binding_proof(node, op.address).hex()
    fai = Fai(
        tmp_path,
        FAI_RPC=anvil.url,
        FAI_REGISTRY=env.reg.address,
        FAI_KEY_FILE=str(key_file(tmp_path / "op.key", op)),
    )
    before = ad_state(env, op)
    good = f"/ip4/127.0.0.1/tcp/4001/p2p/{pid}"
    theirs = f"/ip4/127.0.0.1/tcp/4001/p2p/{other_pid}"
    runs = fai.parallel(
        (2, ("advertise", "--data-dir", data_dir, "--multiaddr", "not-a-multiaddr")),
        (2, ("advertise", "--data-dir", data_dir, "--multiaddr", theirs)),
        (
            2,
            (
                "advertise",
                "--data-dir",
                data_dir,
                "--multiaddr",
                good,
                "--multiaddr",
                "/ip4/127.0.0.1/udp/4001/quic-v1",
            ),
        ),
        (
            2,
            (
                "advertise",
                "--peer-key",
                node.public_key.hex(),
                "--key-proof",
                proof,
                "--multiaddr",
                theirs,
            ),
        ),
        (2, ("advertise", "--data-dir", wildcard)),
        (2, ("advertise", "--data-dir", data_dir, "--multiaddr", "/dns4/example.org/tcp/0")),
    )
    garbage, not_ours, no_tcp, not_the_keys, any_address, port_zero = (
        one_line(r.stderr) for r in runs
    )
    assert "--multiaddr 'not-a-multiaddr' refused: not a multiaddr (unknown protocol" in garbage
    for refusal in (not_ours, not_the_keys):
        assert f"--multiaddr '{theirs}' refused: its /p2p/{other_pid} is not this node's " in (
            refusal
        )
        assert f"peer id {pid}" in refusal
    assert "'/ip4/127.0.0.1/udp/4001/quic-v1' refused: no dialable transport" in no_tcp
    assert f"{wildcard / 'node.json'} lists '/ip4/0.0.0.0/tcp/4001/p2p/{pid}' refused: " in (
        any_address
    )
    assert "0.0.0.0 cannot be dialled" in any_address
    assert "port 0 cannot be dialled" in port_zero
    assert all("nothing was sent" in r.stderr for r in runs)
    assert ad_state(env, op) == before  # no transaction at all, the old ad stands
    assert env.reg.live_peers()[0].multiaddrs == ("/ip4/127.0.0.1/tcp/4001",)

    # A bare address gets the node's own /p2p/ appended, and the output says so.
    posted = fai("advertise", "--data-dir", data_dir, "--multiaddr", "/ip4/127.0.0.1/tcp/4101")
    assert f"appended the node's /p2p/{pid} to 1 address(es)" in posted.stdout
    assert f"advertised node {pid} for operator {op.address}" in posted.stdout
    assert env.reg.live_peers()[0].multiaddrs == (f"/ip4/127.0.0.1/tcp/4101/p2p/{pid}",)
    exact = fai.json("advertise", "--data-dir", data_dir, "--multiaddr", good)
    assert exact["multiaddrs"] == [good] and exact["peer_id_appended"] == []
    assert exact["peer_id"] == pid


def test_peers_lists_and_marks_malformed_onchain_multiaddrs(env: Env, anvil, tmp_path: Path):
    """Another operator can post any string through the contract directly."""
    op, honest = env.ops[0], env.ops[1]
    node = NodeKey(bytes([3]) * 32)
    pid, other_pid = peer_id_of(node.public_key), peer_id_of(NodeKey(bytes(32)).public_key)
    env.reg.register(op, 20 * MIN)
    posted = [
        "not-a-multiaddr",
        f"/ip4/127.0.0.1/tcp/4001/p2p/{other_pid}",
        "\x1b[31mred",
        f"/ip4/127.0.0.1/tcp/4003/p2p/{pid}",
        "/ip4/127.0.0.1/tcp/4004",
    ]
    env.reg.advertise(op, node, posted)
    go_live(env, honest, 2)
    fai = Fai(tmp_path, FAI_RPC=anvil.url, FAI_REGISTRY=env.reg.address)
    table, listed = fai.parallel((0, ("registry", "peers")), (0, ("registry", "peers", "--json")))
    out = table.stdout
    assert "2 live peer(s)" in out and "PEER ID" in out.splitlines()[1]
    row = next(line for line in out.splitlines() if op.address in line)
    assert row.startswith(pid) and "\x1b" not in out
    assert "'not-a-multiaddr' [unusable: not a multiaddr" in row
    assert f"[unusable: its /p2p/{other_pid} is not this node's peer id {pid}]" in row
    assert "'\\x1b[31mred' [unusable: not a multiaddr" in row
    assert f"/ip4/127.0.0.1/tcp/4003/p2p/{pid}, /ip4/127.0.0.1/tcp/4004" in row
    assert "3 advertised address(es) marked unusable" in out
    honest_row = next(line for line in out.splitlines() if honest.address in line)
    assert honest_row.startswith(peer_id_of(NodeKey(bytes([2]) * 32).public_key))
    assert "unusable" not in honest_row
    data = {p["operator"]: p for p in json.loads(listed.stdout)}
    assert data[op.address]["multiaddrs"] == posted
    assert [b["multiaddr"] for b in data[op.address]["bad_multiaddrs"]] == posted[:3]
    assert "bad_multiaddrs" not in data[honest.address]


# -- 2. withdraw and the chain's clock ----------------------------------------------------


@contextmanager
def unbonded_chain(delay: int, *anvil_args: str) -> Iterator[tuple[Anvil, RegistryClient, Path]]:
    """A chain of its own (its clock is the point), an operator that has just unbonded all
    its stake, and that operator's key file."""
    anvil = Anvil(extra_args=list(anvil_args)).start()
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        owner = Account.from_key((0xC10C_0001).to_bytes(32, "big"))
        op = Account.from_key((0xC10C_0002).to_bytes(32, "big"))
        fund_eth(w3, owner, op)
        reg = deploy_registry(w3, owner, params=RegistryParams(unbonding_delay=delay))
        reg.tx.send(owner, reg.token.functions.transfer(op.address, MIN))
        reg.register(op, MIN)
        reg.request_unbond(op, MIN)
        yield anvil, reg, op
    finally:
        anvil.stop()


def test_withdraw_after_the_delay_on_an_idle_chain(tmp_path: Path):
    """Anvil mines only when a transaction arrives, so its latest block's clock stops; the
    withdrawal is checked against the block it will be mined in."""
    with unbonded_chain(2) as (anvil, reg, op):
        ready = reg.operator(op.address).unbond_ready_at
        time.sleep(max(0.0, ready + 1.5 - time.time()))
        idle_block = reg.w3.eth.get_block("latest")
        assert idle_block["timestamp"] < ready <= time.time()  # latest block: not yet
        fai = Fai(
            tmp_path,
            FAI_RPC=anvil.url,
            FAI_REGISTRY=reg.address,
            FAI_KEY_FILE=str(key_file(tmp_path / "op.key", op)),
        )
        withdrawn = fai.json("withdraw")
        assert withdrawn["amount"] == MIN and withdrawn["deregistered"] is True


def test_withdraw_not_ready_reads_the_chains_clock(tmp_path: Path):
    """A chain whose clock is behind this machine's: the message says by how much, and on
    the devnet names the command that moves it on. `fai withdraw` itself mines nothing."""
    behind = int(time.time()) - 7200
    with unbonded_chain(3600, "--timestamp", str(behind)) as (anvil, reg, op):
        ready = reg.operator(op.address).unbond_ready_at
        latest = reg.w3.eth.get_block("latest")
        state = tmp_path / "devnet.json"
        state.write_text(json.dumps({"rpc_url": anvil.url, "registry": reg.address, "nodes": []}))
        settings = {"FAI_RPC": anvil.url, "FAI_REGISTRY": reg.address}
        settings["FAI_KEY_FILE"] = str(key_file(tmp_path / "op.key", op))
        on_devnet = Fai(tmp_path, **settings, FAI_DEVNET_STATE=str(state))
        elsewhere = Fai(tmp_path, **settings)
        devnet_run = on_devnet("withdraw", code=1).stderr
        plain_run = elsewhere("withdraw", code=1).stderr
        assert reg.w3.eth.block_number == latest["number"]  # nothing was mined
    for message in (devnet_run, plain_run):
        tokens = cli_registry.format_tokens(MIN)
        assert f"{tokens} tokens unbonding become withdrawable at {utc(ready)}" in message
        assert (
            f"the chain's clock reads {utc(latest['timestamp'])} (latest block, "
            f"#{latest['number']}); withdrawable at {utc(ready)}"
        ) in message
        assert f"the chain has not produced a block since {utc(latest['timestamp'])}" in message
    assert f"`fai devnet advance-time {ready - latest['timestamp']}`" in devnet_run
    assert "advance-time" not in plain_run
    assert "once the chain has produced a later block" in plain_run


def test_withdraw_not_ready_on_time_names_the_chains_clock(env: Env, anvil, tmp_path: Path):
    op = env.ops[0]
    env.reg.register(op, MIN)
    env.reg.request_unbond(op, MIN)
    latest = env.w3.eth.get_block("latest")
    ready = env.reg.operator(op.address).unbond_ready_at
    fai = Fai(
        tmp_path,
        FAI_RPC=anvil.url,
        FAI_REGISTRY=env.reg.address,
        FAI_KEY_FILE=str(key_file(tmp_path / "op.key", op)),
    )
    message = fai("withdraw", code=1).stderr
    assert f"the chain's clock reads {utc(latest['timestamp'])} (latest block" in message
    assert f"withdrawable at {utc(ready)}" in message
    assert "has not produced a block" not in message


# -- 3 and 4. --node N, and identities by peer id ------------------------------------------


def fake_devnet(env: Env, anvil, tmp_path: Path, count: int = 3) -> tuple[Path, list[dict]]:
    """A devnet state file as `fai devnet up` writes it, for the session chain: node i is
    run by env.ops[i] with node key bytes([10 + i]) * 32 (no node processes: the registry
    commands only read the state)."""
    nodes = []
    for i in range(count):
        seed = bytes([10 + i]) * 32
        identity = NodeIdentity.from_seed(seed)
        addr = f"/ip4/127.0.0.1/tcp/{4300 + i}/p2p/{identity.peer_id}"
        data_dir = node_dir(tmp_path / "run" / f"node{i}", seed, [addr])
        op = env.ops[i]
        nodes.append(
            {
                "name": f"node{i}",
                "data_dir": str(data_dir),
                "operator": op.address,
                "operator_key_file": str(key_file(tmp_path / "run" / f"node{i}.operator.key", op)),
                "peer_id": str(identity.peer_id),
                "public_key": identity.public_key.hex(),
                "addr": addr,
                "control_socket": str(data_dir / "control.sock"),
            }
        )
    state = {"rpc_url": anvil.url, "chain_id": 31337, "registry": env.reg.address, "nodes": nodes}
    path = tmp_path / "devnet.json"
    path.write_text(json.dumps(state))
    return path, nodes


def test_node_flag_acts_as_a_devnet_nodes_operator(env: Env, anvil, tmp_path: Path):
    state, nodes = fake_devnet(env, anvil, tmp_path)
    cheat = env.ops[3]
    proof = equivocation_file(env, tmp_path / "proof", cheat, go_live(env, cheat, 4))
    fai = Fai(tmp_path, FAI_DEVNET_STATE=str(state))
    staked, staked2, slashed, no_key = fai.parallel(
        (0, ("stake", "12", "--node", "1", "--json")),
        (0, ("stake", "20", "--node", "node2", "--json")),
        (0, ("slash", "equivocation", "--evidence", proof, "--node", "0", "--json")),
        (2, ("stake", "5")),
    )
    assert json.loads(staked.stdout)["operator"] == nodes[1]["operator"]
    assert json.loads(staked.stdout)["stake"] == 12 * TOKEN
    assert json.loads(staked2.stdout)["operator"] == nodes[2]["operator"]
    assert json.loads(slashed.stdout)["reporter"] == nodes[0]["operator"]
    assert "or --node 0..2 to act as a devnet node's operator" in one_line(no_key.stderr)
    assert "fai devnet up" not in no_key.stderr

    advertised, unbonded = fai.parallel(
        (0, ("advertise", "--node", "1", "--json")),
        (0, ("unbond", "20", "--node", "2", "--json")),
    )
    ad = json.loads(advertised.stdout)
    assert ad["peer_id"] == nodes[1]["peer_id"] and ad["multiaddrs"] == [nodes[1]["addr"]]
    assert json.loads(unbonded.stdout)["unbonding"] == 20 * TOKEN

    everyone, text, one, early, table = fai.parallel(
        (0, ("registry", "status", "--json")),
        (0, ("registry", "status")),
        (0, ("registry", "status", "--node", "1", "--json")),
        (1, ("withdraw", "--node", "2")),
        (0, ("registry", "peers")),
    )
    reports = json.loads(everyone.stdout)
    assert [r["node"] for r in reports] == ["node0", "node1", "node2"]
    assert [r["operator"] for r in reports] == [n["operator"] for n in nodes]
    assert reports[1]["live"] and reports[1]["peer_id"] == nodes[1]["peer_id"]
    assert reports[1]["peer_key"] == nodes[1]["public_key"] and reports[0]["peer_id"] is None
    assert text.stdout.startswith(f"3 devnet node operator(s) on registry {env.reg.address}")
    node0, node1 = nodes[0], nodes[1]
    assert f"node0:\n  operator   {node0['operator']} (not live, not registered); no peer" in (
        text.stdout
    )
    assert f"node1:\n  peer       {node1['peer_id']}  operator {node1['operator']} (live)" in (
        text.stdout
    )
    assert f"  peer key   {node1['public_key']}" in text.stdout
    single = json.loads(one.stdout)
    assert single["operator"] == nodes[1]["operator"] and "node" not in single
    assert single["peer_id"] == nodes[1]["peer_id"] and single["stake"] == 12 * TOKEN
    assert "20 tokens unbonding become withdrawable at" in early.stderr
    row = next(line for line in table.stdout.splitlines() if nodes[1]["operator"] in line)
    assert row.startswith(nodes[1]["peer_id"])


def test_missing_key_without_a_devnet_still_says_how_to_start_one(anvil, tmp_path: Path):
    fai = Fai(tmp_path)
    no_key, no_devnet = fai.parallel(
        (2, ("withdraw", "--rpc", anvil.url, "--registry", "0x" + "11" * 20)),
        (2, ("stake", "5", "--node", "1")),
    )
    # (the command's usage may follow the error line)
    assert "start a devnet with `fai devnet up`" in no_key.stderr.splitlines()[0]
    assert "--node" not in no_key.stderr.splitlines()[0]
    assert "--node 1: no devnet is up" in no_devnet.stderr.splitlines()[0]


# -- 5. evidence files ---------------------------------------------------------------------


def test_malformed_evidence_files_are_one_clear_line(env: Env, anvil, tmp_path: Path):
    good = evidence.load(equivocation_file(env, tmp_path / "good", None, NodeKey(b"\x07" * 32)))
    sample = good.to_json()
    files = {
        "not JSON (": "{not json",
        "it is empty": "",
        "it holds a JSON array, not an object": "[1, 2]",
        "missing 'batches'": json.dumps({"kind": "fai/equivocation/v1"}),
        "missing 'kind' and 'batches'": json.dumps({"cid": "x"}),
        "its kind is 'fai/other/v1'": json.dumps({**sample, "kind": "fai/other/v1"}),
        "'batches' must be a list of two batches": json.dumps({**sample, "batches": "ab"}),
        "batch 2 has no 'envelope' string": json.dumps(
            {**sample, "batches": [sample["batches"][0], {"envelope": 7}]}
        ),
        "the 'envelope' of batch 1 is not hex": json.dumps(
            {**sample, "batches": [{"envelope": "zz"}, sample["batches"][1]]}
        ),
    }
    paths = {}
    for n, (problem, text) in enumerate(files.items()):
        paths[problem] = tmp_path / f"bad{n}.json"
        paths[problem].write_text(text)
    paths["no such file"] = tmp_path / "absent.json"
    paths["it is a directory"] = tmp_path
    fai = Fai(
        tmp_path,
        FAI_RPC=anvil.url,
        FAI_REGISTRY=env.reg.address,
        FAI_KEY_FILE=str(key_file(tmp_path / "reporter.key", env.outsider)),
    )
    runs = fai.parallel(
        *((2, ("slash", "equivocation", "--evidence", path)) for path in paths.values())
    )
    for (problem, path), run in zip(paths.items(), runs, strict=True):
        line = one_line(run.stderr)
        assert line.startswith(f"fai: error: {path} is not an equivocation evidence file: ")
        assert problem in line, line
        assert "<data dir>/evidence/" in line and "`fai devnet equivocate --node NODE`" in line
