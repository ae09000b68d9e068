"""`make test-fast` (`pytest -m "not slow"`) must never start Anvil, a node or a devnet.

tests/conftest.py marks such tests `slow` by rule and refuses, while tests run, a test not
marked slow that starts one. These tests check both halves: the rule finds the known chain,
node and devnet tests of this suite, and the runtime check fails a test that slips through.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fai_net.devnet.anvil import ANVIL_BIN

TESTS = Path(__file__).resolve().parent

# Tests that start a chain, nodes or a devnet, each in a different way the rule must see.
# If one is renamed or removed, name another test that starts the same thing the same way.
SENTINELS = {
    # the `env` fixture -> `base_env` -> `anvil` (tests/registry/conftest.py)
    "tests/registry/test_bonding.py::test_add_stake",
    # Anvil(...) inside a @contextmanager helper of the module
    "tests/registry/test_cli_operator_friction.py::test_withdraw_after_the_delay_on_an_idle_chain",
    # Fleet() in a fixture
    "tests/net/test_fleet.py::test_two_domains_propagate_and_stay_apart",
    # `python -m fai_net.cli node run` spelled out as a command line in the test
    "tests/net/test_fleet.py::test_node_refuses_a_second_instance_on_the_same_data_dir",
    # temporary_fleet() in a fixture
    "tests/net/test_agent_memory.py::test_receive_answers_from_the_library_after_a_restart",
    # NodeProc in a module-scoped fixture
    "tests/net/test_readme_snippets.py::test_python_sync_snippet_adds_recalls_and_reports",
    # Anvil and Fleet in the test's own body
    "tests/net/test_slashed_peer.py::test_a_slashed_node_is_dropped_at_once_and_for_good",
    # fai("devnet", "up", ...) through tests/support/devnet.py
    "tests/test_devnet_cli.py::test_devnet_through_the_cli",
    # a module-scoped fixture that brings a devnet up
    "tests/test_devnet_operator.py::test_down_keeps_the_run_directory_and_says_where",
    # README lines run by bash, the first of them `.venv/bin/fai devnet up`
    "tests/test_operator_walkthrough.py::test_an_operators_walkthrough_runs_as_written",
}

# Collects the suite in a child pytest and writes what the rule decided for each test.
DUMP_PLUGIN = """
import json, os

def pytest_collection_finish(session):
    rows = {
        item.nodeid: {
            "slow": item.get_closest_marker("slow") is not None,
            "fixtures": sorted(getattr(item, "fixturenames", ())),
        }
        for item in session.items
    }
    with open(os.environ["FAI_COLLECTION_DUMP"], "w") as f:
        json.dump(rows, f)
