"""Where training and scoring read tables from: a Parquet or CSV file, a directory of them, or a glob; in
Arrow record batches of a bounded size, only the needed columns, so memory does not grow with the input.

``score --input`` and ``export --data`` both name their data this way; the scoring layer sits above export, so
the shared reader lives here, below both, and :mod:`exporter.scoring.inputs` re-exports it.
"""

from __future__ import annotations

import glob
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from exporter.errors import ExporterError

__all__ = [
    "FORMATS",
    "InputFile",
    "SourceBatch",
    "resolve_inputs",
    "check_unique_columns",
    "is_list_type",
    "csv_types",
    "file_schema",
    "repeated_columns",
    "iter_batches",
    "total_rows",
    "short_error",
]

#: File name endings -> format.
FORMATS = {".parquet": "parquet", ".parq": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv"}
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputFile:
    """One input file: absolute path, format, size in bytes, and row count when the format records it."""

    path: str
    format: str
    size: int
    rows: int | None = None


@dataclass(frozen=True)
class SourceBatch:
    """A record batch and where it came from: file index and the file row of its first row (0-based)."""

    file_index: int
    first_row: int
    batch: pa.RecordBatch
    bytes_read: int = 0  # CSV: bytes of the file consumed so far (progress), else 0


def _format_of(path: str) -> str | None:
    lower = path.lower()
    for suffix, fmt in sorted(FORMATS.items(), key=lambda kv: -len(kv[0])):
        if lower.endswith(suffix):
            return fmt
    return None


def _hidden(name: str) -> bool:
    """Spark/Hadoop convention: names starting with '.' or '_' (``_SUCCESS``, ``_rejects``) are not data."""
    return name.startswith((".", "_"))


def resolve_inputs(spec: str, fmt: str | None = None, *, option: str = "--input") -> list[InputFile]:
    """The data files named by ``option`` (file, directory searched recursively, or glob), sorted by path."""
    if fmt is not None and fmt not in ("parquet", "csv"):
        raise ExporterError(f"--format must be parquet or csv, got {fmt!r}")
    if any(ch in spec for ch in _GLOB_CHARS):
        candidates = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
        if not candidates:
            raise ExporterError(f"{option} {spec!r}: the pattern matches no file")
    elif os.path.isdir(spec):
        candidates = []
        for root, dirs, names in os.walk(spec):
            dirs[:] = sorted(d for d in dirs if not _hidden(d))
            # regular files only: a FIFO or device named like data would block or never end
            candidates.extend(p for f in names if not _hidden(f) and os.path.isfile(p := os.path.join(root, f)))
    elif os.path.isfile(spec):
        candidates = [spec]
    else:
        raise ExporterError(
            f"{option} {spec!r} {_what_is(spec)}; expected a Parquet or CSV file, a directory or a glob"
        )
    files: list[tuple[str, str]] = []
    for path in sorted(candidates):
        found = fmt or _format_of(path)
        if found is None:
            if os.path.isfile(spec):
                raise ExporterError(
                    f"{option} {spec!r}: cannot tell the format from the name; expected a name ending in "
                    f"{', '.join(FORMATS)} or --format parquet|csv"
                )
            continue  # a directory or glob may hold other files (logs, checksums): skip them
        files.append((os.path.abspath(path), found))
    if not files:
        raise ExporterError(f"{option} {spec!r} holds no Parquet or CSV file (names ending in {', '.join(FORMATS)})")
    kinds = sorted({f for _, f in files})
    if len(kinds) > 1:
        raise ExporterError(f"{option} {spec!r} mixes Parquet and CSV files; use one format at a time")
    out = []
    for path, found in files:
        size = os.path.getsize(path)
        rows = None
        if found == "parquet":
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except (pa.ArrowException, OSError) as exc:
                raise ExporterError(f"{path}: not a readable Parquet file ({_short(exc)})") from None
        out.append(InputFile(path, found, size, rows))
    return out


def _what_is(path: str) -> str:
    """What a path that is neither a regular file nor a directory is, for the error message."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a broken symbolic link" if os.path.islink(path) else "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    kinds = [
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
    ]
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file or directory"


class CsvTypeChange(ExporterError):
    """A CSV value that does not parse as the type the first rows gave its column (``12`` ... then ``sku-7``)."""

    def __init__(self, path: str, column: str, typed: str, value: str, after: int) -> None:
        super().__init__(
            f"{path}: column '{column}' holds the value {value!r} (in the rows after {after:,}) where the first rows, "
            f"which typed the column, hold {typed} values; every value of a column must be of one type (write the "
            "column as text throughout, or fix the value)"
        )
        self.path, self.column, self.value = path, column, value


#: the cells of a CSV that are missing values: pandas.read_csv's default markers (what a table read in memory
#: takes as missing, an R export's NA included), so a streamed run, ``score`` and the in-memory fit agree
CSV_MISSING = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip

_CONVERSION = re.compile(r"In CSV column #(\d+): CSV conversion error to (\w+): invalid value '(.*)'")


def _type_change(exc: BaseException, path: str, after: int) -> CsvTypeChange | None:
    """The column and value of a CSV conversion error (pyarrow numbers the file's columns from 0), else None."""
    found = _CONVERSION.search(str(exc))
    if found is None:
        return None
    header = csv_header(path)
    index = int(found.group(1))
    if index >= len(header):
        return None
    return CsvTypeChange(path, header[index], found.group(2), found.group(3), after)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def csv_header(path: str) -> list[str]:
    """Column names from a CSV header row (reads one small block)."""
    try:
        with pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 20),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
        ) as reader:
            names = list(reader.schema.names)
    except (pa.ArrowException, OSError) as exc:
        raise ExporterError(f"{path}: not a readable CSV file with a header row ({_short(exc)})") from None
    check_csv_header(path, names)
    return names


