"""Two-tower retrieval: in-batch sampled softmax, the pair split, recall@K against popularity, items.parquet."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from exporter.cli import main as cli_main
from exporter.errors import ExporterError
from exporter.export import pipeline
from exporter.models.two_tower import eval_inputs as E
from exporter.models.two_tower import sampled_softmax as S
from exporter.models.two_tower import towers as TW
from exporter.training import data as D
from exporter.training import quality_gate as V


def _ce(logits: list[float], own: int) -> float:
    """Cross-entropy of one row, written out: -log(exp(own) / sum(exp))."""
    return -(logits[own] - math.log(sum(math.exp(v) for v in logits)))


# --------------------------------------------------------------------------- the loss, by hand


def test_in_batch_softmax_with_logq_correction_by_hand():
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    item = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    q = [0.75, 0.25]  # item 0 is three times as likely to be sampled as item 1
    log_q = torch.tensor([math.log(v) for v in q], dtype=torch.float64)
    got = S.in_batch_softmax_loss(user, item, torch.tensor([0, 1]), log_q, temperature=0.5)
    # logits = <u_i, v_j> / 0.5 - log q_j: row 0 [2 - ln .75, 0 - ln .25], row 1 [0 - ln .75, 2 - ln .25]
    row0 = [2 - math.log(0.75), -math.log(0.25)]
    row1 = [-math.log(0.75), 2 - math.log(0.25)]
    assert got.item() == pytest.approx((_ce(row0, 0) + _ce(row1, 1)) / 2, abs=1e-12)
    plain = S.in_batch_softmax_loss(user, item, torch.tensor([0, 1]), None, temperature=0.5)
    assert plain.item() == pytest.approx(_ce([2.0, 0.0], 0), abs=1e-12)  # both rows alike without the correction


def test_a_repeated_item_is_not_its_own_negative():
    user = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    item = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # rows 0 and 1: the same item
    got = S.in_batch_softmax_loss(user, item, torch.tensor([5, 5, 7]), None, temperature=1.0)
    # row 0 competes with item 7 only, row 1 likewise, row 2 with both copies of item 5
    expected = (_ce([1.0, 0.0], 0) + _ce([0.6, 0.8], 0) + _ce([0.0, 0.0, 1.0], 2)) / 3
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_ranks_sharing_a_batch_give_the_whole_batchs_loss_and_gradients():
    """Three "ranks" hold parts of one batch (of unequal sizes); with ``gather`` their losses, weighted by their
    sizes, and the gradients are those of the whole batch on one machine (what the Spark ranks' all_gather and
    gradient averaging compute, with equal parts)."""
    torch.manual_seed(0)
    users = torch.nn.functional.normalize(torch.randn(9, 4, dtype=torch.float64), dim=1)
    weight = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    raw_items = torch.randn(9, 4, dtype=torch.float64)
    ids = torch.tensor([0, 1, 2, 1, 3, 4, 0, 5, 6])  # items 0 and 1 twice, across parts
    log_q = torch.log(torch.rand(9, dtype=torch.float64))
    whole = S.in_batch_softmax_loss(users, raw_items @ weight, ids, log_q, temperature=0.2)
    (expected,) = torch.autograd.grad(whole, weight)
    bounds = [(0, 3), (3, 5), (5, 9)]
    items = raw_items @ weight  # one graph: each rank's part is a slice of it, as all_gather's backward routes

    def gather_for(rank):
        def gather(tensors):  # the embeddings, the ids and log q: every rank's part of each
            assert len(tensors) == 3 and all(len(t) == len(tensors[0]) for t in tensors)
            return [[source[a:b] for a, b in bounds] for source in (items, ids, log_q)], rank

        return gather

    losses = []
    for rank, (a, b) in enumerate(bounds):
        losses.append(
            S.in_batch_softmax_loss(users[a:b], items[a:b], ids[a:b], log_q[a:b], 0.2, gather_for(rank)) * (b - a)
        )
    mean = sum(losses) / 9
    (got,) = torch.autograd.grad(mean, weight)
    assert mean.item() == pytest.approx(whole.item(), abs=1e-12)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    without = S.in_batch_softmax_loss(users[0:3], items[0:3], ids[0:3], log_q[0:3], 0.2)
    assert without.item() != pytest.approx(losses[0].item() / 3)  # without gather: only the rank's own items


def test_positive_pairs_keep_label_1_rows_and_give_sampling_probabilities():
    x = np.array([[1, 10], [2, 10], [3, 20], [4, 10], [5, 30]], dtype=np.float64)
    pos, ids, log_q = S.positive_pairs(x, {"label": np.array([1, 1, 1, 0, 1])}, "label", np.array([1]))
    assert pos[:, 0].tolist() == [1, 2, 3, 5]
    assert ids[0] == ids[1] and len({ids[0], ids[2], ids[3]}) == 3  # items 10, 10, 20, 30
    np.testing.assert_allclose(np.exp(log_q), [0.5, 0.5, 0.25, 0.25])
    everything, _, _ = S.positive_pairs(x, {}, "label", np.array([1]))  # an interactions table: every row
    assert len(everything) == 5


# --------------------------------------------------------------------------- users, items, the pair split


def test_entities_are_their_id_column_else_all_tower_columns():
    assert TW.key_columns(["user_age", "user_id", "user_gender"], "user_id") == ["user_id"]
    assert TW.key_columns(["movieId", "year"], "item_id") == ["movieId"]
    assert TW.key_columns(["shop_id", "price"], "item_id") == ["shop_id"]
    assert TW.key_columns(["paid", "genre"], "item_id") == ["paid", "genre"]  # "paid" is no ID


def test_pair_split_keeps_every_repeat_of_a_pair_on_one_side():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user_id": rng.integers(0, 30, 2000), "item_id": rng.integers(0, 40, 2000)})
    train, valid, held, rule = TW.split_by_pairs(frame, ["user_id"], ["item_id"], seed=3)
    assert len(train) + len(valid) + len(held) == 2000
    assert not set(train) & set(held) and not set(train) & set(valid) and not set(valid) & set(held)
    assert rule["key_columns"] == ["item_id", "user_id"]  # the tower columns, sorted, as the Spark engine hashes

    def pairs(rows: np.ndarray) -> set[tuple[int, ...]]:
        return set(map(tuple, frame.iloc[rows].to_numpy()))

    assert not pairs(train) & pairs(held) and not pairs(train) & pairs(valid) and not pairs(valid) & pairs(held)
    every = pairs(train) | pairs(valid) | pairs(held)
    assert 0.15 < len(pairs(held)) / len(every) < 0.25
    assert 0.05 < len(pairs(valid)) / len(every) < 0.15


def test_catalogue_is_one_row_per_item_with_its_first_known_values():
    frame = pd.DataFrame(
        {
            "item_id": [7, 3, 7, 9, 3],
            "item_category": [None, "b", "c", "d", "e"],
            "price": [1.0, 2.0, 3.0, np.nan, 5.0],
            "user_id": [1, 1, 2, 2, 3],
        }
    )
    catalogue = TW.catalogue_frame(frame, ["item_id", "item_category", "price"])
    # item 7's first row has no category: its second row's is the item's; item 9 never had a price
    assert catalogue["item_id"].tolist() == [7, 3, 9] and catalogue["item_category"].tolist() == ["c", "b", "d"]
    assert catalogue["price"].tolist()[:2] == [1.0, 2.0] and np.isnan(catalogue["price"].iloc[2])


# --------------------------------------------------------------------------- the verdict


def _retrieval_metrics(model: tuple[float, float], popular: tuple[float, float], items: int = 200) -> dict:
    return {
        "recall@10": model[0],
        "recall@50": model[1],
        "popularity_recall@10": popular[0],
        "popularity_recall@50": popular[1],
        "catalogue_items": float(items),
    }


def test_a_model_that_does_not_beat_popularity_is_flagged():
    good = V.assess(_retrieval_metrics((0.3, 0.6), (0.2, 0.5)), {})
    assert good["metric"] == "recall@50" and good["value"] == 0.6 and "warning" not in good
    assert good["baselines"]["popularity"]["recall@10"] == 0.2
    bad = V.assess(_retrieval_metrics((0.19, 0.6), (0.2, 0.5)), {})
    assert (
        "no better than recommending the most popular items" in bad["warning"] and "recall@10 0.1900" in bad["warning"]
    )
    # K = 50 over a 40-item catalogue ranks nothing: reported, not judged
    small = V.assess(_retrieval_metrics((0.5, 1.0), (0.4, 1.0), items=40), {})
    assert small["metric"] == "recall@10" and "warning" not in small


def test_min_auc_on_a_model_trained_on_positives_only_is_refused():
    quality = V.assess(_retrieval_metrics((0.3, 0.6), (0.2, 0.5)), {})
    with pytest.raises(ExporterError, match="--min-auc needs a held-out AUC"):
        V.check_min_auc(quality, 0.6, "two_tower")
    with_auc = V.assess({**_retrieval_metrics((0.3, 0.6), (0.2, 0.5)), "auc": 0.58}, {})
    with pytest.raises(V.QualityError, match="auc 0.5800 is below --min-auc 0.6"):
        V.check_min_auc(with_auc, 0.6, "two_tower")


# --------------------------------------------------------------------------- exported towers and catalogue


def test_items_parquet_is_the_item_towers_catalogue(exported_runs):
    root, runs = exported_runs
    version = root / "two_tower_item" / "1"
    meta = json.loads((version / "metadata.json").read_text())
    entry = meta["catalogue"]
    assert entry["file"] == "items.parquet"
    assert entry["sha256"] == hashlib.sha256((version / "items.parquet").read_bytes()).hexdigest()
    items = pd.read_parquet(version / "items.parquet")
    assert list(items.columns) == meta["feature_columns"] and entry["rows"] == len(items)
    prep = runs["two_tower"].prepared
    every = pd.concat([prep.train, prep.heldout])
    assert items["item_id"].is_unique and set(items["item_id"]) == set(every["item_id"])
    assert pd.api.types.is_string_dtype(items["item_category"])  # raw strings, as the data holds them
    # the item tower embeds it: every row through the graph, complete rows through the serving handler too
    from exporter.runtime.handler import ModelHandler

    raw = prep.features.subset(meta["feature_columns"]).encode(items)
    session = ort.InferenceSession(str(version / "model.onnx"))
    vectors = session.run(None, {"features": raw})[0]
    assert vectors.shape == (len(items), meta["embed_dim"])
    # unit vectors to the towers' float32 precision (their default dtype)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    complete = items.notna().all(axis=1).to_numpy()
    answer = ModelHandler.load(version).predict({"data": json.loads(items[complete].to_json(orient="records"))})
    np.testing.assert_allclose(np.asarray(answer["predictions"]), vectors[complete], atol=1e-12)
    assert not (root / "two_tower" / "1" / "items.parquet").exists(), "the catalogue sits beside the item tower only"


def test_two_tower_metadata_records_retrieval_against_popularity(exported_runs):
    root, runs = exported_runs
    for name in ("two_tower", "two_tower_item"):
        meta = json.loads((root / name / "1" / "metadata.json").read_text())
        metrics = meta["training"]["metrics"]
        for k in ("recall@10", "recall@50", "ndcg@10", "ndcg@50"):
            assert 0 <= metrics[k] <= 1 and 0 <= metrics[f"popularity_{k}"] <= 1
        assert meta["quality"]["retrieval"]["recall@10"] == pytest.approx(metrics["recall@10"], abs=1e-6)
        assert meta["training"]["hyperparameters"]["loss"] == "softmax"
    curve = runs["two_tower"].evaluation.details["retrieval"]["curve"]
    assert curve["k"] == sorted(curve["k"]) and all(np.diff(curve["model"]) >= 0)


@pytest.mark.slow
def test_trained_on_positives_it_beats_popularity_on_the_synthetic_log(tmp_path):
    result = pipeline.run(
        pipeline.ExportParams(model="two_tower", rows=20_000, seed=0, artifacts=tmp_path, progress=False)
    )
    m = result.evaluation.metrics
    assert m["catalogue_items"] > 50 and m["users_evaluated"] > 100
    for k in (10, 50):
        assert m[f"recall@{k}"] > m[f"popularity_recall@{k}"] + 0.01, m
    assert "warning" not in result.evaluation.quality
    # the user's and the item's exported vectors score the pair: a dot product of unit vectors
    user = ort.InferenceSession(str(tmp_path / "two_tower" / "1" / "model.onnx"))
    x = result.prepared.raw_heldout[:5]
    idx = [result.prepared.columns.index(c) for c in ("user_id", "user_age", "user_gender")]
    u = user.run(None, {"features": np.ascontiguousarray(x[:, idx])})[0]
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-6)  # normalised in float32


@pytest.mark.slow
def test_an_interactions_table_without_a_label_trains_on_every_row(tmp_path, capsys):
    log = D.synthetic_dataset(3000, seed=4)
    log[log["label"] == 1].drop(columns=["label", "watch_time", "gmv"]).to_csv(tmp_path / "views.csv", index=False)
    code = cli_main(
        [
            "export",
            "two_tower",
            "--data",
            str(tmp_path / "views.csv"),
            "--artifacts",
            str(tmp_path / "a"),
            "--quiet",
            "--param",
            "epochs=2",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    meta = json.loads((tmp_path / "a" / "two_tower_item" / "1" / "metadata.json").read_text())
    assert meta["training"]["label_columns"] == [] and "recall@10" in meta["training"]["metrics"]
    assert "auc" not in meta["training"]["metrics"]  # no negatives to score
    code = cli_main(
        [
            "export",
            "two_tower",
            "--data",
            str(tmp_path / "views.csv"),
            "--artifacts",
            str(tmp_path / "b"),
            "--quiet",
            "--param",
            "loss=bce",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "label column 'label'" in err and "loss bce" in err


def test_bad_retrieval_settings_are_refused(tmp_path, capsys):
    for param, message in (
        ("loss=listwise", "loss of two_tower must be softmax"),
        ("temperature=0", "temperature of two_tower must be a positive number"),
        ("logq_correction=1", "logq_correction of two_tower must be true or false"),
    ):
        assert cli_main(["export", "two_tower", "--rows", "100", "--artifacts", str(tmp_path), "--param", param]) == 2
        assert message in capsys.readouterr().err


def test_verify_checks_the_catalogue_beside_the_item_tower(exported_artifacts, tmp_path):
    import shutil

    from exporter.tools.verify import verify

    tree = tmp_path / "artifacts"
    shutil.copytree(exported_artifacts / "two_tower_item", tree / "two_tower_item")
    report = verify(tree)
    assert report.ok, report.problems
    assert "items.parquet sha256" in report.passed[0]
    catalogue = tree / "two_tower_item" / "1" / "items.parquet"
    pd.read_parquet(catalogue).head(3).to_parquet(catalogue, index=False)  # someone trims the catalogue
    report = verify(tree)
    assert not report.ok and any("sha256 of items.parquet" in p for p in report.problems)
    catalogue.unlink()
    assert any("items.parquet (metadata.json catalogue) is missing" in p for p in verify(tree).problems)


def test_a_big_log_is_evaluated_on_a_sample_of_users_against_full_popularity(monkeypatch):
    prep = pipeline.prepare(
        pipeline.ExportParams(model="two_tower", rows=4000, seed=2, hparams={"epochs": 1}, progress=False)
    )
    trained = pipeline.fit(prep)
    everyone = TW.evaluate_two_tower(prep, trained)
    n = int(everyone.metrics["users_evaluated"])
    monkeypatch.setattr(E, "MAX_EVAL_USERS", n // 2)
    sampled = TW.evaluate_two_tower(prep, trained)
    assert sampled.metrics["users_evaluated"] == n // 2 and sampled.details["retrieval"]["users_sampled"] is True
    assert everyone.details["retrieval"]["users_sampled"] is False
    monkeypatch.setattr(E, "MAX_EVAL_USERS", n)  # every user with held-out positives: the same figures
    again = TW.evaluate_two_tower(prep, trained)
    assert again.metrics == everyone.metrics
