"""A team's own click log through the command line: integer IDs, string categories, empty cells, its own label.

Every model exports it with no hand preprocessing; the graph sends unseen, odd and missing values to the
out-of-vocabulary row; the handler takes raw strings and codes alike; bad labels, --min-auc, --model-name and a
tensor-shape clash with an existing model behave as documented (docs/features.md).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from exporter.runtime.handler import ModelHandler
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # trains and exports through the CLI in child processes

GENRES = ["rock", "jazz", "pop", "folk", "blues"]
SMALL = ["--param", "epochs=3"]
HPARAMS = {
    "xgb": ["--param", "n_estimators=30"],
    "deepfm": ["--param", "epochs=5", "--param", "batch_size=64"],
    "mmoe": SMALL,
    "two_tower": SMALL,
}
COLUMNS = ["user_id", "user_segment", "item_id", "item_genre", "price"]


def click_log(n: int, seed: int, *, random_labels: bool = False) -> pd.DataFrame:
    """Users with a favourite genre; clicks when the genre matches and the price is low. A few empty cells."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1000, 1040, n)
    favourite = np.array(GENRES)[users % 5]
    items = rng.integers(1, 80, n)
    genre = np.array(GENRES)[(items * 7) % 5]
    price = rng.uniform(1.0, 40.0, n)
    logit = 3.0 * (genre == favourite) - 0.06 * price - 0.2
    clicked = rng.random(n) < 1 / (1 + np.exp(-logit))
    if random_labels:
        clicked = rng.random(n) < 0.4
    frame = pd.DataFrame(
        {
            "user_id": users,
            "user_segment": np.where(users % 2 == 0, "even", "odd"),
            "item_id": items,
            "item_genre": genre,
            "price": price,
            "clicked": clicked.astype(int),
            "watch_time": np.round(rng.uniform(5, 60, n) * (1 + clicked), 2),
            "gmv": np.round(clicked * price, 2),
        }
    )
    frame.loc[::19, "price"] = np.nan
    frame.loc[::23, "item_genre"] = None
    frame.loc[::29, "user_id"] = np.nan  # an empty ID cell turns the column into floats: still IDs
    return frame


@pytest.fixture(scope="module")
def log_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("own-log") / "log.csv"
    click_log(5000, 1).to_csv(path, index=False)
    text = path.read_text()
    assert ",," in text, "the file must hold empty cells"
    return path


