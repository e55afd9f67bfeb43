"""Statistics over the features of a token as tf2onnx writes Keras transformers.

A mean over the features of a row that a LayerNorm centred, as tf2onnx writes Keras'
LayerNormalization: ``x * s + (beta - mean(x) * s)`` with the mean a GlobalAveragePool of the
[N, T, D] tensor, ``s = gamma / sqrt(mean((x - mean)^2) + eps)``. The next block's norm takes
the per-token mean of ``h + a`` (the normalised row plus a small attention output): the
normalised row's mean is exactly 0, so that mean is ``a``'s alone. With the row's features taken
as independent it read ``Var(h + a) / D``, 9.7x of onnxruntime's in a Keras transformer and 70x
here. Against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

B, T, D = 64, 16, 64


def _tf_layer_norm(x: str, tag: str, beta: bool, sub_form: bool) -> list[onnx.NodeProto]:
    """Keras' LayerNorm through tf2onnx: the statistics by GlobalAveragePool, the output folded
    as ``x * s + (beta - mean * s)`` (``x * s + Neg(mean) * s`` when beta is 0 and folded away,
    ``x * s - mean * s`` with ``sub_form``)."""
    t = lambda name: f"{tag}_{name}"  # noqa: E731
    nodes = [
        helper.make_node("GlobalAveragePool", [x], [t("mean")]),
        helper.make_node("Sub", [x, t("mean")], [t("d")]),
        helper.make_node("Mul", [t("d"), t("d")], [t("d2")]),
        helper.make_node("GlobalAveragePool", [t("d2")], [t("var")]),
        helper.make_node("Add", [t("var"), "eps"], [t("var_eps")]),
        helper.make_node("Sqrt", [t("var_eps")], [t("std")]),
        helper.make_node("Reciprocal", [t("std")], [t("inv")]),
        helper.make_node("Mul", [t("inv"), "gamma"], [t("s")]),
        helper.make_node("Mul", [x, t("s")], [t("xs")]),
    ]
    if sub_form:
        return nodes + [helper.make_node("Mul", [t("mean"), t("s")], [t("ms")]),
                        helper.make_node("Sub", [t("xs"), t("ms")], [t("y")])]
    nodes += [helper.make_node("Neg", [t("mean")], [t("neg")]),
              helper.make_node("Mul", [t("neg"), t("s")], [t("ms")])]
    if beta:
        return nodes + [helper.make_node("Add", [t("ms"), "beta"], [t("shift")]),
                        helper.make_node("Add", [t("xs"), t("shift")], [t("y")])]
    return nodes + [helper.make_node("Add", [t("xs"), t("ms")], [t("y")])]


def _model(beta: bool, sub_form: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    nodes = _tf_layer_norm("x", "n1", beta, sub_form)
    nodes += [helper.make_node("MatMul", ["n1_y", "w_a"], ["a"]),
              helper.make_node("Add", ["n1_y", "a"], ["r"])]
    nodes += _tf_layer_norm("r", "n2", beta, sub_form)
    shape = [B, T, D]
    graph = helper.make_graph(
        nodes, "tf_layer_norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("n2_mean", "n2_var", "n2_y", "n1_y")],
        [f32("w_a", 0.1 * rng.standard_normal((D, D)) / np.sqrt(D)),
         f32("eps", 1e-6), f32("gamma", np.ones(D)), f32("beta", np.zeros(D))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _ratios(model: onnx.ModelProto) -> dict[str, float]:
    x = Moments(np.zeros((1, 1, D)), np.linspace(0.5, 2.0, D).reshape(1, 1, D))
    _, result = predict(model, {"x": x})
    values = monte_carlo(model, {"x": x})
    return {n: result.moments[n].total()[1] / float(np.var(values[n].astype(np.float64)))
            for n in ("n2_mean", "n2_var", "n2_y")}


def test_row_mean_after_folded_layer_norm_with_beta():
    ratios = _ratios(_model(beta=True))
    assert abs(ratios["n2_mean"] - 1) < 0.15, ratios  # 15x before
    assert abs(ratios["n2_y"] - 1) < 0.05, ratios


def test_row_mean_after_folded_layer_norm_beta_folded_away():
    ratios = _ratios(_model(beta=False))
    assert abs(ratios["n2_mean"] - 1) < 0.15, ratios


def test_row_mean_after_folded_layer_norm_subtracted():
    ratios = _ratios(_model(beta=False, sub_form=True))
    assert abs(ratios["n2_mean"] - 1) < 0.15, ratios


def test_mean_square_of_a_row_after_folded_layer_norm():
    """The normalised row's energy is constant, so the next norm's variance statistic varies by
    ``2 mean(h a)`` alone: 63x before the folded form was known normalised, 2.2x now (the
    cross term is a small difference of large terms of the pairs' algebra)."""
    for sub_form in (False, True):
        ratios = _ratios(_model(beta=False, sub_form=sub_form))
        assert 0.5 < ratios["n2_var"] < 3, ratios


def test_mean_square_over_the_channels_of_a_patch_embedding():
    """A Conv's channels moved last (tf2onnx's NHWC Transpose; a ViT's patch embedding) are a
    dense layer of the window's taps: their correlations (about ``1/sqrt(K)``, K = 48 taps here)
    add up in the mean square over the 64 channels, 2.3x its variance with the channels taken
    as independent. Against onnxruntime."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(
        (rng.standard_normal((D, 3, 4, 4)) / np.sqrt(48)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[4, 4]),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["y"]),
             helper.make_node("Mul", ["y", "y"], ["y2"]),
             helper.make_node("GlobalAveragePool", ["y2"], ["ms"])]
    graph = helper.make_graph(
        nodes, "patches", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, 3, 16, 16])],
        [helper.make_tensor_value_info("ms", TensorProto.FLOAT, None)],
        [w, numpy_helper.from_array(np.array([B, 16, D], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = Moments(np.zeros((1, 3, 1, 1)), np.ones((1, 3, 1, 1)))
    _, result = predict(model, {"x": x})
    measured = float(np.var(monte_carlo(model, {"x": x})["ms"].astype(np.float64)))
    ratio = result.moments["ms"].total()[1] / measured
    assert abs(ratio - 1) < 0.15, ratio


def test_mean_over_tokens_of_centred_rows_as_many_as_features():
    """A mean over the tokens (Keras' GlobalAveragePooling1D: ReduceMean over axis 1, not kept)
    of centred rows with as many tokens as features has the shape of a mean over the features;
    read as one, its variance was 0 and ``check`` failed a Keras ViT with ONNXINIT002."""
    nodes = _tf_layer_norm("x", "n1", beta=True, sub_form=False)
    nodes.append(helper.make_node("ReduceMean", ["n1_y"], ["pooled"], axes=[1], keepdims=0))
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    graph = helper.make_graph(
        nodes, "pool_tokens", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, D, D])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, None)],
        [f32("eps", 1e-6), f32("gamma", np.ones(D)), f32("beta", np.zeros(D))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = Moments(np.zeros((1, 1, D)), np.ones((1, 1, D)))
    _, result = predict(model, {"x": x})
    measured = float(np.var(monte_carlo(model, {"x": x})["pooled"].astype(np.float64)))
    ratio = result.moments["pooled"].total()[1] / measured
    assert abs(ratio - 1) < 0.1, ratio


def test_row_mean_of_a_residual_mlp_after_folded_layer_norm():
    """``mean_d (h + f(h))`` with h a folded LayerNorm's row (its mean is 0) and f a ReLU MLP:
    only ``f``'s row mean varies, ``1^T W_2^T C_g W_2 1 / D^2``, a quadratic form of the
    weights at hand that the pooled pairs read as the average over weights (1.2-1.4x on the
    Keras transformers' MLPs; the features' covariance carried as a field reads it for these
    weights). Four weight draws, against onnxruntime."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
        nodes = _tf_layer_norm("x", "n1", beta=True, sub_form=False)
        nodes += [helper.make_node("MatMul", ["n1_y", "w1"], ["z"]),
                  helper.make_node("Relu", ["z"], ["g"]),
                  helper.make_node("MatMul", ["g", "w2"], ["f"]),
                  helper.make_node("Add", ["n1_y", "f"], ["r"]),
                  helper.make_node("GlobalAveragePool", ["r"], ["mean"])]
        limit = lambda a, b: np.sqrt(6 / (a + b))  # noqa: E731  (Keras' glorot_uniform)
        graph = helper.make_graph(
            nodes, "mlp_mean", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, D])],
            [helper.make_tensor_value_info("mean", TensorProto.FLOAT, None)],
            [f32("w1", rng.uniform(-1, 1, (D, 2 * D)) * limit(D, 2 * D)),
             f32("w2", rng.uniform(-1, 1, (2 * D, D)) * limit(2 * D, D)),
             f32("eps", 1e-6), f32("gamma", np.ones(D)), f32("beta", np.zeros(D))])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  ir_version=8)
        x = Moments(np.zeros((1, 1, D)), np.ones((1, 1, D)))
        _, result = predict(model, {"x": x})
        measured = float(np.var(monte_carlo(model, {"x": x}, seed=seed)["mean"].astype(np.float64)))
        ratio = result.moments["mean"].total()[1] / measured
        assert abs(ratio - 1) < 0.1, (seed, ratio)