#: separators of a CSV written for another locale or tool, which a comma-separated reader sees as one column
_OTHER_CSV_SEPARATORS = (";", "\t")


def repeated_columns(path: str | os.PathLike[str], repeated: Sequence[str], fmt: str) -> ExporterError:
    """The one error for columns a file names more than once (pandas would rename one, pyarrow keeps both)."""
    return ExporterError(
        f"{path}: column{'s' if len(repeated) > 1 else ''} {', '.join(json.dumps(c) for c in repeated)} "
        f"appear{'' if len(repeated) > 1 else 's'} more than once in the "
        f"{'header' if fmt == 'csv' else 'schema'}; expected each column once"
    )


def is_list_type(t: pa.DataType) -> bool:
    """An Arrow list column (list, large_list or fixed_size_list): how Parquet holds a history."""
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def check_unique_columns(path: str | os.PathLike[str], names: Sequence[str], fmt: str) -> None:
    """Training reads every column of a file (the default split key hashes them all): none may repeat."""
    repeated = [c for c in dict.fromkeys(names) if list(names).count(c) > 1]
    if repeated:
        raise repeated_columns(path, repeated, fmt)


def check_csv_header(path: str | os.PathLike[str], names: Sequence[Any]) -> None:
    """A header read as one column whose name holds ``;`` or a tab is a file separated by them: say so, instead
    of a missing column listing one long name."""
    if len(names) != 1:
        return
    name = str(names[0])
    for sep in _OTHER_CSV_SEPARATORS:
        if name.count(sep) >= 1:
            shown = "a tab" if sep == "\t" else repr(sep)
            raise ExporterError(
                f"{path}: the header row is one column, {name[:80]!r}{'...' if len(name) > 80 else ''}: the file "
                f"is separated by {shown}, and CSV data here is comma-separated; write it with ',' (pandas: "
                "to_csv(path, index=False); Excel: CSV UTF-8 (Comma delimited)) or as Parquet"
            )