@pytest.fixture(scope="module")
def exported(log_csv, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """All four models exported from the CSV through the CLI (labels: clicked, watch_time, gmv)."""
    root = tmp_path_factory.mktemp("own-artifacts")
    out = {}
    for model in ("xgb", "deepfm", "mmoe", "two_tower"):
        result = run_cli(
            "export",
            model,
            "--data",
            str(log_csv),
            "--label",
            "clicked",
            "--artifacts",
            str(root),
            "--quiet",
            *HPARAMS[model],
        )
        assert result.returncode == 0, result.stderr
        out[model] = (root, result.stdout)
    return out


@pytest.mark.parametrize("model", ["xgb", "deepfm", "mmoe", "two_tower"])
def test_every_model_exports_the_csv_and_says_how_it_read_it(exported, model):
    root, stdout = exported[model]
    assert "every column but the label(s)" in stdout and "is a feature" in stdout
    assert "item_genre" in stdout and "categorical inferred" in stdout
    names = ["two_tower", "two_tower_item"] if model == "two_tower" else [model]
    run = run_cli("verify", str(root))
    assert run.returncode == 0, run.stdout + run.stderr
    for name in names:
        meta = json.loads((root / name / "1" / "metadata.json").read_text())
        assert meta["parity"]["passed"] and meta["parity"]["probe_rows"] > 0
        assert meta["training"]["label_columns"][0] == "clicked"
        feats = {f["name"]: f for f in meta["features"]}
        assert list(feats) == meta["feature_columns"]
        if "item_genre" in feats:
            genre = feats["item_genre"]
            assert (genre["kind"], genre["dtype"], genre["oov"]["unknown_code"]) == ("categorical", "string", -1)
            vocab_path = root / name / "1" / genre["vocab"]["file"]
            assert genre["vocab"]["sha256"] == hashlib.sha256(vocab_path.read_bytes()).hexdigest()
            assert sorted(json.loads(vocab_path.read_text())["item_genre"]) == sorted(GENRES)
        if "price" in feats:
            price = feats["price"]
            assert price["kind"] == "numeric" and 0 < price["stats"]["missing_rate"] < 0.1
            assert price["fill"] == pytest.approx(price["stats"]["median"])
        if "user_id" in feats:
            assert (feats["user_id"]["kind"], feats["user_id"]["dtype"]) == ("categorical", "int64")
    towers = {n: json.loads((root / n / "1" / "metadata.json").read_text())["feature_columns"] for n in names}
    if model == "two_tower":
        assert towers == {
            "two_tower": ["user_id", "user_segment"],
            "two_tower_item": ["item_id", "item_genre", "price"],
        }
    else:
        assert towers[model] == COLUMNS


def test_ctr_models_learn_the_ids_and_categories(exported):
    root, _ = exported["deepfm"]
    auc = json.loads((root / "deepfm" / "1" / "metadata.json").read_text())["training"]["metrics"]["auc"]
    assert auc > 0.7, "the genre match is only learnable through the user ID and the genre string"


@pytest.mark.parametrize("model", ["xgb", "deepfm", "mmoe"])
def test_graph_sends_unseen_odd_and_missing_ids_to_one_oov_row(exported, model):
    """Unseen IDs, non-integers, NaN, +-inf and IDs beyond 2^53 all give the same answer (the OOV row), finite."""
    root, _ = exported[model]
    session = ort.InferenceSession(str(root / model / "1" / "model.onnx"))
    base = [1000.0, 0.0, 5.0, 1.0, 10.0]  # a known user and item, genre code 1, price 10
    odd_ids = [99999.0, -3.0, 1000.5, np.nan, np.inf, -np.inf, 2.0**60, 1e300]
    x = np.array([base] + [[v, *base[1:]] for v in odd_ids] + [[*base[:3], -1.0, 10.0], [*base[:3], 77.0, 10.0]])
    out = session.run(None, {"features": x})[0]
    assert np.isfinite(out).all()
    oov = out[1 : 1 + len(odd_ids)]
    np.testing.assert_allclose(oov, np.repeat(oov[:1], len(odd_ids), axis=0), rtol=0, atol=1e-12)
    if model != "xgb":  # trees need not split on every ID; an embedding row always differs
        assert not np.allclose(out[0], oov[0]), "a known ID must not land on the OOV row"
    np.testing.assert_allclose(out[-2], out[-1], rtol=0, atol=1e-12)  # unknown code -1 and code 77: both OOV
    # NaN price means the training median
    meta = json.loads((root / model / "1" / "metadata.json").read_text())
    median = next(f for f in meta["features"] if f["name"] == "price")["fill"]
    filled = session.run(None, {"features": np.array([[*base[:4], np.nan], [*base[:4], median]])})[0]
    np.testing.assert_allclose(filled[0], filled[1], rtol=0, atol=1e-12)


def test_handler_takes_raw_strings_and_codes_alike(exported):
    root, _ = exported["deepfm"]
    handler = ModelHandler.load(root / "deepfm" / "1")
    vocab = json.loads((root / "deepfm" / "1" / "vocab.json").read_text())
    rows = [
        {"user_id": 1000, "user_segment": "even", "item_id": 5, "item_genre": g, "price": 10.0}
        for g in vocab["item_genre"]
    ]
    coded = [dict(r, item_genre=i, user_segment=vocab["user_segment"].index("even")) for i, r in enumerate(rows)]
    by_string = handler.predict({"data": rows})["predictions"]
    by_code = handler.predict({"data": coded})["predictions"]
    assert by_string == by_code and len(set(by_string)) == len(rows), "each genre has its own row"
    v2 = handler.predict(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [len(coded), 5],
                    "datatype": "FP64",
                    "data": [[float(r[c]) for c in COLUMNS] for r in coded],
                }
            ]
        }
    )
    np.testing.assert_allclose(v2["outputs"][0]["data"], by_code, rtol=0, atol=1e-12)
    unknown = handler.predict({"data": [dict(rows[0], item_genre="polka"), dict(rows[0], item_genre=-1)]})[
        "predictions"
    ]
    assert unknown[0] == unknown[1]


