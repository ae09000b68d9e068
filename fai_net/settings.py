"""Where a command's settings come from: flag, then environment, then a TOML file, then the
running devnet's state file, then the default.

Every command resolves the same names the same way, so `fai stake` after `fai devnet up`
needs no flags at all, and a script can pin everything with `FAI_*` variables.

| name | flag | environment | TOML key |
|---|---|---|---|
| rpc | --rpc | FAI_RPC | rpc |
| registry | --registry | FAI_REGISTRY | registry |
| key_file | --key-file | FAI_KEY_FILE | key_file |
| data_dir | --data-dir | FAI_DATA_DIR | data_dir |
| socket | --socket | FAI_SOCKET | socket |

The TOML file is `--config PATH`, else `$FAI_CONFIG`, else `./fai.toml` if present. The
devnet state file is `--devnet-state PATH`, else `$FAI_DEVNET_STATE`, else
`<repo>/devnet/state/devnet.json` if present.

On a devnet, `--node N` (or `nodeN`) names one of its nodes: it stands, at the flag level,
for that node's operator key file, data directory and control socket, so a user types no
path. A flag given beside it (say `--key-file`) still wins for its own name. The run
directory changes with every `fai devnet up`; `--node` does not.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fai_core.errors import FaiError

NAMES = ("rpc", "registry", "key_file", "data_dir", "socket")
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEVNET_STATE = REPO_ROOT / "devnet" / "state" / "devnet.json"


class SettingsError(FaiError):
    """A setting is missing or a settings file cannot be read: a user mistake, said plainly."""


@dataclass
class Settings:
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    devnet: dict[str, Any] | None = None
    toml: dict[str, Any] | None = None

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def require(self, name: str, hint: str = "") -> Any:
        value = self.values.get(name)
        if value in (None, ""):
            flag = "--" + name.replace("_", "-")
            env = "FAI_" + name.upper()
            extra = f" ({hint})" if hint else ""
            raise SettingsError(
                f"no {name}: give {flag}, set {env}, put `{name} = ...` in fai.toml, "
                f"or start a devnet with `fai devnet up`{extra}"
            )
        return value


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}") from None


def load_devnet_state(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SettingsError(f"devnet state {path} is unreadable: {exc}") from None


def devnet_node(state: dict[str, Any] | None, which: str | int) -> dict[str, Any]:
    """The devnet's node named `which` ("2", 2 or "node2"), or a SettingsError naming those
    that exist."""
    if not state:
        raise SettingsError(f"--node {which}: no devnet is up; start one with `fai devnet up`")
    nodes = state.get("nodes") or []
    text = str(which).strip()
    name = text if text.startswith("node") else f"node{text}"
    for node in nodes:
        if node.get("name") == name:
            return node
    known = ", ".join(n.get("name", "?") for n in nodes) or "none"
    raise SettingsError(f"--node {which}: the devnet has no such node (it has: {known})")


def _node_values(node: dict[str, Any]) -> dict[str, Any]:
    return {
        "key_file": node.get("operator_key_file"),
        "data_dir": node.get("data_dir"),
        "socket": node.get("control_socket"),
    }


def resolve(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
    devnet_state: str | os.PathLike[str] | None = None,
) -> Settings:
    """Merge the sources; `flags` holds argparse values (None = not given).

    `flags["node"]`, when given, names a devnet node (see the module docstring).
    """
    env = os.environ if env is None else env
    settings = Settings()
    toml_path = config or env.get("FAI_CONFIG")
    toml: dict[str, Any] = {}
    if toml_path:
        toml = load_toml(Path(toml_path))
    elif Path("fai.toml").exists():
        toml_path = "fai.toml"
        toml = load_toml(Path(toml_path))
    state_path = Path(devnet_state or env.get("FAI_DEVNET_STATE") or DEFAULT_DEVNET_STATE)
    settings.devnet = load_devnet_state(state_path)
    settings.toml = toml
    devnet_values = {}
    if settings.devnet:
        devnet_values = {
            "rpc": settings.devnet.get("rpc_url"),
            "registry": settings.devnet.get("registry"),
        }
    node_values: dict[str, Any] = {}
    node_source = ""
    if flags.get("node") not in (None, ""):
        node = devnet_node(settings.devnet, flags["node"])
        node_values = _node_values(node)
        node_source = f"--node {node['name']}"
    for name in NAMES:
        candidates = (
            (flags.get(name), "flag"),
            (node_values.get(name), node_source),
            (env.get("FAI_" + name.upper()), "environment"),
            (toml.get(name), f"{toml_path}"),
            (devnet_values.get(name), f"devnet state {state_path}"),
        )
        for value, source in candidates:
            if value not in (None, ""):
                settings.values[name] = value
                settings.sources[name] = source
                break
    return settings
