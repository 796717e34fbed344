"""The optimiser every torch model trains with: Adam, with sparse row-wise updates of large embedding tables.

A dense Adam step reads and writes every row of every embedding table, touched by the batch or not, so its
cost grows with the number of distinct IDs: at 600k rows (users plus items of a 20M-row log) it took 19 ms of a
21 ms step on a 2-core machine, against 2.4 ms with sparse gradients. :class:`RowWiseAdam` is Adam for the
network's dense weights (fused) and, for tables with sparse gradients, the row-wise ("lazy") Adam of
``torch.optim.SparseAdam`` and TensorFlow's ``LazyAdam``: only the rows a batch looked up move, and their
moments decay only when they are looked up. Weight decay applies to those rows (L2 on the gradient, as Adam's
``weight_decay``). For a small table a dense step is cheaper and the exact Adam of earlier runs, so the
hyper-parameter ``embedding_gradients`` defaults to ``auto``: sparse from :data:`SPARSE_MIN_PARAMETERS`
embedding parameters.

Both keep float32 **denormals** (magnitudes below about 1.2e-38) out of the weights and Adam's moments
(:func:`flush_denormals`, every :data:`FLUSH_EVERY` steps). Adam with weight decay drives a weight that gets no
gradient from the data (a dead ReLU unit's) geometrically to zero, through the denormal range, where a CPU
computes about a hundred times slower; a weight merely tiny (1e-30) makes denormal products. On the 1M-row
synthetic log a deepfm with a 20-item history had 1,436 of its first deep layer's 12,288 weights denormal after
2,500 steps; setting weights and moments below the square root of the smallest normal number to zero took one
epoch from 9,218 to 29,792 rows/s (without the history 39,572 to 81,584; AUC 0.7974 against 0.7971 and 0.7808
against 0.7810; 2026-12-07, this 2-core machine). Zero is what those weights converge to. The CPU's flush-to-zero
mode (``torch.set_flush_denormal``) is no substitute: it covers only the calling thread, not the threads a matrix
product runs on (a 5,120 x 64 by 64 x 64 product with denormal weights: 26.8 ms on two threads with it set, 0.44 ms
on one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

#: hyper-parameter ``embedding_gradients``: auto (by the tables' size), sparse or dense
EMBEDDING_GRADIENTS = ("auto", "sparse", "dense")
DEFAULT_EMBEDDING_GRADIENTS = "auto"
#: under ``auto``, embedding tables of at least this many parameters (rows x width, every table) get sparse
#: gradients: measured at batch 256 on 2 cores, dense and sparse steps cost the same near 120k rows of width 17
SPARSE_MIN_PARAMETERS = 2_000_000


def embedding_parameters(net: nn.Module) -> int:
    """Parameters held by the network's embedding tables."""
    return sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Embedding))


def use_sparse_gradients(net: nn.Module, choice: str) -> bool:
    """Whether ``net``'s embedding tables should get sparse gradients under ``embedding_gradients=choice``."""
    if choice not in EMBEDDING_GRADIENTS:
        raise ValueError(f"embedding_gradients must be one of {', '.join(EMBEDDING_GRADIENTS)}, not {choice!r}")
    return choice == "sparse" or (choice == "auto" and embedding_parameters(net) >= SPARSE_MIN_PARAMETERS)


def set_sparse_gradients(net: nn.Module, sparse: bool) -> None:
    """Make every embedding table of ``net`` produce sparse (or dense) gradients; the weights are unchanged."""
    for m in net.modules():
        if isinstance(m, nn.Embedding):
            m.sparse = sparse


def embedding_gradients(net: nn.Module) -> str:
    """How ``net``'s embedding tables are updated: ``sparse`` (row-wise) or ``dense`` (what metadata records)."""
    return "sparse" if any(isinstance(m, nn.Embedding) and m.sparse for m in net.modules()) else "dense"


#: the weights and moments are cleared of denormals every this many optimiser steps (a weight takes hundreds of
#: steps to cross the denormal range; a pass over a dense table of 2M parameters costs a few milliseconds)
FLUSH_EVERY = 64


