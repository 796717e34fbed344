"""Hyper-parameters that would allocate more than a machine holds or train for hours are refused before training.

Each case runs the real command line in this process with training forbidden: exit 2 and one line that names
the hyper-parameter and its bound (the rule's text, also shown by ``--help`` of the model's notebook knobs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter import cli
from exporter.export import pipeline
from exporter.training import hparams as H


@pytest.fixture()
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started although the hyper-parameters were checkable before it")

    monkeypatch.setattr(pipeline, "fit", refuse)


def _tasks(n: int) -> str:
    return json.dumps([{"name": f"t{i}", "label": "label", "type": "binary"} for i in range(n)])


CASES = {
    "embed_dim=1e9": ("deepfm", "embed_dim=1000000000", ["embed_dim", "up to 1,024", "1000000000"]),
    "hidden=[1e9]": ("deepfm", "hidden=[1000000000]", ["hidden", "up to 4,096", "[1000000000]"]),
    "17 layers": ("deepfm", "hidden=" + json.dumps([8] * 17), ["hidden", "at most 16 layers"]),
    "two_tower hidden=1e9": ("two_tower", "hidden=1000000000", ["hidden", "up to 4,096"]),
    "n_experts=1e6": ("mmoe", "n_experts=1000000", ["n_experts", "up to 64", "1000000"]),
    "n_estimators=1e12": ("xgb", "n_estimators=1000000000000", ["n_estimators", "up to 10,000"]),
    "epochs=1e12": ("deepfm", "epochs=1000000000000", ["epochs", "up to 1,000"]),
    "patience=-1": ("deepfm", "patience=-1", ["patience", "up to 1,000", "got -1"]),
    "max_epochs=0": ("mmoe", "max_epochs=0", ["max_epochs", "up to 1,000", "got 0"]),
    "max_epochs=2.5": ("two_tower", "max_epochs=2.5", ["max_epochs", "positive integer", "2.5"]),
    "epochs and max_epochs": ("deepfm", "epochs=3", ["epochs", "max_epochs", "give one"]),
    "early_stopping_rounds=-1": ("xgb", "early_stopping_rounds=-1", ["early_stopping_rounds", "up to 10,000"]),
    "lr_schedule=cosine": ("deepfm", 'lr_schedule="cosine"', ["lr_schedule", "plateau"]),
    "1000 tasks": ("mmoe", "tasks=" + _tasks(1000), ["tasks", "1000 tasks", "at most 32"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_unbounded_hyper_parameter_is_refused_before_training(
    case: str, tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    model, param, expected = CASES[case]
    extra = ["--param", "max_epochs=5"] if case == "epochs and max_epochs" else []
    code = cli.main(
        ["export", model, "--rows", "200", "--param", param, *extra, "--artifacts", str(tmp_path), "--quiet"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for fragment in expected:
        assert fragment in err[0], f"{fragment!r} not in {err[0]!r}"
    assert not any(tmp_path.rglob("*"))


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("deepfm", ["embed_dim=1024", "hidden=[4096, 4096, 4096]"]),
        ("mmoe", ["n_experts=64", "expert_dim=4096"]),
        ("two_tower", ["field_embed_dim=1024", "hidden=4096"]),
        ("xgb", ["n_estimators=10000", "max_depth=30"]),
    ],
)
def test_parameters_beyond_the_available_memory_are_refused_before_training(
    model: str,
    params: list[str],
    tmp_path: Path,
    no_training: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each value within its bound, together more than the machine (here: 64 MiB) holds."""
    monkeypatch.setattr(H, "available_memory", lambda: 64 * 2**20)
    args = ["export", model, "--rows", "2000", "--artifacts", str(tmp_path), "--quiet"]
    code = cli.main(args + [a for p in params for a in ("--param", p)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"hyper-parameters of {model} need about" in err[0] and "0.1 GiB of memory are available" in err[0], err


def test_the_defaults_fit_and_the_estimate_counts_tables_and_layers() -> None:
    from exporter.models import get_spec

    cards = [0, 0, 0, 101, 51, 9]
    for name in ("xgb", "deepfm", "mmoe", "two_tower"):
        need = H.parameter_estimate(get_spec(name).default_hparams, cards, 10_000)
        assert 0 < need < 64 * 2**20, (name, need)
    small = H.parameter_estimate({"embed_dim": 8, "hidden": [64]}, cards, 10_000)
    wider = H.parameter_estimate({"embed_dim": 8, "hidden": [128]}, cards, 10_000)
    bigger_table = H.parameter_estimate({"embed_dim": 8, "hidden": [64]}, [*cards, 100_000], 10_000)
    assert small < wider and bigger_table - small >= 100_000 * 8 * H.TRAINING_BYTES_PER_PARAMETER


def test_the_rules_state_their_bounds() -> None:
    for key, bound in H.UPPER.items():
        assert f"{bound:,}" in H.RULES[key][1], key


def test_export_help_states_every_bound(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    out = capsys.readouterr().out
    assert "n_estimators (default 2000): a positive integer up to 10,000" in out, out
    assert "tasks: a list of 1 to 32" in out and "at most 16" in out, out
