"""docs/mutation.md and the mutmut configuration name the same modules.

`make mutate` mutates the files `[tool.mutmut] only_mutate` lists (pyproject.toml); the
page says which modules are covered and with which tests, and carries the last run's kill
rate per module. A module added to one and not the other fails here. Every test file the
configuration runs must exist, and every documented equivalent mutant must be well formed
(tools/mutate.py matches survivors against them).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "mutation.md"

_spec = importlib.util.spec_from_file_location("mutate_tool", REPO / "tools" / "mutate.py")
mutate = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("mutate_tool", mutate)  # dataclasses look their module up there
_spec.loader.exec_module(mutate)


def config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]


def test_the_kill_rate_table_lists_exactly_the_mutated_modules():
    assert mutate.documented_modules(DOC) == config()["only_mutate"]


def test_the_modules_table_names_every_mutated_module_once():
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## What is mutated, against which tests", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+\.py)` \|", section, flags=re.MULTILINE)
    assert rows == config()["only_mutate"]


def test_every_selected_test_file_exists_and_every_mutated_module_too():
    cfg = config()
    missing = [p for p in cfg["pytest_add_cli_args_test_selection"] if not (REPO / p).is_file()]
    missing += [p for p in cfg["only_mutate"] if not (REPO / p).is_file()]
    assert missing == []


def test_documented_equivalents_are_well_formed():
    modules = set(config()["only_mutate"])
    equivalents = mutate.documented_equivalents(DOC)
    assert equivalents, "the table of equivalent mutants was not found"
    for e in equivalents:
        assert e.module in modules, e
        assert e.function and e.original and e.mutant and e.original != e.mutant, e
        assert len(e.reason) > 10, e


def test_the_table_parser_reads_escaped_pipes(tmp_path):
    page = tmp_path / "m.md"
    page.write_text(
        "## Equivalent mutants\n\n| module | function | line | mutation | reason |\n"
        "| --- | --- | --- | --- | --- |\n"
        "| `a.py` | `f` | 3 | `x \\| y` → `x & y` | same here |\n"
        "## Next\n| `b.py` | `g` | 1 | `p` → `q` | not in the section |\n",
        encoding="utf-8",
    )
    [row] = mutate.documented_equivalents(page)
    assert (row.module, row.function, row.original, row.mutant) == ("a.py", "f", "x | y", "x & y")
    assert row.reason == "same here"
