"""The mean square of embedding rows (rules/table_rows.py): an RMSNorm written out on gathered
rows of a table whose padding row is zero. A token that draws it has mean square 0 and
reciprocal root mean square ``1/sqrt(eps)``; as a Gaussian around the rows' mean square the
reciprocal read 0.04x of its variance here (Phi-3's first norm 0.24x), the table's own law is
exact. Against onnxruntime on uniform token ids."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.propagate import propagate
from tests.oracle import measured_over_token_ids

B, T, D, V, EPS = 64, 32, 32, 64, 1e-5


def _embedding_norm(square: str, scaled: bool = False, projected: bool = False) -> onnx.ModelProto:
    """``scaled``: the rows times ``sqrt(D)`` before the norm (Gemma's embeddings);
    ``projected``: through a dense layer and a bias first (OLMo-2's q_norm of q_proj of the
    embeddings, no norm before it)."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((V, D)) * 0.02
    table[0] = 0.0  # padding_idx
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    squared = (helper.make_node("Pow", ["x", "two"], ["sq"]) if square == "pow"
               else helper.make_node("Mul", ["x", "x"], ["sq"]))
    gathered = [helper.make_node("Gather", ["table", "ids"], ["rows"]),
                helper.make_node("Mul", ["rows", "normalizer"], ["x"])] if scaled else [
                    helper.make_node("Gather", ["table", "ids"], ["x"])]
    if projected:
        gathered = [helper.make_node("Gather", ["table", "ids"], ["rows"]),
                    helper.make_node("MatMul", ["rows", "weight"], ["dense"]),
                    helper.make_node("Add", ["dense", "bias"], ["x"])]
    nodes = [
        *gathered,
        squared,
        helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["mse"]),
        helper.make_node("Sqrt", ["mse"], ["rms"]),
        helper.make_node("Div", ["one", "rms"], ["inv"]),
        helper.make_node("Mul", ["x", "inv"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "embedding_norm",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [B, T])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("ms", "rms", "inv", "y")],
        [f32("table", table), f32("two", 2.0), f32("eps", EPS), f32("one", 1.0),
         f32("normalizer", np.sqrt(D)), f32("weight", rng.standard_normal((D, D)) / np.sqrt(D)),
         f32("bias", rng.standard_normal(D) * 0.005),
         numpy_helper.from_array(np.array([-1], np.int64), "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _measured(model: onnx.ModelProto, names: list[str]) -> dict[str, float]:
    return measured_over_token_ids(model, names, V, (B, T), batches=32)


@pytest.mark.parametrize("square,scaled,projected", [("pow", False, False), ("mul", False, False),
                                                     ("pow", True, False), ("pow", False, True)])
def test_reciprocal_rms_of_a_zero_padding_row(square, scaled, projected):
    """1/32 of the tokens (65,536 drawn: about 2,000 zero rows) have ``1/sqrt(eps)``: the
    reciprocal's variance is 9x that of the other rows. Rows scaled by a constant first
    (Gemma): the scaled table's law (the reciprocal 0.27x before, a Gaussian). Rows through a
    dense layer and a bias: the law of the mapped table ``T W + b``, whose correlated features
    are in it (the mean square 1.12x, the reciprocal 0.52x before)."""
    model = _embedding_norm(square, scaled, projected)
    result = propagate(load(model))
    names = ["ms", "rms", "inv", "y"]
    measured = _measured(model, names)
    ratios = {n: result.moments[n].total()[1] / measured[n] for n in names}
    assert all(abs(r - 1) < 0.05 for r in ratios.values()), ratios
