"""Element-wise nodes whose operands are correlated through the element-wise sub-graph they
share (rules/joint_samples.py), against onnxruntime: a difference from a running maximum
(``a - Max(a, b)``, a rectified difference, not one of independent operands) and RWKV's WKV
recurrence written step by step (exp of differences from running maxima, numerator and
denominator sums that share their weights, their ratio). Before, each binary node took its
operands as independent: the recurrence's ratios read up to 1e4x onnxruntime's variance;
with the token shift, the running maximum of neighbouring keys (correlated: drawn jointly
through the Pad and the dense layer) read 0.90x when its operands' draws were independent."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze
from tests.models import make_model

N, T, C = 1024, 4, 16


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def _wkv_model(shift: bool):
    """HF RWKV's ``rwkv_linear_attention_cpu`` over T steps of keys and values ``[N, T, C]``
    (dense projections of the inputs: a per-channel variance); ``shift``: RWKV's token shift
    before the projections, ``mix x_t + (1 - mix) x_{t-1}`` (a Pad by one token), so that
    neighbouring tokens' keys and values are correlated."""
    rng = np.random.default_rng(0)
    nodes, consts = [], []
    for x, y in (("x", "key"), ("y", "value")):
        if shift:
            nodes += [helper.make_node("Pad", [x, "pads"], [x + "_shift"]),
                      helper.make_node("Mul", [x, "mix"], [x + "_now"]),
                      helper.make_node("Mul", [x + "_shift", "rest"], [x + "_before"]),
                      helper.make_node("Add", [x + "_now", x + "_before"], [x + "_mixed"])]
            x = x + "_mixed"
        nodes.append(helper.make_node("MatMul", [x, "w" + y[0]], [y]))
    if shift:
        mix = rng.uniform(0.1, 0.9, C)
        consts += [numpy_helper.from_array(np.array([0, 1, 0, 0, -1, 0], np.int64), "pads"),
                   _const("mix", mix), _const("rest", 1 - mix)]
    consts += [_const("wk", rng.standard_normal((C, C)) / np.sqrt(C) * 1.2),
              _const("wv", rng.standard_normal((C, C)) / np.sqrt(C)),
              _const("u", rng.uniform(-1, 1, C)), _const("w", -np.exp(rng.uniform(-2, 1, C))),
              _const("zero", np.zeros((1, C))), _const("low", np.full((1, C), -1e38))]
    num, den, mx = "zero", "zero", "low"
    outputs = []
    for t in range(T):
        s = f"_{t}"
        consts.append(numpy_helper.from_array(np.array(t, np.int64), "t" + s))
        nodes += [
            helper.make_node("Gather", ["key", "t" + s], ["k" + s], axis=1),
            helper.make_node("Gather", ["value", "t" + s], ["v" + s], axis=1),
            helper.make_node("Add", ["k" + s, "u"], ["ku" + s]),
            helper.make_node("Max", [mx, "ku" + s], ["p" + s]),
            helper.make_node("Sub", [mx, "p" + s], ["d1" + s]),
            helper.make_node("Exp", ["d1" + s], ["e1" + s]),
            helper.make_node("Sub", ["ku" + s, "p" + s], ["d2" + s]),
            helper.make_node("Exp", ["d2" + s], ["e2" + s]),
            helper.make_node("Mul", ["e1" + s, num], ["a1" + s]),
            helper.make_node("Mul", ["e2" + s, "v" + s], ["a2" + s]),
            helper.make_node("Add", ["a1" + s, "a2" + s], ["a" + s]),
            helper.make_node("Mul", ["e1" + s, den], ["b1" + s]),
            helper.make_node("Add", ["b1" + s, "e2" + s], ["b" + s]),
            helper.make_node("Div", ["a" + s, "b" + s], ["out" + s]),
            helper.make_node("Add", [mx, "w"], ["mw" + s]),
            helper.make_node("Max", ["mw" + s, "k" + s], ["q" + s]),
            helper.make_node("Sub", ["mw" + s, "q" + s], ["f1" + s]),
            helper.make_node("Exp", ["f1" + s], ["g1" + s]),
            helper.make_node("Sub", ["k" + s, "q" + s], ["f2" + s]),
            helper.make_node("Exp", ["f2" + s], ["g2" + s]),
            helper.make_node("Mul", ["g1" + s, num], ["n1" + s]),
            helper.make_node("Mul", ["g2" + s, "v" + s], ["n2" + s]),
            helper.make_node("Add", ["n1" + s, "n2" + s], ["num" + s]),
            helper.make_node("Mul", ["g1" + s, den], ["m1" + s]),
            helper.make_node("Add", ["m1" + s, "g2" + s], ["den" + s]),
        ]
        num, den, mx = "num" + s, "den" + s, "q" + s
        outputs.append(_value("out" + s, (N, C)))
    return make_model(nodes, [_value("x", (N, T, C)), _value("y", (N, T, C))], outputs,
                      consts, opset=17)


