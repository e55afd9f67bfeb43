"""Einsum equations with an ellipsis (``rules/einsum_labels.py``), as Hugging Face's blocked
attention writes them (LongT5: ``...qhd,...khd->...hqk`` over blocks of tokens, ``...hqk,...khd
->...qhd``, ``...nd,...ng->...gd`` for its global tokens). They went to the empirical fallback,
which keeps an output's statistics along one axis and pools the rest: the logits' fixed
per-position part (position embeddings in the queries and keys) became noise to the Softmax
after it, and P V read the spread of the values' per-position means as variance. Against
onnxruntime on the same graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules.einsum_labels import explicit
from tests.models import make_model
from tests.oracle import OPSET, monte_carlo, predict

B, N, Q, H, D = 64, 3, 4, 2, 8  # batch, blocks, tokens per block, heads, head width


@pytest.mark.parametrize("equation, ranks, expected", [
    ("...qhd,...khd->...hqk", [5, 5], "abqhd,abkhd->abhqk"),
    ("...nd,...ng->...gd", [3, 3], "and,ang->agd"),
    ("...ij,...jk->...ik", [4, 3], "abij,bjk->abik"),  # right-aligned, as numpy broadcasts
    ("...ij,jk->...ik", [2, 2], "ij,jk->ik"),  # an empty ellipsis
    ("bij,bjk->bik", [3, 3], "bij,bjk->bik"),
    ("ij,jk", [2, 2], "ij,jk->ik"),  # implicit output: the letters seen once, sorted
    ("...ji,...jk", [3, 3], "aji,ajk->aik"),
    ("bij,bjk->bi->k", [3, 3], None),
    ("...ij,jk->...ik", [1, 2], None),  # fewer axes than letters
])
def test_explicit_labels(equation, ranks, expected):
    assert explicit(equation, ranks) == expected
    if expected is not None:  # numpy reads both the same way
        rng = np.random.default_rng(0)
        letters = sorted(set(expected) - set(",->"))
        sizes = {c: 2 + i % 3 for i, c in enumerate(letters)}
        arrays = [rng.normal(size=[sizes[c] for c in t])
                  for t in expected.split("->")[0].split(",")]
        np.testing.assert_allclose(np.einsum(equation, *arrays), np.einsum(expected, *arrays))


def _blocked_attention():
    """x, x_k [B, N, Q, H, D] plus a fixed per-position embedding -> q, k; v = v_in plus
    another (three independent inputs, per-feature constant scales) -> logits
    ``...qhd,...khd->...hqk`` -> Softmax -> ``...hqk,...khd->...qhd``; its tokens scored by a
    dense layer and a Softmax over the tokens (a pattern of fixed per-token means in the
    scores, which it reads as means, not noise); the block sums ``...nd,ng->...gd`` of the
    input tokens by a constant one-hot map (LongT5's global tokens; of P V's tokens they read
    0.88x: the rows of one block share their keys, a token covariance not carried here)."""
    rng = np.random.default_rng(3)
    f32 = np.float32
    inits = {
        "pos": rng.normal(0, 1.0, (Q, H, D)).astype(f32),
        "posv": rng.normal(0, 1.0, (Q, H, D)).astype(f32),
        "sq": rng.uniform(0.5, 1.0, (H, D)).astype(f32),
        "sk": rng.uniform(0.5, 1.0, (H, D)).astype(f32),
        "flat": np.array([B, N * Q, H * D], np.int64),
        "w": rng.normal(0, (H * D) ** -0.5, (H * D, 4)).astype(f32),
        "onehot": np.kron(np.eye(2), np.ones((N * Q // 2, 1))).astype(f32),
    }
    node = helper.make_node
    nodes = [
        node("Add", ["x", "pos"], ["h"]), node("Add", ["x_k", "pos"], ["h_k"]),
        node("Mul", ["h", "sq"], ["q"]), node("Mul", ["h_k", "sk"], ["k"]),
        node("Add", ["v_in", "posv"], ["v"]),
        node("Einsum", ["q", "k"], ["logits"], equation="...qhd,...khd->...hqk"),
        node("Softmax", ["logits"], ["p"], axis=-1),
        node("Einsum", ["p", "v"], ["o"], equation="...hqk,...khd->...qhd"),
        node("Reshape", ["o", "flat"], ["tokens"]),
        node("MatMul", ["tokens", "w"], ["scores"]),
        node("Softmax", ["scores"], ["weights"], axis=1),
        node("Reshape", ["h", "flat"], ["h_tokens"]),
        node("Einsum", ["h_tokens", "onehot"], ["sums"], equation="...nd,ng->...gd"),
    ]
    shape = [B, N, Q, H, D]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
              for n in ("x", "x_k", "v_in")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in _OUTPUTS]
    return make_model(nodes, inputs, outputs,
                      [numpy_helper.from_array(v, k) for k, v in inits.items()], opset=OPSET)


_OUTPUTS = ("logits", "p", "o", "scores", "weights", "sums")


def test_blocked_attention_with_an_ellipsis_against_onnxruntime():
    """The Einsum rule reads the ellipsis and keeps P V's per-position means: the fallback kept
    its output's statistics along the blocks alone, so the tokens' fixed pattern became noise
    and the Softmax over the tokens read 1.23x its measured variance (1.07x now; the logits,
    P V and the block sums within 3%)."""
    model = _blocked_attention()
    moments = {n: Moments.scalar(0.0, 1.0) for n in ("x", "x_k", "v_in")}
    _, result = predict(model, moments)
    runs = [monte_carlo(model, moments, seed=seed) for seed in range(8)]
    for name in _OUTPUTS:
        if name in ("logits", "o", "sums"):
            assert result.rules[name] == "einsum", (name, result.rules[name])
        var = float(np.var(np.concatenate([r[name].astype(np.float64) for r in runs])))
        assert result.moments[name].total()[1] == pytest.approx(var, rel=0.10), name
