"""``check`` on a class token sliced back out of the tokens (findings/variance._constant_part).

TimeSformer adds its class token and position embeddings to the tokens, then slices the class
token's row back out (``embeddings[:, 0]``) and concatenates it with the rest: that row has no
signal variance (a constant), and ``check`` failed the model with "vanishing-variance ... falls
to 0x" on it although the Concat after it carries the signal on. A chain of tensors without
signal variance that rejoins the main path only in an unflagged Concat is not judged; one that
goes on alone (a head reading the class token only) still is."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit import check
from onnxinit.analysis import analyze
from tests.models import make_model

N, T, D = 8, 4, 16


def _model(rejoined: bool):
    rng = np.random.default_rng(0)
    consts = {
        "w": rng.normal(size=(D, D)) / np.sqrt(D),
        "w2": rng.normal(size=(D, D)) / np.sqrt(D),
        "w3": rng.normal(size=(D, D)) * np.sqrt(2 / D),
        "cls": np.broadcast_to(rng.normal(size=(1, 1, D)) * 0.02, (N, 1, D)),
        "pos": rng.normal(size=(1, T + 1, D)) * 0.02,
    }
    ints = {"zero": np.array(0), "one": np.array([1]), "end": np.array([T + 1]),
            "axis": np.array([1])}
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Concat", ["cls", "h"], ["tokens"], axis=1),
        helper.make_node("Add", ["tokens", "pos"], ["embedded"]),
        helper.make_node("Gather", ["embedded", "zero"], ["first"], axis=1),
        helper.make_node("Unsqueeze", ["first", "axis"], ["first_row"]),
    ]
    if rejoined:
        nodes += [
            helper.make_node("Slice", ["embedded", "one", "end", "axis"], ["rest"]),
            helper.make_node("Concat", ["first_row", "rest"], ["joined"], axis=1),
            helper.make_node("MatMul", ["joined", "w2"], ["y"]),
        ]
    else:  # layers on the class token alone: the output carries no signal
        nodes += [helper.make_node("MatMul", ["first_row", "w2"], ["a"]),
                  helper.make_node("Relu", ["a"], ["b"]),
                  helper.make_node("MatMul", ["b", "w3"], ["c"]),
                  helper.make_node("Relu", ["c"], ["d"]),
                  helper.make_node("MatMul", ["d", "w2"], ["y"])]
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), n) for n, v in consts.items()]
    inits += [numpy_helper.from_array(v.astype(np.int64), n) for n, v in ints.items()]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, T, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits, opset=17)


def test_a_class_token_sliced_out_and_concatenated_back_is_not_a_vanishing_signal():
    findings = check.find(analyze(_model(rejoined=True)))
    assert not check.failed(findings), [f.message for f in findings]


def test_layers_on_the_constant_row_alone_still_fail():
    findings = check.find(analyze(_model(rejoined=False)))
    assert check.failed(findings)
    assert any(f.rule_id == "ONNXINIT002" for f in findings)
