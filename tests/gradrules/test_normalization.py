"""Backward rule of BatchNormalization (batch statistics) against the autodiff."""

from __future__ import annotations

import numpy as np
from onnx import helper

from tests.gradrules.oracle import array, assert_within, head, image_model, ratios, weight


def _conv_bn_relu(size: int, rng):
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"],
                              name="bn1"),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1")]
    inits = [weight("w1", (16, 8, 3, 3), rng), array("g1", np.ones(16)), array("b1", np.zeros(16)),
             array("m1", np.zeros(16)), array("v1", np.ones(16))]
    head("r1", 16, 10, rng, nodes, inits)
    return image_model(nodes, inits, (8, size, size), 10)


def test_batch_norm_on_a_1x1_map_removes_the_batch_mean_and_x_hat_components():
    """On a 1x1 map at batch 8 the projection removes 2/8 of the gradient's variance; a rule
    that ignores the batch statistics is 33% high."""
    found = ratios(_conv_bn_relu(1, np.random.default_rng(0)), batch_size=8, batches=16)
    assert_within(found, 0.15)
def test_batch_norm_on_a_4x4_map():
    """A gradient broadcast by the global pool is the same at every position of a sample:
    the batch mean removes 1/N of it, not 1/(N S)."""
    found = ratios(_conv_bn_relu(4, np.random.default_rng(1)), batch_size=8, batches=16)
    assert_within(found, 0.15)
