"""Embedding tables with sparse gradients: row-wise Adam, chosen by the tables' size, recorded in metadata."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from exporter.errors import ExporterError
from exporter.models import optimiser as opt
from tests.conftest import export_small


def _steps(table: nn.Embedding, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor]) -> None:
    for rows in batches:
        optimizer.zero_grad(set_to_none=True)
        (table(rows) ** 2).sum().backward()
        optimizer.step()


@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_row_wise_adam_is_adam_when_every_row_is_looked_up(decay):
    torch.manual_seed(0)
    dense = nn.Embedding(12, 4)
    sparse = copy.deepcopy(dense)
    start = dense.weight.detach().clone()
    every_row = [torch.arange(12)] * 6
    _steps(dense, opt.make_optimizer(dense, 0.01, decay, "dense"), every_row)
    _steps(sparse, opt.make_optimizer(sparse, 0.01, decay, "sparse"), every_row)
    assert sparse.weight.grad is not None and sparse.weight.grad.is_sparse
    assert not dense.weight.grad.is_sparse
    torch.testing.assert_close(sparse.weight, dense.weight, rtol=1e-5, atol=1e-6)
    assert (sparse.weight - start).abs().min() > 0  # every row moved


def test_rows_a_batch_does_not_look_up_stay_put_and_their_moments_do_not_decay():
    torch.manual_seed(0)
    table = nn.Embedding(10, 3)
    before = table.weight.detach().clone()
    optimizer = opt.make_optimizer(table, 0.1, 0.01, "sparse")
    _steps(table, optimizer, [torch.tensor([1, 1, 4])])
    moved = (table.weight.detach() != before).any(dim=1)
    assert moved.tolist() == [i in (1, 4) for i in range(10)]
    first_moment = optimizer.state[table.weight]["exp_avg"].clone()
    _steps(table, optimizer, [torch.tensor([7])])
    assert torch.equal(optimizer.state[table.weight]["exp_avg"][[1, 4]], first_moment[[1, 4]])
    assert (table.weight.detach() != before).any(dim=1).tolist() == [i in (1, 4, 7) for i in range(10)]


def test_the_dense_layers_beside_a_sparse_table_are_trained_by_the_fused_step():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(8, 1))
    linear_before = net[2].weight.detach().clone()
    optimizer = opt.make_optimizer(net, 0.05, 0.0, "sparse")
    assert isinstance(optimizer, opt.RowWiseAdam)
    optimizer.zero_grad()
    net(torch.tensor([[3, 5]])).sum().backward()
    optimizer.step()
    assert not torch.equal(net[2].weight, linear_before)
    assert net[0].weight.grad.is_sparse  # the step leaves the gradients as backward made them


def test_a_changed_learning_rate_reaches_the_row_wise_step():
    """The plateau schedule lowers ``lr`` in the parameter groups between epochs."""
    table = nn.Embedding(5, 2)
    optimizer = opt.make_optimizer(table, 0.1, 0.0, "sparse")
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    before = table.weight.detach().clone()
    _steps(table, optimizer, [torch.tensor([0, 2])])
    assert torch.equal(table.weight, before)


def test_auto_is_sparse_only_for_large_tables_and_never_where_gradients_are_averaged():
    small = nn.Embedding(1000, 16)
    large = nn.Embedding(opt.SPARSE_MIN_PARAMETERS // 16 + 1, 16)
    assert type(opt.make_optimizer(small, 0.01)) is opt.Adam and opt.embedding_gradients(small) == "dense"
    assert isinstance(opt.make_optimizer(large, 0.01), opt.RowWiseAdam) and opt.embedding_gradients(large) == "sparse"
    assert type(opt.make_optimizer(large, 0.01, sparse_allowed=False)) is opt.Adam
    assert opt.embedding_gradients(large) == "dense"  # switched back: the ranks average dense gradients
    assert isinstance(opt.make_optimizer(small, 0.01, embedding_gradients="sparse"), opt.RowWiseAdam)
    with pytest.raises(ValueError, match="auto, sparse, dense"):
        opt.make_optimizer(small, 0.01, embedding_gradients="fast")


def test_an_export_with_sparse_gradients_records_them_and_passes_parity(tmp_path):
    result = export_small("deepfm", tmp_path, hparams={"epochs": 2, "embedding_gradients": "sparse"}, threads=1)
    meta = json.loads((result.artifacts[0].path / "metadata.json").read_text())
    assert meta["training"]["hyperparameters"]["embedding_gradients"] == "sparse"
    assert meta["training"]["early_stopping"]["embedding_gradients"] == "sparse"
    assert meta["parity"]["passed"]
    ckpt = torch.load(result.artifacts[0].path / "checkpoint.pt", weights_only=True)
    assert not any(v.is_sparse for v in ckpt["state_dict"].values())


def test_the_default_export_of_a_small_table_stays_dense(exported_artifacts):
    meta = json.loads((exported_artifacts / "deepfm" / "1" / "metadata.json").read_text())
    assert meta["training"]["hyperparameters"]["embedding_gradients"] == "auto"
    assert meta["training"]["early_stopping"]["embedding_gradients"] == "dense"


def test_an_unknown_choice_is_refused_before_training(tmp_path):
    with pytest.raises(ExporterError, match="embedding_gradients.*auto"):
        export_small("mmoe", tmp_path, hparams={"epochs": 1, "embedding_gradients": "fast"}, threads=1)


def _denormals(t: torch.Tensor) -> int:
    a = t.detach().abs()
    return int(((a > 0) & (a < torch.finfo(t.dtype).tiny)).sum())


def test_weights_without_a_data_gradient_decay_through_denormals_and_are_flushed_to_zero():
    """Adam's weight decay drives weights that the data never moves towards zero through the denormal range
    (plain fused Adam shows it); the exporter's optimisers set them, and their moments, to zero instead."""
    results = {}
    for name, make in (
        ("torch", lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01, fused=True)),
        ("dense", lambda p: opt.Adam(p, lr=0.01, weight_decay=0.01)),
        ("row-wise", lambda p: opt.RowWiseAdam(p, lr=0.01, weight_decay=0.01)),
    ):
        torch.manual_seed(0)
        w = nn.Parameter(torch.randn(1000) * 0.1)
        optimizer = make([w])
        for _ in range(32 * opt.FLUSH_EVERY):
            optimizer.zero_grad()
            (w * 0.0).sum().backward()
            optimizer.step()
        results[name] = (_denormals(w), _denormals(optimizer.state[w]["exp_avg"]), int((w == 0).sum()))
    assert results["torch"][0] > 100 and results["torch"][1] > 100, results
    for name in ("dense", "row-wise"):
        assert results[name][:2] == (0, 0) and results[name][2] > 100, results


