"""Random ops and stochastic depth's keep mask (rules/random_draws.py) against onnxruntime:
each model is run many times (every run draws new values), and the predicted moments of every
float tensor are compared with the moments measured over all the runs. The rules replace the
empirical fallback, which ran each random node alone hundreds of times."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.propagate import propagate
from onnxinit.runtime import make_session

BATCH = 256
RUNS = 200  # 51,200 mask draws: the mean of a Bernoulli(0.8) to +-0.0018 (1 sigma)


def _floats(name, value):
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def stochastic_depth(compare: str = "Less", draw_first: bool = True, low: float = 0.0,
                     high: float = 1.0, threshold: float = 0.8, keep: float = 0.8):
    """``conv(x) * (Cast(compare(U, c)) / keep)``, U = RandomUniformLike(zeros [N, 1,
    1, 1]) on [low, high), as torchvision's StochasticDepth exports in training mode (Less,
    U first, on [0, 1)), and the other comparisons and operand orders."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 4, 3, 3)) / 6).astype(np.float32)
    pair = ["u", "c"] if draw_first else ["c", "u"]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("ConstantOfShape", ["size"], ["zeros"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("RandomUniformLike", ["zeros"], ["u"], low=low, high=high, name="draw"),
        helper.make_node(compare, pair, ["kept"], name="compare"),
        helper.make_node("Cast", ["kept"], ["mask"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Div", ["mask", "keep"], ["scaled"], name="div"),
        helper.make_node("Mul", ["h", "scaled"], ["branch"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes, "stochastic_depth",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, 4, 6, 6])],
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
         for t in ("u", "mask", "scaled", "branch")],
        [numpy_helper.from_array(w, "w"), _floats("c", threshold), _floats("keep", keep),
         numpy_helper.from_array(np.array([BATCH, 1, 1, 1], np.int64), "size")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _measured(model, names, runs=RUNS):
    """Mean and variance of each output over ``runs`` runs, each on fresh Gaussian x."""
    session = make_session(model, device="cpu", optimize=False)
    rng = np.random.default_rng(1)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    sums = {n: np.zeros(2) for n in names}
    count = {n: 0 for n in names}
    for _ in range(runs):
        x = rng.standard_normal(shape).astype(np.float32)
        for n, v in zip(names, session.run(names, {"x": x})):
            v = v.astype(np.float64)
            sums[n] += (v.sum(), (v * v).sum())
            count[n] += v.size
    out = {}
    for n in names:
        mean = sums[n][0] / count[n]
        out[n] = (mean, sums[n][1] / count[n] - mean * mean)
    return out


@pytest.mark.parametrize("compare, draw_first, low, high, threshold", [
    ("Less", True, 0.0, 1.0, 0.8),  # torchvision
    ("Greater", False, 0.0, 1.0, 0.8),  # c > U: the same mask
    ("Greater", True, 0.0, 1.0, 0.8),  # U > c: kept with probability 0.2
    ("LessOrEqual", True, -1.0, 3.0, 0.5),  # (0.5 + 1) / 4 = 0.375
    ("GreaterOrEqual", False, -1.0, 3.0, 0.5),
])
def test_stochastic_depth_mask_against_onnxruntime(compare, draw_first, low, high, threshold):
    model = stochastic_depth(compare, draw_first, low, high, threshold)
    result = propagate(load(model))
    assert not result.fallbacks  # the fallback ran the draw and the Cast 500 times each
    c = float(np.float32(threshold))
    below = (c - low) / (high - low)
    p = below if (compare.startswith("Less") == draw_first) else 1 - below
    assert result.moments["mask"].total() == (p, p * (1 - p))
    assert result.moments["u"].total() == ((low + high) / 2, (high - low) ** 2 / 12)
    measured = _measured(model, ["u", "mask", "scaled", "branch"])
    for name, (mean, var) in measured.items():
        want_mean, want_var = result.moments[name].total()
        # 51,200 mask draws (the branch: 8 x 36 values per draw, one draw per sample)
        assert abs(want_var - var) <= 0.04 * var, (name, want_var, var)
        assert abs(want_mean - mean) <= 0.02 * np.sqrt(var) + 1e-3, (name, want_mean, mean)


def _one_node_model(node, out_type=TensorProto.FLOAT, inits=()):
    graph = helper.make_graph(
        [node], "draw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("y", out_type, None)], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("node, mean, var", [
    (helper.make_node("RandomNormalLike", ["x"], ["y"], mean=0.5, scale=2.0), 0.5, 4.0),
    (helper.make_node("RandomUniformLike", ["x"], ["y"], low=-2.0, high=1.0), -0.5, 0.75),
    (helper.make_node("RandomNormal", [], ["y"], shape=[64, 64], mean=-1.0, scale=0.5), -1.0,
     0.25),
])
def test_random_draws_against_onnxruntime(node, mean, var):
    model = _one_node_model(node)
    result = propagate(load(model))
    assert not result.fallbacks
    assert result.moments["y"].total() == (mean, var)
    got_mean, got_var = _measured(model, ["y"], runs=50)["y"]
    assert abs(got_var - var) <= 0.02 * var and abs(got_mean - mean) <= 0.02 * np.sqrt(var)
