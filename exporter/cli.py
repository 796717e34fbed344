"""Command line of the exporter: ``python -m exporter <command> ...``.

Each sub-command lives in its own module exposing ``HELP`` (one line), ``DESCRIPTION``,
``add_arguments(parser)`` and ``run(args) -> int``; the module is imported only when needed,
so ``--help`` stays fast and one broken optional dependency does not take down the others.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from exporter.errors import ExporterError
from exporter.models import model_names

#: sub-command -> its thin CLI module in :mod:`exporter.commands` (the library code lives beside it in exporter.*)
COMMANDS: dict[str, str] = {
    name: f"exporter.commands.{name.replace('-', '_')}"
    for name in (
        "export",
        "tune",
        "track",
        "runs",
        "serve",
        "verify",
        "bench",
        "notebooks",
        "kserve",
        "archive",
        "score",
        "score-bench",
    )
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        # "exporter" when run as the installed console script, else as the module
        prog="exporter" if Path(sys.argv[0]).name == "exporter" else "python -m exporter",
        description=(
            f"Train or load recommendation models ({', '.join(model_names())}), export them to ONNX "
            "with Open Inference Protocol metadata into a Triton-style model repository, serve and verify them."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``docker stop``, ``timeout``): the run stops as on Ctrl-C, through the same clean-up
    (a version being written is removed, tracking and tuning runs are closed), instead of dying mid-write."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    # serve installs its own handler (drain) while it runs
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return int(args._module.run(args) or 0)
    except ExporterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
