"""Listen and announce addresses kept apart: what a node binds, and what peers should dial.

A node behind a port mapping, or listening on every interface, must tell peers another
address than the one it is bound to: `announce` is what node.json lists (and `fai
advertise` posts on-chain); `listen_addrs` keeps what the host is bound to.
"""

from __future__ import annotations

import json

import pytest
import trio

from fai_net.node.config import NodeConfig
from tests.support.inprocess import config, start


def _config(tmp_path, **changes) -> NodeConfig:
    return NodeConfig(data_dir=tmp_path / "n", domains=("coding",), open_membership=True, **changes)


def test_all_interfaces_need_an_announce_address(tmp_path):
    with pytest.raises(ValueError, match="give --announce"):
        _config(tmp_path, listen=("/ip4/0.0.0.0/tcp/4001",))
    ok = _config(tmp_path, listen=("/ip4/0.0.0.0/tcp/4001",), announce=("/ip4/10.0.0.5/tcp/4001",))
    assert ok.announce == ("/ip4/10.0.0.5/tcp/4001",)


@pytest.mark.parametrize(
    ("announce", "match"),
    [
        ("/ip4/0.0.0.0/tcp/4001", "dialable"),
        ("/ip4/10.0.0.5/tcp/0", "port"),
        ("/ip4/10.0.0.5/udp/4001", "announce address must be"),
        ("/ip4/not-an-ip/tcp/4001", "bad announce address"),
        ("/ip4/10.0.0.5/tcp/4001/p2p/12D3KooW", "announce address must be"),
    ],
)
def test_bad_announce_addresses_are_refused(tmp_path, announce, match):
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, announce=(announce,))


def test_node_json_lists_the_announced_addresses_and_keeps_the_bound_ones(tmp_path):
    """A non-loopback announce address is not refused merely for not being loopback."""

    async def main():
        async with trio.open_nursery() as n:
            node = await start(n, config(tmp_path, "a", announce=("/ip4/192.0.2.7/tcp/4001",)))
            ready = json.loads((tmp_path / "a" / "node.json").read_text())
            assert ready["addrs"] == [f"/ip4/192.0.2.7/tcp/4001/p2p/{node.peer_id}"]
            assert ready["listen_addrs"][0].startswith("/ip4/127.0.0.1/tcp/")
            assert node.addrs == ready["addrs"]
            n.cancel_scope.cancel()

    trio.run(main)


def test_the_command_line_says_what_is_missing(tmp_path):
    """`fai node run --listen /ip4/0.0.0.0/...` without --announce stops with the fix."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "fai_net.cli", "node", "run", "--data-dir", str(tmp_path / "x"),
         "--domain", "coding", "--open", "--embedder", "hashing",
         "--listen", "/ip4/0.0.0.0/tcp/0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "give --announce with the address peers should dial" in done.stderr


def test_a_node_refuses_a_remote_chain_unless_told(tmp_path):
    """Addresses are not refused for not being loopback, but the registry's RPC URL keeps
    the explicit --allow-remote that every registry command asks for."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "fai_net.cli", "node", "run", "--data-dir", str(tmp_path / "x"),
            "--domain", "coding", "--embedder", "hashing", "--rpc", "http://10.0.0.1:8545",
            "--registry", "0x" + "00" * 19 + "01"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "pass --allow-remote to use a remote chain on purpose" in done.stderr
    from fai_net.cli.entry import _rpc_url

    assert _rpc_url("http://10.0.0.1:8545", allow_remote=True) == "http://10.0.0.1:8545"
    assert _rpc_url("http://127.0.0.1:8545", allow_remote=False) == "http://127.0.0.1:8545"
