"""The in-graph preprocessing: raw FP64 ``features`` -> the prepared matrix every model graph was trained on.

Numeric columns: NaN and +-inf become the column's fill. Categorical columns (and each item of a history
column, whose NaN padding becomes -1, no row): a raw value becomes its embedding row (1..K) through an
``ai.onnx.ml`` LabelEncoder (or ``1 + value mod hash_buckets``), and every value without
a row of its own (unknown, non-integer, NaN, beyond +-2^53) becomes row 0, the OOV row. The values are masked
before the cast to int64, so no input can make onnxruntime fail or index out of range.

:func:`compose` puts this piece in front of a model graph whose input is the prepared matrix, so the exported
model keeps exactly one input ``features`` FP64 ``[-1, n]`` and its one output (contract section 1).
:meth:`exporter.features.FeaturePlan.prepare` is the numpy twin the parity gate compares against.
"""

from __future__ import annotations

from typing import Any

from exporter.errors import ExporterError
from exporter.features.plan import PADDING_ROW, FeaturePlan
from exporter.features.schema import MAX_EXACT_INT, OOV_ROW

INPUT = "features"
PREFIX = "fprep__"
PREPARED = PREFIX + "prepared"
ML_DOMAIN = "ai.onnx.ml"
#: LabelEncoder with int64 keys and values needs ai.onnx.ml opset 2
ML_OPSET = 2


