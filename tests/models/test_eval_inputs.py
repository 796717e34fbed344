"""The retrieval evaluation's inputs from one pass over a streamed log equal those of the same rows in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter.models.two_tower import eval_inputs as E
from exporter.training import split as S
from exporter.training import stream_scan as SS
from exporter.training.sources import resolve_inputs

USER, ITEM = ["user_id", "user_age"], ["item_id", "item_price"]
KEY = ["item_id", "user_id"]


def _log(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 300, n)
    items = rng.zipf(1.3, n) % 900
    price = (items % 17).astype(np.float64) + 0.5
    price[rng.random(n) < 0.3] = np.nan  # gaps: the catalogue takes an item's first present value
    return pd.DataFrame(
        {
            "user_id": users,
            "user_age": (users % 50 + 18).astype(np.float64),
            "item_id": items,
            "item_price": price,
            "label": (rng.random(n) < 0.4).astype(np.int64),
        }
    )


def _reader(tmp_path: Path, frame: pd.DataFrame, files: int) -> SS.StreamReader:
    directory = tmp_path / "log"
    directory.mkdir(parents=True)
    for k, part in enumerate(np.array_split(np.arange(len(frame)), files)):
        table = pa.Table.from_pandas(frame.iloc[part], preserve_index=False)
        pq.write_table(table, directory / f"part-{k}.parquet", row_group_size=500)
    columns = list(frame.columns)
    return SS.StreamReader(resolve_inputs(str(directory), option="--data"), columns, 7, key=KEY, batch_rows=300)


def _by_key(inputs: E.RetrievalInputs) -> tuple[dict, dict, dict, dict]:
    """(item id -> price, item id -> popularity, user id -> known item ids, user id -> held-out positive ids)."""
    items = inputs.catalogue["item_id"].to_numpy()
    users = inputs.users["user_id"].to_numpy()
    prices = dict(zip(items.tolist(), inputs.catalogue["item_price"].tolist(), strict=True))
    popularity = dict(zip(items.tolist(), inputs.popularity.tolist(), strict=True))
    known: dict[int, set[int]] = {}
    for u, i in zip(inputs.known["user"], inputs.known["item"], strict=True):
        known.setdefault(int(users[u]), set()).add(int(items[i]))
    held: dict[int, set[int]] = {}
    positive = inputs.held[inputs.held["positive"]]
    for u, i in zip(positive["user"], positive["item"], strict=True):
        held.setdefault(int(users[u]), set()).add(int(items[i]))
    return prices, popularity, known, held


def _both(tmp_path: Path, frame: pd.DataFrame, max_users: int | None) -> tuple[E.RetrievalInputs, E.RetrievalInputs]:
    reader = _reader(tmp_path, frame, files=3)
    codes = S.split_codes_arrow(pa.Table.from_pandas(frame, preserve_index=False), seed=7, key_columns=KEY)
    parts = [frame[codes == c].reset_index(drop=True) for c in (S.TRAIN, S.VALIDATION, S.TEST)]
    memory = E.in_memory(
        parts, len(parts[0]) + len(parts[1]), USER, ITEM, ["user_id"], ["item_id"], parts[2]["label"].to_numpy(), 7
    )
    streamed = E.streamed(
        reader.batches(),
        USER,
        ITEM,
        ["user_id"],
        ["item_id"],
        {"label": "label"},
        {"label": "binary"},
        "label",
        7,
        max_users=max_users,
    )
    return memory, streamed


def test_every_user_and_item_as_in_memory(tmp_path: Path) -> None:
    frame = _log(6000, seed=1).drop_duplicates(["user_id", "item_id"]).reset_index(drop=True)
    memory, streamed = _both(tmp_path, frame, max_users=10_000)
    m_prices, m_pop, m_known, m_held = _by_key(memory)
    s_prices, s_pop, s_known, s_held = _by_key(streamed)
    assert len(streamed.catalogue) == frame["item_id"].nunique() == len(memory.catalogue)
    assert s_prices.keys() == m_prices.keys()
    assert all(s_prices[k] == m_prices[k] or (np.isnan(s_prices[k]) and np.isnan(m_prices[k])) for k in m_prices)
    assert s_pop == m_pop  # each pair once: rows and distinct pairs count alike
    assert s_known == m_known and s_held == m_held
    assert not streamed.sampled and not memory.sampled
    ages = dict(zip(streamed.users["user_id"], streamed.users["user_age"], strict=True))
    assert all(ages[u] == u % 50 + 18 for u in ages)


def test_a_sample_of_users_is_the_same_in_memory_and_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = _log(8000, seed=2)
    _, full = _both(tmp_path / "all", frame, max_users=10_000)
    monkeypatch.setattr(E, "MAX_EVAL_USERS", 40)
    memory, streamed = _both(tmp_path, frame, max_users=None)
    assert streamed.sampled and memory.sampled and len(streamed.users) == 40 == len(memory.users)
    assert set(streamed.users["user_id"]) == set(memory.users["user_id"])
    _, _, full_known, full_held = _by_key(full)
    _, _, m_known, m_held = _by_key(memory)
    _, _, known, held = _by_key(streamed)
    assert known == m_known and held == m_held and len(held) == 40
    for user, items in held.items():  # each chosen user's pairs whole, not a sample of them
        assert items == full_held[user] and known.get(user, set()) == full_known.get(user, set())
    # seeded: the same users from the same rows in other files; other users with another seed
    reader = _reader(tmp_path / "other", frame, files=2)
    args = (USER, ITEM, ["user_id"], ["item_id"], {"label": "label"}, {"label": "binary"}, "label")
    again = E.streamed(reader.batches(), *args, 7, max_users=40)
    assert set(again.users["user_id"]) == set(streamed.users["user_id"])
    other = E.streamed(reader.batches(), *args, 8, max_users=40)
    assert set(other.users["user_id"]) != set(streamed.users["user_id"])


def test_popularity_counts_rows_when_a_pair_repeats(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 3],
            "user_age": [20.0, 20.0, 20.0, 30.0, 40.0],
            "item_id": [5, 5, 5, 5, 6],
            "item_price": [1.0, 1.0, 1.0, 1.0, 2.0],
            "label": [1, 1, 1, 1, 1],
        }
    )
    batch = SS.StreamBatch("log", 0, frame, np.zeros(5, dtype=np.int8), np.zeros(5))
    inputs = E.streamed([batch], USER, ITEM, ["user_id"], ["item_id"], {"label": "label"}, {}, "label", 0)
    assert dict(zip(inputs.catalogue["item_id"], inputs.popularity, strict=True)) == {5: 4.0, 6: 1.0}
    assert "rows" in inputs.popularity_counts