def test_flush_zeroes_values_whose_products_could_be_denormal_and_skips_sparse_and_integer_tensors():
    tiny = torch.finfo(torch.float32).tiny
    assert opt.flush_below(torch.float32) ** 2 == pytest.approx(tiny)
    t = torch.tensor([tiny / 4, -tiny / 2, 1e-25, -1e-20, 2e-19, -1e-10, 0.5, float("nan")])
    ids = torch.tensor([1, 2, 3])
    sparse = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.tensor([tiny / 4]), (3,))
    opt.flush_denormals([t, ids, sparse])
    assert t[:4].tolist() == [0.0] * 4 and t[4:7].tolist() == torch.tensor([2e-19, -1e-10, 0.5]).tolist()
    assert torch.isnan(t[7]) and ids.tolist() == [1, 2, 3]
    assert sparse.coalesce().values().tolist() == [tiny / 4]
    wide = torch.tensor([1e-100, 1e-160], dtype=torch.float64)  # float64's own bound, about 1.5e-154
    opt.flush_denormals([wide])
    assert wide.tolist() == [1e-100, 0.0]


def test_the_kept_weights_and_their_average_are_flushed_when_training_ends():
    """The weights exported (the last epoch's average here; the best epoch's when early stopping restores one)."""
    from exporter.models import torch_common as tc

    tiny = torch.finfo(torch.float32).tiny
    net = nn.Linear(4, 2)
    with torch.no_grad():
        net.weight.fill_(0.25)
        net.weight[0, :2] = tiny / 8
    stopping = tc.EarlyStopping(
        net, opt.make_optimizer(net, 0.01), max_epochs=1, patience=0, lr_schedule="none", learning_rate=0.01,
        has_validation=False, ema_decay=0.9,
    )  # fmt: skip
    stopping.after_step()  # the average holds the denormal weights too
    stopping.end_epoch(1, 0.5, float("nan"))
    stopping.finish()
    assert _denormals(net.weight) == 0 and net.weight[0, :2].tolist() == [0.0, 0.0]
    assert net.weight[1].tolist() == pytest.approx([0.25] * 4)