"""


@pytest.fixture(scope="module")
def collection(request, tmp_path_factory) -> dict[str, dict]:
    """Every test of the suite: whether it is slow, and its fixtures (transitively).

    When this run collected the whole suite (`make test`, `make test-fast`), conftest kept
    the items before `-m` deselected any; otherwise a child pytest collects the suite.
    """
    rule = request.getfixturevalue("fast_path_rule")
    items = request.config.stash.get(rule.COLLECTED, [])
    rows = {
        item.nodeid: {
            "slow": item.get_closest_marker("slow") is not None,
            "fixtures": sorted(getattr(item, "fixturenames", ())),
        }
        for item in items
    }
    if rows.keys() >= SENTINELS:
        return rows
    tmp = tmp_path_factory.mktemp("collect")
    (tmp / "fai_collection_dump.py").write_text(DUMP_PLUGIN)
    out = tmp / "rows.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "fai_collection_dump"],
        cwd=TESTS.parent,
        env={"PYTHONPATH": str(tmp), "FAI_COLLECTION_DUMP": str(out), **_env()},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}


def test_every_chain_node_and_devnet_sentinel_is_slow(collection):
    missing = sorted(SENTINELS - collection.keys())
    assert not missing, f"sentinels no longer collected (rename them in SENTINELS): {missing}"
    fast = sorted(t for t in SENTINELS if not collection[t]["slow"])
    assert not fast, f"these start Anvil, nodes or a devnet but are not marked slow: {fast}"


def test_no_fast_test_uses_a_chain_fixture(collection, fast_path_rule):
    chain = fast_path_rule.CHAIN_FIXTURES
    fast_with_chain = sorted(
        t for t, row in collection.items() if not row["slow"] and chain & set(row["fixtures"])
    )
    assert not fast_with_chain


def test_the_fast_path_keeps_most_of_the_suite(collection):
    """The rule must not grow into marking everything: the fast path stays a real check."""
    fast = [t for t, row in collection.items() if not row["slow"]]
    assert len(fast) >= 0.75 * len(collection), (len(fast), len(collection))
    for part in ("tests/core/", "tests/net/", "tests/registry/", "tests/test_"):
        assert any(t.startswith(part) for t in fast), part


# Command lines the runtime check refuses in a test not marked slow. They are kept out of the
# test's own code, where the rule would see them and mark the test slow (no check at all).
REFUSED = [
    [str(ANVIL_BIN), "--version"],
    [sys.executable, "-m", "fai_net.cli", "node", "run", "--help"],
    ["bash", "-c", ".venv/bin/fai devnet up --nodes 1"],
    "fai devnet demo",
]
ALLOWED = [
    [sys.executable, "-m", "fai_net.cli", "node", "status", "--help"],
    [sys.executable, "-m", "fai_net.cli", "devnet", "status"],
    ["cat", "/tmp/anvil-logs/x.log"],
]


def test_a_test_not_marked_slow_cannot_start_anvil_or_a_node(fast_path_rule, request):
    assert request.node.get_closest_marker("slow") is None
    for argv in REFUSED:
        with pytest.raises(fast_path_rule.StartsChainOrNode, match="is not marked slow"):
            subprocess.run(argv, capture_output=True, timeout=30, shell=isinstance(argv, str))
    # Refused as expected here: keep the check from failing this test afterwards.
    assert fast_path_rule._violations.pop(request.node.nodeid)
    for argv in ALLOWED:
        assert fast_path_rule.launch_command(argv) is None, argv


GUARDED = """
import subprocess

import pytest

ANVIL = {anvil!r}


def fai(*args):
    return subprocess.run(["true"], check=True)


@pytest.fixture
def anvil():
    return subprocess.run([ANVIL], check=True)


def test_starts_anvil_unmarked():
    subprocess.run([ANVIL], check=True)


def test_catches_the_refusal_and_carries_on():
    try:
        subprocess.run([ANVIL], check=True)
    except Exception:
        pass


@pytest.mark.slow
def test_starts_anvil_marked_slow():
    subprocess.run([ANVIL], check=True)


def test_uses_the_anvil_fixture(anvil):
    pass


def test_brings_a_devnet_up():
    fai("devnet", "up", "--nodes", "1")


def test_starts_something_else():
    subprocess.run(["true"], check=True)
"""


def test_the_check_fails_an_unmarked_test_that_starts_anvil(tmp_path: Path):
    """End to end, in a child pytest with tests/conftest.py as its only plugin."""
    fake = tmp_path / "bin" / "anvil"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    (tmp_path / "test_guarded.py").write_text(textwrap.dedent(GUARDED.format(anvil=str(fake))))

    def pytest_child(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "conftest", "-o", "markers=slow", *args],
            cwd=tmp_path,
            env={"PYTHONPATH": str(TESTS), **_env()},
            capture_output=True,
            text=True,
            timeout=120,
        )
        return proc.stdout + proc.stderr

    out = pytest_child("-rA", "test_guarded.py")
    outcomes = {
        line.split()[1].split("::")[1]: line.split()[0]
        for line in out.splitlines()
        if line.startswith(("PASSED ", "FAILED ", "ERROR "))
    }
    assert outcomes == {
        "test_starts_anvil_unmarked": "FAILED",
        "test_catches_the_refusal_and_carries_on": "FAILED",
        "test_starts_anvil_marked_slow": "PASSED",
        "test_uses_the_anvil_fixture": "PASSED",
        "test_brings_a_devnet_up": "PASSED",
        "test_starts_something_else": "PASSED",
    }, out
    assert "is not marked slow but starts" in out

    out = pytest_child("-q", "--collect-only", "-m", "not slow", "test_guarded.py")
    assert "3/6 tests collected (3 deselected)" in out, out
