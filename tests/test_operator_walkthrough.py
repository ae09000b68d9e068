"""README's operator walk-through, run line by line as written, on a real devnet.

The block follows ``<!-- snippet: operator-walkthrough -->`` in README.md. Each line runs
in bash from a scratch directory that links the checkout's `.venv` (so `.venv/bin/fai`
resolves as it does in the checkout), with `FAI_DEVNET_STATE` pointing the devnet into
that directory instead of `devnet/state`. One change to what README says: `devnet up`
gets `--embedder hashing`, so three nodes do not each load MiniLM. Every line must exit 0,
and the chain must then hold what the comments promise.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOKEN = 10**18
UP = ".venv/bin/fai devnet up "
SNIPPET = re.compile(r"<!-- snippet: operator-walkthrough -->\n```sh\n(.*?)\n```", re.DOTALL)


def walkthrough_lines() -> list[str]:
    """The block's command lines, as written (bash drops their trailing comments)."""
    (block,) = SNIPPET.findall((ROOT / "README.md").read_text())
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


class Shell:
    """Runs one README line at a time in the scratch directory, keeping every result."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {**os.environ, "FAI_DEVNET_STATE": str(cwd / "state" / "devnet.json")}
        self.env.pop("FAI_KEY_FILE", None)
        self.env.pop("FAI_DATA_DIR", None)
        self.env.pop("FAI_SOCKET", None)
        self.outputs: dict[str, str] = {}

    def run(self, line: str, timeout: float = 240) -> str:
        done = subprocess.run(
            ["bash", "-c", line],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{line!r} exited {done.returncode}:\n{done.stderr}"
        self.outputs[line] = done.stdout
        return done.stdout

    def json(self, command: str) -> object:
        return json.loads(self.run(f".venv/bin/fai {command} --json"))


@pytest.fixture()
def shell():
    # Not pytest's tmp_path: its numbered directories grow with every run on a machine
    # (/tmp/pytest-of-root/pytest-1074/...), and the nodes' control sockets under it would
    # pass the 107-byte Unix socket limit.
    tmp_path = Path(tempfile.mkdtemp(prefix="fai-walk-", dir="/tmp"))
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    sh = Shell(tmp_path)
    try:
        yield sh
    finally:
        if (tmp_path / "state" / "devnet.json").exists():
            subprocess.run(
                [str(ROOT / ".venv/bin/fai"), "devnet", "down", "--quiet"],
                cwd=tmp_path,
                env=sh.env,
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_walkthrough_is_the_block_this_test_expects():
    lines = walkthrough_lines()
    assert (
        lines[0].startswith(".venv/bin/fai devnet up ") and lines[-1] == ".venv/bin/fai devnet down"
    )
    assert "--embedder" not in lines[0]  # the swap below would otherwise be wrong
    verbs = [
        shlex.split(line, comments=True)[1:3] for line in lines if line.startswith(".venv/bin/fai")
    ]
    for needed in (
        ["stake", "10"],
        ["unbond", "5"],
        ["withdraw", "--node"],
        ["slash", "equivocation"],
    ):
        assert needed in verbs, needed
    assert ["devnet", "advance-time"] in verbs and ["devnet", "fund"] in verbs


def test_an_operators_walkthrough_runs_as_written(shell: Shell):
    lines = walkthrough_lines()
    *body, down = lines
    for line in body:
        shell.run(line.replace(UP, UP + "--embedder hashing ", 1))

    newcomer = shell.json("registry status --key-file operator.key")
    assert newcomer["registered"] and newcomer["stake"] == 10 * TOKEN
    assert newcomer["token_balance"] == 15 * TOKEN  # 25 funded, 10 bonded
    assert stat.S_IMODE((shell.cwd / "operator.key").stat().st_mode) == 0o600

    node1 = shell.json("registry status --node 1")
    assert node1["stake"] == 10 * TOKEN and node1["unbonding"] == 0 and node1["live"]
    assert node1["token_balance"] == 990 * TOKEN  # staked 5, unbonded 5, withdrew 5
    (withdraw,) = [out for line, out in shell.outputs.items() if " withdraw " in line]
    assert withdraw.startswith("withdrew 5 tokens to " + node1["operator"])

    evidence = shell.cwd / "node2.evidence.json"
    assert stat.S_IMODE(evidence.stat().st_mode) == 0o600
    assert json.loads(evidence.read_text())["batches"]
    node2 = shell.json("registry status --node 2")
    assert node2["jailed"] and not node2["live"]
    listed = {p["operator"] for p in shell.json("registry peers")}
    node0 = shell.json("registry status --node 0")
    assert listed == {node0["operator"], node1["operator"]}

    state = json.loads((shell.cwd / "state" / "devnet.json").read_text())
    shell.run(down)
    pids = [state["anvil_pid"], *(n["pid"] for n in state["nodes"])]
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
