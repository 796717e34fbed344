"""The README's promises about the project itself: its two commands, and CI running the same test command."""

from __future__ import annotations

import re

from tests.conftest import REPO


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and text.index(block.group(0)) < 200, "the README must open with its commands"
    return [line.strip() for line in block.group(1).strip().splitlines()]


def test_readme_opens_with_setup_and_test_commands():
    setup, test = _readme_commands()
    assert "pip install -r requirements.txt" in setup and setup.endswith("python -m exporter notebooks")
    assert test.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command_after_installing_requirements():
    lines = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    install = next(i for i, line in enumerate(lines) if "pip install" in line and "-r requirements.txt" in line)
    readme_test = _readme_commands()[1].split("&&")[-1].strip()
    assert lines[-1] == readme_test and install < len(lines) - 1


def test_torch_is_pinned_to_the_local_cpu_build():
    reqs = (REPO / "requirements.txt").read_text().splitlines()
    assert "torch==2.13.0" in reqs
    assert not any(r.startswith("xgboost==") for r in reqs), "xgboost pulls a CUDA/NCCL build; use xgboost-cpu"
