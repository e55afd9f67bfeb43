"""Div by a norm (``F.normalize``: ``x / max(||x||, eps)``, ReduceL2 -> Clip -> Expand -> Div,
Swin V2's cosine attention) against the autodiff, with zero padded tokens as a shifted window
has them."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from tests.gradrules.oracle import array, assert_within, ratios, weight
from tests.models import make_model


def _normalized_tokens(padded: int):
    """x [N, 4, 16] -> MatMul -> Pad ``padded`` zero tokens -> F.normalize over the features
    -> the 4 real tokens sliced back -> mean over tokens -> Gemm logits."""
    rng = np.random.default_rng(3)
    i64 = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)  # noqa: E731
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
        helper.make_node("Pad", ["h", "pads"], ["p"], name="pad"),
        helper.make_node("ReduceL2", ["p", "last"], ["norm"], keepdims=1, name="l2"),
        helper.make_node("Clip", ["norm", "eps"], ["clipped"], name="clip"),
        helper.make_node("Shape", ["p"], ["p_shape"], name="shape"),
        helper.make_node("Expand", ["clipped", "p_shape"], ["denominator"], name="expand"),
        helper.make_node("Div", ["p", "denominator"], ["unit"], name="div"),
        helper.make_node("Slice", ["unit", "start", "end", "axis"], ["kept"], name="unpad"),
        helper.make_node("ReduceMean", ["kept", "tokens"], ["pooled"], keepdims=0, name="mean"),
        helper.make_node("Gemm", ["pooled", "fc_w"], ["logits"], transB=1, name="fc"),
    ]
    inits = [weight("w", (16, 16), rng), weight("fc_w", (10, 16), rng, scale=4.0),
             i64("pads", [0, 0, 0, 0, padded, 0]), i64("last", [-1]), array("eps", 1e-12),
             i64("start", [0]), i64("end", [4]), i64("axis", [1]), i64("tokens", [1])]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)


def test_div_by_a_norm_of_padded_tokens():
    """The padded tokens' norm is the clip floor 1e-12, where no gradient arrives (they are
    sliced away): taken as the other elements' share, the Div sent back 1e24 times the
    gradient (Swin V2's check failed its first layer as exploding); the norm's law is also
    positive (a gamma), not a Gaussian whose far left tail meets the floor."""
    assert_within(ratios(_normalized_tokens(padded=4), batch_size=16), 0.25)


def test_div_by_a_norm_without_padding():
    assert_within(ratios(_normalized_tokens(padded=0), batch_size=16), 0.25)
