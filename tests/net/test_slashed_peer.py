"""After a slash the fleet drops the slashed node at once and for good (issue 19, item 7).

Three real node processes in registry mode against a real Anvil find each other through
the registry's advertisements. First one node's advertisement lapses (chain time moves on)
and is renewed: the others drop it and readmit it, saying each once. Then its operator is
slashed for equivocation (and so jailed). Within about two membership refreshes every other
node must stop listing it in `peers`, hang up on it, and then keep it out: it keeps
dialling (its own view of the registry still shows the others live), and every reconnect
must be refused. Each node says so once in its log, not once per refresh.
"""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from fai_net.devnet.anvil import ANVIL_BIN, SETUP_HINT, Anvil, free_port
from fai_net.node.identity import KEY_FILE, NodeIdentity
from fai_net.registry import deploy_registry
from fai_net.registry.deploy import TOKEN
from tests.support.fleet import Fleet, wait_for

REFRESH_S = 1.0
#: How long after the slash the other nodes may still list the slashed node.
DROP_DEADLINE_S = 2 * REFRESH_S + 1.5
#: How long the fleet is then watched for a re-listing, a reconnect or a repeated log line.
WATCH_S = 5 * REFRESH_S


def _account(n: int):
    return Account.from_key((0xFA2_0000 + n).to_bytes(32, "big"))


@pytest.fixture(scope="module")
def chain():
    if not ANVIL_BIN.is_file():
        pytest.fail(f"devnet tooling missing: {SETUP_HINT}", pytrace=False)
    anvil = Anvil(chain_id=31337).start()
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        owner, reporter = _account(0), _account(99)
        ops = [_account(i) for i in (1, 2, 3)]
        for account in (owner, reporter, *ops):
            w3.provider.make_request("anvil_setBalance", [account.address, hex(10**21)])
        reg = deploy_registry(w3, owner)
        for op in ops:
            reg.tx.send(owner, reg.token.functions.transfer(op.address, 1_000 * TOKEN))
        yield w3, reg, ops, reporter
    finally:
        anvil.stop()


def _stake_and_spawn(
    fleet: Fleet, w3, reg, name: str, op, seed_byte: int, ttl: int
) -> tuple[NodeIdentity, list[str]]:
    """Register `op`, advertise a node with a known key for `ttl` s, and launch that node."""
    data_dir = fleet.root / name
    data_dir.mkdir(parents=True)
    seed = bytes([seed_byte]) * 32
    (data_dir / KEY_FILE).write_bytes(seed)
    (data_dir / KEY_FILE).chmod(0o600)
    identity = NodeIdentity.from_seed(seed)
    port = free_port()
    addrs = [f"/ip4/127.0.0.1/tcp/{port}/p2p/{identity.peer_id}"]
    reg.register(op)
    reg.advertise(op, identity, addrs, ttl)
    op_file = fleet.root / f"{name}.operator"
    op_file.write_text(op.key.hex())
    op_file.chmod(0o600)
    membership = ["--rpc", w3.provider.endpoint_uri, "--registry", reg.address]
    membership += ["--operator-key-file", str(op_file)]
    fleet.spawn(
        name, ("coding",), seeds=[], membership=membership, listen=f"/ip4/127.0.0.1/tcp/{port}"
    )
    return identity, addrs


def _listed(node) -> dict[str, dict]:
    return {row["node_id"]: row for row in node.call("peers")["peers"]}


def _connections(node) -> int:
    """The node's libp2p connections, as its Prometheus gauge counts them (transport truth,
    not the membership-filtered `peers` list); `status` refreshes the gauge first."""
    node.call("status")
    url = f"http://127.0.0.1:{node.info['metrics_port']}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    match = re.search(r"^fai_peers_connected (\S+)$", body, re.MULTILINE)
    assert match, body
    return int(float(match.group(1)))


def _lines(node, peer_id: str, phrase: str) -> list[str]:
    text = Path(node.log_path).read_text(errors="replace")
    return [line for line in text.splitlines() if phrase in line and peer_id in line]