def test_handler_rules_for_ids_and_optional_columns(exported, tmp_path):
    root, _ = exported["deepfm"]
    handler = ModelHandler.load(root / "deepfm" / "1")
    row = {"user_id": 1000, "user_segment": "even", "item_id": 5, "item_genre": "rock", "price": 10.0}
    for value, fragment in (
        (1000.5, "is 1000.5, not an integer ID"),
        (2**60, "not an integer ID"),
        ("1000", 'a string ("1000")'),
        (True, "a boolean"),
    ):
        status, body = handler.handle_bytes(json.dumps({"data": [row, dict(row, user_id=value)]}))
        error = json.loads(body)["error"]
        assert status == 400, error
        assert 'data[1]["user_id"]' in error and fragment in error
    # user_id, price and item_genre had empty training cells: optional, an empty value is what training filled;
    # user_segment had none: an empty value there is a client's mistake
    features = {f["name"]: f["optional"] for f in handler.metadata["features"]}
    assert features == {"user_id": True, "user_segment": False, "item_id": False, "item_genre": True, "price": True}
    status, body = handler.handle_bytes(json.dumps({"data": [dict(row, user_id=None)]}))
    assert status == 200, body
    status, body = handler.handle_bytes(json.dumps({"data": [row, dict(row, user_segment=None)]}))
    assert status == 400 and 'data[1]["user_segment"] is null' in json.loads(body)["error"]
    missing = {k: v for k, v in row.items() if k != "user_segment"}
    status, body = handler.handle_bytes(json.dumps({"data": [missing]}))
    error = json.loads(body)["error"]
    assert status == 400 and 'data[0] is missing feature column "user_segment" (not optional)' in error
    v2 = {"inputs": [{"name": "features", "shape": [1, 5], "datatype": "FP64", "data": [1000.25, 0, 5, 0, 10]}]}
    status, body = handler.handle_bytes(json.dumps(v2))
    error = json.loads(body)["error"]
    assert status == 400 and 'row 0, column "user_id" is 1000.25, not an integer ID' in error

    # the same model with only price and item_genre optional: absent or null means fill / OOV
    meta_path = root / "deepfm" / "1" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    for f in meta["features"]:
        f["optional"] = f["name"] in ("price", "item_genre")
    copy = tmp_path / "deepfm" / "1"
    copy.mkdir(parents=True)
    for p in meta_path.parent.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "metadata.json").write_text(json.dumps(meta))
    optional = ModelHandler.load(copy)
    fill = next(f["fill"] for f in meta["features"] if f["name"] == "price")
    got = optional.predict(
        {
            "data": [
                {"user_id": 1000, "user_segment": "even", "item_id": 5},
                dict(row, price=None, item_genre=None),
                dict(row, price=fill, item_genre="no such genre"),
            ]
        }
    )["predictions"]
    assert got[0] == got[1] == got[2]


def test_bad_label_is_exit_2_naming_column_row_and_value(tmp_path):
    frame = click_log(300, 2)
    frame.loc[4, "clicked"] = 2
    frame.to_csv(tmp_path / "bad.csv", index=False)
    result = run_cli(
        "export",
        "xgb",
        "--data",
        str(tmp_path / "bad.csv"),
        "--label",
        "clicked",
        "--artifacts",
        str(tmp_path / "art"),
        "--quiet",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: data file {tmp_path / 'bad.csv'}: label column 'clicked' row 5: value 2 is not a binary label; "
        "expected 0 or 1 (or true/false)"
    ]
    missing = run_cli(
        "export", "xgb", "--data", str(tmp_path / "bad.csv"), "--artifacts", str(tmp_path / "art"), "--quiet"
    )
    assert missing.returncode == 2 and "label column 'label'" in missing.stderr and "is missing" in missing.stderr
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("streaming", ["off", "on"])
def test_bad_label_in_a_directory_names_the_file_and_its_row(tmp_path, streaming):
    """Read in memory, a directory's files are one table: the error still names the file and the row in it."""
    data = tmp_path / "log"
    data.mkdir()
    first, second = click_log(300, 2), click_log(300, 3)
    first["clicked"], second["clicked"] = first["clicked"].astype(str), second["clicked"].astype(str)  # "0", "1"
    second.loc[5, "clicked"] = "maybe"
    first.to_parquet(data / "part-0.parquet", index=False)
    second.to_parquet(data / "part-1.parquet", index=False)
    art = tmp_path / "art"
    args = ("export", "xgb", "--data", str(data), "--label", "clicked", "--streaming", streaming)
    result = run_cli(*args, "--artifacts", str(art), "--quiet")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: data file {data / 'part-1.parquet'}: label column 'clicked' row 6: value 'maybe' is not a binary "
        "label; expected 0 or 1 (or true/false)"
    )
    assert not art.exists()


