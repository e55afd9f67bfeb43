"""The pooled channels of a tensor whose channels share a per-sample energy co-vary, and a
linear layer after the pool reads that covariance (rules/pooled_energy.py), against
onnxruntime."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict
from tests.rules.test_sample_energy import _leak


def _with_head(model, weight):
    """``_leak``'s pool "y" read by a 1x1 Conv with ``weight`` ("head", an output)."""
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(weight.astype(np.float32), "wh"))
    graph.node.append(helper.make_node("Conv", ["y", "wh"], ["head"]))
    graph.output.append(helper.make_tensor_value_info("head", 1, None))
    return model


def test_a_conv_after_the_pool_reads_the_channels_covariance():
    # 64 pooled channels whose means all move with the sample's shared energy, summed by a
    # head with weights of one sign: their covariance is most of the head's variance,
    # measured 0.258 against 0.092 for independent channels (the rule before); predicted
    # 0.265. (Weights alternating in sign: 0.0996 measured, 0.092 independent, 0.087
    # predicted: the pool's own shared part, which the cross terms subtract, is the larger.)
    width = 64
    rng = np.random.default_rng(3)
    weight = (np.abs(rng.standard_normal(width)) / np.sqrt(width))[None, :, None, None]
    model = _with_head(_leak((4096, 8, 2, 2), width), np.repeat(weight, 2, axis=0))
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    measured = monte_carlo(model, {"x": x})["head"].astype(np.float64).var(axis=(0, 2, 3)).mean()
    np.testing.assert_allclose(np.mean(result.moments["head"].var), measured, rtol=0.05)
