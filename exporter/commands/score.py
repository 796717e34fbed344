"""``python -m exporter score MODEL[/VERSION] --input PATH --output DIR``: batch scoring over Parquet/CSV."""

from __future__ import annotations

import argparse
import sys

HELP = "batch-score Parquet/CSV files with an exported model, locally (streaming) or on Spark"
DESCRIPTION = """\
Score a Parquet or CSV file, a directory or a glob of them with one exported model version and write
Parquet: the --keep columns, then the predictions as the contract names them (`prediction`; one column
per MMoE task; `embedding`, a list of doubles, for the towers).

Rows are checked like the server checks requests: a missing column stops the job before any work (exit 2);
a bad row (not a finite number, empty, ...) does not: it goes to OUTPUT/_rejects/ with its file, row
number and the reason, and the job fails only when more than --max-rejects rows are refused (default 0).
The output appears whole or not at all (built in a hidden sibling, renamed when complete); an existing
OUTPUT is refused unless --overwrite, which replaces only a previous score output (its _SUCCESS and
_scoring.json); an OUTPUT that is, contains or is inside an input path is always refused.

engines:
  local   (default) streams Arrow record batches through onnxruntime on every core, constant memory
  spark   the same checks and predictions with pyspark mapInArrow; local[*] unless --master URL

examples:
  python -m exporter score deepfm --input events/ --output scores/ --keep user_id,item_id
  python -m exporter score mmoe/2 --input 'day=*/part-*.parquet' --output out/ --max-rejects 100
  python -m exporter score deepfm --input events/ --output scores/ --engine spark --master spark://host:7077
  python -m exporter score two_tower_item --input items.parquet --output item_vectors/ --keep item_id \\
      --index --index-users users.parquet

exit codes: 0 ok, 2 bad input or too many refused rows (one line says what; nothing is written)."""


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL[/VERSION]", help="model name, optionally /version (default: latest)")
    p.add_argument("--input", required=True, metavar="PATH", help="Parquet or CSV file, directory, or glob")
    p.add_argument("--output", required=True, metavar="DIR", help="output directory (Parquet parts); must not exist")
    p.add_argument("--artifacts", default="artifacts", help="model repository root (default: %(default)s)")
    p.add_argument("--engine", default="local", choices=("local", "spark"), help="default: %(default)s")
    p.add_argument(
        "--keep",
        type=_columns,
        default=[],
        metavar="COLUMNS",
        help="comma-separated input columns (IDs) copied into the output and the rejects",
    )
    p.add_argument(
        "--max-rejects",
        type=int,
        default=0,
        metavar="N",
        help="fail when more than N rows are refused (default: %(default)s)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output once the new one is complete (only a previous score output)",
    )
    p.add_argument(
        "--format",
        dest="input_format",
        choices=("parquet", "csv"),
        default=None,
        help="input format when file names do not tell (default: from the extension)",
    )
    p.add_argument(
        "--batch-rows",
        type=int,
        default=65536,
        help="rows per record batch, 1 to 1048576 (default: %(default)s)",
    )
    p.add_argument(
        "--rows-per-file",
        type=int,
        default=2_000_000,
        help="local engine: rows per output part file (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=None, help="local engine: scoring threads (default: every core)")
    p.add_argument("--master", default=None, metavar="URL", help="spark engine: master URL (default: local[*])")
    p.add_argument(
        "--conf",
        dest="spark_conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="spark engine: extra Spark configuration, repeatable",
    )
    p.add_argument(
        "--index",
        action="store_true",
        help="two_tower_item: also build an ANN index (FAISS IVF, inner product) in OUTPUT/_index/",
    )
    p.add_argument(
        "--index-id",
        default=None,
        metavar="COLUMN",
        help="the --keep column that identifies an item in the index (default: the first --keep column)",
    )
    p.add_argument(
        "--index-users",
        default=None,
        metavar="PATH",
        help="user features scored by the related user tower as recall queries "
        "(default: a sample of the item vectors themselves)",
    )
    p.add_argument(
        "--index-queries",
        type=int,
        default=1000,
        help="queries for the recall check, 1 to 100000 (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from exporter.commands.key_values import key_values
    from exporter.scoring.job import ScoreOptions, format_result, result_json, score

    conf = key_values(args.spark_conf, "--conf")
    options = ScoreOptions(
        model=args.model,
        input=args.input,
        output=args.output,
        artifacts=args.artifacts,
        engine=args.engine,
        keep=args.keep,
        max_rejects=args.max_rejects,
        overwrite=args.overwrite,
        input_format=args.input_format,
        batch_rows=args.batch_rows,
        rows_per_file=args.rows_per_file,
        threads=args.threads,
        master=args.master,
        spark_conf=conf,
        progress=not args.quiet,
        index=args.index,
        index_id=args.index_id,
        index_users=args.index_users,
        index_queries=args.index_queries,
    )
    result = score(options)
    print(result_json(result) if args.json else format_result(result), file=sys.stdout, flush=True)
    return 0
