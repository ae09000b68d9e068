"""Issue 20, "Beyond one machine": `fai devnet up --hosts`, registry mode across network
namespaces, driven through the command line as a user would.

The slow test brings up a devnet of 4 nodes on two sites of the lab (fai_net/devnet/netns.py:
node0 and node2 on site 1, node1 and node3 on site 2, the chain on site 1), each node in a
namespace of its own, and checks what makes it more than the loopback devnet: every node's
on-chain advertisement carries its own 10.91.x address (read by `fai registry peers` inside
the chain host's namespace, where the 10.91.x RPC URL still needs `--allow-remote`); the
nodes were given no seeds and still connect, across the router, from the advertisements
alone; a batch published on site 1 is stored on site 2; and `fai devnet down` stops every
process and deletes every namespace the devnet made. Teardown runs `down` (and, should
that fail, deletes the recorded namespaces itself), also after a failure.

The other tests are quick: `--hosts` without network namespaces refuses in one line, before
anything is made; the lab never deletes a namespace it did not name; a devnet state naming
a foreign chain is refused; and (as root) `in_netns`, how the devnet reaches its chain
host, runs its call inside the namespace and leaves the caller where it was.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fai_net.api.control import ControlClient
from fai_net.devnet import fleet, netns
from fai_net.devnet.launch import alive, terminate_group
from fai_net.devnet.netns import lab_unavailable
from tests.support.devnet import run_fai
from tests.support.fleet import wait_for

_UNAVAILABLE = lab_unavailable()
REPO = Path(__file__).resolve().parents[2]
NODES = 4
TEXT = "pin the dependency versions before bisecting a flaky build"


def _cleanup(state_dir: Path) -> None:
    """`fai devnet down`; if a devnet.json is still there after it, stop its processes and
    delete its recorded namespaces here (a failed `down` must not leak the lab)."""
    path = fleet.state_path(state_dir)
    if path.exists():
        run_fai("devnet", "down", "--state-dir", str(state_dir), state_dir=state_dir, code=None)
    if path.exists():
        state = json.loads(path.read_text())
        for pid in [n.get("pid") for n in state.get("nodes", [])] + [state.get("anvil_pid")]:
            if alive(pid, "fai_net") or alive(pid, "anvil"):
                terminate_group(pid, 10)
        netns.delete_namespaces((state.get("lab") or {}).get("namespaces") or [])


@pytest.fixture
def state_dir():
    path = Path(tempfile.mkdtemp(prefix="fai-h-", dir="/tmp"))  # short: socket paths
    try:
        yield path
    finally:
        try:
            _cleanup(path)
        finally:
            shutil.rmtree(path, ignore_errors=True)


def _chain_fai(state: dict, state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`fai ARGS` inside the chain host's namespace, on this devnet's state."""
    env = {**os.environ, "FAI_DEVNET_STATE": str(fleet.state_path(state_dir))}
    fai = [sys.executable, "-m", "fai_net.cli", *args]
    argv = ["ip", "netns", "exec", state["lab"]["chain"]["ns"], *fai]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)


def _batches(node: dict) -> set[str]:
    return set(ControlClient(node["control_socket"], timeout=20).call("batches")["cids"])


@pytest.mark.slow  # starts Anvil and four node processes
@pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE))
def test_devnet_on_namespace_hosts_finds_peers_from_the_chain(state_dir: Path):
    sd = ["--state-dir", str(state_dir)]
    up = run_fai(
        *("devnet", "up", "--hosts", "--nodes", str(NODES), "--embedder", "hashing"),
        *("--json", "--quiet", *sd),
        state_dir=state_dir,
    )
    state = json.loads(up.stdout)
    lab, nodes = state["lab"], state["nodes"]
    made = set(lab["namespaces"])
    assert made <= netns.namespaces()
    assert state["rpc_url"] == f"http://{lab['chain']['ip']}:8545"
    assert lab["chain"]["ip"].startswith("10.91.1.")
    sites = {n["name"]: n["host"]["site"] for n in nodes}
    assert sites == {"node0": 1, "node1": 2, "node2": 1, "node3": 2}
    for node in nodes:
        assert node["host"]["ns"] in made and node["host"]["ip"].startswith("10.91.")
        # No node was told of another: no --seed on any command line.
        cmdline = Path(f"/proc/{node['pid']}/cmdline").read_bytes().split(b"\0")
        assert b"--seed" not in cmdline, cmdline

    # The registry's 10.91.x RPC URL is refused without --allow-remote, even in the lab ...
    refused = _chain_fai(state, state_dir, "registry", "peers", "--json")
    assert refused.returncode == 2 and "--allow-remote" in refused.stderr, refused.stderr
    # ... and with it, every node's advertisement carries its own namespace address.
    peers = _chain_fai(state, state_dir, "registry", "peers", "--json", "--allow-remote")
    assert peers.returncode == 0, peers.stderr
    ads = {p["peer_id"]: p["multiaddrs"] for p in json.loads(peers.stdout)}
    for node in nodes:
        want = f"/ip4/{node['host']['ip']}/tcp/{fleet.NODE_PORT}/p2p/{node['peer_id']}"
        assert ads[node["peer_id"]] == [want], (node["name"], ads)

    # Every node finds all the others from those advertisements, across the router.
    def all_connected():
        report = fleet.status(fleet.load_state(state_dir))
        return report if all(r["peers"] == NODES - 1 for r in report["nodes"]) else None

    report = wait_for(all_connected, 60, "every node to connect to the other three")
    assert all(r["running"] and r["live"] for r in report["nodes"]), report

    # A batch published on site 1 (node0) is stored on site 2 (node1, node3).
    run_fai("experiences", "add", "--node", "0", "--domain", "coding", "--text", TEXT,
            state_dir=state_dir)  # fmt: skip
    sent = run_fai("node", "broadcast", "coding", "--node", "0", "--json", state_dir=state_dir)
    cid = json.loads(sent.stdout)["batch_id"]
    for node in (n for n in nodes if n["host"]["site"] == 2):
        wait_for(lambda node=node: cid in _batches(node), 30, f"{node['name']} to store {cid}")

    down = run_fai("devnet", "down", "--json", *sd, state_dir=state_dir)
    result = json.loads(down.stdout)
    assert set(result["namespaces_deleted"]) == made
    assert not made & netns.namespaces()
    assert sorted(result["stopped"]) == sorted([n["name"] for n in nodes] + ["anvil"])
    assert not any(alive(n["pid"], "fai_net") for n in nodes)
    assert not fleet.state_path(state_dir).exists()


