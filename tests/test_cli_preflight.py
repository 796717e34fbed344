"""Mistakes the CLI can see before training give one line and exit 2, never a traceback.

Each case runs the real command line in this process (``exporter.cli.main``) with training forbidden, so
a case that only failed after training (or in it) fails here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exporter import cli
from exporter.export import pipeline
from exporter.training import data as D
from tests.conftest import REPO


@pytest.fixture()
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started although the input was checkable before it")

    monkeypatch.setattr(pipeline, "fit", refuse)


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    model_is_file = tmp_path / "model_is_file"
    model_is_file.mkdir()
    (model_is_file / "xgb").write_text("not a directory")
    frame = D.synthetic_dataset(300, 0)
    # the huge value sits in a held-out test row (the feature plan's statistics never see it), as row 6 of the file
    for i in range(len(frame)):
        changed = frame.copy()
        changed.loc[i, "item_price"] = 1e308
        if i in set(D.three_way_split(changed, seed=0)[2]):
            break
    order = list(range(len(frame)))
    order[5], order[i] = i, 5
    frame = changed.iloc[order].reset_index(drop=True)  # a row's side does not depend on its position
    huge = tmp_path / "huge.csv"
    frame.to_csv(huge, index=False)
    random_ubj = tmp_path / "random.ubj"
    # random bytes; xgboost quotes the first ones in its error, which then is not UTF-8
    random_ubj.write_bytes(b"\xa2\x80" + np.random.default_rng(0).bytes(4096))
    byte_json = tmp_path / "model.json"
    byte_json.write_bytes(b'{"learner": {"attributes": {}, "feature_names": ["\x80"]}, "version": [3, 2, 0]}')
    first_byte_json = tmp_path / "first.json"
    first_byte_json.write_bytes(b"\x80" + b'{"learner": {}}')
    return {
        "a_file": a_file,
        "model_is_file": model_is_file,
        "huge": huge,
        "random_ubj": random_ubj,
        "byte_json": byte_json,
        "first_byte_json": first_byte_json,
        "fresh": tmp_path / "fresh",
    }


EXPORT_CASES = {
    "artifacts is a file": (["--artifacts", "{a_file}"], ["--artifacts", "a_file is a file", "expected a directory"]),
    "artifacts inside a file": (["--artifacts", "{a_file}/sub"], ["cannot be created", "a_file is a file"]),
    "model directory is a file": (["--artifacts", "{model_is_file}"], ["xgb is a file", "must be a directory"]),
    "value beyond float32": (["--data", "{huge}"], ["item_price", "row 6", "1e+308", "xgboost can represent"]),
    "version 10**30": (
        ["--version", str(10**30)],
        ["version must be a positive integer up to 9223372036854775807", str(10**30)],
    ),
    "version 0": (["--version", "0"], ["version must be a positive integer", "got 0"]),
    "atol inf": (["--atol", "inf"], ["--atol", "finite", "inf"]),
    "atol nan": (["--atol", "nan"], ["--atol", "finite"]),
    "negative seed": (["--seed", "-1"], ["--seed", "from 0 to 4294967295", "-1"]),
    "huge seed": (["--seed", str(2**70)], ["--seed", str(2**70)]),
    "random bytes named .ubj": (
        ["--mode", "load", "--checkpoint", "{random_ubj}"],
        ["cannot load", "as an XGBoost model"],
    ),
    "json with a 0x80 byte": (["--mode", "load", "--checkpoint", "{byte_json}"], ["model.json"]),
    "json starting with 0x80": (["--mode", "load", "--checkpoint", "{first_byte_json}"], ["cannot load", "first.json"]),
}


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_export_refuses_before_training(
    case: str, inputs: dict[str, Path], no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    args, expected = EXPORT_CASES[case]
    args = [a.format(**{k: str(v) for k, v in inputs.items()}) for a in args]
    if "--artifacts" not in args:
        args += ["--artifacts", str(inputs["fresh"])]
    code = cli.main(["export", "xgb", "--rows", "200", "--param", "n_estimators=3", "--quiet", *args])
    line = _one_error_line(capsys)
    assert code == 2, line
    for fragment in expected:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert not inputs["fresh"].exists() or not any(inputs["fresh"].rglob("*"))


def test_an_existing_explicit_version_is_refused_before_training(
    tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "xgb" / "4").mkdir(parents=True)
    code = cli.main(["export", "xgb", "--rows", "200", "--version", "4", "--artifacts", str(tmp_path), "--quiet"])
    assert code == 2 and "version 4 of 'xgb' already exists" in _one_error_line(capsys)


def test_the_largest_seed_is_usable(tmp_path: Path) -> None:
    params = pipeline.ExportParams(
        model="xgb", rows=200, seed=pipeline.MAX_SEED, hparams={"n_estimators": 2}, artifacts=tmp_path, progress=False
    )
    prep = pipeline.prepare(params)
    assert len(pipeline.fit(prep).history) == 2


@pytest.mark.parametrize("port", ["70000", "-1", "65536"])
def test_serve_refuses_a_port_out_of_range(port: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["serve", "--port", port, "--artifacts", str(tmp_path)])
    line = _one_error_line(capsys)
    assert code == 2 and "--port must be from 0 to 65535" in line and port in line


def test_serve_says_artifacts_is_not_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "tree.json"
    a_file.write_text("{}")
    code = cli.main(["serve", "--artifacts", str(a_file), "--port", "0"])
    line = _one_error_line(capsys)
    assert code == 2 and "is a file, not a directory" in line and "does not exist" not in line


COMMANDS_ON_A_TREE = {
    "serve": ["serve", "--port", "0"],
    "kserve": ["kserve"],
    "bench": ["bench"],
    "score": ["score", "xgb", "--input", "IN", "--output", "OUT"],
    "archive": ["archive", "xgb", "--export-path", "OUT"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS_ON_A_TREE))
@pytest.mark.parametrize("kind", ["a file", "missing", "a device"])
def test_every_command_says_what_a_wrong_artifacts_path_is(
    command: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--artifacts a file, a path that does not exist, or a device: the same one line from every command."""
    tree = {"a file": tmp_path / "passwd", "missing": tmp_path / "nowhere", "a device": Path("/dev/null")}[kind]
    if kind == "a file":
        tree.write_text("root:x:0:0\n")
    data = tmp_path / "in.csv"
    data.write_text("item_id\n1\n")
    argv = [str(data) if a == "IN" else str(tmp_path / "out") if a == "OUT" else a for a in COMMANDS_ON_A_TREE[command]]
    code = cli.main([*argv, "--artifacts", str(tree)])
    line = _one_error_line(capsys)
    expected = {"a file": "is a file, not a directory", "missing": "does not exist", "a device": "is not a directory"}
    assert code == 2 and f"--artifacts {str(tree)!r} {expected[kind]}" in line
    assert "artifacts tree" in line


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere")
def test_export_refuses_an_unwritable_artifacts_directory(
    tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = cli.main(["export", "xgb", "--rows", "200", "--artifacts", str(locked / "art"), "--quiet"])
    assert code == 2 and "no permission to write" in _one_error_line(capsys)


def _labels_csv(tmp_path: Path, name: str, part: str, value: float) -> Path:
    """Synthetic data whose training or held-out labels (the exporter's own split, seed 0) are all ``value``.

    A row's side follows from its content, label included: the rows that land in ``part`` once their label is
    ``value`` get it, and rows that would land there only with their own other label are dropped."""
    frame = D.synthetic_dataset(300, 0)
    which = 0 if part == "training" else 2  # the index of the part in three_way_split's answer

    def in_part(f: pd.DataFrame) -> np.ndarray:
        mask = np.zeros(len(f), dtype=bool)
        mask[D.three_way_split(f, seed=0)[which]] = True
        return mask

    relabelled = frame.assign(**{D.LABEL: value})
    there_as_value, there_as_is = in_part(relabelled), in_part(frame)
    frame.loc[there_as_value, D.LABEL] = value
    frame = frame[there_as_value | ~there_as_is].reset_index(drop=True)
    assert (frame.loc[in_part(frame), D.LABEL] == value).all()
    assert frame[D.LABEL].nunique() == 2  # the file as a whole has both classes
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("model", ["xgb", "deepfm"])
@pytest.mark.parametrize("part,value", [("training", 0.0), ("training", 1.0), ("held-out", 0.0)])
def test_single_class_labels_are_named_before_training(
    model: str, part: str, value: float, tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _labels_csv(tmp_path, "clicks.csv", part, value)
    code = cli.main(["export", model, "--data", str(data), "--artifacts", str(tmp_path / "art"), "--quiet"])
    line = _one_error_line(capsys)
    assert code == 2
    assert f"the {part} labels 'label' hold one class (all {value:g}" in line, line
    assert "parity" not in line and "nan" not in line.lower()


def test_the_command_line_help_imports_no_training_framework():
    """``--help`` (and every mistake the parser catches) must not wait for torch: it took 6 s, and a Ctrl-C in
    those seconds was a traceback."""
    import subprocess
    import sys

    code = "import sys; from exporter.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.slow
def test_sigterm_stops_a_run_like_ctrl_c_with_nothing_half_written(tmp_path):
    """``kill``, ``docker stop`` and ``timeout`` send SIGTERM: the export stops through its clean-up (exit 143,
    one line), as on Ctrl-C, instead of dying wherever it was."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.Popen(
        [sys.executable, "-m", "exporter", *"export deepfm --rows 20000 --no-tracking".split(),
         *"--param max_epochs=500 --param patience=0".split(), "--artifacts", str(tmp_path / "art")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(12)  # well into training (500 epochs, no early stopping: a minute or more)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated" and "Traceback" not in err
    assert not [p for p in (tmp_path / "art").rglob("*") if p.name.isdigit() or p.name.startswith(".staging")]
