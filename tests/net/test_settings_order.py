"""The order of settings sources: flag > `FAI_*` environment > `fai.toml` > the devnet's state
file > default (fai_net/settings.py, module docstring; README "chain and settings").

One setting is given by all four sources at once, with a different value in each; the
sources are then removed one at a time, strongest first, and each step checks which value
wins and where it says it came from. Once through `resolve` itself, once through the CLI
(`fai registry status`, whose "no chain at URL" names the RPC URL it resolved).
"""

from __future__ import annotations

import json

import pytest

from fai_net.cli.entry import main
from fai_net.settings import SettingsError, resolve

#: One value per source, so the winner is plain to see.
RPC = {
    "flag": "http://127.0.0.1:1",
    "environment": "http://127.0.0.1:2",
    "toml": "http://127.0.0.1:3",
    "devnet": "http://127.0.0.1:4",
}
REGISTRY = {source: "0x" + f"{i + 1:040x}" for i, source in enumerate(RPC)}
SOURCES = ("flag", "environment", "toml", "devnet")


def _files(tmp_path):
    toml = tmp_path / "fai.toml"
    toml.write_text(
        f'rpc = "{RPC["toml"]}"\nregistry = "{REGISTRY["toml"]}"\n'
        f'data_dir = "{tmp_path / "toml-dir"}"\n'
    )
    state = tmp_path / "devnet.json"
    state.write_text(
        json.dumps({"rpc_url": RPC["devnet"], "registry": REGISTRY["devnet"], "nodes": []})
    )
    return toml, state


def test_each_source_wins_over_the_ones_below_it(tmp_path):
    """Flag > FAI_* > fai.toml > devnet state > default, for `rpc` and `registry` (the two
    settings every source can give), with the source each value came from."""
    toml, state = _files(tmp_path)
    present = set(SOURCES)
    for winner in SOURCES:
        flags = {"rpc": RPC["flag"], "registry": REGISTRY["flag"]} if "flag" in present else {}
        env = (
            {"FAI_RPC": RPC["environment"], "FAI_REGISTRY": REGISTRY["environment"]}
            if "environment" in present
            else {}
        )
        settings = resolve(
            flags,
            env,
            config=toml if "toml" in present else None,
            devnet_state=state if "devnet" in present else tmp_path / "absent.json",
        )
        assert settings.get("rpc") == RPC[winner], (winner, settings.sources)
        assert settings.get("registry") == REGISTRY[winner], (winner, settings.sources)
        where = {
            "flag": "flag",
            "environment": "environment",
            "toml": str(toml),
            "devnet": f"devnet state {state}",
        }[winner]
        assert settings.sources["rpc"] == settings.sources["registry"] == where
        present.discard(winner)
    # Nothing left: the default (none), and `require` says how to give one.
    settings = resolve({}, {}, config=None, devnet_state=tmp_path / "absent.json")
    assert settings.get("rpc") is None and "rpc" not in settings.sources
    with pytest.raises(SettingsError, match="give --rpc, set FAI_RPC"):
        settings.require("rpc")


def test_a_setting_the_devnet_does_not_give_falls_back_to_the_default(tmp_path):
    """`data_dir`: flag > FAI_DATA_DIR > fai.toml > the caller's default (the devnet state
    has no data directory unless `--node` names one of its nodes)."""
    toml, state = _files(tmp_path)
    env = {"FAI_DATA_DIR": "/env-dir"}
    steps = [
        ({"data_dir": "/flag-dir"}, env, toml, "/flag-dir"),
        ({}, env, toml, "/env-dir"),
        ({}, {}, toml, str(tmp_path / "toml-dir")),
        ({}, {}, None, "default"),
    ]
    for flags, environment, config, expected in steps:
        settings = resolve(flags, environment, config=config, devnet_state=state)
        assert settings.get("data_dir", "default") == expected


def test_the_cli_resolves_in_the_same_order(tmp_path, monkeypatch, capsys):
    """The same order seen from the command line: `fai registry status` with each source
    removed in turn talks to the chain of the strongest one left (its error names it)."""
    toml, state = _files(tmp_path)
    monkeypatch.chdir(tmp_path)  # ./fai.toml is read when no --config / FAI_CONFIG is given
    for name in ("FAI_RPC", "FAI_REGISTRY", "FAI_CONFIG", "FAI_KEY_FILE", "FAI_DEVNET_STATE"):
        monkeypatch.delenv(name, raising=False)
    operator = ["--operator", "0x" + "09" * 20]

    def rpc_used(argv: list[str]) -> str:
        assert main(["registry", "status", *operator, *argv]) != 0
        err = capsys.readouterr().err
        assert "no chain at " in err or "no rpc" in err, err
        return err

    monkeypatch.setenv("FAI_DEVNET_STATE", str(state))
    monkeypatch.setenv("FAI_RPC", RPC["environment"])
    assert f"no chain at {RPC['flag']}" in rpc_used(["--rpc", RPC["flag"]])
    assert f"no chain at {RPC['environment']}" in rpc_used([])
    monkeypatch.delenv("FAI_RPC")
    assert f"no chain at {RPC['toml']}" in rpc_used([])
    toml.unlink()
    assert f"no chain at {RPC['devnet']}" in rpc_used([])
    monkeypatch.setenv("FAI_DEVNET_STATE", str(tmp_path / "absent.json"))
    assert "no rpc: give --rpc, set FAI_RPC" in rpc_used([])
