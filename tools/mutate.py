"""`make mutate`: mutation testing of the modules where a silent change costs money or data.

mutmut 3 (configured in pyproject.toml, `[tool.mutmut]`) copies the packages into mutants/,
changes one thing at a time in the listed modules (`only_mutate`) and runs the fast tests
that reach the changed function; a mutant the tests do not notice *survived*. This script
runs it (one worker: the machine is shared), then prints per module how many mutants were
killed, survived or are documented as equivalent, and every survivor that docs/mutation.md
does not explain, with its diff.

A survivor is *equivalent* when docs/mutation.md lists it in its "Equivalent mutants" table:
module, function, and the mutation as `original` -> `mutant` (the changed lines, stripped;
line numbers are shown but not matched, so unrelated edits do not invalidate the list), or
when one of `RULES` covers it (those are not even run). A survivor the page lists under
"Surviving mutants" is explained but still counts as survived. The kill rate is killed /
(total - equivalent); a timeout counts as killed (the tests noticed). The run fails when a
module's kill rate is below `THRESHOLD`.

    python tools/mutate.py            # a fresh run (deletes mutants/), then the report
    python tools/mutate.py --again    # re-run only the survivors of the last run
    python tools/mutate.py --report   # the report of the last run only
    python tools/mutate.py --only fai_core/reputation.py  # one module again (keeps the rest)
    python tools/mutate.py --report --markdown  # the same, as docs/mutation.md's tables
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "mutation.md"
MUTANTS = ROOT / "mutants"
THRESHOLD = 0.90

#: mutmut's exit codes (mutmut/stats.py) grouped as this report counts them.
KILLED = {1, 3}
TIMEOUT = {36, 24, -24, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}
#: What this script writes for a mutant a rule shows equivalent, so mutmut skips it.
SKIPPED = 34
ARROW = "→"


def configured_modules(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The files `[tool.mutmut] only_mutate` lists, in its order."""
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["mutmut"]
    return list(config["only_mutate"])


#: An SQL statement (or a piece of one) as the store writes them: upper-case keywords.
SQL = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|PRAGMA|CREATE|BEGIN|COMMIT|ROLLBACK|VALUES|WHERE|FROM|"
    r"ORDER BY|ON CONFLICT|LIMIT|AND|NOT IN)\b"
)


def _changed_literals(m) -> list[tuple[str, str]]:
    """The double-quoted string literals of the original and the mutant, pairwise."""
    return list(
        zip(re.findall(r'"([^"]*)"', m.original), re.findall(r'"([^"]*)"', m.mutant), strict=False)
    )


#: Survivors equivalent by a rule rather than one by one (docs/mutation.md lists each match):
#: (name, applies to the mutant, why).
RULES = (
    (
        "sql-case",
        lambda m: (
            m.module == "fai_net/admission/store.py"
            and m.original != m.mutant
            and m.original.lower() == m.mutant.lower()
            and all(SQL.search(a) for a, b in _changed_literals(m) if a != b)
            and re.findall(r"'[^']*'", m.original) == re.findall(r"'[^']*'", m.mutant)
        ),
        "only the letter case of SQL changed: SQLite reads keywords, functions, table and "
        "column names in any case (its quoted string literals are unchanged)",
    ),
    (
        "codec-case",
        lambda m: (
            m.original != m.mutant
            and m.original.lower() == m.mutant.lower()
            and '"utf-8"' in m.original.lower()
        ),
        'only the case of a codec name changed: Python reads "utf-8" and "UTF-8" alike',
    ),
)


@dataclass(frozen=True)
class Equivalent:
    module: str
    function: str
    original: str
    mutant: str
    reason: str


def _cells(line: str) -> list[str]:
    """The cells of one markdown table row (`\\|` is a pipe inside a cell)."""
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [p.strip().replace("\\|", "|") for p in parts]


def _code(cell: str) -> str:
    return cell.strip().removeprefix("`").removesuffix("`")