def _wait_unlisted(nodes, peer_id: str, since: float) -> float:
    """Wait until no node lists `peer_id`, within the deadline; seconds since `since`."""
    for node in nodes:
        wait_for(
            lambda node=node: peer_id not in _listed(node),
            max(0.1, DROP_DEADLINE_S - (time.monotonic() - since)),
            f"{node.name} to stop listing {peer_id}",
            interval=0.1,
        )
    return time.monotonic() - since


def _rpc(w3, method: str, params: list) -> None:
    response = w3.provider.make_request(method, params)
    assert "error" not in response, response


def test_a_slashed_node_is_dropped_at_once_and_for_good(chain):
    w3, reg, ops, reporter = chain
    fleet = Fleet(**{"membership-refresh": REFRESH_S})
    try:
        # c's advertisement is short-lived: it lapses first, then c is slashed.
        ttls = {"a": 86_400, "b": 86_400, "c": 600}
        nodes = {
            name: _stake_and_spawn(fleet, w3, reg, name, op, 60 + i, ttls[name])
            for i, (name, op) in enumerate(zip("abc", ops, strict=True))
        }
        for name in nodes:
            fleet[name].wait_ready()
        a, b, c = (fleet[n] for n in "abc")
        c_identity, c_addrs = nodes["c"]
        c_id = str(c_identity.peer_id)
        wait_for(lambda: all(n.call("status")["peers"] >= 2 for n in (a, b, c)), 40, "peers")
        assert all(c_id in _listed(n) for n in (a, b))

        # An advertisement that lapses drops c too; a renewal brings it back, said once.
        _rpc(w3, "evm_increaseTime", [601])
        _rpc(w3, "evm_mine", [])
        _wait_unlisted((a, b), c_id, time.monotonic())
        reg.advertise(ops[2], c_identity, c_addrs)
        for node in (a, b):
            wait_for(lambda node=node: _listed(node).get(c_id, {}).get("connected"), 15, "back")
            assert len(_lines(node, c_id, "advertisement expired")) == 1
            assert len(_lines(node, c_id, "live in the registry again")) == 1

        _slash_and_watch(w3, reg, ops, reporter, fleet, c_identity)
    finally:
        fleet.stop_all()
        for node in fleet.nodes.values():
            assert "Traceback" not in node.tail(400), node.tail(400)
        shutil.rmtree(fleet.root, ignore_errors=True)


def _slash_and_watch(w3, reg, ops, reporter, fleet: Fleet, c_identity) -> None:
    """Slash c; a and b must drop it within the deadline and keep it out for good."""
    a, b, c = (fleet[n] for n in "abc")
    c_id = str(c_identity.peer_id)
    headers = [
        reg.sign_batch_header(ops[2], c_identity.public_key, 7, bytes([i]) * 32, 1_700_000)
        for i in (1, 2)
    ]
    reg.slash_equivocation(reporter, *headers)  # c's operator is slashed and jailed
    slashed = time.monotonic()
    assert not reg.is_live(ops[2].address)

    # Gone from the other nodes' `peers` within about two refreshes, connected or not.
    print(f"slash -> gone from peers: {_wait_unlisted((a, b), c_id, slashed):.2f} s")
    # Hung up on: a and b keep one connection (each other), c has none.
    wait_for(lambda: [_connections(n) for n in (a, b, c)] == [1, 1, 0], 3, "hang-ups")

    # And kept out: c keeps dialling every second, a and b refuse every reconnect.
    deadline = time.monotonic() + WATCH_S
    while time.monotonic() < deadline:
        for node in (a, b):
            assert c_id not in _listed(node), f"{node.name} lists the slashed node again"
        assert c.call("status")["peers"] == 0, _listed(c)
        time.sleep(0.2)
    assert [_connections(n) for n in (a, b, c)] == [1, 1, 0]
    assert not any(row["connected"] for row in _listed(c).values()), _listed(c)

    # One log line per node for the slash, naming the operator and the reason.
    for node in (a, b):
        lines = _lines(node, c_id, "no longer live")
        assert len(lines) == 2, lines  # the lapsed advertisement, then the slash
        assert ops[2].address in lines[1] and "jailed" in lines[1], lines[1]
    # a and b still list each other, with their operators.
    for node, other, op in ((a, b, ops[1]), (b, a, ops[0])):
        row = _listed(node)[str(other.info["peer_id"])]
        assert row["operator"] == op.address and row["connected"], row
