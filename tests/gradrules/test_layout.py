"""Backward rules of SpaceToDepth and DepthToSpace (elements moved between channels and
b x b blocks) against the autodiff's measured gradient statistics."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.gradrules.oracle import array, assert_within, head, image_model, ratios, weight


@pytest.mark.parametrize("op,attrs,channels", [
    ("SpaceToDepth", {"blocksize": 2}, 32),
    ("DepthToSpace", {"blocksize": 2, "mode": "DCR"}, 2),
    ("DepthToSpace", {"blocksize": 2, "mode": "CRD"}, 2),
])
def test_depth_space(op, attrs, channels):
    """conv (padded: the gradient differs by position), ReLU, the move, conv, ReLU, head: the
    move's input r1 and everything after it within 15% of the measured gradient variance. (x
    and c1, before the first ReLU, are off by as much with an Identity in the move's place,
    0.49 and 0.84: the first layer's rules at 3 input channels, not the move.)"""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node(op, ["r1"], ["m"], name="move", **attrs),
             helper.make_node("Conv", ["m", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2")]
    inits = [weight("w1", (8, 3, 3, 3), rng), array("b1", rng.standard_normal(8) * 0.1),
             weight("w2", (12, channels, 3, 3), rng), array("b2", np.zeros(12))]
    head("r2", 12, 10, rng, nodes, inits)
    found = ratios(image_model(nodes, inits, (3, 8, 8), 10), batch_size=16)
    assert {"r1", "m"} <= set(found)
    assert_within({k: v for k, v in found.items() if k not in ("x", "c1")}, 0.15)