def documented_equivalents(
    doc: Path = DOC, section: str = "Equivalent mutants"
) -> list[Equivalent]:
    """The rows of the "Equivalent mutants" table: | module | function | line | mutation |
    reason |, the mutation written `original` → `mutant`. With `section="Surviving
    mutants"`, the survivors the page explains without calling them equivalent."""
    if not doc.exists():
        return []
    found, inside = [], False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.strip() == f"## {section}"
            continue
        if not inside or not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = _cells(line)
        if len(cells) != 5 or cells[0] == "module":
            continue
        original, _, mutant = cells[3].partition(f" {ARROW} ")
        found.append(
            Equivalent(_code(cells[0]), _code(cells[1]), _code(original), _code(mutant), cells[4])
        )
    return found


def documented_modules(doc: Path = DOC) -> list[str]:
    """The module column of the "Kill rate" table of docs/mutation.md."""
    modules, inside = [], False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## Kill rate"
            continue
        if inside and line.startswith("| `"):
            modules.append(_code(_cells(line)[0]))
    return modules


@dataclass
class Mutant:
    name: str
    module: str
    function: str
    status: str
    line: int = 0
    original: str = ""
    mutant: str = ""
    diff: str = ""
    reason: str | None = None


@dataclass
class ModuleReport:
    module: str
    counts: Counter = field(default_factory=Counter)
    survivors: list[Mutant] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def killed(self) -> int:
        return self.counts["killed"] + self.counts["timeout"]

    @property
    def rate(self) -> float:
        tested = self.total - self.counts["equivalent"]
        return self.killed / tested if tested else 1.0


def _status(code: int | None) -> str:
    if code in KILLED:
        return "killed"
    if code in TIMEOUT:
        return "timeout"
    if code in SURVIVED:
        return "survived"
    if code in NO_TESTS:
        return "no tests"
    if code == SKIPPED:
        return "skipped"
    return "not checked" if code is None else "suspicious"


def _function_of(name: str) -> str:
    """`pkg.mod.xǁClassǁmethod__mutmut_3` -> `Class.method`; `pkg.mod.x_f__mutmut_1` -> `f`."""
    key = name.rpartition(".")[2].rpartition("__mutmut_")[0]
    if key.startswith("xǁ"):
        _, cls, func = key.split("ǁ")
        return f"{cls}.{func}"
    return key.removeprefix("x_")


