"""An XGBoost binary classifier as the ai.onnx.ml ``TreeEnsembleClassifier`` node, read from the model's JSON.

Why not onnxmltools' converter: it dumps the model twice as one JSON text per tree, parses each and walks the
trees node by node in recursive Python; for the 1,506 depth-8 trees the defaults grow on a million-row log that
took 6.6 s on an idle 2-core machine, against 1.2-1.4 s for this (docs/benchmark-history.md). This reads the model once
(``save_raw("json")``: one array per field per tree) and builds the same node, attribute for attribute: nodes
numbered in depth-first order with the "yes" (``x < split``) child first, ``BRANCH_LT`` splits, the missing value
following the default direction, one class weight per leaf, ``LOGISTIC`` after the margin ``base_values`` =
logit(base_score).
``tests/models/test_xgb_trees.py`` holds the two converters to the same bytes.

Models outside that shape (another objective, several targets, categorical splits, vector leaves) return ``None``
and go through onnxmltools, which knows them.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from onnx import NodeProto, helper

#: the TreeEnsembleClassifier's input and outputs (the names onnxmltools gives them); the wrapper reads PROBABILITIES
INPUT = "input_f32"
PROBABILITIES = "probabilities"
OUTPUTS = ("label", PROBABILITIES)


def tree_ensemble_node(booster: Any) -> NodeProto | None:
    """The classifier node of a ``binary:logistic`` booster with numeric splits, or None (see the module doc)."""
    model = json.loads(bytes(booster.save_raw("json")))
    learner = model["learner"]
    one_target = learner["learner_model_param"].get("num_target", "1") == "1"
    if learner["objective"]["name"] != "binary:logistic" or not one_target:
        return None
    gbtree = learner["gradient_booster"]
    if gbtree.get("name", "gbtree") != "gbtree" or "model" not in gbtree:
        return None
    trees = gbtree["model"]["trees"]  # all of them, as ``Booster.predict`` scores (a best iteration slices first)
    if not trees:
        return None
    columns: dict[str, list[Any]] = {
        k: []
        for k in (
            "nodes_treeids",
            "nodes_nodeids",
            "nodes_featureids",
            "nodes_modes",
            "nodes_values",
            "nodes_truenodeids",
            "nodes_falsenodeids",
            "nodes_missing_value_tracks_true",
            "class_treeids",
            "class_nodeids",
            "class_weights",
        )
    }
    for tree_id, tree in enumerate(trees):
        vector_leaf = int(tree["tree_param"].get("size_leaf_vector", "1")) > 1
        if vector_leaf or any(int(t) != 0 for t in tree.get("split_type", ())):
            return None
        _add_tree(tree_id, tree, columns)
    attrs: dict[str, Any] = dict(columns)
    attrs["class_ids"] = [0] * len(columns["class_treeids"])
    attrs["classlabels_int64s"] = [0, 1]
    attrs["post_transform"] = "LOGISTIC"
    base_score = _base_score(learner["learner_model_param"].get("base_score", "0.5"))
    first = trees[0]
    if first["left_children"][0] == -1 and first["split_conditions"][0] == 0:
        # what onnxmltools does when the first tree is one leaf of weight 0
        attrs["base_values"] = [base_score]
    elif base_score != 0.5:
        attrs["base_values"] = [-np.log(1 / np.float32(base_score) - 1.0)]
    return helper.make_node(
        "TreeEnsembleClassifier",
        [INPUT],
        list(OUTPUTS),
        name="TreeEnsembleClassifier",
        domain="ai.onnx.ml",
        **attrs,
    )


def _base_score(raw: str) -> float:
    """XGBoost 3 writes ``[5.2E-1]``, XGBoost 2 ``5.2E-1``."""
    text = raw.strip()
    values = json.loads(text) if text.startswith("[") else [float(text)]
    return float(values[0])


def _add_tree(tree_id: int, tree: dict[str, Any], out: dict[str, list[Any]]) -> None:
    """Append one tree's nodes in depth-first order, left ("yes") child first."""
    left, right = tree["left_children"], tree["right_children"]
    split_index, condition, default_left = tree["split_indices"], tree["split_conditions"], tree["default_left"]
    order: list[int] = []
    stack = [0]
    while stack:
        node = stack.pop()
        order.append(node)
        if left[node] != -1:
            stack.append(right[node])
            stack.append(left[node])
    number = {node: k for k, node in enumerate(order)}
    for node in order:
        out["nodes_treeids"].append(tree_id)
        out["nodes_nodeids"].append(number[node])
        if left[node] == -1:
            out["nodes_featureids"].append(0)
            out["nodes_modes"].append("LEAF")
            out["nodes_values"].append(0.0)
            out["nodes_truenodeids"].append(0)
            out["nodes_falsenodeids"].append(0)
            out["nodes_missing_value_tracks_true"].append(0)
            out["class_treeids"].append(tree_id)
            out["class_nodeids"].append(number[node])
            out["class_weights"].append(float(condition[node]) + 0.0)  # -0.0 as +0.0, as the text dump has it
        else:
            out["nodes_featureids"].append(int(split_index[node]))
            out["nodes_modes"].append("BRANCH_LT")
            out["nodes_values"].append(float(condition[node]) + 0.0)
            out["nodes_truenodeids"].append(number[left[node]])
            out["nodes_falsenodeids"].append(number[right[node]])
            out["nodes_missing_value_tracks_true"].append(int(bool(default_left[node])))
