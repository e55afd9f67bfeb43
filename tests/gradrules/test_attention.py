"""Backward rules of attention (MatMul of two activations, Softmax) and the gradient's token
field against the autodiff: a loss on the mean over the tokens gives every token of a sample
the same output gradient, and the value and key gradients sum it over the queries coherently
(the rule for independent tokens is 1/T of the value gradient, 16x low here)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze
from onnxinit.gradrules import pairs
from onnxinit.gradrules.rows import row_stats
from onnxinit.moments import Moments
from tests.gradrules.oracle import array, assert_within, ratios, weight
from tests.models import make_model

TOKENS, WIDTH, CLASSES = 16, 32, 10


def _attention(pool_tokens: bool, mlp: bool = False, seed: int = 3, positions: bool = False,
               fused: bool = False):
    """x [N, T, D] (plus a constant position embedding [T, D] when ``positions``) ->
    single-head self-attention with a residual, optionally a GELU MLP per token, then the
    mean over tokens (or per-token logits) -> logits. ``fused``: q, k, v from one MatMul by
    [wq | wk | wv], reshaped to [N, T, 3, D] and gathered (PyTorch's in_proj), same function."""
    rng = np.random.default_rng(seed)
    d = WIDTH
    nodes = [helper.make_node("Add", ["x", "pos"], ["xp"], name="positions")] if positions else []
    x = "xp" if positions else "x"
    if fused:
        nodes += [helper.make_node("MatMul", [x, "wqkv"], ["qkv"], name="in_proj"),
                  helper.make_node("Reshape", ["qkv", "split_shape"], ["qkv4"], name="split")]
        nodes += [helper.make_node("Gather", ["qkv4", f"index_{i}"], [name], axis=2, name=name)
                  for i, name in enumerate("qkv")]
    else:
        nodes += [helper.make_node("MatMul", [x, f"w{name}"], [name], name=name)
                  for name in "qkv"]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="kt"),
              helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
              helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scale"),
              helper.make_node("Softmax", ["scaled"], ["p"], axis=-1, name="softmax"),
              helper.make_node("MatMul", ["p", "v"], ["o"], name="pv"),
              helper.make_node("MatMul", ["o", "wo"], ["attn"], name="out_proj"),
              helper.make_node("Add", [x, "attn"], ["r"], name="residual")]
    inits = [weight(name, (d, d), rng, scale=d**-0.5) for name in ("wq", "wk", "wv", "wo")]
    if fused:
        qkv = np.concatenate([numpy_helper.to_array(w) for w in inits[:3]], axis=1)
        inits = [array("wqkv", qkv), inits[3],
                 numpy_helper.from_array(np.array([0, 0, 3, d], np.int64), "split_shape"),
                 *(numpy_helper.from_array(np.array(i, np.int64), f"index_{i}") for i in range(3))]
    if positions:
        inits.append(array("pos", rng.standard_normal((TOKENS, d))))
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


KEY_PATH = {"k", "kt"}


def _without_key_path(found):
    return {k: v for k, v in found.items() if k not in KEY_PATH}


def test_a_loss_on_the_mean_over_tokens_reaches_values_and_keys_coherently():
    found = ratios(_attention(pool_tokens=True), batch_size=16)
    assert {"v", "p", "scores", "x"} <= set(found)
    assert 0.8 < found["v"] < 1.2  # 0.11 when the tokens are taken as independent
    assert_within(_without_key_path(found), 0.2)
    assert_within(found, 0.3)


def test_the_token_field_passes_layer_norm_and_a_per_token_mlp():
    found = ratios(_attention(pool_tokens=True, mlp=True), batch_size=16)
    assert_within(_without_key_path(found), 0.2)
    assert_within(found, 0.3)


def test_per_token_labels_leave_the_tokens_independent():
    """Cross-entropy per token: the gradients of two tokens are independent, no coherent sum."""
    found = ratios(_attention(pool_tokens=False), batch_size=16)
    assert_within(_without_key_path(found), 0.2)
    assert_within(found, 0.3)


@pytest.mark.parametrize("pool_tokens", [True, False])
@pytest.mark.parametrize("positions", [False, True])
def test_keys_and_values_of_the_same_tokens_make_the_query_gradient_coherent(pool_tokens,
                                                                           positions):
    """dQ_q = sum_k dS_qk K_k, and dS_qk holds dY_q . V_k, correlated with K_k (both maps of
    token k): the keys add (1 - P^T Tc P) W_k^T Sigma W_v dY_q coherently (gradrules/keyvalue.py).
    Without it q was 0.74 (pooled) and 0.72 (per token) of the autodiff (0.93, 0.91 now); with
    a constant position embedding (per-token means, whose part the pair of the means already
    carries) 0.96 and 0.90 (0.99, 0.93 now)."""
    found = ratios(_attention(pool_tokens=pool_tokens, positions=positions), batch_size=16)
    assert 0.8 < found["q"] < 1.2
    assert_within(_without_key_path(found), 0.2)


def test_the_query_term_follows_a_fused_in_projection():
    """q, k, v gathered from one MatMul (PyTorch's in_proj): the chains to x pass the Gather
    and the heads' columns come from the gathered slice (q 0.74 when the chain stopped there,
    as on the separate projections before keyvalue.py)."""
    found = ratios(_attention(pool_tokens=True, fused=True), batch_size=16)
    assert 0.8 < found["q"] < 1.2
    assert_within(_without_key_path(found), 0.2)


