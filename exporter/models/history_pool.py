"""History fields of the torch models: a list of item IDs pooled into embeddings (mean, and DIN attention).

A history column (docs/features.md) reaches a network as ``max_length`` prepared columns holding embedding rows
(the OOV row 0 for unknown items) and -1 for "no item". :class:`HistoryPool` turns each history into one field,
the masked mean of its items' embeddings (an empty history gives zeros), plus, when the candidate item is a
field of the same network (the categorical column whose vocabulary the history shares), a target-attention
field as in DIN: a small MLP scores every item against the candidate's embedding, a softmax over the present
items weights them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from exporter.errors import ExporterError

#: per history: its prepared columns, the offset of its rows in the network's embedding table, and the field
#: index of its candidate item (None: mean pooling only)
HistorySpec = tuple[list[int], int, int | None]


def layout(
    histories: Sequence[Mapping[str, Any]],
    cards: Sequence[int],
    cat: Sequence[int],
    offsets: np.ndarray,
    size: int,
    attention: bool,
) -> tuple[list[HistorySpec], list[int], int]:
    """Where each history's embeddings live: the rows of the categorical field whose vocabulary it shares, else
    a block of its own appended to the table. Returns the specs, the own blocks' offsets (their OOV rows start at
    zero) and the table's new size."""
    specs: list[HistorySpec] = []
    own: list[int] = []
    for h in histories:
        target = h.get("target")
        field = list(cat).index(int(target)) if target is not None and int(target) in cat else None
        if field is not None and int(cards[cat[field]]) == int(h["rows"]):
            offset = int(offsets[field])
        else:
            field = None
            offset, size = size, size + int(h["rows"])
            own.append(offset)
        specs.append(([int(j) for j in h["columns"]], offset, field if attention else None))
    return specs, own, size


class HistoryPool(nn.Module):
    """The history fields of one :class:`~exporter.models.torch_common.FieldInput` (see the module docstring)."""

    def __init__(self, specs: Sequence[HistorySpec], embed_dim: int) -> None:
        super().__init__()
        self.specs = [(list(c), int(o), f) for c, o, f in specs]
        self.n_fields = sum(1 + (f is not None) for _, _, f in self.specs)
        k = int(embed_dim)
        self.attention = nn.ModuleList(
            nn.Sequential(nn.Linear(4 * k, 4 * k), nn.ReLU(), nn.Linear(4 * k, 1))
            for _, _, f in self.specs
            if f is not None
        )

    def forward(self, x: torch.Tensor, table: nn.Embedding, fields: torch.Tensor | None) -> torch.Tensor | None:
        """[B, n_fields, embed_dim] (None without histories); ``fields`` are the categorical fields' embeddings."""
        if not self.specs:
            return None
        out = []
        scorers = iter(self.attention)
        for columns, offset, field in self.specs:
            ids = x[:, columns]
            mask = (ids >= 0).to(table.weight.dtype)  # padding (-1) is no item; the compute dtype
            emb = table(torch.clamp(ids, min=0).to(torch.long) + offset)  # [B, L, k]
            count = mask.sum(dim=1, keepdim=True)
            out.append((emb * mask.unsqueeze(-1)).sum(dim=1) / torch.clamp(count, min=1.0))
            if field is not None:
                assert fields is not None
                query = fields[:, field].unsqueeze(1).expand_as(emb)
                scores = next(scorers)(torch.cat([query, emb, query * emb, query - emb], dim=-1)).squeeze(-1)
                weights = torch.softmax(scores.masked_fill(mask == 0, -1e9), dim=1) * mask
                out.append((weights.unsqueeze(-1) * emb).sum(dim=1))
        return torch.stack(out, dim=1)


def tower_histories(histories: Sequence[Mapping[str, Any]], idx: Sequence[int]) -> list[dict[str, Any]]:
    """The histories of one tower, their columns (and candidate) renumbered within the tower's columns ``idx``.

    A history whose columns are split between towers is an error; a candidate outside the tower is dropped.
    """
    where = {int(j): k for k, j in enumerate(idx)}
    out = []
    for h in histories:
        inside = [int(j) in where for j in h["columns"]]
        if not any(inside):
            continue
        if not all(inside):
            raise ExporterError(f"two_tower: the columns of history '{h['name']}' must all be in the same tower")
        target = h.get("target")
        out.append(
            {
                **h,
                "columns": [where[int(j)] for j in h["columns"]],
                "target": where.get(int(target)) if target is not None else None,
            }
        )
    return out
