"""Means and sums over correlated channels and positions (rules/correlated_means.py,
rules/map_means.py): a LayerNorm over ``[C, H, W]`` written out after a Conv (TorchScript at
opset < 17), a mean square over a Conv's channels (an RMS norm written by hand), and the
squared length ``Pow`` then ``ReduceSum`` of a patch embedding's correlated features. The
reduce rule took the reduced values as independent. Predicted against onnxruntime runs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict


def _norm_model(seed: int, n: int = 1000, channels: int = 16, side: int = 16):
    """x [n, 3, 16, 16] -> Conv 3x3 (3 -> 16, padded) -> ReLU -> r; the LayerNorm over [C, H, W]
    as TorchScript writes it at opset 13: m = ReduceMean(r), d = r - m, v = ReduceMean(d^2),
    s = Sqrt(v + eps), y = d / s; and over the channels at each position: ReduceMean(r) and
    ReduceMean(r^2) (``mc``, ``ms``)."""
    rng = np.random.default_rng(seed)
    bound = 1 / np.sqrt(27)
    inits = {"w": rng.uniform(-bound, bound, (channels, 3, 3, 3)).astype(np.float32),
             "b": rng.uniform(-bound, bound, channels).astype(np.float32),
             "two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["z"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["z"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[1, 2, 3]),
             helper.make_node("Sub", ["r", "m"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["p"]),
             helper.make_node("ReduceMean", ["p"], ["v"], axes=[1, 2, 3]),
             helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["s"]),
             helper.make_node("Div", ["d", "s"], ["y"]),
             helper.make_node("ReduceMean", ["r"], ["mc"], axes=[1]),
             helper.make_node("Pow", ["r", "two"], ["r2"]),
             helper.make_node("ReduceMean", ["r2"], ["ms"], axes=[1])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 3, side, side])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
            for o in ("m", "v", "s", "y", "mc", "ms")]
    model = make_model(nodes, [x], outs, [numpy_helper.from_array(v, k) for k, v in inits.items()],
                       opset=13)
    return model, {"x": Moments.scalar(0.0, 1.0)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layer_norm_over_a_conv_map_written_out(seed):
    """The statistics of a LayerNorm over [C, H, W]: the mean's variance was 0.25x the
    measured (seed 0), the centred squares' mean and its Sqrt 0.21x (the channels' means
    correlate through the kernels' tap sums and Mehler's squared correlations); now
    0.98-1.04x. The normalised output stays 1.00x."""
    model, moments = _norm_model(seed)
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments)
    for name in ("m", "v", "s", "y"):
        np.testing.assert_allclose(result.moments[name].total()[1],
                                   measured[name].astype(np.float64).var(), rtol=0.1,
                                   err_msg=name)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_and_mean_square_over_correlated_conv_channels(seed):
    """A mean and a mean square over a ReLU Conv's 16 channels at each position: 0.70x and
    0.67x the measured variance with the channels independent (seed 0); 0.92-0.96x with
    their covariance (the squares' through the chain ReLU then square, Mehler's eight
    orders)."""
    model, moments = _norm_model(seed, n=400)
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments)
    for name in ("mc", "ms"):
        np.testing.assert_allclose(result.moments[name].total()[1],
                                   measured[name].astype(np.float64).var(), rtol=0.12,
                                   err_msg=name)


def _length_model(seed: int, features: int = 32, side: int = 8, n: int = 2000):
    """A patch embedding (Conv 2x2 stride 2 of 3 channels: 12 inputs for 32 features) moved
    to tokens [n, 16, 32]; the squared length ``ReduceSum(Pow(t, 2))`` and its Sqrt, and the
    sum of squares of ``tanh(t)`` written ``g * g`` (kept dims)."""
    rng = np.random.default_rng(seed)
    inits = {"k": (rng.standard_normal((features, 3, 2, 2)) * np.sqrt(1.0 / 12)).astype(np.float32),
             "shape": np.array([0, features, -1], np.int64), "two": np.array(2.0, np.float32),
             "axes": np.array([-1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "k"], ["p"], strides=[2, 2]),
             helper.make_node("Reshape", ["p", "shape"], ["f"]),
             helper.make_node("Transpose", ["f"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Pow", ["t", "two"], ["sq"]),
             helper.make_node("ReduceSum", ["sq", "axes"], ["s"]),
             helper.make_node("Sqrt", ["s"], ["norm"]),
             helper.make_node("Tanh", ["t"], ["g"]),
             helper.make_node("Mul", ["g", "g"], ["g2"]),
             helper.make_node("ReduceSum", ["g2", "axes"], ["gs"], keepdims=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 3, side, side])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("s", "norm", "gs")]
    model = make_model(nodes, [x], outs, [numpy_helper.from_array(v, k) for k, v in inits.items()],
                       opset=18)
    return model, {"x": Moments.scalar(0.0, 1.0)}


@pytest.mark.parametrize("seed", [0, 1])
def test_squared_length_of_correlated_features_written_out(seed):
    """``Pow`` then ``ReduceSum`` over 32 features of rank 12: 0.27x the measured variance
    (its Sqrt 0.29x, the tanh squares' sum 0.32x) with the features independent (seed 0);
    0.98-1.04x with their covariance."""
    model, moments = _length_model(seed)
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments)
    for name in ("s", "norm", "gs"):
        np.testing.assert_allclose(result.moments[name].total()[1],
                                   measured[name].astype(np.float64).var(), rtol=0.1,
                                   err_msg=name)


def _rms_model(seed: int, n: int = 400, channels: int = 16, side: int = 16):
    """An RMS norm over a Conv's channels written out (a Keras custom layer through tf2onnx):
    ``h / sqrt(mean_c h^2 + eps)``, h a Conv 3x3 of 3 channels (27 inputs for 16 channels)."""
    rng = np.random.default_rng(seed)
    inits = {"w": (rng.standard_normal((channels, 3, 3, 3)) / 3).astype(np.float32),
             "eps": np.array(1e-6, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"]),  # unpadded: one position class
             helper.make_node("Mul", ["h", "h"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[1]),
             helper.make_node("Add", ["ms", "eps"], ["mse"]),
             helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Reciprocal", ["rms"], ["inv"]),
             helper.make_node("Mul", ["h", "inv"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 3, side, side])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("ms", "y")]
    model = make_model(nodes, [x], outs, [numpy_helper.from_array(v, k) for k, v in inits.items()],
                       opset=13)
    return model, {"x": Moments.scalar(0.0, 1.0)}


@pytest.mark.parametrize("seed", [0, 1])
def test_rms_norm_over_conv_channels_written_out(seed):
    """The mean square over the channels read 0.66-0.68x the measured variance, and the
    normalised map 1.15x (its factors taken as independent: Jensen's term of the reciprocal);
    now 0.99-1.00x, the map 1.00x (the row's law over the channels, rules/row_norm.py). The
    reciprocal RMS, 0.67-0.71x before, reads 1.15-1.18x: the scaled chi-square matched on two
    moments has a heavier left tail than the mean square of 16 correlated channels."""
    model, moments = _rms_model(seed)
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments)
    for name, rtol in (("ms", 0.05), ("y", 0.03)):
        np.testing.assert_allclose(result.moments[name].total()[1],
                                   measured[name].astype(np.float64).var(), rtol=rtol,
                                   err_msg=name)


def _dense_rows_model(seed: int, n: int = 2000, width: int = 16, rows: int = 8):
    """A dense layer on the last axis of ``[n, 4, rows, width]`` (``nn.Linear`` on a map's
    rows), tanh, then the mean over the rows and the features together (``nn.LayerNorm`` over
    ``[H, W]`` written out: ``m``) and of the centred squares (``v``)."""
    rng = np.random.default_rng(seed)
    inits = {"w": (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
             "b": (0.1 * rng.standard_normal(width)).astype(np.float32),
             "two": np.array(2.0, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["hb"]),
             helper.make_node("Tanh", ["hb"], ["t"]),
             helper.make_node("ReduceMean", ["t"], ["m"], axes=[2, 3]),
             helper.make_node("Sub", ["t", "m"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["p"]),
             helper.make_node("ReduceMean", ["p"], ["v"], axes=[2, 3])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 4, rows, width])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("m", "p", "v")]
    model = make_model(nodes, [x], outs, [numpy_helper.from_array(v, k) for k, v in inits.items()],
                       opset=13)
    return model, {"x": Moments.scalar(0.0, 1.0)}


@pytest.mark.parametrize("seed", [0, 1])
def test_mean_over_rows_of_a_dense_layers_features(seed):
    """A mean over a map's rows and a dense layer's features together: the features correlate
    through the weights at hand (``W^T W``, all-ones weights of the mean do not average the
    cross terms out): the mean read 0.69x and 1.45x the measured variance (seeds 0, 1) with
    the features taken as independent, the mean of the centred squares 0.63x and 0.59x (2.1x
    and 1.8x over before the centring kept tanh's law: its square read 3.2x and 2.9x); now
    0.99-1.02x."""
    model, moments = _dense_rows_model(seed)
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments)
    for name in ("m", "p", "v"):
        np.testing.assert_allclose(result.moments[name].total()[1],
                                   measured[name].astype(np.float64).var(), rtol=0.1,
                                   err_msg=name)
