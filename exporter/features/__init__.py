"""Features: the schema of the input columns, what training learned about them, and the in-graph preprocessing.

``schema`` declares or infers each column's kind; ``plan`` fits vocabularies and statistics (a
:class:`FeaturePlan`) and encodes raw tables; ``onnx_prep`` builds the same mapping inside the ONNX graph.
``from exporter.features import FeaturePlan`` is the public face; the names below are re-exported for it.
"""

from exporter.features.plan import (
    PLAN_FORMAT,
    FeaturePlan,
    FittedFeature,
    category_rows,
    fit,
    passthrough_plan,
    probe_rows,
)
from exporter.features.schema import (
    CATEGORICAL,
    DEFAULT_MIN_COUNT,
    DTYPES,
    HASH_ENCODING,
    KINDS,
    MAX_EXACT_INT,
    NUMERIC,
    OOV_ROW,
    TOP_VALUES,
    TOWERS,
    UNKNOWN_CODE,
    FeatureSpec,
    Schema,
    check_id_range,
    format_schema,
    hash_code,
    infer_kind,
    load_schema,
    resolve_specs,
    show_value,
)

__all__ = [
    "CATEGORICAL",
    "DEFAULT_MIN_COUNT",
    "DTYPES",
    "HASH_ENCODING",
    "KINDS",
    "MAX_EXACT_INT",
    "NUMERIC",
    "OOV_ROW",
    "PLAN_FORMAT",
    "TOP_VALUES",
    "TOWERS",
    "UNKNOWN_CODE",
    "FeaturePlan",
    "FeatureSpec",
    "FittedFeature",
    "Schema",
    "category_rows",
    "check_id_range",
    "fit",
    "format_schema",
    "hash_code",
    "infer_kind",
    "load_schema",
    "passthrough_plan",
    "probe_rows",
    "resolve_specs",
    "show_value",
]