@pytest.mark.parametrize("values", [("0", "1"), ("false", "True"), (" 0", "1.0")])
def test_labels_written_as_text_are_binary_labels(values):
    """A Parquet string column of "0"/"1" (or true/false) is the label it says, as those values are in a CSV."""
    from exporter.training.inputs import binary_labels

    frame = pd.DataFrame({"clicked": [values[1], values[0], values[0], values[1], None]})
    got = binary_labels(frame.iloc[:4], "clicked", source="data file t.parquet")
    assert got.tolist() == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(Exception, match=r"t.parquet: label column 'clicked' row 5: an empty cell is not a binary"):
        binary_labels(frame, "clicked", source="data file t.parquet")


def test_schema_file_names_the_label_and_the_kinds(tmp_path, log_csv):
    schema = {
        "label": "clicked",
        "features": [
            {"name": "item_id", "kind": "categorical", "min_count": 1},
            {"name": "price", "fill": 0.0, "optional": True},
            {"name": "user_id", "kind": "numeric"},
            {"name": "item_genre", "kind": "categorical", "hash_buckets": 8},
        ],
    }
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    result = run_cli(
        "export",
        "xgb",
        "--data",
        str(log_csv),
        "--schema",
        str(tmp_path / "schema.json"),
        "--artifacts",
        str(tmp_path / "art"),
        "--quiet",
        "--param",
        "n_estimators=10",
    )
    assert result.returncode == 0, result.stderr
    assert "columns from schema" in result.stdout and "(optional, fill 0)" in result.stdout
    meta = json.loads((tmp_path / "art" / "xgb" / "1" / "metadata.json").read_text())
    feats = {f["name"]: f for f in meta["features"]}
    assert meta["feature_columns"] == ["item_id", "price", "user_id", "item_genre"]
    assert not (tmp_path / "art" / "xgb" / "1" / "vocab.json").exists(), "hashed strings need no vocabulary"
    assert feats["price"]["fill"] == 0.0 and feats["price"]["optional"] is True
    assert feats["user_id"]["kind"] == "numeric" and feats["item_id"]["oov"]["min_count"] == 1
    assert feats["item_genre"]["oov"] == {
        "policy": "hash",
        "hash_buckets": 8,
        "row": "1 + (value mod hash_buckets)",
        "string_code": "sha256-48",
        "oov_row": 0,
        "oov_values": "unknown, non-integer, beyond +-2^53 or missing",
    }
    from exporter.features import hash_code

    handler = ModelHandler.load(tmp_path / "art" / "xgb" / "1")
    rows = [{"item_id": 5, "user_id": 1000, "item_genre": g} for g in GENRES]  # price is optional
    by_string = handler.predict({"data": rows})["predictions"]
    by_code = handler.predict({"data": [dict(r, item_genre=hash_code(r["item_genre"])) for r in rows]})["predictions"]
    assert by_string == by_code


