"""What ``score --input PATH`` reads: a Parquet or CSV file, a directory of them, or a glob; in Arrow batches.

Everything that can be checked before scoring is checked here, on every file, before any work: the path
exists and holds data files of one format, every feature and ``--keep`` column is present, and no column
has a type that no row could fix. Reading is streamed (record batches of a bounded size, only the needed
columns), so memory does not grow with the input.

CSV is text: every needed column is read as strings (empty cell = missing value) and the encoder parses
numbers, so a value that is bad in row 9,000,000 is a reject of that row, not a failed job, and a CSV
behaves like the same numbers in Parquet. ``--keep`` columns from CSV stay text.
"""

from __future__ import annotations

import glob
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from exporter.errors import ExporterError
from exporter.scoring.encode import EncodingPlan, check_schema

__all__ = ["InputFile", "SourceBatch", "resolve_inputs", "check_inputs", "iter_batches", "FORMATS"]

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


def resolve_inputs(spec: str, fmt: str | None = None) -> list[InputFile]:
    """The data files named by ``--input`` (file, directory searched recursively, or glob), sorted by path."""
    if fmt is not None and fmt not in ("parquet", "csv"):
        raise ExporterError(f"--format must be parquet or csv, got {fmt!r}")
    if any(ch in spec for ch in _GLOB_CHARS):
        candidates = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
        if not candidates:
            raise ExporterError(f"--input {spec!r}: the pattern matches no file")
    elif os.path.isdir(spec):
        candidates = []
        for root, dirs, names in os.walk(spec):
            dirs[:] = sorted(d for d in dirs if not _hidden(d))
            # regular files only: a FIFO or device named like data would block or never end
            candidates.extend(p for f in names if not _hidden(f) and os.path.isfile(p := os.path.join(root, f)))
    elif os.path.isfile(spec):
        candidates = [spec]
    else:
        raise ExporterError(f"--input {spec!r} {_what_is(spec)}; expected a Parquet or CSV file, a directory or a glob")
    files: list[tuple[str, str]] = []
    for path in sorted(candidates):
        found = fmt or _format_of(path)
        if found is None:
            if os.path.isfile(spec):
                raise ExporterError(
                    f"--input {spec!r}: cannot tell the format from the name; expected a name ending in "
                    f"{', '.join(FORMATS)} or --format parquet|csv"
                )
            continue  # a directory or glob may hold other files (logs, checksums): skip them
        files.append((os.path.abspath(path), found))
    if not files:
        raise ExporterError(f"--input {spec!r} holds no Parquet or CSV file (names ending in {', '.join(FORMATS)})")
    kinds = sorted({f for _, f in files})
    if len(kinds) > 1:
        raise ExporterError(f"--input {spec!r} mixes Parquet and CSV files; score one format at a time")
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


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _csv_header(path: str) -> list[str]:
    """Column names from a CSV header row (reads one small block)."""
    try:
        with pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 20)) as reader:
            return list(reader.schema.names)
    except (pa.ArrowException, OSError) as exc:
        raise ExporterError(f"{path}: not a readable CSV file with a header row ({_short(exc)})") from None


def file_schema(f: InputFile) -> pa.Schema:
    """The columns of one file as the encoder will see them (CSV: every column as text)."""
    if f.format == "parquet":
        try:
            return pq.read_schema(f.path)
        except (pa.ArrowException, OSError) as exc:
            raise ExporterError(f"{f.path}: not a readable Parquet file ({_short(exc)})") from None
    return pa.schema([(name, pa.string()) for name in _csv_header(f.path)])


def check_inputs(files: Sequence[InputFile], plan: EncodingPlan, keep: Sequence[str]) -> pa.Schema:
    """Check every file before any work; returns the Arrow schema of the ``--keep`` columns.

    Exit 2 (an :class:`ExporterError`) names the file and column for a missing feature or ``--keep`` column,
    an unusable type, or a ``--keep`` column whose type differs between files.
    """
    keep_fields: dict[str, tuple[pa.DataType, str]] = {}
    for f in files:
        schema = file_schema(f)
        repeated = [c for c in dict.fromkeys([*plan.names, *keep]) if schema.get_all_field_indices(c)[1:]]
        if repeated:
            raise ExporterError(
                f"{f.path}: column{'s' if len(repeated) > 1 else ''} {', '.join(json.dumps(c) for c in repeated)} "
                f"appear{'' if len(repeated) > 1 else 's'} more than once in the "
                f"{'header' if f.format == 'csv' else 'schema'}; expected each column once"
            )
        problems = check_schema(schema, plan)
        missing_keep = [c for c in keep if schema.get_field_index(c) < 0]
        if missing_keep:
            problems.append(
                f"missing --keep column{'s' if len(missing_keep) > 1 else ''} "
                f"{', '.join(json.dumps(c) for c in missing_keep)}"
            )
        if problems:
            shown = ", ".join(schema.names[:20]) + (", ..." if len(schema.names) > 20 else "")
            raise ExporterError(
                f"{f.path}: {'; '.join(problems)} (the file has: {shown}); expected the model's feature columns "
                f"{', '.join(plan.names)}" + (f" and the --keep columns {', '.join(keep)}" if keep else "")
            )
        for c in keep:
            t = schema.field(c).type
            if c in keep_fields and keep_fields[c][0] != t:
                raise ExporterError(
                    f"--keep column {json.dumps(c)} is {keep_fields[c][0]} in {keep_fields[c][1]} but {t} in "
                    f"{f.path}; every input file must give it the same type"
                )
            keep_fields.setdefault(c, (t, f.path))
    return pa.schema([(c, keep_fields[c][0]) for c in keep])


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


def iter_batches(files: Sequence[InputFile], columns: Sequence[str], batch_rows: int) -> Iterator[SourceBatch]:
    """Record batches of at most ``batch_rows`` rows holding ``columns``, file after file, in order."""
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
                        column_types={c: pa.string() for c in wanted},
                        include_columns=wanted,
                        strings_can_be_null=True,
                        null_values=[""],
                        quoted_strings_can_be_null=True,
                    ),
                )
                for batch in reader:
                    for start in range(0, batch.num_rows, batch_rows):
                        part = batch.slice(start, batch_rows)
                        yield SourceBatch(index, first, part, counter.count)
                        first += part.num_rows
            except (pa.ArrowException, OSError) as exc:
                raise ExporterError(f"{f.path}: reading failed after {first} rows ({_short(exc)})") from None
            finally:
                counter.close()


def total_rows(files: Sequence[InputFile]) -> int | None:
    """Rows of the whole input when every file records it (Parquet), else ``None``."""
    if any(f.rows is None for f in files):
        return None
    return sum(f.rows or 0 for f in files)