def build_nodes(plan: FeaturePlan) -> tuple[list[Any], list[Any], bool]:
    """Nodes and initializers mapping ``features`` to ``PREPARED``; also whether ai.onnx.ml is used."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def name(s: str) -> str:
        return PREFIX + s

    def const(key: str, value: Any, dtype: Any) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name(key)))
        return name(key)

    nodes: list[Any] = []
    inits: list[Any] = []
    uses_ml = False
    num = [j for j, f in enumerate(plan.features) if not f.categorical and not f.history]
    cat = [j for j, f in enumerate(plan.features) if f.categorical]
    parts: list[str] = []
    if num:
        cols = const("num_idx", num, np.int64)
        fills = const(
            "num_fill", [np.nan if plan.features[j].fill is None else plan.features[j].fill for j in num], np.float64
        )
        nodes += [
            helper.make_node("Gather", [INPUT, cols], [name("num")], axis=1, name=name("gather_num")),
            helper.make_node("IsNaN", [name("num")], [name("num_nan")], name=name("isnan")),
            helper.make_node("IsInf", [name("num")], [name("num_inf")], name=name("isinf")),
            helper.make_node("Or", [name("num_nan"), name("num_inf")], [name("num_bad")], name=name("num_bad")),
            helper.make_node("Where", [name("num_bad"), fills, name("num")], [name("num_filled")], name=name("fill")),
        ]
        parts.append(name("num_filled"))
    if cat:
        cols = const("cat_idx", cat, np.int64)
        limit = const("max_exact", float(MAX_EXACT_INT), np.float64)
        zero_d = const("zero_d", 0.0, np.float64)
        oov = const("oov_row", OOV_ROW, np.int64)
        nodes += [
            helper.make_node("Gather", [INPUT, cols], [name("cat")], axis=1, name=name("gather_cat")),
            # valid: an integer (NaN and +-inf fail one of the two tests) within +-2^53
            helper.make_node("Floor", [name("cat")], [name("cat_floor")], name=name("floor")),
            helper.make_node("Equal", [name("cat_floor"), name("cat")], [name("cat_int")], name=name("is_int")),
            helper.make_node("Abs", [name("cat")], [name("cat_abs")], name=name("abs")),
            helper.make_node("Greater", [name("cat_abs"), limit], [name("cat_big")], name=name("too_big")),
            helper.make_node("Not", [name("cat_big")], [name("cat_small")], name=name("small")),
            helper.make_node("And", [name("cat_int"), name("cat_small")], [name("cat_valid")], name=name("valid")),
            helper.make_node("Where", [name("cat_valid"), name("cat"), zero_d], [name("cat_safe")], name=name("mask")),
            helper.make_node("Cast", [name("cat_safe")], [name("cat_i64")], to=TensorProto.INT64, name=name("to_int")),
        ]
        split_outs = [name(f"cat_i64_{k}") for k in range(len(cat))]
        if len(cat) > 1:
            sizes = const("cat_split", [1] * len(cat), np.int64)
            nodes.append(helper.make_node("Split", [name("cat_i64"), sizes], split_outs, axis=1, name=name("split")))
        else:
            split_outs = [name("cat_i64")]
        rows_outs = []
        for k, j in enumerate(cat):
            feat = plan.features[j]
            out = name(f"cat_rows_{k}")
            hash_buckets = feat.spec.hash_buckets
            if hash_buckets is not None:  # feat.hashed
                buckets = const(f"buckets_{k}", int(hash_buckets), np.int64)
                one = const(f"one_{k}", 1, np.int64)
                nodes += [
                    helper.make_node(
                        "Mod", [split_outs[k], buckets], [name(f"cat_mod_{k}")], fmod=0, name=name(f"mod_{k}")
                    ),
                    helper.make_node("Add", [name(f"cat_mod_{k}"), one], [out], name=name(f"shift_{k}")),
                ]
            elif feat.keys:
                uses_ml = True
                nodes.append(
                    helper.make_node(
                        "LabelEncoder",
                        [split_outs[k]],
                        [out],
                        domain=ML_DOMAIN,
                        name=name(f"lookup_{k}"),
                        keys_int64s=[int(v) for v in feat.keys],
                        values_int64s=list(range(1, len(feat.keys) + 1)),
                        default_int64=OOV_ROW,
                    )
                )
            else:  # an empty vocabulary: everything is OOV
                zeros = const(f"zeros_{k}", 0, np.int64)
                nodes.append(helper.make_node("Mul", [split_outs[k], zeros], [out], name=name(f"all_oov_{k}")))
            rows_outs.append(out)
        if len(rows_outs) > 1:
            nodes.append(helper.make_node("Concat", rows_outs, [name("cat_rows")], axis=1, name=name("concat_rows")))
        else:
            nodes.append(helper.make_node("Identity", rows_outs, [name("cat_rows")], name=name("rows")))
        nodes += [
            helper.make_node(
                "Where", [name("cat_valid"), name("cat_rows"), oov], [name("cat_rows_ok")], name=name("oov")
            ),
            helper.make_node(
                "Cast", [name("cat_rows_ok")], [name("cat_rows_d")], to=TensorProto.DOUBLE, name=name("to_double")
            ),
        ]
        parts.append(name("cat_rows_d"))
    hist: list[int] = []
    for k, group in enumerate(plan.histories()):
        hist_nodes, hist_inits, hist_ml, out = _history_nodes(plan, group["columns"], k)
        nodes += hist_nodes
        inits += hist_inits
        uses_ml = uses_ml or hist_ml
        parts.append(out)
        hist += group["columns"]
    # back to the original column order
    order = num + cat + hist
    inverse = [order.index(j) for j in range(len(order))]
    if len(parts) > 1:
        nodes.append(helper.make_node("Concat", parts, [name("grouped")], axis=1, name=name("concat")))
        grouped = name("grouped")
    else:
        grouped = parts[0]
    if inverse == list(range(len(order))):
        nodes.append(helper.make_node("Identity", [grouped], [PREPARED], name=name("prepared")))
    else:
        perm = const("perm", inverse, np.int64)
        nodes.append(helper.make_node("Gather", [grouped, perm], [PREPARED], axis=1, name=name("reorder")))
    return nodes, inits, uses_ml


def _history_nodes(plan: FeaturePlan, columns: list[int], k: int) -> tuple[list[Any], list[Any], bool, str]:
    """One history's columns ``[B, max_length]`` -> embedding rows like a categorical ID (one lookup over the
    whole block: the vocabulary is stored once), and :data:`~exporter.features.plan.PADDING_ROW` for NaN."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits: list[Any] = []

    def name(s: str) -> str:
        return f"{PREFIX}hist{k}_{s}"

    def const(key: str, value: Any, dtype: Any) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name(key)))
        return name(key)

    feat = plan.features[columns[0]]
    cols = const("idx", columns, np.int64)
    limit = const("max_exact", float(MAX_EXACT_INT), np.float64)
    zero_d = const("zero_d", 0.0, np.float64)
    oov = const("oov_row", OOV_ROW, np.int64)
    pad = const("padding", float(PADDING_ROW), np.float64)
    node = helper.make_node
    nodes = [
        node("Gather", [INPUT, cols], [name("ids")], axis=1, name=name("gather")),
        node("IsNaN", [name("ids")], [name("none")], name=name("isnan")),
        node("Floor", [name("ids")], [name("floor")], name=name("floor")),
        node("Equal", [name("floor"), name("ids")], [name("int")], name=name("is_int")),
        node("Abs", [name("ids")], [name("abs")], name=name("abs")),
        node("Greater", [name("abs"), limit], [name("big")], name=name("too_big")),
        node("Not", [name("big")], [name("small")], name=name("small")),
        node("And", [name("int"), name("small")], [name("valid")], name=name("valid")),
        node("Where", [name("valid"), name("ids"), zero_d], [name("safe")], name=name("mask")),
        node("Cast", [name("safe")], [name("i64")], to=TensorProto.INT64, name=name("to_int")),
    ]
    uses_ml = False
    buckets = feat.spec.hash_buckets
    if buckets is not None:
        size = const("buckets", int(buckets), np.int64)
        one = const("one", 1, np.int64)
        nodes += [
            node("Mod", [name("i64"), size], [name("mod")], fmod=0, name=name("mod")),
            node("Add", [name("mod"), one], [name("rows")], name=name("shift")),
        ]
    elif feat.keys:
        uses_ml = True
        nodes.append(
            node(
                "LabelEncoder",
                [name("i64")],
                [name("rows")],
                domain=ML_DOMAIN,
                name=name("lookup"),
                keys_int64s=[int(v) for v in feat.keys],
                values_int64s=list(range(1, len(feat.keys) + 1)),
                default_int64=OOV_ROW,
            )
        )
    else:
        zeros = const("zeros", 0, np.int64)
        nodes.append(node("Mul", [name("i64"), zeros], [name("rows")], name=name("all_oov")))
    nodes += [
        node("Where", [name("valid"), name("rows"), oov], [name("rows_ok")], name=name("oov")),
        node("Cast", [name("rows_ok")], [name("rows_d")], to=TensorProto.DOUBLE, name=name("to_double")),
        node("Where", [name("none"), pad, name("rows_d")], [name("out")], name=name("padding")),
    ]
    return nodes, inits, uses_ml, name("out")


