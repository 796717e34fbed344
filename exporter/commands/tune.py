"""``python -m exporter tune MODEL --trials N``: Optuna search over a model's hyper-parameters, then export the
best trial as a normal version."""

from __future__ import annotations

import argparse
import sys

from exporter.errors import ExporterError

HELP = "search a model's hyper-parameters with Optuna (each trial an MLflow run), export the best"
DESCRIPTION = """\
Prepare the data once (the same options as export), then train --trials models with hyper-parameters drawn by
Optuna's TPE sampler (seeded by --seed) from the ranges the model declares tunable (or --search), each
evaluated on the held-out rows: the objective, maximised, is the metric the model is judged by (held-out AUC;
recall@K for two_tower). Each trial is an MLflow run nested under the tuning run; the best trial's model is then
exported like export does (parity gate, metadata.json with the study, trial number and parameters in "tuning").

tunable ranges (kind low high), override or extend with --search KEY=LOW:HIGH[:int|float|log]:
{ranges}

examples:
  python -m exporter tune xgb --trials 20
  python -m exporter tune deepfm --trials 10 --timeout 600 --search learning_rate=0.0005:0.05:log --param epochs=4

The study is stored in mlruns/optuna.db beside the artifacts tree (--storage for another Optuna storage).
exit codes: 0 ok, 2 bad input (a bad range or unknown parameter), 3 parity gate failed, 4 held-out AUC below
--min-auc."""


def _ranges_help() -> str:
    from exporter.models import get_spec, model_names

    lines = []
    for name in model_names():
        space = get_spec(name).tunable
        shown = ", ".join(f"{k} ({kind} {lo:g}..{hi:g})" for k, (kind, lo, hi) in space.items()) or "none declared"
        lines.append(f"  {name}: {shown}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from exporter.commands.export import add_export_options
    from exporter.models import model_names

    plain = p.format_help

    def format_help() -> str:
        p.description = DESCRIPTION.replace("{ranges}", _ranges_help())
        return plain()

    p.format_help = format_help  # type: ignore[method-assign]
    p.add_argument("model", help=", ".join(model_names()))
    p.add_argument("--trials", type=int, required=True, metavar="N", help="trials to run (1 to 10000)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="stop starting new trials after S seconds")
    p.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="KEY=LOW:HIGH[:KIND]",
        help="search range of a hyper-parameter, repeatable; KIND int, float or log (default: int for integer "
        "bounds, else float); replaces the model's own range for KEY",
    )
    p.add_argument("--study", default=None, metavar="NAME", help="Optuna study name (default: MODEL-<UTC time>)")
    p.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="Optuna storage (default: sqlite:///mlruns/optuna.db beside the --artifacts tree)",
    )
    add_export_options(p)


def run(args: argparse.Namespace) -> int:
    from exporter.commands.export import export_params, parse_params
    from exporter.models import get_spec
    from exporter.tools import summary
    from exporter.tracking import tune as T
    from exporter.tracking.store import enabled

    if args.model == "all":
        raise ExporterError("tune searches one model at a time: name it (xgb, deepfm, mmoe, two_tower)")
    get_spec(args.model)
    if args.engine != "local":
        raise ExporterError(
            "tune trains its trials on this machine: drop --engine spark (export --engine spark trains one)"
        )
    columns = [c.strip() for c in args.feature_columns.split(",")] if args.feature_columns else None
    params = export_params(args, args.model, columns, parse_params(args.param))
    options = T.SearchOptions(
        timeout=args.timeout,
        search=T.parse_search(args.search),
        tracking_uri=args.tracking_uri,
        tracking_enabled=enabled(args.no_tracking),
        storage=args.storage,
        study_name=args.study,
        echo=(lambda text: None) if args.json else (lambda text: print(text, flush=True)),
    )
    result = T.tune(params, trials=args.trials, options=options)
    if args.json:
        import json

        out = summary.as_json([result.export], result.export.seconds)
        out["tuning"] = result.export.prepared.params.tuning
        print(json.dumps(out, indent=2, default=str))
    else:
        print(summary.format_result(result.export), flush=True)
        line = result.tracking.summary()
        if line:
            print(line, flush=True)
    sys.stdout.flush()
    return 0