def _multi_head(pool_tokens: bool, heads: int = 4, width: int = 64, seed: int = 3):
    """x [N, T, D] -> per-head Q, K^T, V by Reshape [N, T, h, d] and Transpose (as exporters
    write them) -> attention -> heads merged -> residual -> logits."""
    rng = np.random.default_rng(seed)
    d = width // heads
    nodes, inits = [], []
    for name in "qkv":
        perm = [0, 2, 3, 1] if name == "k" else [0, 2, 1, 3]
        nodes += [helper.make_node("MatMul", ["x", f"w{name}"], [name]),
                  helper.make_node("Reshape", [name, "split"], [f"{name}4"]),
                  helper.make_node("Transpose", [f"{name}4"], [f"{name}h"], perm=perm)]
        inits.append(weight(f"w{name}", (width, width), rng, scale=width**-0.5))
    nodes += [helper.make_node("MatMul", ["qh", "kh"], ["scores"]),
              helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
              helper.make_node("Softmax", ["scaled"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vh"], ["o"]),
              helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "merge"], ["o3"]),
              helper.make_node("MatMul", ["o3", "wo"], ["attn"]),
              helper.make_node("Add", ["x", "attn"], ["r"])]
    inits += [weight("wo", (width, width), rng, scale=width**-0.5),
              array("scale", 1 / np.sqrt(d)),
              numpy_helper.from_array(np.array([0, 0, heads, d], np.int64), "split"),
              numpy_helper.from_array(np.array([0, 0, width], np.int64), "merge")]
    if pool_tokens:
        nodes += [helper.make_node("ReduceMean", ["r", "token_axis"], ["pooled"], keepdims=0),
                  helper.make_node("MatMul", ["pooled", "wfc"], ["logits"])]
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "token_axis"))
        out = ["N", CLASSES]
    else:
        nodes.append(helper.make_node("MatMul", ["r", "wfc"], ["logits"]))
        out = ["N", TOKENS, CLASSES]
    inits.append(weight("wfc", (width, CLASSES), rng, scale=width**-0.5))
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", TOKENS, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out)], inits)


@pytest.mark.parametrize("pool_tokens", [True, False])
def test_the_query_term_takes_each_heads_columns(pool_tokens):
    """4 heads of 16 features written with Reshape and Transpose: each head's C_h is the block
    of W_v^T Sigma W_k that the column indices carried through the layout ops select. q 0.92
    (pooled) and 0.94 (per token) of the autodiff; 0.82 and 0.84 without the term."""
    found = ratios(_multi_head(pool_tokens), batch_size=16)
    assert abs(found["q"] - 1) < 0.1
    assert_within({k: v for k, v in found.items() if k not in ("k", "k4", "kh")}, 0.2)


@pytest.mark.xfail(strict=True, reason="k 0.78 (pooled): P's dependence on Q and K is "
                   "measured with independent Q and K (coupling.py); the query and key of one "
                   "token are maps of the same x, not modelled")
def test_key_gradients_within_20_percent():
    found = ratios(_attention(pool_tokens=True), batch_size=16)
    assert_within({k: v for k, v in found.items() if k in KEY_PATH}, 0.2)


@pytest.mark.parametrize("logit_var", [0.1, 1.0])
def test_softmax_pair_keeps_the_structure_of_dp_within_a_row(logit_var):
    """dS = P * (dP - sum_j P_j dP_j) for dP with a covariance C across the keys that is not
    isotropic (a rank-one part: values with per-token means), contracted with a direction v
    (dQ = dS K): the pair's within-row term ``M C M^T + a (W - M M^T)`` against numpy Monte
    Carlo: 1.02x and 1.04x at logit variance 0.1, 1.18x and 1.20x at 1 (the fluctuation of P
    taken as for isotropic dP). Before it kept only ``a W`` there: 0.60x and 1.41x at 0.1,
    0.83x and 1.41x at 1."""
    keys, draws = 16, 200_000
    rng = np.random.default_rng(1)
    rows = row_stats(Moments(np.zeros(()), np.full((), logit_var)), (1, keys))
    for isotropic in (0.0, 1.0):
        u, v = rng.standard_normal(keys), rng.standard_normal(keys)
        c = np.outer(u, u) + isotropic * np.eye(keys)
        z = np.sqrt(logit_var) * rng.standard_normal((draws, keys))
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        dp = rng.standard_normal((draws, keys)) @ np.linalg.cholesky(c + 1e-9 * np.eye(keys)).T
        ds = p * (dp - (p * dp).sum(axis=1, keepdims=True))
        truth = np.mean((ds @ v) ** 2)
        pair = pairs.softmax_backward(((np.ones((1, 1)), c),), rows)
        predicted = sum(float(r[0, 0]) * v @ cc @ v for r, cc in pair)
        assert 0.75 < predicted / truth < 1.25, (isotropic, predicted / truth)


def test_weight_and_norm_parameter_gradients_sum_the_tokens_coherently():
    """dbeta = sum over a sample's tokens of a gradient they share: 16x the independent sum
    (the LayerNorm's beta was predicted at 0.095 of the autodiff's before the token field)."""
    analysis = analyze(_attention(pool_tokens=True, mlp=True), batch_size=16, backward=True,
                       measure=True, gradient_batches=8)
    found = {p.name: p.grad_var / p.measured_grad_var for p in analysis.backward.parameters
             if p.measured_grad_var}
    assert_within({k: found[k] for k in ("beta", "gamma", "wv", "wo", "w1", "w2", "wfc")}, 0.25)