def prep_model(plan: FeaturePlan, opset: int = 15) -> Any:
    """The preprocessing alone as a model (``features`` -> ``prepared``), for tests and inspection."""
    from onnx import TensorProto, helper

    nodes, inits, uses_ml = build_nodes(plan)
    n = len(plan)
    graph = helper.make_graph(
        nodes + [helper.make_node("Identity", [PREPARED], ["prepared"], name=PREFIX + "out")],
        "feature_prep",
        [helper.make_tensor_value_info(INPUT, TensorProto.DOUBLE, ["batch", n])],
        [helper.make_tensor_value_info("prepared", TensorProto.DOUBLE, ["batch", n])],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(ML_DOMAIN, ML_OPSET)] if uses_ml else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="exporter")
    model.ir_version = 8
    return model


def compose(plan: FeaturePlan, core: Any) -> Any:
    """``core`` (input ``features`` = the prepared matrix) with the preprocessing in front of it.

    The result has the core's output and one input ``features`` FP64 ``[batch, n]`` taking raw values.
    """
    from onnx import TensorProto, helper

    g = core.graph
    if [i.name for i in g.input] != [INPUT]:
        raise ExporterError(
            f"cannot add preprocessing: the model graph's inputs are {[i.name for i in g.input]}, expected ['features']"
        )
    used = {n for node in g.node for n in (*node.input, *node.output)} | {i.name for i in g.initializer}
    clash = sorted(n for n in used if n.startswith(PREFIX))
    if clash:
        raise ExporterError(f"cannot add preprocessing: the model graph already uses names {clash[:3]}")
    nodes, inits, uses_ml = build_nodes(plan)
    for node in g.node:
        for k, name in enumerate(node.input):
            if name == INPUT:
                node.input[k] = PREPARED
        _rename_in_subgraphs(node, INPUT, PREPARED)
    new_input = helper.make_tensor_value_info(INPUT, TensorProto.DOUBLE, ["batch", len(plan)])
    merged = helper.make_graph(
        nodes + list(g.node),
        g.name or "model",
        [new_input],
        list(g.output),
        initializer=inits + list(g.initializer),
        value_info=list(g.value_info),
    )
    opsets = {o.domain: o.version for o in core.opset_import}
    if uses_ml:
        opsets[ML_DOMAIN] = max(opsets.get(ML_DOMAIN, 0), ML_OPSET)
    opsets.setdefault("", 15)
    model = helper.make_model(
        merged,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name=core.producer_name or "exporter",
        functions=list(core.functions),
    )
    model.ir_version = core.ir_version
    for prop in core.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    return model


def _rename_in_subgraphs(node: Any, old: str, new: str) -> None:
    """Rename captured uses of ``old`` inside If/Loop/Scan bodies (torch export may emit them)."""
    from onnx import AttributeProto

    for attr in node.attribute:
        graphs = (
            [attr.g]
            if attr.type == AttributeProto.GRAPH
            else list(attr.graphs)
            if attr.type == AttributeProto.GRAPHS
            else []
        )
        for sub in graphs:
            for inner in sub.node:
                for k, name in enumerate(inner.input):
                    if name == old:
                        inner.input[k] = new
                _rename_in_subgraphs(inner, old, new)
