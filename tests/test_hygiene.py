"""The tree's own hygiene: code and docs say what things do, not which ticket or reviewer they came from, and
every file they cite exists.

Scanned: ``exporter/``, ``tools/``, ``tests/``, ``benchmarks/``, ``docs/``, ``notebooks/`` and ``README.md``
(Python, Markdown, notebooks, config text).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("exporter", "tools", "tests", "benchmarks", "docs", "notebooks")
SUFFIXES = {".py", ".md", ".ipynb", ".txt", ".toml", ".ini", ".yaml", ".yml", ".cfg"}

#: a ticket number ("issue 10", "Issue #3", "issues 8, 9", a branch name such as "issue8-features")
ISSUE_NUMBER = re.compile(r"\bissues? ?#?\d+", re.IGNORECASE)
#: notes addressed to the people merging rather than to readers of the code
PROCESS_NOTE = re.compile(r"\b(?:for|to) the (?:lead|reviewer)\b|\bmerge notes?\b", re.IGNORECASE)

CITED_TEST = re.compile(r"\btests/[\w/]+\.py\b")
BARE_TEST = re.compile(r"(?<![\w/])test_\w+\.py\b")
CITED_PACKAGE_PATH = re.compile(r"\bexporter/[a-z0-9_/]+(?:\.py\b|/)")

#: Paths the docs describe ahead of the code that adds them (docs/architecture.md is written against the
#: layout being built). Each entry must not exist yet: once the file lands, this test says to drop the entry.
DOCUMENTED_AHEAD: set[str] = set()


def scanned_files() -> list[Path]:
    """Every scanned file but this one (its examples must show what the patterns catch)."""
    files = [REPO / "README.md"]
    for name in SCANNED_DIRS:
        files += [
            p
            for p in sorted((REPO / name).rglob("*"))
            if p.is_file()
            and p.suffix in SUFFIXES
            and "__pycache__" not in p.parts
            and ".ipynb_checkpoints" not in p.parts
        ]
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def _hits(pattern: re.Pattern[str]) -> list[str]:
    found = []
    for path in scanned_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in pattern.finditer(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {match.group(0)!r} in {line.strip()[:120]!r}")
    return found


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("# --- issue 11: the v2 sample", ISSUE_NUMBER),
        ('"""Issue 10, break 4: ..."""', ISSUE_NUMBER),
        ("(issue #3)", ISSUE_NUMBER),
        ("before issues 8 and 9", ISSUE_NUMBER),
        ("git merge issue8-features", ISSUE_NUMBER),
        ("## Notes for the lead", PROCESS_NOTE),
        ("see the merge notes", PROCESS_NOTE),
    ],
)
def test_the_patterns_catch_what_they_are_for(text: str, pattern: re.Pattern[str]) -> None:
    assert pattern.search(text)


@pytest.mark.parametrize("text", ["see tissue 5", "the issuer 12", "an issue with ties"])
def test_the_patterns_leave_ordinary_words_alone(text: str) -> None:
    assert not ISSUE_NUMBER.search(text) and not PROCESS_NOTE.search(text)


def test_no_ticket_numbers_in_code_or_docs() -> None:
    hits = _hits(ISSUE_NUMBER)
    assert not hits, "say what the code does instead of citing a ticket:\n" + "\n".join(hits)


def test_no_notes_addressed_to_whoever_merges() -> None:
    hits = _hits(PROCESS_NOTE)
    assert not hits, "process notes belong in commit messages, not in the tree:\n" + "\n".join(hits)


def test_every_cited_test_file_exists() -> None:
    missing = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8")
        cited = set(CITED_TEST.findall(text)) | {f"tests/{name}" for name in BARE_TEST.findall(text)}
        missing += [f"{path.relative_to(REPO)}: {c}" for c in sorted(cited) if not (REPO / c).is_file()]
    assert not missing, "cited test files that do not exist:\n" + "\n".join(missing)


def test_every_cited_package_path_exists() -> None:
    missing = []
    for path in scanned_files():
        for cited in sorted(set(CITED_PACKAGE_PATH.findall(path.read_text(encoding="utf-8")))):
            if cited not in DOCUMENTED_AHEAD and not (REPO / cited).exists():
                missing.append(f"{path.relative_to(REPO)}: {cited}")
    assert not missing, "cited package paths that do not exist:\n" + "\n".join(missing)


def test_paths_documented_ahead_of_the_code_do_not_exist_yet() -> None:
    landed = sorted(p for p in DOCUMENTED_AHEAD if (REPO / p).exists())
    assert not landed, f"{landed} exist now: remove them from DOCUMENTED_AHEAD in {Path(__file__).name}"
