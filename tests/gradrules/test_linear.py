"""Backward rules of Gemm, MatMul and Conv against the autodiff's measured gradients."""

from __future__ import annotations

import numpy as np
from onnx import helper

from tests.gradrules.oracle import array, assert_within, head, image_model, ratios, weight
from tests.models import mlp


def test_gemm_mlp_gradients_match_the_autodiff():
    found = ratios(mlp([64, 128, 128, 10], activation="Relu", seed=1), batch_size=32)
    assert len(found) == 6  # x, three Gemm outputs, two Relu outputs
    assert_within(found, 0.15)


def test_conv_with_padding_and_stride_matches_the_autodiff():
    """Zero padding sends fewer taps back to the border; a strided Conv leaves gaps."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1],
                              strides=[2, 2], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2")]
    inits = [weight("w1", (16, 3, 3, 3), rng), array("b1", rng.standard_normal(16) * 0.1),
             weight("w2", (16, 16, 3, 3), rng)]
    head("r2", 16, 10, rng, nodes, inits)
    found = ratios(image_model(nodes, inits, (3, 6, 6), 10), batch_size=16)
    assert_within(found, 0.2)


def test_a_conv_on_a_1x1_map_sends_back_only_its_centre_tap():
    """A 3x3 Conv with padding 1 on a 1x1 map: the eight outer taps see only padding, so
    the input gradient is 1/9 of what all taps would give; the rule must see it."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1")]
    inits = [weight("w1", (32, 32, 3, 3), rng)]
    head("r1", 32, 10, rng, nodes, inits)
    found = ratios(image_model(nodes, inits, (32, 1, 1), 10), batch_size=16)
    assert_within(found, 0.15)
