"""ConvTranspose of a spatially correlated input (issue 10): a box filter's output (each value
the mean of a 3x3 window of white noise, neighbours correlated up to offset 2) upsampled by a
ConvTranspose, against onnxruntime Monte Carlo runs. The rule reads the input's correlation at
the input offsets its taps combine (a bilinear upsampling kernel's output had half the
measured variance) and gives its output the correlation averaged over the stride's phases,
which a global pool after it reads (0.1-0.2x the measured variance without it)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, per_channel, predict

C = 4


def _box(axes: int) -> np.ndarray:
    return np.full((C, 1) + (3,) * axes, 3.0 ** (-axes / 2), np.float32)


def _weights(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def bilinear(channels: int, k: int) -> np.ndarray:
    """FCN's bilinear upsampling kernel, one per channel: ``[C, 1, k, k]``."""
    f = (k + 1) // 2
    centre = f - 1 if k % 2 == 1 else f - 0.5
    line = 1 - np.abs(np.arange(k) - centre) / f
    return np.broadcast_to(np.outer(line, line), (channels, 1, k, k)).astype(np.float32).copy()


def _model(x_shape, w, attrs):
    axes = len(x_shape) - 2
    nodes = [
        helper.make_node("Conv", ["x", "box"], ["xb"], group=C, pads=[1] * (2 * axes)),
        helper.make_node("ConvTranspose", ["xb", "w"], ["y"], **attrs),
        helper.make_node("GlobalAveragePool", ["y"], ["pooled"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "pooled")],
        [numpy_helper.from_array(_box(axes), "box"), numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


CASES = [
    ("stride2", {"strides": [2, 2]}, (C, 6, 3, 3)),
    ("stride2-pads", {"strides": [2, 2], "pads": [1, 1, 1, 1]}, (C, 6, 4, 4)),
    ("output-padding", {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
     (C, 6, 3, 3)),
    ("groups", {"strides": [2, 2], "group": 2}, (C, 3, 4, 4)),
    ("dilation", {"dilations": [2, 2], "pads": [1, 0, 0, 1]}, (C, 6, 3, 3)),
    ("stride1", {"pads": [1, 1, 1, 1]}, (C, 6, 3, 3)),
    ("strides-3-2", {"strides": [3, 2], "pads": [0, 1, 2, 0], "output_padding": [2, 1]},
     (C, 6, 3, 4)),
    ("same-upper", {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, (C, 6, 3, 3)),
    ("output-shape", {"strides": [2, 2], "output_shape": [32, 32]}, (C, 6, 4, 4)),
    ("bilinear", {"strides": [2, 2], "pads": [1, 1, 1, 1], "group": C}, None),
]


@pytest.mark.parametrize(("name", "attrs", "w_shape"), CASES, ids=[c[0] for c in CASES])
def test_conv_transpose_of_a_correlated_map(name, attrs, w_shape):
    w = bilinear(C, 4) if w_shape is None else _weights(w_shape)
    _check(_model((2000, C, 16, 16), w, attrs), pooled_rtol=0.1)


def test_conv_transpose_1d():
    _check(_model((6000, C, 32), _weights((C, 5, 4)), {"strides": [2], "pads": [1, 1]}),
           pooled_rtol=0.1)


def test_conv_transpose_3d():
    _check(_model((500, C, 8, 8, 8), _weights((C, 3, 3, 3, 3)),
                  {"strides": [2, 2, 2], "pads": [1] * 6}), pooled_rtol=0.1)


def _check(model, pooled_rtol):
    moments = {"x": Moments(np.zeros(()), np.ones(()))}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    for name in ("y", "pooled"):
        assert result.rules[name] not in ("empirical", "pass-through"), result.fallbacks
    _, got = per_channel(values["y"])
    _, var = result.moments["y"].values_along(1, got.size)
    assert np.all(np.abs(var / got - 1) < 0.08), var / got
    # the pooled channels' variance together: a channel whose kernel sums to about 0 has a
    # small pooled variance, set by the border, where the correlation is not modelled
    _, got = per_channel(values["pooled"])
    _, var = result.moments["pooled"].values_along(1, got.size)
    assert abs(var.sum() / got.sum() - 1) < pooled_rtol, (var / got, var.sum() / got.sum())
