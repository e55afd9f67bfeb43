"""Backward rules of attention (MatMul of two activations, Softmax) and the gradient's token
field against the autodiff: a loss on the mean over the tokens gives every token of a sample
the same output gradient, and the value and key gradients sum it over the queries coherently
(the rule for independent tokens is 1/T of the value gradient, 16x low here)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.gradrules.oracle import array, assert_within, ratios, weight
from tests.models import make_model

TOKENS, WIDTH, CLASSES = 16, 32, 10


def _attention(pool_tokens: bool, mlp: bool = False, seed: int = 3):
    """x [N, T, D] -> single-head self-attention with a residual, optionally a GELU MLP
    per token, then the mean over tokens (or per-token logits) -> logits."""
    rng = np.random.default_rng(seed)
    d = WIDTH
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
             helper.make_node("MatMul", ["x", "wv"], ["v"], name="v"),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="kt"),
             helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
             helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scale"),
             helper.make_node("Softmax", ["scaled"], ["p"], axis=-1, name="softmax"),
             helper.make_node("MatMul", ["p", "v"], ["o"], name="pv"),
             helper.make_node("MatMul", ["o", "wo"], ["attn"], name="out_proj"),
             helper.make_node("Add", ["x", "attn"], ["r"], name="residual")]
    inits = [weight(name, (d, d), rng, scale=d**-0.5) for name in ("wq", "wk", "wv", "wo")]
    inits.append(array("scale", 1.0 / np.sqrt(d)))
    last = "r"
    if mlp:
        nodes += [helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["n"],
                                   name="norm"),
                  helper.make_node("MatMul", ["n", "w1"], ["h"], name="fc1"),
                  helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
                  helper.make_node("Tanh", ["hb"], ["a"], name="act"),
                  helper.make_node("MatMul", ["a", "w2"], ["m"], name="fc2"),
                  helper.make_node("Add", ["r", "m"], ["r2"], name="residual2")]
        inits += [array("gamma", np.ones(d)), array("beta", np.zeros(d)),
                  weight("w1", (d, 2 * d), rng, scale=d**-0.5),
                  array("b1", rng.standard_normal(2 * d) * 0.1),
                  weight("w2", (2 * d, d), rng, scale=(2 * d) ** -0.5)]
        last = "r2"
    if pool_tokens:
        nodes.append(helper.make_node("ReduceMean", [last, "token_axis"], ["pooled"],
                                      keepdims=0, name="pool"))
        nodes.append(helper.make_node("MatMul", ["pooled", "wfc"], ["logits"], name="fc"))
        inits.append(helper.make_tensor("token_axis", TensorProto.INT64, [1], [1]))
        out = ["N", CLASSES]
    else:
        nodes.append(helper.make_node("MatMul", [last, "wfc"], ["logits"], name="fc"))
        out = ["N", TOKENS, CLASSES]
    inits.append(weight("wfc", (d, CLASSES), rng, scale=d**-0.5))
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", TOKENS, d])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out)], inits)


QUERY_PATH = {"q", "k", "kt"}


def _without_query_path(found):
    return {k: v for k, v in found.items() if k not in QUERY_PATH}


def test_a_loss_on_the_mean_over_tokens_reaches_values_and_keys_coherently():
    found = ratios(_attention(pool_tokens=True), batch_size=16)
    assert {"v", "p", "scores", "x"} <= set(found)
    assert 0.8 < found["v"] < 1.2  # 0.11 when the tokens are taken as independent
    assert_within(_without_query_path(found), 0.2)
    assert_within(found, 0.3)


def test_the_token_field_passes_layer_norm_and_a_per_token_mlp():
    found = ratios(_attention(pool_tokens=True, mlp=True), batch_size=16)
    assert_within(_without_query_path(found), 0.2)
    assert_within(found, 0.3)


def test_per_token_labels_leave_the_tokens_independent():
    """Cross-entropy per token: the gradients of two tokens are independent, no coherent sum."""
    found = ratios(_attention(pool_tokens=False), batch_size=16)
    assert_within(_without_query_path(found), 0.2)
    assert_within(found, 0.3)


@pytest.mark.xfail(strict=True, reason="q 0.74, k 0.78 (pooled), q 0.72 (per token): K and V "
                   "are maps of the same token, so dP_qk = dY_q . V_k and K_k are correlated "
                   "and dQ = dS K gains a component coherent over the keys (Cov(K_k, V_k) "
                   "dY_q), not modelled")
def test_query_and_key_gradients_within_20_percent():
    found = ratios(_attention(pool_tokens=True), batch_size=16)
    assert_within({k: v for k, v in found.items() if k in QUERY_PATH}, 0.2)
