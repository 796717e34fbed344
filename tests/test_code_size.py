"""Size limits that keep the package readable, checked with ``ast`` (no imports, runs in well under a second).

- A module in ``exporter/`` has at most :data:`MAX_MODULE_LINES` lines, unless its docstring says why it is
  longer on a line starting with :data:`LONG_MARKER` followed by the reason.
- A function (or method) in ``exporter/runtime/`` or ``exporter/serving/`` has at most :data:`MAX_FUNCTION_LINES`
  lines, from its ``def`` to its last line: these packages are what a serving team reads first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "exporter"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
LONG_MARKER = "Why this module is long:"
#: packages whose functions must stay short
SHORT_FUNCTION_PACKAGES = ("runtime", "serving")


def _modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _line_count(source: str) -> int:
    return len(source.splitlines())


def stated_length_reason(source: str) -> str | None:
    """The reason after :data:`LONG_MARKER` in the module docstring, or None when there is none."""
    docstring = ast.get_docstring(ast.parse(source)) or ""
    for line in docstring.splitlines():
        text = line.strip()
        if text.startswith(LONG_MARKER):
            reason = text[len(LONG_MARKER) :].strip()
            return reason or None
    return None


def module_problem(source: str, limit: int = MAX_MODULE_LINES) -> str | None:
    """What is wrong with a module's length, or None."""
    lines = _line_count(source)
    if lines <= limit or stated_length_reason(source):
        return None
    return (
        f"{lines} lines (limit {limit}): split it, or state the reason in its docstring "
        f"on a line starting {LONG_MARKER!r}"
    )


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``name (line N): L lines`` for every function or method (nested ones too) longer than ``limit``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                found.append((node.lineno, f"{node.name} (line {node.lineno}): {length} lines"))
    return [text for _, text in sorted(found)]


# ------------------------------------------------------------------------------------ the checks themselves
def test_module_rule_flags_a_long_module_without_a_reason() -> None:
    body = "x = 1\n" * 10
    assert module_problem(f'"""Short docstring."""\n{body}', limit=5) is not None
    stated = f'"""Doc.\n\n{LONG_MARKER} one table of rules, read top to bottom.\n"""\n'
    assert module_problem(stated + body, limit=5) is None
    assert module_problem(f'"""Doc.\n\n{LONG_MARKER}\n"""\n{body}', limit=5) is not None, "the marker needs a reason"
    assert module_problem(f'"""Doc: long, see above."""\n{body}', limit=5) is not None, "the word alone is no reason"
    assert module_problem(f"# {LONG_MARKER} a comment is not the docstring\n{body}", limit=5) is not None
    assert module_problem(body, limit=10) is None


def test_function_rule_flags_long_functions_methods_and_nested_ones() -> None:
    source = (
        "def short():\n    return 1\n\n"
        "def long_one():\n" + "    x = 1\n" * 6 + "\n"
        "class C:\n    async def method(self):\n" + "        y = 2\n" * 6 + "\n"
        "def outer():\n    def inner():\n" + "        z = 3\n" * 6 + "    return inner\n"
    )
    found = long_functions(source, limit=5)
    assert [f.split(" ")[0] for f in found] == ["long_one", "method", "outer", "inner"]
    assert found[0] == "long_one (line 4): 7 lines"
    assert long_functions("def f():\n    return 1\n", limit=5) == []


# ------------------------------------------------------------------------------------ the package
MODULES = _modules(PACKAGE)
SHORT_FUNCTION_MODULES = [p for p in MODULES if p.relative_to(PACKAGE).parts[0] in SHORT_FUNCTION_PACKAGES]


def test_the_package_is_where_the_checks_look() -> None:
    assert len(MODULES) > 20 and (PACKAGE / "runtime" / "handler.py") in SHORT_FUNCTION_MODULES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_module_is_short_or_says_why(path: Path) -> None:
    problem = module_problem(path.read_text(encoding="utf-8"))
    assert problem is None, f"{path.relative_to(REPO)}: {problem}"


@pytest.mark.parametrize("path", SHORT_FUNCTION_MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_runtime_and_serving_functions_are_short(path: Path) -> None:
    found = long_functions(path.read_text(encoding="utf-8"))
    assert not found, (
        f"{path.relative_to(REPO)}: functions over {MAX_FUNCTION_LINES} lines (split them): {'; '.join(found)}"
    )
