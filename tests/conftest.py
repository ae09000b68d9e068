"""The `slow` marker, set by rule: a test that starts Anvil, a node process or a devnet is slow.

`make test` runs every test; `make test-fast` runs `pytest -m "not slow"`. Nobody keeps a list
of slow tests: at collection, a test is marked `slow` when

1. its fixtures (transitively) include a real chain: `anvil` or `other_anvil`
   (tests/registry/conftest.py), or
2. its own code, one of its fixtures, or a helper of the test suite they call (followed
   through functions and classes defined under tests/) uses a launcher: `Fleet`, `NodeProc`,
   `temporary_fleet` (tests/support/fleet.py), `Anvil`, `devnet.up` or `run_demo`, or names a
   launching command: `node run`, `devnet up`, `devnet demo` (as one string, or as the
   separate arguments of one call, as in `fai("devnet", "up", ...)`), or
3. it is marked `slow` by hand (for tests that are long for other reasons).

The rule is checked while the tests run: a test that is not marked `slow` and starts Anvil,
`fai node run` or `fai devnet up|demo` in a subprocess fails at once, before the process
starts (a Python audit hook on subprocess creation), in `make test` as in `make test-fast`.
So the fast path cannot start pulling in a chain or a node silently: a test the rule misses
fails and says to mark it slow. tests/test_fast_path.py checks the rule itself.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import types
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent

# Fixtures that start a real chain; a test whose fixture closure has one of them is slow.
CHAIN_FIXTURES = frozenset({"anvil", "other_anvil"})

# Objects that start Anvil, node processes or a devnet, by (module, qualified name).
LAUNCHERS = frozenset(
    {
        ("tests.support.fleet", "Fleet"),
        ("tests.support.fleet", "NodeProc"),
        ("tests.support.fleet", "temporary_fleet"),
        ("fai_net.devnet.anvil", "Anvil"),
        ("fai_net.devnet.fleet", "up"),
        ("fai_net.devnet.demo", "run_demo"),
        ("fai_net.devnet.launch", "launch_node"),
    }
)

# The launching subcommands: `fai node run`, `fai devnet up`, `fai devnet demo`.
_VERBS = r"(?:node\s+run|devnet\s+(?:up|demo))\b"
# ... in a string that is a command line (`.venv/bin/fai devnet up ...`), not in a message
# that merely names one ("is the devnet up?", "usage: fai devnet up"),
COMMAND = re.compile(r"^\s*(?:\S*/)?fai\s+" + _VERBS)
# ... or as the separate arguments of one call: `fai("devnet", "up", ...)`.
COMMAND_WORDS = (("node", "run"), ("devnet", "up"), ("devnet", "demo"))
# What the runtime check refuses in a test not marked slow: the commands, or Anvil itself.
LAUNCH = re.compile(r"\b" + _VERBS + r"|(?:^|[\s/])anvil(?:\s|$)")


def _strings(consts) -> set[str]:
    out: set[str] = set()
    for c in consts:
        if isinstance(c, str):
            out.add(c)
        elif isinstance(c, (tuple, frozenset)):
            out |= _strings(c)
    return out


def _ours(obj) -> bool:
    """A function or class defined in the test suite (worth following into)."""
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        return False
    return path is not None and Path(path).resolve().is_relative_to(TESTS_DIR)


def _launcher(obj) -> str | None:
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(name, str)):
        return None
    return f"{module}.{name}" if (module, name) in LAUNCHERS else None


class _Scanner:
    """Finds, for a function, why it starts a chain or node (None: it does not)."""

    def __init__(self) -> None:
        self.cache: dict[object, str | None] = {}

    def function(self, func) -> str | None:
        func = inspect.unwrap(func)
        code = getattr(func, "__code__", None)
        if code is None:
            return None
        if code in self.cache:
            return self.cache[code]
        self.cache[code] = None  # recursion guard
        reason = self._code(code, getattr(func, "__globals__", {}))
        self.cache[code] = reason
        return reason

    def klass(self, cls) -> str | None:
        if cls in self.cache:
            return self.cache[cls]
        self.cache[cls] = None
        reason = None
        for member in vars(cls).values():
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            elif isinstance(member, property):
                member = member.fget
            if isinstance(member, types.FunctionType):
                reason = self.function(member)
                if reason:
                    break
        self.cache[cls] = reason
        return reason

    def _code(self, code: types.CodeType, glb: dict) -> str | None:
        words = _strings(code.co_consts)
        for text in words:
            if COMMAND.search(text):
                return f"runs {text.strip()!r}"
        for pair in COMMAND_WORDS:
            if words.issuperset(pair):
                return f"runs `{' '.join(pair)}`"
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                reason = self._code(const, glb)
                if reason:
                    return reason
        names = set(code.co_names)
        for name in code.co_names:
            value = glb.get(name)
            if value is None:
                continue
            reason = _launcher(value)
            if reason:
                return f"uses {reason}"
            if isinstance(value, str) and COMMAND.search(value):
                return f"runs {value.strip()!r}"
            if isinstance(value, types.ModuleType):
                for attr in names:
                    if (value.__name__, attr) in LAUNCHERS:
                        return f"uses {value.__name__}.{attr}"
            elif isinstance(value, type) and _ours(value):
                reason = self.klass(value)
                if reason:
                    return reason
            elif isinstance(value, types.FunctionType) and _ours(inspect.unwrap(value)):
                reason = self.function(value)
                if reason:
                    return reason
        return None


def slow_reason(item: pytest.Item, scanner: _Scanner | None = None) -> str | None:
    """Why the rule marks `item` slow (None: it does not)."""
    scanner = scanner or _Scanner()
    chain = CHAIN_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if chain:
        return f"uses the fixture {sorted(chain)[0]!r} (a real Anvil)"
    func = getattr(item, "obj", None)
    if func is not None:
        reason = scanner.function(func)
        if reason:
            return reason
    info = getattr(item, "_fixtureinfo", None)
    for name, defs in info.name2fixturedefs.items() if info else ():
        for fixturedef in defs:
            reason = scanner.function(fixturedef.func)
            if reason:
                return f"{reason} (fixture {name!r})"
    return None


# Every collected item, marked, before `-m` deselects any (tests/test_fast_path.py reads it).
COLLECTED = pytest.StashKey[list]()


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects by the marks set here
def pytest_collection_modifyitems(config, items):
    scanner = _Scanner()
    for item in items:
        if item.get_closest_marker("slow"):
            continue
        reason = slow_reason(item, scanner)
        if reason:
            item.add_marker(pytest.mark.slow(reason=reason))
    config.stash[COLLECTED] = list(items)


# -- the check while tests run ---------------------------------------------------------------

_running: dict[str, pytest.Item | None] = {"item": None}
_violations: dict[str, str] = {}


class StartsChainOrNode(RuntimeError):
    """A test not marked slow tried to start Anvil, a node process or a devnet."""


def launch_command(argv) -> str | None:
    """The command line, if it starts Anvil, `fai node run` or `fai devnet up|demo`."""
    parts = [argv] if isinstance(argv, (str, bytes, os.PathLike)) else argv
    text = (os.fsdecode(p) if isinstance(p, (bytes, os.PathLike)) else str(p) for p in parts)
    line = " ".join(text)
    return line if LAUNCH.search(line) else None


def _audit(event: str, args) -> None:
    if event != "subprocess.Popen":
        return
    item = _running["item"]
    if item is None or item.get_closest_marker("slow"):
        return
    try:
        line = launch_command(args[1] if args[1] is not None else args[0])
    except Exception:  # an argv Popen itself will refuse: not ours to judge
        return
    if line is None:
        return
    message = (
        f"{item.nodeid} is not marked slow but starts {line[:200]!r}: tests that start Anvil, "
        "a node process or a devnet must be slow (`make test-fast` skips them). Use a fixture "
        "or helper the rule in tests/conftest.py sees, or mark the test @pytest.mark.slow."
    )
    _violations[item.nodeid] = message
    raise StartsChainOrNode(message)


sys.addaudithook(_audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running["item"] = item
    try:
        return (yield)
    finally:
        _running["item"] = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    message = _violations.pop(item.nodeid, None)
    if message and report.passed:
        # The test caught the refusal and carried on: fail it all the same.
        report.outcome = "failed"
        report.longrepr = message
    return report


_SELF = sys.modules[__name__]


@pytest.fixture(scope="session")
def fast_path_rule():
    """This module: the rule and the runtime check, for tests/test_fast_path.py."""
    return _SELF
