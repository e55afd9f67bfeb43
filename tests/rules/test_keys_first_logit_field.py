"""Logits written ``K Q^T`` and normalised over axis -2 (tf2onnx's export of Keras'
MultiHeadAttention with dropout) whose keys share a part across the tokens (keys of tokens
that an attention mixed before: a deeper block's residual stream). Given the query, that part
of the keys' logits is common to a row and moves no probability; the MatMul rule put the
logits' token field on the last axis (the queries, here), which a Softmax over the keys does
not read, so it took the keys' logits as independent: the Softmax 1.4x of onnxruntime's on
Keras' ``vit_cls`` second block. The field now follows the keys to axis -2
(``attention._keys_first_logits``): the prediction of ``Q K^T`` with the softmax over the
last axis, both against onnxruntime. The keys: ``x = P0 y``, ``P0`` the softmax of logits of
another input (its spread sets how far the tokens are mixed), the queries of a third."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict

N, T, D, H = 256, 16, 32, 2


def _model(keys_first: bool, spread: float):
    rng = np.random.default_rng(0)
    inits = {w: (rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32)
             for w in ("wq", "wk")}
    inits["wq"] *= 2.0
    inits.update({"heads": np.array([N, T, H, D // H], np.int64),
                  "scale": np.array((D // H) ** -0.5, np.float32),
                  "wa": (rng.standard_normal((D, D)) * spread / D).astype(np.float32)})
    nodes = [helper.make_node("MatMul", ["w", "wa"], ["a"]),
             helper.make_node("Transpose", ["w"], ["wt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["a", "wt"], ["g"]),
             helper.make_node("Softmax", ["g"], ["p0"], axis=-1),
             helper.make_node("MatMul", ["p0", "y"], ["x"])]
    for p, tokens in (("q", "z"), ("k", "x")):
        nodes += [helper.make_node("MatMul", [tokens, f"w{p}"], [f"{p}0"]),
                  helper.make_node("Reshape", [f"{p}0", "heads"], [f"{p}1"])]
    if keys_first:  # logits [N, H, keys, queries], normalised over the keys (axis 2)
        nodes += [helper.make_node("Transpose", ["k1"], ["k"], perm=[0, 2, 1, 3]),
                  helper.make_node("Transpose", ["q1"], ["qt"], perm=[0, 2, 3, 1]),
                  helper.make_node("MatMul", ["k", "qt"], ["kq"]),
                  helper.make_node("Mul", ["kq", "scale"], ["logits"]),
                  helper.make_node("Softmax", ["logits"], ["p"], axis=2)]
    else:
        nodes += [helper.make_node("Transpose", ["q1"], ["q"], perm=[0, 2, 1, 3]),
                  helper.make_node("Transpose", ["k1"], ["kt"], perm=[0, 2, 3, 1]),
                  helper.make_node("MatMul", ["q", "kt"], ["qk"]),
                  helper.make_node("Mul", ["qk", "scale"], ["logits"]),
                  helper.make_node("Softmax", ["logits"], ["p"], axis=-1)]
    inputs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, [N, T, D]) for t in "yzw"]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("logits", "p")]
    model = make_model(nodes, inputs, outs,
                       [numpy_helper.from_array(v, k) for k, v in inits.items()], opset=17)
    return model, {t: Moments.scalar(0.0, 1.0) for t in "yzw"}


@pytest.mark.parametrize("spread", [0.3, 3.0])
def test_keys_first_softmax_reads_the_shared_part_of_its_keys(spread):
    """Within 5% in both layouts, and the same prediction (keys first: 13x and 1.15x before
    at spreads 0.3 and 3, the keys' shared fraction 0.92 and 0.14)."""
    found = {}
    for first in (False, True):
        model, moments = _model(first, spread)
        _, result = predict(model, moments)
        measured = monte_carlo(model, moments)
        for name in ("logits", "p"):
            found[first, name] = result.moments[name].total()[1]
            np.testing.assert_allclose(found[first, name],
                                       measured[name].astype(np.float64).var(), rtol=0.05,
                                       err_msg=f"{name}, keys first: {first}")
    np.testing.assert_allclose(found[True, "p"], found[False, "p"], rtol=0.02)