def flush_below(dtype: torch.dtype) -> float:
    """Magnitudes below this are set to zero: the square root of ``dtype``'s smallest normal number (about 1.1e-19
    in float32), so that a flushed value times any value at least as large can never be denormal. A weight that
    small adds nothing a float32 sum of the network's activations can represent."""
    return math.sqrt(torch.finfo(dtype).tiny)


def flush_denormals(tensors: Iterable[torch.Tensor]) -> None:
    """Set the values of floating-point ``tensors`` below :func:`flush_below` to zero, in place (sparse tensors are
    skipped)."""
    with torch.no_grad():
        for t in tensors:
            if t.is_floating_point() and t.layout == torch.strided and t.numel():
                t.masked_fill_(t.abs() < flush_below(t.dtype), 0.0)


class Adam(torch.optim.Adam):
    """Fused Adam whose weights and moments are cleared of denormals every :data:`FLUSH_EVERY` steps."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, fused=True)
        self.steps_taken = 0

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        loss = self._update(closure)
        self.steps_taken += 1
        if self.steps_taken % FLUSH_EVERY == 0:
            flush_denormals(self.dense_tensors())
        return loss

    def _update(self, closure: Callable[[], float] | None) -> Any:
        return super().step(closure)

    def dense_tensors(self) -> list[torch.Tensor]:
        """Each densely updated parameter and its moments (a sparse table's rows move, and decay, only when looked
        up: scanning it every few steps would cost more than its step)."""
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    continue
                out.append(p)
                out += [v for k, v in self.state.get(p, {}).items() if k != "step" and isinstance(v, torch.Tensor)]
        return out


class RowWiseAdam(Adam):
    """Adam (fused) for dense gradients; row-wise Adam for sparse ones (the embedding tables' looked-up rows)."""

    def _update(self, closure: Callable[[], float] | None) -> Any:
        sparse = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    sparse.append((group, p, p.grad))
                    p.grad = None  # the fused step skips a parameter without a gradient
        try:
            loss = super()._update(closure)
        finally:
            for _, p, grad in sparse:
                p.grad = grad
        for group, p, grad in sparse:
            self._row_step(group, p, grad)
        return loss

    def _row_step(self, group: Mapping[str, Any], p: torch.Tensor, grad: torch.Tensor) -> None:
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        if rows.numel() == 0:
            return
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        step = float(state["step"])
        beta1, beta2 = group["betas"]
        lr, eps, decay = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        weights = p.index_select(0, rows)
        if decay:
            values = values.add(weights, alpha=decay)
        m = state["exp_avg"].index_select(0, rows).mul_(beta1).add_(values, alpha=1.0 - beta1)
        v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1.0 - beta2)
        state["exp_avg"].index_copy_(0, rows, m)
        state["exp_avg_sq"].index_copy_(0, rows, v)
        bias1, bias2 = 1.0 - beta1**step, 1.0 - beta2**step
        denominator = v.div(bias2).sqrt_().add_(eps)
        p.index_copy_(0, rows, weights.addcdiv_(m, denominator, value=-lr / bias1))


def make_optimizer(
    net: nn.Module,
    learning_rate: float,
    weight_decay: float = 0.0,
    embedding_gradients: str = DEFAULT_EMBEDDING_GRADIENTS,
    *,
    sparse_allowed: bool = True,
) -> torch.optim.Adam:
    """The optimiser for ``net``; it switches the embedding tables to sparse gradients when
    ``embedding_gradients`` says so (``auto``: by their size). ``sparse_allowed=False`` keeps them dense whatever
    the choice: data-parallel ranks average dense gradients.
    """
    sparse = sparse_allowed and use_sparse_gradients(net, embedding_gradients)
    set_sparse_gradients(net, sparse)
    if sparse:
        return RowWiseAdam(net.parameters(), lr=learning_rate, weight_decay=weight_decay)
    return Adam(net.parameters(), lr=learning_rate, weight_decay=weight_decay)
