"""The token field through windowed attention's layout ops (Swin) and a per-sample scale
(stochastic depth). Windowed attention: windows taken from a map
(Reshape, Transpose), attention within each window, the windows put back on the map, a cyclic
shift (``torch.roll``: Slice and Concat of one tensor) and the shifted windows taken again.
Against onnxruntime on Gaussian inputs: a mean over the whole map and a mean over each shifted
window read the tokens' covariance; before, the field was dropped at the Transpose that puts
the windows back (independent tokens: the map mean 0.51x)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

B, M, WS, D = 512, 4, 2, 16  # batch, map side, window side, features
NW = M // WS


def _windowed() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    ints = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    w = {k: numpy_helper.from_array((rng.standard_normal((D, D)) * s / np.sqrt(D)).astype(
        np.float32), k) for k, s in (("wq", 2.0), ("wk", 2.0), ("wv", 1.0))}
    perm = [0, 1, 3, 2, 4, 5]
    nodes = [
        # windows of the map: [B, M, M, D] -> [B*NW*NW, WS*WS, D]
        helper.make_node("Reshape", ["x", "split"], ["x6"]),
        helper.make_node("Transpose", ["x6"], ["x6t"], perm=perm),
        helper.make_node("Reshape", ["x6t", "windows"], ["xw"]),
        helper.make_node("MatMul", ["xw", "wq"], ["q"]),
        helper.make_node("MatMul", ["xw", "wk"], ["k"]),
        helper.make_node("MatMul", ["xw", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["o"]),
        # the windows back on the map
        helper.make_node("Reshape", ["o", "split"], ["o6"]),
        helper.make_node("Transpose", ["o6"], ["o6t"], perm=perm),
        helper.make_node("Reshape", ["o6t", "map"], ["y"]),
        # a cyclic shift by one row: Concat(y[:, -1:], y[:, :-1])
        helper.make_node("Slice", ["y", "last", "end", "axis1"], ["tail"]),
        helper.make_node("Slice", ["y", "zero", "last", "axis1"], ["head"]),
        helper.make_node("Concat", ["tail", "head"], ["rolled"], axis=1),
        # shifted windows, and the mean of each
        helper.make_node("Reshape", ["rolled", "split"], ["r6"]),
        helper.make_node("Transpose", ["r6"], ["r6t"], perm=perm),
        helper.make_node("Reshape", ["r6t", "windows"], ["rw"]),
        helper.make_node("ReduceMean", ["rw"], ["window_mean"], axes=[1], keepdims=0),
        helper.make_node("ReduceMean", ["y"], ["map_mean"], axes=[1, 2], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "windowed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, M, M, D])],
        [helper.make_tensor_value_info("window_mean", TensorProto.FLOAT, [B * NW * NW, D]),
         helper.make_tensor_value_info("map_mean", TensorProto.FLOAT, [B, D]),
         helper.make_tensor_value_info("o", TensorProto.FLOAT, [B * NW * NW, WS * WS, D])],
        [*w.values(), ints("split", [B, NW, WS, NW, WS, D]),
         ints("windows", [B * NW * NW, WS * WS, D]), ints("map", [B, M, M, D]),
         ints("last", [-1]), ints("end", [M]), ints("zero", [0]), ints("axis1", [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_means_over_the_map_and_over_shifted_windows():
    model = _windowed()
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    for name in ("o", "map_mean", "window_mean"):
        measured = values[name].astype(np.float64).var()
        predicted = result.moments[name].total()[1]
        assert abs(predicted / measured - 1) < 0.1, (name, predicted / measured)


def _scaled_attention() -> onnx.ModelProto:
    """P V of one attention head over S tokens, times a per-sample scale ``m`` [B, 1, 1]
    (stochastic depth's mask, a gate), then the mean over the tokens."""
    S = 8
    rng = np.random.default_rng(4)
    w = {k: numpy_helper.from_array((rng.standard_normal((D, D)) * s / np.sqrt(D)).astype(
        np.float32), k) for k, s in (("wq", 1.5), ("wk", 1.5), ("wv", 1.0))}
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["o"]),
        helper.make_node("Mul", ["o", "m"], ["y"]),
        helper.make_node("ReduceMean", ["y"], ["mean"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, D]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, [B, 1, 1])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [B, D])], list(w.values()))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_per_sample_scale_is_shared_by_the_tokens():
    """Before: the scale was taken as independent from token to token (0.69x)."""
    model = _scaled_attention()
    moments = {"x": Moments.scalar(0.0, 1.0), "m": Moments.scalar(1.0, 1.0)}
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments)["mean"].astype(np.float64).var()
    assert abs(result.moments["mean"].total()[1] / measured - 1) < 0.1
