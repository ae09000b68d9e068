"""Project-level rules: the core's import boundary, and the main job as a user runs it."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import fai_core

REPO = Path(__file__).resolve().parent.parent


def test_core_never_imports_network_or_chain_code():
    modules = [f"fai_core.{m.name}" for m in pkgutil.iter_modules(fai_core.__path__)]
    assert "fai_core.wire" in modules  # the scan really sees the package
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'fai_net', 'web3', 'eth_account', 'libp2p', 'trio'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_help_does_not_load_numpy():
    code = "import sys; from fai_net.cli import entry; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_demo_runs_end_to_end_and_refuses_tampering():
    out = subprocess.run(
        [sys.executable, "-m", "fai_net.cli", "demo", "--json", "--experiences", "50"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=120,
    )
    report = json.loads(out.stdout)
    assert report["cid"].startswith("bafyrei")
    assert report["experiences"] == 50
    assert report["tampered_copy"].startswith("refused: ")
    assert 0.7 < report["cosine_mean"] < 1.0
    # 48 B signs + 12 B scales + 2 B quality + 1 B iteration, plus the amortised baseline.
    assert 63 <= report["non_text_bytes_per_experience"] < 63 + (384 * 4 + 400) / 50


def test_demo_user_error_is_a_message_not_a_traceback():
    out = subprocess.run(
        [sys.executable, "-m", "fai_net.cli", "demo", "--experiences", "0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "--experiences" in out.stderr
