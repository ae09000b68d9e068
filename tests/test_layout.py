"""The direction of imports between FAI's packages (README "Layout").

Every `import` and `from ... import` in the source is read statically, including the lazy
ones inside functions, so a rule holds on every code path and not only on the ones a test
happens to execute. The rules:

- `fai_core` imports neither `fai_net` nor `fai_eval` (pure logic a node runs).
- `fai_eval` (attacks, scenario, simulator) imports `fai_core` only: no network or chain.
- No module a node runs imports `fai_eval`: attack code never ships in a node's path.
- Inside `fai_net`, rooms are layered; a room imports only its own layer or lower ones:
  registry < admission < p2p < telemetry < api < node < devnet < cli, with the shared
  utilities (`ratelog`, `peer_ids`, `settings`) below every room. So the node never
  imports the CLI or the devnet, and the agent API never imports the node.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("fai_core", "fai_eval", "fai_net")

#: fai_net's rooms from the bottom up; the shared utility modules sit below all of them.
LAYERS = ("registry", "admission", "p2p", "telemetry", "api", "node", "devnet", "cli")
UTILITIES = frozenset({"ratelog", "peer_ids", "settings"})
#: Evaluation code may be imported by the command line's `fai sim`, and by nothing else.
EVAL_USERS = frozenset({"fai_net.cli.sim"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_in(source: str, name: str, *, is_package: bool = False) -> set[str]:
    """Every FAI module named by an import statement anywhere in `source` (absolute)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def imports_of(path: Path) -> set[str]:
    source = path.read_text(encoding="utf-8")
    return imports_in(source, module_name(path), is_package=path.name == "__init__.py")


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    return {module_name(p): imports_of(p) for p in files}


GRAPH = graph()


def layer(module: str) -> int | None:
    """fai_net.X...'s layer index (-1 for the shared utilities); None outside the rooms."""
    parts = module.split(".")
    if parts[0] != "fai_net" or len(parts) == 1:
        return None
    if parts[1] in UTILITIES:
        return -1
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def above(module: str, level: int) -> bool:
    """True for a fai_net module in a room higher than `level`."""
    found = layer(module)
    return found is not None and found > level


def test_the_scan_sees_the_packages_and_their_lazy_imports():
    assert {"fai_core.wire", "fai_eval.sim.simulator", "fai_net.node.node"} <= set(GRAPH)
    # fai_net.cli.devnet imports the devnet inside functions only (to keep `fai --help` fast)
    assert "fai_net.devnet.fleet" in GRAPH["fai_net.cli.devnet"]


def test_every_fai_net_module_is_in_a_room_or_a_shared_utility():
    homeless = [m for m in GRAPH if m.startswith("fai_net.") and layer(m) is None]
    assert homeless == []


def test_core_imports_neither_the_node_nor_the_evaluation():
    bad = {
        m: sorted(i for i in deps if not i.startswith("fai_core"))
        for m, deps in GRAPH.items()
        if m.startswith("fai_core")
    }
    assert {m: d for m, d in bad.items() if d} == {}


def test_evaluation_imports_only_the_core():
    bad = {
        m: sorted(i for i in deps if i.startswith("fai_net"))
        for m, deps in GRAPH.items()
        if m.startswith("fai_eval")
    }
    assert {m: d for m, d in bad.items() if d} == {}


def test_nothing_a_node_runs_imports_the_evaluation():
    users = {m for m, deps in GRAPH.items() if any(d.startswith("fai_eval") for d in deps)}
    assert users - {m for m in users if m.startswith("fai_eval")} == EVAL_USERS


@pytest.mark.parametrize("room", LAYERS)
def test_rooms_import_only_their_own_layer_or_lower(room):
    level = LAYERS.index(room)
    upward = {
        m: sorted(d for d in deps if above(d, level))
        for m, deps in GRAPH.items()
        if layer(m) == level
    }
    assert {m: d for m, d in upward.items() if d} == {}


def test_shared_utilities_import_no_room():
    for name in UTILITIES:
        deps = GRAPH[f"fai_net.{name}"]
        assert {d for d in deps if above(d, -1)} == set(), name


def test_the_rules_can_fail():
    """An upward import, written as the node would write it, is reported as one."""
    source = "from fai_net.cli import entry\nfrom fai_net.devnet.fleet import up\n"
    deps = imports_in(source, "fai_net.node.config")
    assert sorted(d for d in deps if above(d, LAYERS.index("node"))) == [
        "fai_net.cli",
        "fai_net.cli.entry",
        "fai_net.devnet.fleet",
        "fai_net.devnet.fleet.up",
    ]
    relative = imports_in("from ..cli import entry\n", "fai_net.node.config")
    assert "fai_net.cli.entry" in relative
