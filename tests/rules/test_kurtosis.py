"""Excess kurtosis carried through the layers before a depthwise Conv (rules/kurtosis.py), and
the squeeze-excite pool that reads it (rules/pool_skewness.py), against onnxruntime."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules.context import RuleContext
from onnxinit.rules.kurtosis import law
from tests.models import make_model
from tests.oracle import monte_carlo, predict


def _narrow_block(shape, width, seed=0, depthwise=True, kernel=3, stride=1, scale=1.0,
                  spelled=False):
    """HardSwish -> 1x1 Conv to ``width`` channels -> BatchNorm -> HardSwish -> 1x1 Conv back
    -> BatchNorm ("u") -> HardSwish [-> depthwise Conv -> BatchNorm -> HardSwish ->
    GlobalAveragePool] (BatchNorm on batch statistics): the 1x1 Convs sum few heavy-tailed
    inputs, so the energy of a position is shared by its channels. ``spelled``: every
    HardSwish written as Keras exports it, ``x * (Relu6(x + 3) * (1/6))``, and the pool as a
    ReduceMean over the spatial axes."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    consts = {"w1": rng.standard_normal((width, c, 1, 1)) / np.sqrt(c) * scale,
              "w2": rng.standard_normal((c, width, 1, 1)) / np.sqrt(width) * scale,
              "wd": rng.standard_normal((c, 1, kernel, kernel)) * 1.2 / kernel}
    for name, n in (("1", width), ("2", c), ("d", c)):
        consts.update({f"g{name}": np.ones(n), f"b{name}": np.zeros(n),
                       f"m{name}": np.zeros(n), f"v{name}": np.ones(n)})

    def bn(name, x, y):
        return helper.make_node("BatchNormalization", [x] + [f"{p}{name}" for p in "gbmv"],
                                [y, f"rm{name}", f"rv{name}"], training_mode=1)

    if spelled:
        consts.update({"three": np.array(3.0), "zero": np.array(0.0), "six": np.array(6.0),
                       "sixth": np.array(1 / 6), "axes": np.array([2, 3])})

    def hardswish(x, y):
        if not spelled:
            return [helper.make_node("HardSwish", [x], [y])]
        return [helper.make_node("Add", [x, "three"], [y + "_3"]),
                helper.make_node("Clip", [y + "_3", "zero", "six"], [y + "_6"]),
                helper.make_node("Mul", [y + "_6", "sixth"], [y + "_s"]),
                helper.make_node("Mul", [x, y + "_s"], [y])]

    nodes = [*hardswish("x", "h0"),
             helper.make_node("Conv", ["h0", "w1"], ["c1"]), bn("1", "c1", "u1"),
             *hardswish("u1", "h1"),
             helper.make_node("Conv", ["h1", "w2"], ["c2"]), bn("2", "c2", "u"),
             *hardswish("u", "h")]
    if depthwise:
        nodes += [helper.make_node("Conv", ["h", "wd"], ["z"], pads=[kernel // 2] * 4,
                                   strides=[stride, stride], group=c), bn("d", "z", "n"),
                  *hardswish("n", "a"),
                  helper.make_node("ReduceMean", ["a", "axes"], ["y"]) if spelled else
                  helper.make_node("GlobalAveragePool", ["a"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", ["h"], ["y"]))
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("u", "y")],
        [numpy_helper.from_array(v.astype(np.int64 if n == "axes" else np.float32), n)
         for n, v in consts.items()])


def _excess_kurtosis(values):
    v = values.astype(np.float64)
    d = v - v.mean(axis=(0, 2, 3), keepdims=True)
    k2 = (d**2).mean(axis=(0, 2, 3))
    return (d**4).mean(axis=(0, 2, 3)) / k2**2 - 3


def test_a_conv_of_heavy_tailed_inputs_is_heavy_tailed():
    # u: a 1x1 Conv over 32 HardSwish outputs of a 1x1 Conv over 128 (BatchNorm between): its
    # inputs' fourth cumulants add (sum W^4 k4), and the energy they share at a position (each
    # input's own fourth cumulant, carried through the narrow Conv with all weights squared)
    # adds 3 w to every output channel's kurtosis. Mean excess kurtosis of u measured 0.454,
    # predicted 0.461 (w = 0.164); the Gaussian model of a Conv's output says 0
    model = _narrow_block((2000, 128, 4, 4), width=32, seed=1, kernel=5, depthwise=False)
    x = Moments.scalar(0.0, 1.0)
    graph, result = predict(model, {"x": x})
    node_id = graph.order[0]
    ctx = RuleContext(graph.node(node_id), node_id, graph, known=result.moments)
    w, kappa = law(ctx, "u")
    measured = _excess_kurtosis(monte_carlo(model, {"x": x})["u"])
    assert measured.mean() > 0.3 and 0 < w < kappa.mean()
    np.testing.assert_allclose(kappa.mean(), measured.mean(), rtol=0.1)


def test_squeeze_excite_pool_reads_the_carried_kurtosis():
    # the depthwise 5x5 Conv (4x4 map: every output reads most of the map) reads HardSwish(u),
    # u the Conv above: taken as Gaussian, HardSwish(u)'s fourth cumulant (the pool's
    # Edgeworth term) is too small and the pooled variance 0.904 of onnxruntime's; from u's
    # carried kurtosis (a Gaussian scale mixture) 1.045. (Narrower blocks, whose u has excess
    # kurtosis above 1, come out 1.1-1.3x: the first-order terms overshoot.)
    model = _narrow_block((2000, 128, 4, 4), width=32, seed=1, kernel=5)
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    values = monte_carlo(model, {"x": x})["y"].astype(np.float64)
    predicted = result.moments["y"].var.sum()
    measured = values.var(axis=(0, 2, 3)).sum()
    np.testing.assert_allclose(predicted, measured, rtol=0.06)


def test_pool_of_a_hardswish_written_out_reads_the_same_terms():
    # tf2onnx writes Keras' HardSwish as x * (Relu6(x + 3) * (1/6)) and its squeeze-excite pool
    # as a ReduceMean: the pool's non-Gaussian terms (the depthwise conv found through the
    # fused binary node, the kurtosis carried through the written-out chains) are the same as
    # with HardSwish nodes, and the pooled variance within 6% of onnxruntime's as above
    # (without: 0.87 of it, the Gaussian terms alone, on MobileNetV3Small's Keras export 0.6)
    x = Moments.scalar(0.0, 1.0)
    model = _narrow_block((2000, 128, 4, 4), width=32, seed=1, kernel=5, spelled=True)
    _, result = predict(model, {"x": x})
    _, fused = predict(_narrow_block((2000, 128, 4, 4), width=32, seed=1, kernel=5), {"x": x})
    values = monte_carlo(model, {"x": x})["y"].astype(np.float64)
    predicted = result.moments["y"].var.sum()
    np.testing.assert_allclose(predicted, fused.moments["y"].var.sum(), rtol=1e-3)
    np.testing.assert_allclose(predicted, values.var(axis=(0, 2, 3)).sum(), rtol=0.06)
