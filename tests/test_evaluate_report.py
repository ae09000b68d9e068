"""bench/evaluate.py end to end on its smallest grid: the report and the plots get written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # the smallest evaluation grid still takes ~5 s
def test_quick_evaluation_writes_every_table_and_plot(tmp_path):
    md, img = tmp_path / "evaluation.md", tmp_path / "img"
    cmd = [
        sys.executable,
        str(ROOT / "bench/evaluate.py"),
        "--quick",
        "--jobs",
        "1",
        "--cache",
        str(tmp_path / "cache"),
        "--out-md",
        str(md),
        "--img-dir",
        str(img),
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=300, capture_output=True)
    text = md.read_text()
    for n in range(1, 6):
        assert f"## Table {n}:" in text
    assert "## Regenerate" in text and "bench/evaluate.py" in text
    # Measured cells are numbers, not placeholders.
    table1 = text.split("## Table 1:")[1].split("## Table 2:")[0]
    fai_rows = [line for line in table1.splitlines() if line.startswith("| FAI")]
    assert fai_rows and all(re.search(r"\| 0\.\d{3}", row) for row in fai_rows)
    for name in ("convergence", "robustness", "bandwidth"):
        png = img / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # A second run finds every simulation in the cache and writes the same tables.
    again = subprocess.run(cmd, check=True, cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert "0 to do" in again.stderr
    assert md.read_text() == text


def _evaluate_module():
    """bench/evaluate.py as a module, for its pure helpers (no grid is run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_under_test", ROOT / "bench/evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_coinciding_curves_are_detected_from_the_data():
    ev = _evaluate_module()
    low, high = [0.1, 0.2, 0.3], [0.2, 0.4, 0.5]
    series = {"isolated": low, "central": high, "naive": list(high), "fai": [*high[:2], 0.5]}
    assert ev.coincident_groups(series) == [["central", "naive", "fai"]]
    note = ev.coincidence_note({"N = 10": series})
    assert note == "oracle, naive and FAI coincide here (identical values)"
    # Float noise is equality; a visible difference is not.
    assert ev.coincident_groups({"naive": [0.3], "fai": [0.3 + 1e-15]}) == [["naive", "fai"]]
    apart = {"isolated": low, "central": high, "naive": [0.2, 0.4, 0.49], "fai": [0.2, 0.41, 0.5]}
    assert ev.coincident_groups(apart) == []
    assert ev.coincidence_note({"N = 10": apart}) is None


def test_coincidence_note_names_the_panels_where_curves_coincide():
    ev = _evaluate_module()
    same = {"isolated": [0.1], "central": [0.3], "naive": [0.2], "fai": [0.3]}
    differ = {"isolated": [0.1], "central": [0.3], "naive": [0.2], "fai": [0.25]}
    panels = {"N = 10": same, "N = 50": differ, "N = 100": same}
    assert (
        ev.coincidence_note(panels)
        == "oracle and FAI coincide at N = 10, N = 100 (identical values)"
    )
    both = {"N = 10": same, "N = 50": same}
    assert ev.coincidence_note(both) == "oracle and FAI coincide in every panel (identical values)"
    pairs = {"isolated": [0.1], "central": [0.3], "naive": [0.1], "fai": [0.3]}
    assert ev.coincidence_note({"a": pairs}) == (
        "isolated and naive coincide here; oracle and FAI coincide here (identical values)"
    )
