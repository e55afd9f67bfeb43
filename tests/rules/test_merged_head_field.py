"""The row mean of a self-attention's output projection (rules/merged_head_field.py): a
post-norm residual sum ``y = n + W_o merge(P V)`` with n a LayerNorm's output (its rows sum to
0, so the next LayerNorm's mean statistic is the mean over the attention output's features
alone). The output projection's row field started as ``W_o^T diag(nu) W_o`` (the merged heads'
features independent); the heads' outputs share the query's token (``x_t B``) and the values'
covariance across heads (``G S_v``). The residual stream has rank 16 of 64 features (a dense
layer of 16 inputs), as Keras' ViT encoders. The LayerNorms are written as tf2onnx writes
Keras'. Predicted against onnxruntime runs (4096 tokens)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict

N, T, E, D, H = 256, 16, 16, 64, 4


def _glorot(rng, fan_in: int, fan_out: int) -> np.ndarray:
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32)


def _norm(x: str, y: str) -> list:
    """tf2onnx's LayerNorm (gamma 1, beta 0): ``y = x s + (-mean(x)) s``."""
    return [helper.make_node("ReduceMean", [x], [f"{y}_m"], axes=[-1]),
            helper.make_node("Sub", [x, f"{y}_m"], [f"{y}_d"]),
            helper.make_node("Mul", [f"{y}_d", f"{y}_d"], [f"{y}_d2"]),
            helper.make_node("ReduceMean", [f"{y}_d2"], [f"{y}_v"], axes=[-1]),
            helper.make_node("Add", [f"{y}_v", "eps"], [f"{y}_ve"]),
            helper.make_node("Sqrt", [f"{y}_ve"], [f"{y}_r"]),
            helper.make_node("Reciprocal", [f"{y}_r"], [f"{y}_ri"]),
            helper.make_node("Mul", [f"{y}_ri", "gamma"], [f"{y}_s"]),
            helper.make_node("Mul", [x, f"{y}_s"], [f"{y}_xs"]),
            helper.make_node("Neg", [f"{y}_m"], [f"{y}_neg"]),
            helper.make_node("Mul", [f"{y}_neg", f"{y}_s"], [f"{y}_ms"]),
            helper.make_node("Add", [f"{y}_xs", f"{y}_ms"], [y])]


def _model(seed: int, scale: float):
    """x [N, T, E] -> n = LN(x W0) -> f = softmax(scale Q K^T) V W_o (4 heads of 16) -> y = n +
    f -> z = LN(y); outputs the mean statistic ``z_m``, f and f's row mean ``fm``."""
    rng = np.random.default_rng(seed)
    inits = {"w0": _glorot(rng, E, D), "gamma": np.ones(D, np.float32),
             "eps": np.array(1e-3, np.float32),
             "heads": np.array([N, T, H, D // H], np.int64),
             "merged": np.array([N, T, D], np.int64),
             "scale": np.array(scale, np.float32)}
    for name in ("wq", "wk", "wv", "wo"):
        inits[name] = _glorot(rng, D, D)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"])] + _norm("h", "n")
    for p in ("q", "k", "v"):
        nodes += [helper.make_node("MatMul", ["n", f"w{p}"], [f"{p}0"]),
                  helper.make_node("Reshape", [f"{p}0", "heads"], [f"{p}1"])]
    nodes += [
        helper.make_node("Transpose", ["q1"], ["q"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k1"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v1"], ["v"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Mul", ["qk", "scale"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["pv"]),
        helper.make_node("Transpose", ["pv"], ["pvt"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["pvt", "merged"], ["o"]),
        helper.make_node("MatMul", ["o", "wo"], ["f"]),
        helper.make_node("Add", ["n", "f"], ["y"])] + _norm("y", "z") + [
        helper.make_node("ReduceMean", ["f"], ["fm"], axes=[-1])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, T, E])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("z_m", "fm", "f")]
    model = make_model(nodes, [x], outs,
                       [numpy_helper.from_array(v, k) for k, v in inits.items()], opset=17)
    return model, {"x": Moments.scalar(0.0, 1.0)}


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("scale", [0.25, 1.0], ids=["scaled", "sharp"])
def test_row_mean_share_of_an_attention_output(seed, scale):
    """The share of the attention output's variance in its row mean, ``Var(mean_d f_d) /
    Var(f)`` (``1^T S 1 / (D tr S)``), predicted over measured: 1.02-1.45x with the merged
    heads' features taken as independent (seeds 1 and 4 fail), 0.95-1.21x now. The ratio
    leaves out the error of P V's own variance (1.1-1.3x high here: tokens normalised on a
    16-dimensional sphere, docs/robustness.md), which the mean and f share."""
    model, moments = _model(seed, scale)
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments, seed=seed)
    share = {n: result.moments[n].total()[1] / measured[n].astype(np.float64).var()
             for n in ("fm", "f", "z_m")}
    assert share["fm"] / share["f"] == pytest.approx(1.0, rel=0.25), share
    assert share["z_m"] / share["f"] == pytest.approx(1.0, rel=0.3), share

