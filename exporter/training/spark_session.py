"""A Spark session for the exporter's Spark engines (``score --engine spark``, ``export --engine spark``).

Local masters bind the driver to 127.0.0.1 and run without the web UI; under ``spark-submit`` the submitted
master is used. A ``spark://`` master that does not answer fails within a bounded wait, not after Spark's
own minutes of retries.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exporter.errors import ExporterError

#: how long a ``spark://`` master gets to accept a TCP connection before the job is refused
MASTER_CONNECT_SECONDS = 10.0

# pyspark warns that it "does not yet fully support pandas >= 3.0.0" on every pandas-related call; this job
# exchanges Arrow batches only and never converts to pandas, so the warning does not apply.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)


def _import_pyspark() -> Any:
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ExporterError(
            "--engine spark needs pyspark (pip install -r requirements.txt) and a Java 17+ runtime"
        ) from None
    return SparkSession


_LOG4J = """\
# exporter score --engine spark: errors only on the console (the job prints its own progress)
rootLogger.level = error
rootLogger.appenderRef.console.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
"""


def spark_session(
    master: str | None, conf: dict[str, str], app_name: str, batch_rows: int, workdir: Path | None = None
) -> tuple[Any, bool]:
    """An active Spark session (reused when one exists, e.g. under spark-submit) and whether we created it."""
    SparkSession = _import_pyspark()
    active = SparkSession.getActiveSession()
    created = active is None
    if active is None:
        under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started the JVM with its own master
        if not under_submit and not shutil.which("java") and not os.environ.get("JAVA_HOME"):
            raise ExporterError("--engine spark needs a Java runtime (Java 17): none on PATH and JAVA_HOME is unset")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        if not under_submit:
            os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        from pyspark import SparkConf

        spark_conf = SparkConf()
        if master:
            spark_conf.setMaster(master)
        elif not under_submit:
            spark_conf.setMaster("local[*]")
        if not under_submit and (master or "local").startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # bind to loopback only, no hostname warning
            spark_conf.setIfMissing("spark.driver.bindAddress", "127.0.0.1")
            spark_conf.setIfMissing("spark.driver.host", "127.0.0.1")
            spark_conf.setIfMissing("spark.ui.enabled", "false")
            if workdir is not None:
                log4j = workdir / "log4j2.properties"
                log4j.write_text(_LOG4J, encoding="utf-8")
                spark_conf.setIfMissing("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{log4j}")
        spark_conf.setIfMissing("spark.ui.showConsoleProgress", "false")
        spark_conf.setIfMissing("spark.log.structuredLogging.enabled", "false")
        spark_conf.setAppName(app_name)
        for key, value in conf.items():
            spark_conf.set(key, value)
        try:
            active = SparkSession.builder.config(conf=spark_conf).getOrCreate()
        except Exception as exc:  # py4j/JVM start-up failures come in many types
            raise ExporterError(f"cannot start Spark ({type(exc).__name__}: {str(exc).strip()[:300]})") from None
        active.sparkContext.setLogLevel("ERROR")
    elif master:
        current = active.sparkContext.master
        if current != master:
            print(f"note: reusing the active Spark session on {current}; --master {master} ignored", file=sys.stderr)
    active.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    return active, created


def check_master(master: str | None, timeout: float = MASTER_CONNECT_SECONDS) -> None:
    """A standalone master (``spark://host:port[,host:port]``) must accept a connection within ``timeout``."""
    if not master or not master.startswith("spark://"):
        return
    problems = []
    for part in master[len("spark://") :].split(","):
        url = urlsplit(f"spark://{part}")
        host, port = url.hostname, url.port or 7077
        if not host:
            raise ExporterError(f"Spark master URL {master!r} names no host; expected spark://HOST:PORT")
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return
        except OSError as exc:
            problems.append(f"{host}:{port} ({exc.strerror or exc})")
    raise ExporterError(
        f"the Spark master {master} does not answer within {timeout:g} s: {'; '.join(problems)}; "
        "check the URL, that the master runs, and that this machine can reach it"
    )
