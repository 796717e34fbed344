"""exporter.runtime is shipped alone inside TorchServe archives: it imports nothing of ``exporter`` outside
itself, and no third-party module but numpy, orjson and onnxruntime."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.handler_fixtures import REPO

RUNTIME = REPO / "exporter" / "runtime"
THIRD_PARTY = {"numpy", "orjson", "onnxruntime"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[str]:
    """Every module ``source`` imports, relative imports resolved against ``module``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                found.append(".".join(base + ([node.module] if node.module else [])))
            else:
                found.append(node.module or "")
    return found


def problems(source: str, module: str, is_package: bool = False) -> list[str]:
    """Imports that would break the archive: other exporter packages, unlisted third-party modules."""
    bad = []
    for name in imported_modules(source, module, is_package):
        top = name.split(".")[0]
        if name == "exporter.runtime" or name.startswith("exporter.runtime."):
            continue
        if top in sys.stdlib_module_names or top in THIRD_PARTY:
            continue
        bad.append(f"{module} imports {name}")
    return bad


def test_the_checker_catches_what_it_should() -> None:
    sample = (
        "import json\nimport pandas\nfrom exporter.features import hash_code\nfrom exporter import contract\n"
        "from exporter.runtime.rules import VOCAB_FILE\nfrom . import rules\nfrom .. import errors\n"
        "import numpy as np\n"
    )
    assert problems(sample, "exporter.runtime.handler") == [
        "exporter.runtime.handler imports pandas",
        "exporter.runtime.handler imports exporter.features",
        "exporter.runtime.handler imports exporter",
        "exporter.runtime.handler imports exporter",  # `from .. import errors` leaves the runtime package
    ]


@pytest.mark.parametrize("path", sorted(RUNTIME.rglob("*.py")), ids=lambda p: str(p.relative_to(RUNTIME)))
def test_runtime_module_imports_only_runtime_stdlib_numpy_orjson_onnxruntime(path: Path) -> None:
    assert problems(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py") == []


def test_every_runtime_module_is_checked() -> None:
    names = {p.relative_to(RUNTIME).as_posix() for p in RUNTIME.rglob("*.py")}
    assert {
        "rules.py",
        "handler.py",
        "columns.py",
        "errors.py",
        "torchserve_entry.py",
        "envelopes/torchserve.py",
        "envelopes/v2_json.py",
        "envelopes/v2_binary.py",
    } <= names