def _function_lines(source: str) -> dict[str, tuple[int, int]]:
    spans: dict[str, tuple[int, int]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            spans[node.name] = (node.lineno, node.end_lineno or node.lineno)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    spans[f"{node.name}.{item.name}"] = (item.lineno, item.end_lineno or 0)
    return spans


def _describe(mutant: Mutant, path: str, source_lines: list[str], spans) -> None:
    """Fill in the diff, the changed lines and the line number of a surviving mutant."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    try:
        mutant.diff = get_diff_for_mutant(mutant.name, path=path)
    except Exception as exc:  # an out-of-date mutants/ cannot be shown: say so, go on
        mutant.diff = f"(no diff: {exc})"
        return
    body = mutant.diff.splitlines()[2:]
    removed = [ln[1:].strip() for ln in body if ln.startswith("-")]
    added = [ln[1:].strip() for ln in body if ln.startswith("+")]
    mutant.original, mutant.mutant = " ".join(removed), " ".join(added)
    first, last = spans.get(mutant.function, (1, len(source_lines)))
    for number in range(first, last + 1):
        if removed and source_lines[number - 1].strip() == removed[0]:
            mutant.line = number
            break
    else:
        mutant.line = first


def collect(
    modules: list[str], equivalents: list[Equivalent], explained: list[Equivalent] = ()
) -> list[ModuleReport]:
    """Each module's counts and survivors from mutants/<module>.meta (the last run).
    `explained`: survivors the page lists as such, with why (they still count as survived)."""
    by_key = {(e.module, e.function, e.original, e.mutant): e for e in equivalents}
    left = {(e.module, e.function, e.original, e.mutant): e for e in explained}
    reports = []
    for module in modules:
        report = ModuleReport(module)
        meta = MUTANTS / f"{module}.meta"
        if not meta.exists():
            report.counts["not run"] = 0
            reports.append(report)
            continue
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        source = (ROOT / module).read_text(encoding="utf-8")
        lines, spans = source.splitlines(), _function_lines(source)
        for name, code in sorted(codes.items(), key=lambda kv: _sort_key(kv[0])):
            status = _status(code)
            if status in ("killed", "timeout"):
                report.counts[status] += 1
                continue
            mutant = Mutant(name, module, _function_of(name), status)
            _describe(mutant, module, lines, spans)
            known = by_key.get((module, mutant.function, mutant.original, mutant.mutant))
            rule = next((r for r in RULES if r[1](mutant)), None)
            if status in ("survived", "no tests") and known is not None:
                mutant.status, mutant.reason = "equivalent", known.reason
            elif status in ("survived", "no tests", "skipped") and rule is not None:
                mutant.status, mutant.reason = "equivalent", f"rule {rule[0]}: {rule[2]}"
            elif (module, mutant.function, mutant.original, mutant.mutant) in left:
                mutant.reason = left[
                    (module, mutant.function, mutant.original, mutant.mutant)
                ].reason
            report.counts[mutant.status] += 1
            report.survivors.append(mutant)
        reports.append(report)
    return reports


def _sort_key(name: str) -> tuple[str, int]:
    head, _, number = name.rpartition("__mutmut_")
    return head, int(number) if number.isdigit() else 0


def stale_equivalents(reports: list[ModuleReport], equivalents: list[Equivalent]) -> list:
    """Documented mutants that matched no survivor of the last run (the code moved on)."""
    seen = {(m.module, m.function, m.original, m.mutant) for r in reports for m in r.survivors}
    ran = {r.module for r in reports if r.total}
    return [
        e
        for e in equivalents
        if e.module in ran and (e.module, e.function, e.original, e.mutant) not in seen
    ]


COLUMNS = ("module", "total", "killed", "survived", "equivalent", "other", "kill rate")


def _row(r: ModuleReport) -> tuple:
    c = r.counts
    survived = c["survived"] + c["no tests"]
    other = c["suspicious"] + c["not checked"] + c["skipped"]
    return (r.module, r.total, r.killed, survived, c["equivalent"], other, f"{r.rate:.1%}")


def table(reports: list[ModuleReport], markdown: bool = False) -> str:
    rows = [_row(r) for r in reports]
    if markdown:
        out = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["--:"] * 6) + "|"]
        out += [f"| `{r[0]}` | " + " | ".join(str(v) for v in r[1:]) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(COLUMNS, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{widths[0]}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [COLUMNS, *rows])


def survivor_rows(reports: list[ModuleReport]) -> str:
    """Markdown rows for docs/mutation.md of every survivor not yet documented."""
    out = []
    for r in reports:
        for m in r.survivors:
            if m.status == "equivalent" or m.reason is not None:
                continue
            mutation = f"`{m.original}` {ARROW} `{m.mutant}`".replace("|", "\\|")
            out.append(f"| `{m.module}` | `{m.function}` | {m.line} | {mutation} | ({m.status}) |")
    return "\n".join(out)


def rule_rows(reports: list[ModuleReport], by_rule: bool = True) -> str:
    """Markdown rows of every mutant a rule found equivalent (docs/mutation.md lists them);
    with `by_rule=False`, of those the page lists one by one (with their line now)."""
    out = []
    for r in reports:
        for m in r.survivors:
            if m.status == "equivalent" and (m.reason or "").startswith("rule ") == by_rule:
                mutation = f"`{m.original}` {ARROW} `{m.mutant}`".replace("|", "\\|")
                name = (m.reason or "").split(":")[0].removeprefix("rule ") if by_rule else "listed"
                out.append(f"| `{m.module}` | `{m.function}` | {m.line} | {mutation} | {name} |")
    return "\n".join(out)


def skip_rule_equivalents(modules: list[str]) -> int:
    """Mark the not yet tested mutants a rule shows equivalent as skipped, so mutmut does not
    spend a full test run on each (an SQL statement in another letter case reaches every
    test that opens a store). Returns how many it marked."""
    marked = 0
    for module in modules:
        meta_path = MUTANTS / f"{module}.meta"
        if not meta_path.exists():
            continue
        source = (ROOT / module).read_text(encoding="utf-8")
        if module != "fai_net/admission/store.py" and '"utf-8"' not in source:
            continue  # no rule can apply: skip the diffs
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        lines, spans = source.splitlines(), _function_lines(source)
        for name, code in meta["exit_code_by_key"].items():
            if code is not None:
                continue
            mutant = Mutant(name, module, _function_of(name), "not checked")
            _describe(mutant, module, lines, spans)
            if any(rule(mutant) for _, rule, _ in RULES):
                meta["exit_code_by_key"][name] = SKIPPED
                marked += 1
        meta_path.write_text(json.dumps(meta, indent=4), encoding="utf-8")
    return marked


def run_mutmut(names: list[str] | None = None) -> int:
    mutmut = Path(sys.executable).with_name("mutmut")
    cmd = [str(mutmut), "run", "--max-children", "1", *(names or [])]
    # mutmut redraws a progress line many times a second; keep its last words only.
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
    return proc.returncode


def _mutant_weight(module: str) -> int:
    """A cheap stand-in for a module's mutant count: its number of lines."""
    return len((ROOT / module).read_text(encoding="utf-8").splitlines())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--report", action="store_true", help="report the last run only")
    mode.add_argument("--again", action="store_true", help="re-run the last run's survivors")
    parser.add_argument("--markdown", action="store_true", help="print markdown for the doc")
    parser.add_argument(
        "--only",
        metavar="MODULE",
        action="append",
        help="run only this module's mutants (a path from only_mutate; repeatable)",
    )
    args = parser.parse_args(argv)

    modules, equivalents = configured_modules(), documented_equivalents()
    explained = documented_equivalents(section="Surviving mutants")
    started = time.monotonic()
    if args.again:
        previous = collect(modules, equivalents, explained)
        names = [m.name for r in previous for m in r.survivors if m.status != "equivalent"]
        if names and run_mutmut(names) != 0:
            return 2
    elif args.only:
        unknown = sorted(set(args.only) - set(modules))
        if unknown:
            parser.error(f"not in [tool.mutmut] only_mutate: {', '.join(unknown)}")
        modules = args.only
        globs = [m.removesuffix(".py").replace("/", ".") + ".*" for m in modules]
        if run_mutmut(globs) != 0:
            return 2
    elif not args.report:
        shutil.rmtree(MUTANTS, ignore_errors=True)
        # First the smallest module: mutmut generates every mutant and measures which tests
        # reach which function; then the rest, less what a rule shows equivalent.
        first = modules[0] if len(modules) == 1 else min(modules, key=_mutant_weight)
        if run_mutmut([first.removesuffix(".py").replace("/", ".") + ".*"]) != 0:
            return 2
        print(f"{skip_rule_equivalents(modules)} mutants equivalent by rule, not run")
        if run_mutmut() != 0:
            return 2
    reports = collect(modules, equivalents, explained)
    if not args.report:
        print(f"mutmut took {time.monotonic() - started:.0f} s")

    print(table(reports, markdown=args.markdown))
    if args.markdown:
        print("\nEquivalent by rule:\n" + rule_rows(reports))
        print("\nEquivalent, listed:\n" + rule_rows(reports, by_rule=False))
    undocumented = [
        m for r in reports for m in r.survivors if m.status != "equivalent" and m.reason is None
    ]
    if undocumented:
        print(f"\n{len(undocumented)} mutants survived that docs/mutation.md does not explain:")
        if args.markdown:
            print(survivor_rows(reports))
        else:
            for m in undocumented:
                print(f"\n{m.module}:{m.line} {m.function} ({m.status}) {m.name}\n{m.diff}")
    stale = stale_equivalents(reports, [*equivalents, *explained])
    if stale:
        print("\ndocs/mutation.md lists equivalents no mutant matched (remove them):")
        for e in stale:
            print(f"  {e.module} {e.function}: `{e.original}` {ARROW} `{e.mutant}`")
    low = [r.module for r in reports if r.rate < THRESHOLD]
    if low:
        print(f"\nkill rate below {THRESHOLD:.0%}: {', '.join(low)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
