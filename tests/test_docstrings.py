"""Every public name of the core and of the client API says what it is for.

`fai_core` is the logic other code builds on, and `fai_net/api/client.py` and
`fai_net/telemetry/openai_agents.py` are what agent authors import, so their public
names need a docstring: the source is read statically (no import), and the test fails
listing every public module-level class and function, and every public method of a
public class, that has none. Dunder methods, property setters and `@overload` stubs are
not asked for (the getter, the implementation and the class document them).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLIENT_MODULES = ("fai_net/api/client.py", "fai_net/telemetry/openai_agents.py")

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def checked_files() -> list[Path]:
    return sorted(REPO.glob("fai_core/**/*.py")) + [REPO / path for path in CLIENT_MODULES]


def _top_level(body: list[ast.stmt]) -> Iterator[Definition]:
    """Definitions at module level, including those under a module-level if/try/with."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for block in ("body", "orelse", "finalbody"):
                yield from _top_level(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                yield from _top_level(handler.body)


def _exempt(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A property setter or an `@overload` stub."""
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Attribute) and decorator.attr == "setter":
            return True
        name = decorator.attr if isinstance(decorator, ast.Attribute) else None
        if isinstance(decorator, ast.Name):
            name = decorator.id
        if name == "overload":
            return True
    return False


def undocumented(source: str) -> list[tuple[int, str]]:
    """(line, qualified name) of every public definition in `source` without a docstring."""
    missing = []
    for node in _top_level(ast.parse(source).body):
        if node.name.startswith("_"):
            continue
        if isinstance(node, ast.ClassDef):
            if ast.get_docstring(node) is None:
                missing.append((node.lineno, node.name))
            for member in node.body:
                if (
                    isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef)
                    and not member.name.startswith("_")
                    and not _exempt(member)
                    and ast.get_docstring(member) is None
                ):
                    missing.append((member.lineno, f"{node.name}.{member.name}"))
        elif not _exempt(node) and ast.get_docstring(node) is None:
            missing.append((node.lineno, node.name))
    return missing


def test_checks_the_modules_it_names() -> None:
    files = checked_files()
    assert all(path.is_file() for path in files)
    names = {path.relative_to(REPO).as_posix() for path in files}
    assert {"fai_core/library.py", "fai_core/ingest/common.py", *CLIENT_MODULES} <= names


def test_finds_what_it_should() -> None:
    source = '''
from typing import overload

class Public:
    """Documented."""

    def method(self): pass

    @property
    def value(self):
        """Documented."""

    @value.setter
    def value(self, v): pass

    def __eq__(self, other): pass

    def _private(self): pass

class _Private:
    def method(self): pass

@overload
def f(x: int) -> int: ...

def f(x):
    pass

async def g():
    """Documented."""

if True:
    def h(): pass
'''
    # The overload stub is exempt, the undocumented implementation is not.
    assert [name for _, name in undocumented(source)] == ["Public.method", "f", "h"]


def test_every_public_name_has_a_docstring() -> None:
    missing = [
        f"{path.relative_to(REPO).as_posix()}:{line}: {name}"
        for path in checked_files()
        for line, name in undocumented(path.read_text(encoding="utf-8"))
    ]
    assert not missing, "public names without a docstring:\n" + "\n".join(missing)