def csv_types(
    files: Sequence[InputFile], columns: Sequence[str], *, text: Sequence[str] = ()
) -> dict[str, pa.DataType] | None:
    """CSV column types inferred from the first file's first block, then imposed on every file, so a column
    means the same in every file and every batch (a value that does not parse later is an error naming it).
    ``text`` columns (histories: ``12|7|99``) are read as text whatever their first block holds."""
    first = next((f for f in files if f.format == "csv"), None)
    if first is None:
        return None
    try:
        missing = pacsv.ConvertOptions(null_values=list(CSV_MISSING), strings_can_be_null=True)
        with pacsv.open_csv(
            first.path, read_options=pacsv.ReadOptions(block_size=1 << 22), convert_options=missing
        ) as reader:
            schema = reader.schema
    except (pa.ArrowException, OSError) as exc:
        raise ExporterError(f"{first.path}: not a readable CSV file with a header row ({_short(exc)})") from None
    out: dict[str, pa.DataType] = {}
    for c in columns:
        kind = schema.field(c).type if schema.get_field_index(c) >= 0 else pa.string()
        temporal = pa.types.is_temporal(kind)  # dates read as text, as pandas reads a CSV in memory
        out[c] = pa.string() if c in text or temporal else pa.float64() if pa.types.is_null(kind) else kind
    return out


def file_schema(f: InputFile) -> pa.Schema:
    """The columns of one file as the encoder will see them (CSV: every column as text)."""
    if f.format == "parquet":
        try:
            return pq.read_schema(f.path)
        except (pa.ArrowException, OSError) as exc:
            raise ExporterError(f"{f.path}: not a readable Parquet file ({_short(exc)})") from None
    return pa.schema([(name, pa.string()) for name in csv_header(f.path)])


class _CountingFile:
    """A binary file that counts the bytes read from it (progress for CSV, whose row count is unknown)."""

    def __init__(self, path: str) -> None:
        self._fh = open(path, "rb")
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self.count += len(data)
        return data

    def close(self) -> None:
        self._fh.close()

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


def iter_batches(
    files: Sequence[InputFile],
    columns: Sequence[str],
    batch_rows: int,
    *,
    csv_types: Mapping[str, pa.DataType] | None = None,
) -> Iterator[SourceBatch]:
    """Record batches of at most ``batch_rows`` rows holding ``columns``, file after file, in order.

    CSV columns are read as text unless ``csv_types`` gives their types (training reads every file with the
    types inferred from the first one, so a column means the same in every file)."""
    wanted = list(dict.fromkeys(columns))
    for index, f in enumerate(files):
        first = 0
        if f.format == "parquet":
            try:
                pf = pq.ParquetFile(f.path, pre_buffer=False)
                for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted, use_threads=True):
                    yield SourceBatch(index, first, batch)
                    first += batch.num_rows
            except (pa.ArrowException, OSError) as exc:
                raise ExporterError(f"{f.path}: reading failed after {first} rows ({_short(exc)})") from None
        else:
            counter = _CountingFile(f.path)
            stream: pa.NativeFile = pa.PythonFile(counter, mode="r")
            if f.path.lower().endswith(".gz"):
                stream = pa.CompressedInputStream(stream, "gzip")
            try:
                reader = pacsv.open_csv(
                    stream,
                    read_options=pacsv.ReadOptions(block_size=max(1 << 20, batch_rows * 64)),
                    parse_options=pacsv.ParseOptions(newlines_in_values=True),
                    convert_options=pacsv.ConvertOptions(
                        column_types={c: (csv_types or {}).get(c, pa.string()) for c in wanted},
                        include_columns=wanted,
                        strings_can_be_null=True,
                        null_values=list(CSV_MISSING),
                        quoted_strings_can_be_null=True,
                    ),
                )
                for batch in reader:
                    for start in range(0, batch.num_rows, batch_rows):
                        part = batch.slice(start, batch_rows)
                        yield SourceBatch(index, first, part, counter.count)
                        first += part.num_rows
            except (pa.ArrowException, OSError) as exc:
                change = _type_change(exc, f.path, first) if isinstance(exc, pa.ArrowInvalid) else None
                if change is not None:
                    raise change from None
                raise ExporterError(f"{f.path}: reading failed after {first} rows ({_short(exc)})") from None
            finally:
                counter.close()


def total_rows(files: Sequence[InputFile]) -> int | None:
    """Rows of the whole input when every file records it (Parquet), else ``None``."""
    if any(f.rows is None for f in files):
        return None
    return sum(f.rows or 0 for f in files)


def short_error(exc: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters (for one-line errors)."""
    return _short(exc)
