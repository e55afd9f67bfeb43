"""The backward rule of a Div whose operands share their weights (a softmax-weighted average
written as a ratio of sums of exponentials, as RWKV's WKV recurrence writes it), against the
autodiff (onnxruntime)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from tests.gradrules.oracle import array, ratios, weight
from tests.models import make_model

STEPS, WIDTH, CLASSES = 3, 32, 10


def _weighted_average(scale: float = 1.5):
    """``y = sum_t exp(s k_t) v_t / sum_t exp(s k_t)`` over three tokens of two inputs, then
    a dense layer to logits. The denominator is >= its largest term, a sum of log-normals of
    mean 9.2 and variance 242 at s = 1.5 (as a Gaussian it reaches below 0)."""
    rng = np.random.default_rng(3)  # small logits: dy nearly independent of y (the rule's
    # premise; at unit logits dy and 1/b correlate, and both operands read 1.14x)
    nodes, inits = [], [array("s", scale), weight("w", (WIDTH, CLASSES), rng,
                                                  scale=0.1 * WIDTH**-0.5)]
    for t in range(STEPS):
        inits.append(helper.make_tensor(f"i{t}", TensorProto.INT64, [], [t]))
        nodes += [helper.make_node("Gather", ["k", f"i{t}"], [f"k{t}"], axis=1, name=f"gk{t}"),
                  helper.make_node("Gather", ["v", f"i{t}"], [f"v{t}"], axis=1, name=f"gv{t}"),
                  helper.make_node("Mul", [f"k{t}", "s"], [f"sk{t}"], name=f"scale{t}"),
                  helper.make_node("Exp", [f"sk{t}"], [f"e{t}"], name=f"exp{t}"),
                  helper.make_node("Mul", [f"e{t}", f"v{t}"], [f"n{t}"], name=f"weigh{t}")]
    nodes += [helper.make_node("Add", ["n0", "n1"], ["a1"], name="num1"),
              helper.make_node("Add", ["a1", "n2"], ["a"], name="num2"),
              helper.make_node("Add", ["e0", "e1"], ["b1"], name="den1"),
              helper.make_node("Add", ["b1", "e2"], ["b"], name="den2"),
              helper.make_node("Div", ["a", "b"], ["y"], name="ratio"),
              helper.make_node("MatMul", ["y", "w"], ["logits"], name="head")]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", STEPS, WIDTH])
              for name in ("k", "v")]
    return make_model(nodes, inputs,
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
                      inits)


def test_a_ratio_of_sums_that_share_their_weights():
    """The Div's operands get ``dy / b`` and ``-dy a / b^2`` with the moments of 1/b and
    a/b^2 over the forward's joint draws: within 10% of the autodiff (1.04x, 1.05x; 4,096
    rows, as 1/b^2 has a long tail). Taken as independent, with b Gaussian of its mean and
    variance: a 0.26x, b 37x. Left: the exponentials' and keys' gradients (1.8x, 660x), whose
    paths through the numerator and the denominator add as independent."""
    found = ratios(_weighted_average(), batch_size=128, batches=32)
    off = {name: round(found[name], 3) for name in ("y", "a", "b") if abs(found[name] - 1) > 0.1}
    assert not off, off
