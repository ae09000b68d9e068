"""bench/evaluate.py end to end on its smallest grid: the report and the plots get written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
