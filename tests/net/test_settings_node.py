"""`--node N` on a devnet stands for that node's key, data directory and socket."""

import json

import pytest

from fai_net.settings import SettingsError, resolve


def _state(tmp_path):
    nodes = [
        {
            "name": f"node{i}",
            "operator_key_file": str(tmp_path / f"node{i}.operator.key"),
            "data_dir": str(tmp_path / f"node{i}"),
            "control_socket": str(tmp_path / f"node{i}" / "control.sock"),
        }
        for i in range(2)
    ]
    path = tmp_path / "devnet.json"
    path.write_text(
        json.dumps({"rpc_url": "http://127.0.0.1:1", "registry": "0xab", "nodes": nodes})
    )
    return path


def test_node_fills_key_data_dir_and_socket(tmp_path):
    state = _state(tmp_path)
    for which in ("1", "node1", 1):
        settings = resolve({"node": which}, {}, devnet_state=state)
        assert settings.get("key_file") == str(tmp_path / "node1.operator.key")
        assert settings.get("data_dir") == str(tmp_path / "node1")
        assert settings.get("socket") == str(tmp_path / "node1" / "control.sock")
        assert settings.sources["key_file"] == "--node node1"
        assert settings.get("rpc") == "http://127.0.0.1:1"


def test_an_explicit_flag_beats_node_and_node_beats_the_environment(tmp_path):
    state = _state(tmp_path)
    env = {"FAI_KEY_FILE": "/env.key", "FAI_DATA_DIR": "/env-dir"}
    settings = resolve({"node": "0", "key_file": "/flag.key"}, env, devnet_state=state)
    assert settings.get("key_file") == "/flag.key"
    assert settings.get("data_dir") == str(tmp_path / "node0")


def test_unknown_node_names_the_ones_that_exist(tmp_path):
    with pytest.raises(SettingsError, match=r"no such node \(it has: node0, node1\)"):
        resolve({"node": "7"}, {}, devnet_state=_state(tmp_path))


def test_node_without_a_devnet_says_so(tmp_path):
    with pytest.raises(SettingsError, match="no devnet is up"):
        resolve({"node": "0"}, {}, devnet_state=tmp_path / "absent.json")
