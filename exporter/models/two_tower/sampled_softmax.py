"""In-batch sampled softmax with the log-popularity (logQ) correction: how retrieval towers are trained.

Each training example is a positive (user, item) pair. Within a batch of B pairs, user i's positive is
item i and the other B - 1 items of the batch are its negatives, so one [B, B] matrix of scores trains
both towers at the cost of a matrix product. Items enter a batch as often as they occur among the
positives, so popular items are over-sampled as negatives; subtracting the log of each item's sampling
probability from its logits corrects that bias (Yi et al., "Sampling-bias-corrected neural modeling for
large corpus item recommendations", RecSys 2019):

    logit[i, j] = <u_i, v_j> / temperature - log q(item_j)
    loss        = mean_i cross_entropy(logit[i, :], i)

A batch may hold the same item twice: such an entry j != i is the user's positive too, not a negative,
so it is masked out of the softmax.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from exporter.errors import ExporterError


def in_batch_softmax_loss(
    user: torch.Tensor, item: torch.Tensor, item_ids: torch.Tensor, log_q: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """Mean cross-entropy of each user's own item against the batch's items (see the module docstring).

    ``user``, ``item``: [B, D] embeddings of B positive pairs; ``item_ids``: [B] integer identities (equal ids
    are masked as duplicates); ``log_q``: [B] log sampling probability of each row's item, or ``None``.
    """
    logits = user @ item.T / temperature
    if log_q is not None:
        logits = logits - log_q.to(logits.dtype).unsqueeze(0)
    ids = item_ids.to(torch.long)
    duplicate = (ids.unsqueeze(1) == ids.unsqueeze(0)) & ~torch.eye(len(ids), dtype=torch.bool, device=ids.device)
    logits = logits.masked_fill(duplicate, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(ids), device=logits.device))


def positive_pairs(
    x: np.ndarray, y: Mapping[str, np.ndarray], label: str, item_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows of positive pairs, item identity per row, log sampling probability per row).

    Positives are the rows whose ``label`` is 1, or every row when there is no label (an interactions table).
    An item is identified by its prepared item-tower row: two items the towers cannot tell apart are one item
    to the loss too. Its sampling probability is its share of the positives.
    """
    keep = np.asarray(y[label]) == 1 if label in y else np.ones(len(x), dtype=bool)
    pos = np.ascontiguousarray(x[keep])
    if len(pos) == 0:
        return pos, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    _, ids, counts = np.unique(pos[:, item_idx], axis=0, return_inverse=True, return_counts=True)
    ids = ids.reshape(-1).astype(np.int64)
    return pos, ids, np.log(counts[ids] / len(pos))


def check_positives(n: int, label: str, has_label: bool) -> None:
    if n == 0:
        where = f"rows with {label} = 1" if has_label else "rows"
        raise ExporterError(f"two_tower: no positive pairs to train on (no training {where})")
