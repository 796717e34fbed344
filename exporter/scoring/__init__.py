"""Batch scoring of exported models over Parquet/CSV: ``python -m exporter score``.

Modules, in the order a job uses them:

* :mod:`~exporter.scoring.job`      the job: resolve, check before any work, run an engine, commit atomically;
* :mod:`~exporter.scoring.artifact` ``MODEL[/VERSION]`` -> the version directory, its checked metadata, its handler;
* :mod:`~exporter.scoring.inputs`   input files (file, directory, glob), up-front schema checks, batch reading;
* :mod:`~exporter.scoring.encode`   record batch -> FP64 ``features`` matrix + a reason per refused row;
* :mod:`~exporter.scoring.core`     one batch -> scored rows + refused rows (shared by both engines);
* :mod:`~exporter.scoring.local`    the streaming multi-threaded local engine;
* :mod:`~exporter.scoring.spark`    the Spark engine (driver side) and :mod:`~exporter.scoring.spark_worker`
  (what runs on executors);
* :mod:`~exporter.scoring.outputs`  prediction columns, Parquet parts, rejects, the staged output directory;
* :mod:`~exporter.scoring.index`    the item ANN index and its recall check;
* :mod:`~exporter.scoring.bench`    ``python -m exporter score-bench``.
"""

from exporter.scoring.job import ScoreOptions, ScoreResult, score

__all__ = ["ScoreOptions", "ScoreResult", "score"]
