"""A capacity-limited top-2 router's gates, measured from samples of its logits
(rules/joint_source.py, rules/empirical.py, arithmetic's ``through_mask``).

NLLB-MoE normalises its top-1 probability by the sum of the two kept gates,
``g1 = t1 / max(t1 + t2, eps)`` with ``t_k = sum_e p_e m_k,e`` (p the softmax of the logits,
m_k the one-hot masks after the capacity), then multiplies by the mask, ``g1 m1``. Every operand
is computed from the logits; drawn from Gaussians of their moments, independently, the clipped
sum reached eps and g1 read 2e13x its measured variance here (NLLB-MoE: 3e12x), and ``g1 * m1``
1e12x (NLLB-MoE, g1 measured: 0.52x as independent factors). The experts read the gates at the
nonzeros of the masks (``Gather`` at ``NonZero``): a number of values that varies between
draws, which the fallback could not stack (the gates' own moments passed through: 3.3x in
NLLB-MoE); its runs are pooled. Predictions against onnxruntime runs of the graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

T, E, CAPACITY = 512, 4, 150


def _mask_nodes(k: str, logits: str, less_than: str) -> list:
    """The k-th expert's one-hot (argmax of ``logits``) kept while its running count plus
    ``less_than``'s offset stays below the capacity: int64 ``keep{k}``."""
    return [
        helper.make_node("ArgMax", [logits], [f"i{k}"], axis=-1, keepdims=0),
        helper.make_node("OneHot", [f"i{k}", "depth", "values"], [f"m{k}"], axis=-1),
        helper.make_node("CumSum", [f"m{k}", "zero"], [f"c{k}"]),
        helper.make_node("Sub", [f"c{k}", "one"], [f"p{k}"]),
        helper.make_node("Add", [f"p{k}", less_than], [f"q{k}"]),
        helper.make_node("Less", [f"q{k}", "capacity"], [f"b{k}"]),
        helper.make_node("Cast", [f"b{k}"], [f"k{k}"], to=TensorProto.INT64),
        helper.make_node("Mul", [f"m{k}", f"k{k}"], [f"keep{k}"]),
        helper.make_node("Cast", [f"keep{k}"], [f"f{k}"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["probs", f"f{k}"], [f"pm{k}"]),
        helper.make_node("ReduceSum", [f"pm{k}", "experts"], [f"t{k}"], keepdims=0),
    ]


def _model():
    consts = {"depth": np.array(E, dtype=np.int64),
              "values": np.array([0, 1], dtype=np.int64),
              "fill": np.array(-np.inf, dtype=np.float32),
              "one": np.array(1, dtype=np.int64), "zero": np.array(0, dtype=np.int64),
              "none": np.zeros((1, E), dtype=np.int64),
              "tokens": np.array([0], dtype=np.int64), "experts": np.array([1], dtype=np.int64),
              "last": np.array([1], dtype=np.int64),
              "capacity": np.array(CAPACITY, dtype=np.int64),
              "eps": np.array(1.19e-7, dtype=np.float32),
              "flat": np.array([-1], dtype=np.int64), "zero1": np.array([0], dtype=np.int64)}
    nodes = [helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    nodes += _mask_nodes("1", "probs", "none")
    nodes += [
        helper.make_node("Cast", ["m1"], ["first"], to=TensorProto.BOOL),
        helper.make_node("Where", ["first", "fill", "logits"], ["rest"]),
        helper.make_node("ReduceSum", ["m1", "tokens"], ["n1"], keepdims=1),
    ]
    nodes += _mask_nodes("2", "rest", "n1")
    nodes += [
        helper.make_node("Add", ["t1", "t2"], ["total"]),
        helper.make_node("Clip", ["total", "eps"], ["clipped"]),
        helper.make_node("Div", ["t1", "clipped"], ["g1"]),
        helper.make_node("Unsqueeze", ["g1", "last"], ["g1u"]),
        helper.make_node("Mul", ["g1u", "f1"], ["gate1"]),
        # the gates of the tokens routed to their first expert, at the one-hot's nonzeros
        helper.make_node("Reshape", ["keep1", "flat"], ["keep_flat"]),
        helper.make_node("Cast", ["keep_flat"], ["routed"], to=TensorProto.BOOL),
        helper.make_node("NonZero", ["routed"], ["where"]),
        helper.make_node("Squeeze", ["where", "zero1"], ["at"]),
        helper.make_node("Reshape", ["gate1", "flat"], ["gate_flat"]),
        helper.make_node("Gather", ["gate_flat", "at"], ["routed_gates"], axis=0),
    ]
    inits = [numpy_helper.from_array(v, n) for n, v in consts.items()]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
               for n in ("g1", "f2", "gate1", "routed_gates")]
    graph = helper.make_graph(
        nodes, "router_gates",
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [T, E])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_router_gates_are_measured_from_the_logits():
    model = _model()
    inputs = {"logits": Moments.scalar(0.0, 0.03)}  # NLLB-MoE's router logits at the sweep
    _, result = predict(model, inputs)
    runs = [monte_carlo(model, inputs, seed=s) for s in range(16)]
    for name, rel in (("g1", 0.1), ("f2", 0.15), ("gate1", 0.1), ("routed_gates", 0.15)):
        measured = np.concatenate([r[name].astype(np.float64).ravel() for r in runs])
        mean, var = result.moments[name].total()
        assert mean == pytest.approx(measured.mean(), rel=rel), name
        assert var == pytest.approx(measured.var(), rel=rel), name