WHY = "needs root to create network namespaces (CI runs as root)"


def test_hosts_check_refuses_in_one_line_without_namespaces(monkeypatch):
    """What `up(hosts=True)` calls first: a typed error, one line, saying why."""
    monkeypatch.setattr(netns, "lab_unavailable", lambda: WHY)
    with pytest.raises(fleet.DevnetError, match=r"namespace hosts \(--hosts\): needs root"):
        fleet.check_hosts()
    monkeypatch.setattr(netns, "lab_unavailable", lambda: "cannot create a network\nnamespace")
    with pytest.raises(fleet.DevnetError, match=r"cannot create a network; namespace$"):
        fleet.check_hosts()
    monkeypatch.setattr(netns, "lab_unavailable", lambda: None)
    assert fleet.check_hosts() is None


def test_up_hosts_refuses_before_making_anything(monkeypatch, capsys, tmp_path):
    """`fai devnet up --hosts` without namespaces: one `fai: error:` line, exit 2, and no run
    directory or state file. (tests/conftest.py's rule marks this slow, as it names
    `devnet up`; it starts nothing, the audit hook would fail it if it did.)"""
    from fai_net.cli.entry import main

    monkeypatch.setattr(netns, "lab_unavailable", lambda: WHY)
    with pytest.raises(fleet.DevnetError, match=r"namespace hosts \(--hosts\): needs root"):
        fleet.up(2, state_dir=tmp_path, embedder="hashing", hosts=True)
    code = main(["devnet", "up", "--hosts", "--nodes", "2", "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        f"fai: error: cannot run the devnet on namespace hosts (--hosts): {WHY}"
    ]
    assert list(tmp_path.iterdir()) == []


def test_the_lab_deletes_only_namespaces_it_names():
    with pytest.raises(ValueError, match="not namespaces of a lab: netns0, faiX"):
        netns.delete_namespaces(["fai0a1b2cnode0", "netns0", "faiX"])


def test_devnet_commands_refuse_a_state_naming_a_foreign_chain(capsys, tmp_path):
    """Only loopback, or the lab's own chain host, is a devnet's chain: a devnet.json naming
    another address (edited, or from elsewhere) is refused before anything is sent."""
    from fai_net.cli.entry import main

    state = {"rpc_url": "http://10.91.1.10:8545", "registry": "0x" + "11" * 20, "nodes": []}
    state["lab"] = {"chain": {"ns": "fai0a1b2cchain", "ip": "10.91.1.99"}, "namespaces": []}
    fleet.state_path(tmp_path).write_text(json.dumps(state))
    code = main(["devnet", "status", "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "names the chain 'http://10.91.1.10:8545': neither loopback nor" in err, err


def _listener(ip: str) -> socket.socket:
    server = socket.socket()
    server.bind((ip, 4999))
    server.listen()
    return server


@pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE))
def test_in_netns_runs_the_call_inside_the_namespace_and_leaves_the_caller_out():
    """How the devnet reaches its chain host: sockets made by the call are the namespace's
    (one host listens, another on the other site connects), and the caller's own thread
    never changes namespace."""
    mine = os.readlink("/proc/thread-self/ns/net")
    with netns.Lab() as lab:
        lab.add_router((1, 2))
        a, b = lab.add_host("a", 1), lab.add_host("b", 2)
        inside = netns.in_netns(a.ns, os.readlink, "/proc/thread-self/ns/net")
        assert inside == f"net:[{os.stat(f'/run/netns/{a.ns}').st_ino}]" != mine
        server = netns.in_netns(b.ns, _listener, b.ip)
        try:
            client = netns.in_netns(a.ns, socket.create_connection, (b.ip, 4999), 5)
            conn, (peer_ip, _) = server.accept()
            conn.close()
            client.close()
            assert peer_ip == a.ip
        finally:
            server.close()
    assert os.readlink("/proc/thread-self/ns/net") == mine
    with pytest.raises(netns.NetnsError, match="fai0a1b2cgone: No such file"):
        netns.in_netns("fai0a1b2cgone", os.getpid)
