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
    _check_wire_versions_side_by_side(text)
    # A second run finds every simulation in the cache and writes the same tables.
    again = subprocess.run(cmd, check=True, cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert "0 to do" in again.stderr
    assert md.read_text() == text
    # Without version 1 runs the bandwidth tables say so instead of inventing a figure.
    subprocess.run([*cmd, "--v1-seeds", ""], check=True, cwd=ROOT, timeout=300, capture_output=True)
    alone = md.read_text()
    sim = _table_after(_section(alone, 3), "What the simulated fleet actually sent")
    assert sim and all(row["bytes per experience v1"] == "–" for row in sim)
    assert all(row["bytes per experience v2"][0].isdigit() for row in sim)
    assert "The same runs in wire v1" not in _section(alone, 3)
    bandwidth = _table_after(_section(alone, 5), "Final quality at round")
    assert bandwidth and all(row["gossip KB/node/round v1"] == "–" for row in bandwidth)


def _section(text: str, n: int) -> str:
    return text.split(f"## Table {n}:")[1].split("\n## ")[0]


def _table_after(text: str, marker: str) -> list[dict[str, str]]:
    """The rows (header -> cell) of the first Markdown table after the line starting with
    `marker`."""
    lines = text.split(marker, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, body = rows[0], rows[2:]
    return [dict(zip(header, row, strict=True)) for row in body]


def _number(cell: str) -> float:
    """The mean of a 'mean ± std' cell, commas and a trailing x or % removed."""
    return float(cell.split("±")[0].strip().rstrip("x%").replace(",", ""))


def _check_wire_versions_side_by_side(text: str) -> None:
    """Tables 3 and 5 give wire v1 and v2 figures, all measured, and the prose quotes them."""
    t3 = _section(text, 3)
    envelopes = _table_after(t3, "Real signed envelopes by batch size")
    assert [row["M"] for row in envelopes] == ["1", "10", "100"]
    for row in envelopes:
        v1, v2 = _number(row["v1 envelope bytes"]), _number(row["v2 envelope bytes"])
        attached = _number(row["v2 with block attached: envelope bytes"])
        assert 0 < v2 < v1 and v2 < attached  # the block travels outside the common batch
    # The one-off block costs the same whatever M is (up to CBOR length headers).
    extra = [
        _number(r["v2 with block attached: envelope bytes"]) - _number(r["v2 envelope bytes"])
        for r in envelopes
    ]
    assert min(extra) > 700 and max(extra) < 900 and max(extra) - min(extra) <= 4
    main = _table_after(t3, "Paper: d = ")
    m100 = [row for row in main if "M = 100" in row["representation"]]
    assert [("v1" in r["representation"], "v2" in r["representation"]) for r in m100] == [
        (True, False),
        (False, True),
        (False, True),
    ]
    sim = _table_after(t3, "What the simulated fleet actually sent")
    assert sim
    for row in sim:
        v1, v2 = _number(row["bytes per experience v1"]), _number(row["bytes per experience v2"])
        assert v1 > v2 > 0
        # The ratio is of the unrounded figures; the table shows them rounded to bytes.
        shown = float(row["v1 / v2 bytes per experience"].rstrip("x"))
        assert abs(shown - v1 / v2) <= 0.005 + (v1 / v2) * (0.5 / v1 + 0.5 / v2)
        for name in ("baseline blocks made", "blocks attached", "blocks fetched"):
            assert row[name][0].isdigit()
    # The paragraph quotes the table: the v2 and v1 spans of bytes per experience.
    paragraph = t3.split("What the simulated fleet actually sent")[1].split("\n\n")[2]
    for version in ("v2", "v1"):
        values = [f"{_number(r[f'bytes per experience {version}']):,.0f}" for r in sim]
        lo, hi = min(values, key=_number), max(values, key=_number)
        quoted = lo if lo == hi else f"{lo}-{hi}"
        assert f"{quoted} bytes" in paragraph, (version, quoted, paragraph)
    assert "dominates" not in paragraph
    t5 = _section(text, 5)
    bandwidth = _table_after(t5, "Final quality at round")
    assert bandwidth
    for row in bandwidth:
        assert _number(row["gossip KB/node/round v1"]) > _number(row["gossip KB/node/round v2"])
    by_n = _table_after(t5, "Bandwidth against fleet size")
    assert by_n and all(
        _number(r["bytes per batch v1"]) > _number(r["bytes per batch v2"]) for r in by_n
    )


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
