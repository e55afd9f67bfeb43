"""Small ONNX models built in tests (explicit ir_version, as onnxruntime reads at most 13)."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18


def make_model(nodes, inputs, outputs, initializers=(), opset=OPSET, extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def causal_attention() -> list:
    """One causal attention head over ``x [N, S, D]``: ``o = softmax(x Wq0 (x Wk0)^T + mask)
    x Wv``, from the constants ``wq0``, ``wk0``, ``wv`` and ``mask`` (0 / -inf) the caller
    gives."""
    return [
        helper.make_node("MatMul", ["x", "wq0"], ["q0"]),
        helper.make_node("MatMul", ["x", "wk0"], ["k0"]),
        helper.make_node("Transpose", ["k0"], ["k0t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q0", "k0t"], ["l0"]),
        helper.make_node("Add", ["l0", "mask"], ["m0"]),
        helper.make_node("Softmax", ["m0"], ["p0"], axis=-1),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("MatMul", ["p0", "v"], ["o"]),
    ]


def mlp(widths, activation="Relu", seed=0, scale=None, bias=True, dynamic_batch=True) -> onnx.ModelProto:
    """Gemm(transB=1) + activation layers; weights N(0, scale^2) (default 1/fan_in variance)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    for i, (d_in, d_out) in enumerate(itertools.pairwise(widths)):
        s = scale if scale is not None else 1 / np.sqrt(d_in)
        inits.append(numpy_helper.from_array((rng.standard_normal((d_out, d_in)) * s).astype(np.float32), f"w{i}"))
        ins = [x, f"w{i}"]
        if bias:
            inits.append(numpy_helper.from_array((rng.standard_normal(d_out) * 0.1).astype(np.float32), f"b{i}"))
            ins.append(f"b{i}")
        nodes.append(helper.make_node("Gemm", ins, [f"h{i}"], transB=1, name=f"fc{i}"))
        x = f"h{i}"
        if activation and i < len(widths) - 2:
            nodes.append(helper.make_node(activation, [x], [f"a{i}"], name=f"act{i}"))
            x = f"a{i}"
    batch = "N" if dynamic_batch else 4
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, widths[0]])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, widths[-1]])],
        inits,
    )


def _vi(name):
    """A float [8, 16] value info."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [8, 16])


def looping_model(trip=1 << 62) -> onnx.ModelProto:
    """A Loop of ``trip`` steps whose condition stays true (its body passes it on): onnxruntime
    would run it to the end, in native code no alarm interrupts (the analysis hung)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Identity", ["s_in"], ["s_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, None)])
    return make_model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                       helper.make_node("Loop", ["trip", "cond", "h"], ["l"], body=body),
                       helper.make_node("Relu", ["l"], ["y"])], [_vi("x")], [_vi("y")],
                      [numpy_helper.from_array(np.array(trip, np.int64), "trip"),
                       numpy_helper.from_array(np.array(True), "cond"),
                       numpy_helper.from_array(np.eye(16, dtype=np.float32), "w")])
