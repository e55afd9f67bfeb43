"""A product of a causal Conv1d's output (position classes: its first tokens reach fewer taps)
and a signal whose statistics vary per element, which the per-class path refuses: the
classes are spelled out per position (``layout.positions_dense``) instead of pooled over the
tokens. Mamba's ``dt B x`` per (channel, token, state) cell, hand-built and small, against
onnxruntime measurements."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze
from tests.models import make_model

N, C, S, K = 64, 16, 8, 6  # batch, channels, tokens, states


def _init(name, array, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def _model(op: str):
    """conv = causal depthwise Conv1d of x [N, C, S] (kernel 4, padded 3 and cut to S),
    unsqueezed to [N, C, S, 1], times (or plus) b = v * scale [N, 1, 1, K] (scale varies per
    state); then token 0 and token 5 of the result."""
    rng = np.random.default_rng(3)
    inits = [_init("w", rng.standard_normal((C, 1, 4)) / 2),
             _init("scale", np.linspace(0.5, 3.0, K).reshape(1, 1, 1, K)),
             _init("start", [0], np.int64), _init("stop", [S], np.int64),
             _init("axis", [2], np.int64), _init("last", [3], np.int64),
             _init("first", 0, np.int64), _init("later", 5, np.int64)]
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], group=C, pads=[3, 3],
                              kernel_shape=[4]),
             helper.make_node("Slice", ["conv", "start", "stop", "axis"], ["kept"]),
             helper.make_node("Unsqueeze", ["kept", "last"], ["kept4"]),
             helper.make_node("Mul", ["v", "scale"], ["b"]),
             helper.make_node(op, ["kept4", "b"], ["cells"]),
             helper.make_node("Gather", ["cells", "first"], ["at_first"], axis=2),
             helper.make_node("Gather", ["cells", "later"], ["at_later"], axis=2)]
    value = helper.make_tensor_value_info
    return make_model(nodes, [value("x", TensorProto.FLOAT, (N, C, S)),
                              value("v", TensorProto.FLOAT, (N, 1, 1, K))],
                      [value("at_first", TensorProto.FLOAT, (N, C, K)),
                       value("at_later", TensorProto.FLOAT, (N, C, K))], inits, opset=17)


@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_first_tokens_of_a_causal_conv_keep_their_variance_in_a_product(op):
    """Token 0 reaches one tap of four: its cells have about a quarter of the interior
    variance (the pooled variance gave them 3-4x for the product)."""
    tensors = {t.name: t for t in analyze(_model(op), measure=True).tensors}
    for name in ("cells", "at_first", "at_later"):
        t = tensors[name]
        assert t.var == pytest.approx(t.measured_var, rel=0.1), (name, t.var, t.measured_var)
