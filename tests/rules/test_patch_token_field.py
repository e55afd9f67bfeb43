"""A patch embedding's features are a Conv of few inputs, strongly correlated (their covariance
field, :mod:`onnxinit.rules.channel_covariance`); a ViT/DeiT puts a class token before the
patches (Concat along the tokens) and normalises each token (LayerNorm written out by the
TorchScript exporter at opset < 17). The Concat ended the field, and the mean square of the
centred tokens was read as of independent features: 0.68x the measured variance in HF DeiT
at opset 14. With the field pooled over the Concat's positions it is the Gaussian quadratic
form's. The class token's row is constant: its mean square has variance 0, which the Sqrt of
``mean square + eps`` keeps (it refused the whole tensor). Predicted against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict


def _model(seed: int, n: int = 2000, c: int = 32):
    """image [n, 3, 8, 8] -> Conv 4x4 stride 4 (48 taps -> c channels) -> [n, 4, c] tokens ->
    Concat(class token, tokens) -> + position embedding -> the centred rows' mean square ``v``
    and ``sd = sqrt(v + eps)``."""
    rng = np.random.default_rng(seed)
    inits = {"w": rng.normal(0, 1 / np.sqrt(48), (c, 3, 4, 4)).astype(np.float32),
             "shape": np.array([n, c, 4], np.int64),
             "cls": rng.normal(0, 0.02, (n, 1, c)).astype(np.float32),
             "pos": rng.normal(0, 0.02, (1, 5, c)).astype(np.float32),
             "two": np.array(2.0, np.float32), "eps": np.array(1e-12, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Reshape", ["y", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Concat", ["cls", "t"], ["e"], axis=1),
             helper.make_node("Add", ["e", "pos"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["m"], axes=[-1]),
             helper.make_node("Sub", ["h", "m"], ["cd"]),
             helper.make_node("Pow", ["cd", "two"], ["c2"]),
             helper.make_node("ReduceMean", ["c2"], ["v"], axes=[-1]),
             helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 3, 8, 8])
    outs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in ("v", "sd")]
    return make_model(nodes, [x], outs, [numpy_helper.from_array(v, k) for k, v in inits.items()],
                      opset=14)


@pytest.mark.parametrize("seed", [0, 1])
def test_mean_square_of_patch_tokens_after_a_class_token(seed):
    model = _model(seed)
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments, seed=seed)
    v = measured["v"].astype(np.float64)[:, 1:]  # the patches' rows (the class token's: 0)
    m = result.moments["v"]
    predicted = float(np.mean(np.broadcast_to(m.var, measured["v"].shape)[:, 1:]))
    truth = float(np.mean(np.var(v, axis=0)))
    assert 0.85 < predicted / truth < 1.15, (predicted, truth)
    assert np.all(np.isfinite(result.moments["sd"].var))


def test_sqrt_of_a_mean_square_with_a_constant_row():
    """sqrt(mean(x^2) + eps) over rows of 8 features (its Gaussian law crosses 0: the Gamma
    law of the mean square) where one row is a constant (a class token): that row's variance
    is 0, and the other rows' Sqrt is the Gamma law's."""
    n, d = 4000, 8
    inits = {"cls": np.full((n, 1, d), 0.1, np.float32), "two": np.array(2.0, np.float32),
             "eps": np.array(1e-6, np.float32)}
    nodes = [helper.make_node("Concat", ["cls", "x"], ["e"], axis=1),
             helper.make_node("Pow", ["e", "two"], ["e2"]),
             helper.make_node("ReduceMean", ["e2"], ["v"], axes=[-1]),
             helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 4, d])
    out = [helper.make_tensor_value_info("sd", TensorProto.FLOAT, None)]
    model = make_model(nodes, [x], out, [numpy_helper.from_array(v, k) for k, v in inits.items()],
                       opset=14)
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments, seed=0)["sd"].astype(np.float64)
    m = result.moments["sd"]
    var = np.broadcast_to(m.var, measured.shape)
    assert float(np.max(var[:, 0])) == 0.0
    predicted, truth = float(np.mean(var[:, 1:])), float(np.mean(np.var(measured[:, 1:], axis=0)))
    assert 0.9 < predicted / truth < 1.1, (predicted, truth)
