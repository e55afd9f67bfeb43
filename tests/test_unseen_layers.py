"""Layers and export variants the probes of ``benchmarks/unseen_exports.py`` (stop 32) found
mispredicted or refused, each in a small graph checked against onnxruntime's measurement."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze

from .models import make_model


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


@pytest.mark.parametrize("axis, scale_shape", [(1, (16, 8, 8)), (2, (8, 8)), (-1, (8,))])
def test_layer_norm_over_channels_and_positions_of_a_feature_map(axis, scale_shape):
    """``nn.LayerNorm([C, H, W])`` (axis 1) and ``nn.LayerNorm([H, W])`` (axis 2) after a
    Conv, with a scale and bias per normalised element: one statistic shared by every channel,
    or each position scaled its own way. The rule took them for a per-channel norm over
    positions (the Batch- and InstanceNorm case) and failed on the broadcast; the fallback
    measured them. Predicted, the mean and variance match onnxruntime's."""
    rng = np.random.default_rng(0)
    constants = [_const("w", rng.standard_normal((16, 3, 3, 3)) / 5),
                 _const("b", rng.standard_normal(16) * 0.3),
                 _const("g", 1 + 0.5 * rng.standard_normal(scale_shape)),
                 _const("beta", 0.3 * rng.standard_normal(scale_shape))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("LayerNormalization", ["r", "g", "beta"], ["y"], axis=axis)]
    model = make_model(nodes, [_value("x", (32, 3, 8, 8))], [_value("y", (32, 16, 8, 8))],
                       constants, opset=17)
    y = next(t for t in analyze(model, measure=True).tensors if t.name == "y")
    assert y.rule == "layer_normalization"
    assert y.var == pytest.approx(y.measured_var, rel=0.05)
    assert y.mean == pytest.approx(y.measured_mean, abs=0.02)
