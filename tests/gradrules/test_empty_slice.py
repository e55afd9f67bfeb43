"""An empty tensor receives no gradient (``backward._empty``).

A rotary embedding that rotates every feature of a head (GPT-NeoX-Japanese, ``rotary_pct=1``)
still writes ``concat(rotate(x[..., :d]), x[..., d:])``: the pass-through part ``x[..., d:]`` has
no element. Concat's backward rule gave it its slice of dy, a mean over no element, and
``check`` stopped with "the backward rule predicted a non-finite gradient statistic" (exit 2).
Gradient variances against onnxruntime's (``analyze(..., backward=True, measure=True)``)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.gradrules.oracle import assert_within, ratios, weight
from tests.models import make_model


def _model(rng):
    """x [N, 16] -> h = x W0 -> concat(tanh(h[:, :16]), h[:, 16:]) (the second part empty)
    -> logits = c W1."""
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"]),
        helper.make_node("Slice", ["h", "zero", "sixteen", "one"], ["rot"]),
        helper.make_node("Slice", ["h", "sixteen", "big", "one"], ["rest"]),
        helper.make_node("Tanh", ["rot"], ["t"]),
        helper.make_node("Concat", ["t", "rest"], ["c"], axis=-1),
        helper.make_node("MatMul", ["c", "w1"], ["logits"]),
    ]
    inits = [weight("w0", (16, 16), rng, 0.25), weight("w1", (16, 10), rng, 0.25)]
    inits += [numpy_helper.from_array(np.array([v], dtype=np.int64), name)
              for name, v in (("zero", 0), ("sixteen", 16), ("big", 1 << 30), ("one", 1))]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits,
        opset=17)


def test_a_concat_with_an_empty_part_has_finite_gradients():
    found = ratios(_model(np.random.default_rng(0)), batch_size=16, batches=8)
    assert set(found) >= {"x", "h", "t", "c"}
    assert all(np.isfinite(v) for v in found.values())
    assert_within({k: v for k, v in found.items() if k in ("x", "h", "t", "c")}, 0.15)
