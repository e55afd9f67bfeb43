"""An element-wise function of a BatchNorm output whose samples share an energy (a per-sample
scale) is a function of a scale mixture, not of one Gaussian (rules/energy_mixture.py), against
onnxruntime at batch 8."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxinit.graph import load
from onnxinit.propagate import propagate
from onnxinit.runtime import make_session
from tests.rules.test_sample_masks import _bn, _floats

BATCH, CHANNELS, SIDE = 8, 16, 8


def _block(spread: float, seed: int = 0):
    """x times a per-sample gate ``1 + spread u`` (u an input [N, 1, 1, 1]) -> 1x1 Conv ->
    BatchNorm ("z") -> Sigmoid ("s"), SiLU ("f" = z s)."""
    rng = np.random.default_rng(seed)
    inits = [_floats("w", rng.standard_normal((CHANNELS, CHANNELS, 1, 1)) / np.sqrt(CHANNELS)),
             _floats("spread", spread), _floats("one", 1.0)]
    bn, bn_inits = _bn("h", "z", CHANNELS)
    nodes = [
        helper.make_node("Mul", ["u", "spread"], ["su"]),
        helper.make_node("Add", ["su", "one"], ["g"]),
        helper.make_node("Mul", ["x", "g"], ["y"]),
        helper.make_node("Conv", ["y", "w"], ["h"]), bn,
        helper.make_node("Sigmoid", ["z"], ["s"]),
        helper.make_node("Mul", ["z", "s"], ["f"]),
    ]
    graph = helper.make_graph(
        nodes, "energy_mixture",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, CHANNELS, SIDE, SIDE]),
         helper.make_tensor_value_info("u", TensorProto.FLOAT, [BATCH, 1, 1, 1])],
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in ("s", "f")],
        inits + bn_inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("spread", [0.5, 0.7])
def test_sigmoid_and_silu_of_a_scale_mixture(spread):
    # the gate 1 + 0.5 u gives the samples' energies a relative variance of 0.72 (1.1 at 0.7);
    # a Sigmoid is concave in the scale and SiLU convex, so the Gaussian of the same total
    # variance put the Sigmoid at 1.11x (1.16x) of onnxruntime's variance over 400 batches and
    # SiLU at 0.93x (0.90x); the mixture's 1.02x and 0.99x (1.03x and 0.98x)
    model = _block(spread)
    result = propagate(load(model))
    session = make_session(model, device="cpu", optimize=False)
    rng = np.random.default_rng(1)
    runs = [session.run(["s", "f"], {
        "x": rng.standard_normal((BATCH, CHANNELS, SIDE, SIDE)).astype(np.float32),
        "u": rng.standard_normal((BATCH, 1, 1, 1)).astype(np.float32)}) for _ in range(400)]
    for i, name in enumerate(("s", "f")):
        values = np.concatenate([r[i] for r in runs]).astype(np.float64)
        ratio = result.moments[name].total()[1] / values.var()
        assert abs(ratio - 1) < 0.05, (name, ratio)
