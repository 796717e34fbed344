"""Bad input: one clear line on stderr, exit code 2 (3 for the parity gate), no traceback, artifacts untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from exporter.training import data as D
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # every case runs the CLI in a child process


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under root with its content hash: any change shows up."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def good_tree(tmp_path_factory) -> Path:
    """A repository holding one good xgb version that every bad run must leave alone."""
    root = tmp_path_factory.mktemp("good") / "artifacts"
    result = run_cli(
        "export", "xgb", "--rows", "2000", "--param", "n_estimators=20", "--artifacts", str(root), "--quiet"
    )
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory, exported_artifacts) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    df = D.synthetic_dataset(300, 1)
    out = {"good": d / "good.csv"}
    df.to_csv(out["good"], index=False)
    df.drop(columns=["item_cvr"]).to_csv(d / "nofeature.csv", index=False)
    df.drop(columns=["label"]).to_csv(d / "nolabel.csv", index=False)
    text = df.copy()
    text["item_price"] = text["item_price"].astype(object)
    text.loc[5, "item_price"] = "cheap"
    text.to_csv(d / "text.csv", index=False)
    nan = df.copy()  # an empty feature cell is a missing value now; an empty label cell is not a label
    nan.loc[7, "label"] = float("nan")
    nan.to_csv(d / "nan.csv", index=False)
    inf = df.copy()
    inf.loc[9, "item_ctr"] = float("inf")
    inf.to_parquet(d / "inf.parquet")
    (d / "no_columns_meta.json").write_text(json.dumps({"columns": ["item_ctr"]}))
    (d / "not_json_meta.json").write_text("feature_columns: [a]")
    (d / "garbage.pt").write_bytes(b"definitely not a checkpoint")
    # a checkpoint whose tensors do not fit the architecture its config describes
    ckpt = torch.load(exported_artifacts / "deepfm" / "1" / "checkpoint.pt", weights_only=True)
    ckpt["state_dict"]["num_embedding"] = torch.zeros(7, 3, dtype=torch.float64)
    torch.save(ckpt, d / "wrong_shapes.pt")
    for name in ("nofeature", "nolabel", "text", "nan"):
        out[name] = d / f"{name}.csv"
    out.update(
        inf=d / "inf.parquet",
        no_columns_meta=d / "no_columns_meta.json",
        not_json_meta=d / "not_json_meta.json",
        garbage=d / "garbage.pt",
        wrong_shapes=d / "wrong_shapes.pt",
        mmoe_ckpt=exported_artifacts / "mmoe" / "1" / "checkpoint.pt",
        xgb_model=exported_artifacts / "xgb" / "1" / "model.ubj",
        xgb_meta=exported_artifacts / "xgb" / "1" / "feature_meta.json",
    )
    return out


CASES = {
    "missing data file": (["xgb", "--data", "{missing}"], ["data file not found", "missing.csv"]),
    "missing feature column": (["xgb", "--data", "{nofeature}"], ["missing feature column", "item_cvr"]),
    "missing label column": (["deepfm", "--data", "{nolabel}"], ["label column 'label'", "is missing"]),
    "non-numeric value": (["xgb", "--data", "{text}"], ["item_price", "row 6", "'cheap'", "not a number"]),
    "NaN label": (["mmoe", "--data", "{nan}"], ["label column 'label'", "row 8", "empty cell", "expected 0 or 1"]),
    "infinite value": (["xgb", "--data", "{inf}"], ["item_ctr", "row 10", "not a finite number"]),
    "wrong checkpoint type": (
        ["deepfm", "--mode", "load", "--checkpoint", "{mmoe_ckpt}"],
        ["'mmoe'", "expected 'deepfm'"],
    ),
    "checkpoint with wrong shapes": (
        ["deepfm", "--mode", "load", "--checkpoint", "{wrong_shapes}"],
        ["num_embedding", "wrong shapes"],
    ),
    "not a checkpoint": (
        ["mmoe", "--mode", "load", "--checkpoint", "{garbage}"],
        ["cannot load checkpoint", "weights_only"],
    ),
    "not an xgboost model": (
        ["xgb", "--mode", "load", "--checkpoint", "{garbage}", "--feature-meta", "{xgb_meta}"],
        ["cannot load", "XGBoost model"],
    ),
    "feature-meta without feature_columns": (
        ["xgb", "--mode", "load", "--checkpoint", "{xgb_model}", "--feature-meta", "{no_columns_meta}"],
        ["no 'feature_columns'"],
    ),
    "feature-meta not JSON": (["xgb", "--feature-meta", "{not_json_meta}"], ["not valid JSON"]),
    "unknown model name": (["lightgbm"], ["unknown model 'lightgbm'", "xgb, deepfm, mmoe, two_tower"]),
    "unknown mode": (["xgb", "--mode", "finetune"], ["unknown mode 'finetune'"]),
    "load mode without checkpoint": (["deepfm", "--mode", "load"], ["load mode needs --checkpoint"]),
    "unknown hyper-parameter": (["xgb", "--param", "n_trees=3"], ["unknown hyper-parameter", "n_trees"]),
    "columns absent from synthetic data": (["xgb", "--feature-columns", "item_ctr,clicks_7d"], ["clicks_7d", "--data"]),
    "existing version": (["xgb", "--version", "1"], ["version 1 of 'xgb' already exists"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_clear_line_and_leaves_artifacts_alone(case, files, good_tree):
    args, expected = CASES[case]
    args = [a.format(missing=Path(files["good"]).parent / "missing.csv", **files) for a in args]
    before = snapshot(good_tree)
    result = run_cli("export", *args, "--artifacts", str(good_tree), "--quiet")
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for fragment in expected:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert snapshot(good_tree) == before


def test_parity_failure_exits_non_zero_and_writes_nothing(good_tree):
    before = snapshot(good_tree)
    result = run_cli(
        "export",
        "xgb",
        "--rows",
        "2000",
        "--param",
        "n_estimators=20",
        "--atol",
        "1e-12",
        "--artifacts",
        str(good_tree),
        "--quiet",
    )
    assert result.returncode == 3, result.stderr
    assert "parity check failed" in result.stderr and "atol 1e-12" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(good_tree) == before


def test_parity_failure_in_a_fresh_tree_leaves_no_directory(tmp_path):
    from exporter.errors import ParityError
    from exporter.export import pipeline

    params = pipeline.ExportParams(
        model="two_tower", rows=1000, hparams={"epochs": 1}, artifacts=tmp_path / "art", progress=False, atol=0.0
    )
    # float64 torch vs onnxruntime can agree exactly; perturb the native side so the gate must trip
    prep = pipeline.prepare(params)
    trained = pipeline.fit(prep)
    original = trained.units

    def skewed_units():
        units = original()
        import dataclasses

        return [dataclasses.replace(u, native_predict=lambda x, f=u.native_predict: f(x) + 1e-3) for u in units]

    trained.units = skewed_units
    gap = r"two_tower column \d+: max \|native - onnxruntime\| = 0.001 > atol 0 \+ rtol"
    with pytest.raises(ParityError, match=gap):
        pipeline.export(prep, trained, pipeline.evaluate(prep, trained))
    assert not (tmp_path / "art").exists() or list((tmp_path / "art").iterdir()) == []


def test_failure_while_writing_rolls_back_both_towers(tmp_path, monkeypatch):
    """A crash after the first tower is committed must not leave a lone two_tower version behind."""
    from exporter.export import pipeline, repository

    params = pipeline.ExportParams(
        model="two_tower", rows=1000, hparams={"epochs": 1}, artifacts=tmp_path, progress=False
    )
    prep = pipeline.prepare(params)
    trained = pipeline.fit(prep)
    evaluation = pipeline.evaluate(prep, trained)
    real_rename = repository.os.rename
    calls = []

    def flaky_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_rename(src, dst)

    monkeypatch.setattr(repository.os, "rename", flaky_rename)
    from exporter.errors import ExporterError

    with pytest.raises(ExporterError, match="disk full"):
        pipeline.export(prep, trained, evaluation)
    assert list(tmp_path.iterdir()) == []


def test_cli_help_explains_every_option():
    result = run_cli("export", "--help")
    assert result.returncode == 0
    for option in (
        "--artifacts",
        "--version",
        "--data",
        "--rows",
        "--seed",
        "--mode",
        "--checkpoint",
        "--feature-meta",
        "--atol",
    ):
        assert option in result.stdout
    top = run_cli("--help")
    assert top.returncode == 0 and "export" in top.stdout


def test_snapshot_detects_a_changed_artifact(tmp_path, good_tree):
    """The snapshot notices a change (so the untouched-artifacts assertions above can fail)."""
    copy = tmp_path / "copy"
    shutil.copytree(good_tree, copy)
    before = snapshot(copy)
    (copy / "xgb" / "1" / "metadata.json").write_text("{}")
    assert snapshot(copy) != before
