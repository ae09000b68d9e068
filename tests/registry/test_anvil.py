"""The Anvil launcher: loopback only, free port, clean shutdown, clear error when missing."""

from __future__ import annotations

import urllib.error

import pytest

from fai_net.devnet import anvil as anvil_mod
from fai_net.devnet.anvil import Anvil, AnvilError, _rpc


def test_missing_binary_names_the_setup_command(monkeypatch, tmp_path):
    monkeypatch.setattr(anvil_mod, "ANVIL_BIN", tmp_path / "nope" / "anvil")
    with pytest.raises(AnvilError, match=r"npm ci --prefix devnet"):
        Anvil().start()


def test_starts_on_loopback_and_stops(anvil):
    node = Anvil(chain_id=4242).start()
    try:
        assert node.url.startswith("http://127.0.0.1:")
        assert node.port not in (0, anvil.port)
        assert int(_rpc(node.url, "eth_chainId"), 16) == 4242
        proc = node.process
    finally:
        node.stop()
    assert proc.poll() is not None
    with pytest.raises(urllib.error.URLError, match=r"Connection refused"):
        _rpc(node.url, "eth_chainId", timeout=0.5)
    node.stop()  # idempotent


def test_context_manager(anvil):
    with Anvil() as node:
        assert int(_rpc(node.url, "eth_blockNumber"), 16) == 0
    assert node.process is None


def test_second_start_is_refused_and_output_is_not_an_unread_pipe(anvil):
    node = Anvil().start()
    try:
        first = node.process
        assert first.stdout is None and first.stderr is None  # a file, not a pipe
        with pytest.raises(AnvilError, match="already running"):
            node.start()
        assert node.process is first and first.poll() is None
    finally:
        node.stop()
    node.start()  # a stopped node can be started again
    node.stop()


def test_failed_start_reports_anvil_output(anvil):
    # Anvil's own complaint reaches the message (not merely "failed to start: ").
    with pytest.raises(AnvilError, match=r"failed to start: (?s:.*)--no-such-flag"):
        Anvil(extra_args=["--no-such-flag"]).start(attempts=1)