def test_chance_level_model_warns_and_min_auc_writes_nothing(tmp_path):
    click_log(1500, 3, random_labels=True).to_csv(tmp_path / "noise.csv", index=False)
    art = tmp_path / "art"
    args = [
        "export",
        "xgb",
        "--data",
        str(tmp_path / "noise.csv"),
        "--label",
        "clicked",
        "--artifacts",
        str(art),
        "--quiet",
        "--param",
        "n_estimators=20",
    ]
    warned = run_cli(*args)
    assert warned.returncode == 0, warned.stderr
    assert "WARNING: held-out auc" in warned.stdout and "no better than chance" in warned.stdout
    meta = json.loads((art / "xgb" / "1" / "metadata.json").read_text())
    assert meta["quality"]["value"] < 0.55 and "no better than chance" in meta["quality"]["warning"]

    def tree() -> dict[str, str]:
        return {
            str(p.relative_to(art)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(art.rglob("*"))
        }

    before = tree()
    refused = run_cli(*args, "--min-auc", "0.6")
    assert refused.returncode == 4
    assert "below --min-auc 0.6; nothing was written" in refused.stderr
    assert tree() == before


def test_model_name_and_tensor_shape_clash(tmp_path, log_csv):
    art = tmp_path / "art"
    first = run_cli("export", "deepfm", "--rows", "500", "--artifacts", str(art), "--quiet", *SMALL)
    assert first.returncode == 0, first.stderr
    before = (art / "deepfm" / "config.pbtxt").read_text()
    clash = run_cli(
        "export", "deepfm", "--data", str(log_csv), "--label", "clicked", "--artifacts", str(art), "--quiet", *SMALL
    )
    assert clash.returncode == 2
    message = clash.stderr.strip().splitlines()[-1]
    assert "model 'deepfm'" in message and "[-1, 10]" in message and "[-1, 5]" in message and "--model-name" in message
    assert (art / "deepfm" / "config.pbtxt").read_text() == before and not (art / "deepfm" / "2").exists()

    renamed = run_cli(
        "export",
        "deepfm",
        "--data",
        str(log_csv),
        "--label",
        "clicked",
        "--artifacts",
        str(art),
        "--quiet",
        "--model-name",
        "deepfm_shop",
        *SMALL,
    )
    assert renamed.returncode == 0, renamed.stderr
    meta = json.loads((art / "deepfm_shop" / "1" / "metadata.json").read_text())
    assert meta["name"] == "deepfm_shop" and meta["inputs"][0]["shape"] == [-1, 5] and meta["model_part"] == "deepfm"
    assert 'name: "deepfm_shop"' in (art / "deepfm_shop" / "config.pbtxt").read_text()
    towers = run_cli(
        "export",
        "two_tower",
        "--data",
        str(log_csv),
        "--label",
        "clicked",
        "--artifacts",
        str(art),
        "--quiet",
        "--model-name",
        "tt_shop",
        *SMALL,
    )
    assert towers.returncode == 0, towers.stderr
    item = json.loads((art / "tt_shop_item" / "1" / "metadata.json").read_text())
    assert item["name"] == "tt_shop_item" and item["related_models"] == ["tt_shop"]
    assert run_cli("verify", str(art)).returncode == 0
    bad = run_cli("export", "xgb", "--rows", "200", "--artifacts", str(art), "--model-name", "../up")
    assert bad.returncode == 2 and "not usable as a repository directory" in bad.stderr


def test_torchserve_archive_with_vocab_answers_raw_strings(exported, tmp_path):
    """A .mar needs vocab.json beside metadata.json (``archive`` ships it); without it the handler refuses to
    load (no silent OOV)."""
    import importlib.util
    import zipfile
    from types import SimpleNamespace

    from exporter.export.archive import build_archive

    root, _ = exported["deepfm"]
    vdir = root / "deepfm" / "1"
    result = build_archive("deepfm/1", tmp_path / "store", root)
    assert result.files == ("model.onnx", "metadata.json", "vocab.json")
    model_dir = tmp_path / "model_dir"
    with zipfile.ZipFile(result.path) as mar:
        mar.extractall(model_dir)
    context = SimpleNamespace(
        system_properties={"model_dir": str(model_dir)}, manifest={"model": {"serializedFile": "model.onnx"}}
    )

    def fresh():
        spec = importlib.util.spec_from_file_location(
            f"ts_entry_{len(list(tmp_path.iterdir()))}", model_dir / "torchserve_entry.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    row = {"user_id": 1000, "user_segment": "odd", "item_id": 7, "item_genre": "jazz", "price": 12.5}
    [answer] = fresh().handle([{"body": json.dumps({"data": [row]}).encode()}], context)
    assert json.loads(answer) == ModelHandler.load(vdir).predict({"data": [row]})
    (model_dir / "vocab.json").unlink()
    module = fresh()
    with pytest.raises(module.ArtifactError, match="vocab.json' named by metadata.json is missing"):
        module.initialize(context)


def test_an_id_column_beyond_2_53_is_refused_unless_declared(tmp_path):
    frame = click_log(300, 2)[["user_id", "item_id", "clicked"]]
    frame = frame.assign(user_id=frame["user_id"].fillna(1000).astype(np.int64).astype(object))
    # the CSV column is then objects, which used to become strings silently; the held-out sample request has it too
    frame.loc[4::2, "user_id"] = 2**64
    frame.to_csv(tmp_path / "big.csv", index=False)
    args = ["export", "deepfm", "--data", str(tmp_path / "big.csv"), "--label", "clicked", "--quiet", *SMALL]
    refused = run_cli(*args, "--artifacts", str(tmp_path / "art"))
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith(
        f"error: data file {tmp_path / 'big.csv'}: column 'user_id' row 5: ID 18446744073709551616 is beyond 2^53"
    ), refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "art").exists()
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"features": [{"name": "user_id", "kind": "categorical"}, "item_id"]}))
    declared = run_cli(*args, "--schema", str(schema), "--artifacts", str(tmp_path / "art2"))
    assert declared.returncode == 0, declared.stderr
    meta = json.loads(next((tmp_path / "art2").glob("*/1/metadata.json")).read_text())
    assert meta["features"][0]["name"] == "user_id" and meta["features"][0]["dtype"] == "string"
