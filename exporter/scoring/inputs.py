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

import json
from collections.abc import Sequence

import pyarrow as pa

from exporter.errors import ExporterError
from exporter.scoring.encode import EncodingPlan, check_schema
from exporter.training.sources import (
    FORMATS,
    InputFile,
    SourceBatch,
    file_schema,
    iter_batches,
    repeated_columns,
    resolve_inputs,
    total_rows,
)

__all__ = [
    "InputFile",
    "SourceBatch",
    "resolve_inputs",
    "check_inputs",
    "iter_batches",
    "file_schema",
    "total_rows",
    "FORMATS",
]


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
            raise repeated_columns(f.path, repeated, f.format)
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
