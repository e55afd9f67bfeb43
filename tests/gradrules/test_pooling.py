"""Backward rules of MaxPool, AveragePool and GlobalAveragePool against the autodiff."""

from __future__ import annotations

import numpy as np
from onnx import helper

from tests.gradrules.oracle import array, assert_within, head, image_model, ratios, weight


def _pooled(pool) -> object:
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"), pool]
    inits = [weight("w1", (16, 3, 3, 3), rng), array("b1", rng.standard_normal(16) * 0.1)]
    head("p1", 16, 10, rng, nodes, inits)
    return image_model(nodes, inits, (3, 8, 8), 10)


def test_max_pool_sends_the_gradient_to_window_maxima():
    """A ReLU before a MaxPool sees the gradient only where its window's maximum is: mostly
    positive inputs, so E[relu'^2] there is near 1, not P(x > 0)."""
    pool = helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2],
                            name="pool")
    assert_within(ratios(_pooled(pool), batch_size=16), 0.15)


def test_average_pool():
    pool = helper.make_node("AveragePool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2],
                            name="pool")
    assert_within(ratios(_pooled(pool), batch_size=16), 0.15)
