"""Keras' ``ReLU(negative_slope=0.1, threshold=0.5)`` as tf2onnx writes it: TensorFlow's
``SelectV2(x > t, x, 0) - 0.1 Relu(t - x)`` as ``Cast(Greater(x, t)) * x + 0 * Cast(Not(Greater(x,
t)))`` minus the leaky part, on a Dense output ``h`` (64 -> 64, Var h = 0.1: the threshold 1.6
standard deviations out), then a Dense of it. The mask is boolean, no signal, so on main the
product ``Cast(x > t) * x`` took the mask and x as independent: 0.27x of onnxruntime's
variance, the output and the Dense after it 0.30x (Keras' ``act_layers`` export: 2.05x and
2.36x low). With the mask a step function of x
(:mod:`onnxinit.rules.boolean_steps`) every tensor is within 5%; the same with the comparison
written ``Less(t, x)`` and the mask's complement taken as the kept branch. The masks
themselves (``Cast`` of a boolean) went through the empirical fallback (a note, and a
warning); they are now Bernoulli draws of ``P(h > t)``. And ``onnxinit check`` failed the model
with a false ONNXINIT002: the unselected branch ``0 * Cast(Not(h > t))``, exactly 0, was taken
as the main path's signal; as a function of h it is a side path now."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit import check
from onnxinit.analysis import analyze
from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict

B, D = 4096, 64


def _model(swapped: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    consts = {"w1": rng.standard_normal((D, D)) * np.sqrt(0.1 / D),  # Var h = 0.1
              "w2": rng.standard_normal((D, D)) / np.sqrt(D),
              "t": np.array(0.5), "slope": np.array(0.1), "zero": np.array(0.0)}
    if swapped:  # Less(t, h): h > t, and the kept branch through two Nots
        mask = [helper.make_node("Less", ["t", "h"], ["g"]),
                helper.make_node("Not", ["g"], ["g1"]),
                helper.make_node("Not", ["g1"], ["g2"]),
                helper.make_node("Not", ["g2"], ["ng"]),
                helper.make_node("Cast", ["g2"], ["keep"], to=TensorProto.FLOAT)]
    else:
        mask = [helper.make_node("Greater", ["h", "t"], ["g"]),
                helper.make_node("Not", ["g"], ["ng"]),
                helper.make_node("Cast", ["g"], ["keep"], to=TensorProto.FLOAT)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Neg", ["h"], ["neg"]),
             helper.make_node("Add", ["neg", "t"], ["shifted"]),
             helper.make_node("Relu", ["shifted"], ["below"]),
             helper.make_node("Mul", ["slope", "below"], ["leak"]),
             *mask,
             helper.make_node("Cast", ["ng"], ["drop"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["zero", "drop"], ["other"]),
             helper.make_node("Mul", ["keep", "h"], ["kept"]),
             helper.make_node("Add", ["kept", "other"], ["select"]),
             helper.make_node("Sub", ["select", "leak"], ["y"]),
             helper.make_node("MatMul", ["y", "w2"], ["out"])]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, D])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("keep", "kept", "select", "y", "out")],
        [numpy_helper.from_array(v.astype(np.float32), n) for n, v in consts.items()], opset=18)


def _check(swapped: bool):
    model = _model(swapped)
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    values = monte_carlo(model, {"x": x}, seed=1)
    for name in ("keep", "kept", "select", "y", "out"):
        v = values[name].astype(np.float64)
        m = result.moments[name]
        ratio = float(np.mean(m.var)) / float(v.var(axis=0).mean())
        assert abs(ratio - 1) < 0.05, (swapped, name, ratio)
        assert abs(float(np.mean(m.mean)) - v.mean()) < 0.05 * v.std(), (swapped, name)


def test_a_thresholded_leaky_relu_written_as_a_select_of_masks():
    _check(False)


def test_a_mask_written_with_the_constant_first_and_nots():
    _check(True)


def test_check_passes_a_select_whose_other_branch_is_zero():
    assert check.find(analyze(_model(False))) == []