@pytest.mark.parametrize("shift", [False, True])
def test_wkv_recurrence_against_onnxruntime(shift):
    tensors = {t.name: t for t in analyze(_wkv_model(shift), measure=True).tensors}
    checked = [t for name, t in tensors.items()
               if name.split("_")[0] in ("p", "d2", "e2", "a", "b", "out", "q", "f1", "f2",
                                         "g1", "g2", "num", "den") and t.measured_var > 0]
    assert len(checked) > 40
    for t in checked:
        assert t.var == pytest.approx(t.measured_var, rel=0.1), t.name
        assert t.mean == pytest.approx(t.measured_mean, rel=0.05, abs=0.02 * t.measured_var**0.5)


def test_difference_from_a_maximum_of_two_signals():
    """``a - Max(a, b)`` is ``-relu(b - a)``: its variance is a rectified difference's
    (independent operands gave Var a + Var max, 3-4x), its Exp a truncated log-normal."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("Mul", ["y", "s"], ["b"]),
             helper.make_node("Max", ["a", "b"], ["m"]),
             helper.make_node("Sub", ["a", "m"], ["d"]),
             helper.make_node("Exp", ["d"], ["e"]),
             helper.make_node("Sub", ["m", "b"], ["r"]),
             helper.make_node("Div", ["e", "m"], ["ratio"])]
    model = make_model(nodes, [_value("x", (4096, 16)), _value("y", (4096, 16))],
                       [_value("e", (4096, 16)), _value("r", (4096, 16))],
                       [_const("w", rng.standard_normal((16, 16)) / 4),
                        _const("s", rng.uniform(0.5, 1.5, 16))], opset=17)
    tensors = {t.name: t for t in analyze(model, measure=True).tensors}
    for name in ("d", "e", "r"):
        assert tensors[name].var == pytest.approx(tensors[name].measured_var, rel=0.05), name
        assert tensors[name].mean == pytest.approx(tensors[name].measured_mean, rel=0.05), name


def test_a_constant_that_absorbs_the_signal_in_float32():
    """``-1e38 - Max(-1e38, a)``: in float32 ``a`` is rounded away (onnxruntime measures 0);
    exact arithmetic gave Var a."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("Max", ["low", "a"], ["m"]),
             helper.make_node("Sub", ["low", "m"], ["d"]),
             helper.make_node("Exp", ["d"], ["e"])]
    model = make_model(nodes, [_value("x", (256, 16))], [_value("e", (256, 16))],
                       [_const("w", rng.standard_normal((16, 16)) / 4),
                        _const("low", np.full((256, 16), -1e38))], opset=17)
    tensors = {t.name: t for t in analyze(model, measure=True).tensors}
    assert tensors["d"].measured_var == 0 and tensors["d"].var == 0
    assert tensors["e"].var == 0 and tensors["e"].mean == 0
