"""The token field through a dense layer written as LeViT exports ``Linear`` + ``BatchNorm1d``
on a sequence: ``MatMul`` -> ``Flatten(axis=2)`` of ``[N, T, F]`` to ``[N*T, F]`` (batch and
tokens merged into rows) -> training-mode ``BatchNormalization`` over those rows -> ``Reshape``
back to ``[N, T, F]`` (rules/token_batch_norm.py, token_layout.py). A first attention with
near-zero logits makes every token of a sample nearly the mean of its values, added to the
residual stream (a per-sample component shared by every token, about half the variance); after the flattened BatchNorm a second attention averages those tokens,
which keeps the shared part: its output variance is about the input's, not 1/T of it, and its
softmax is flat. Predictions against onnxruntime runs of the whole graph (batch 8, as the
batch-mean centring depends on it)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules.token_batch_norm import batch_normalized
from onnxinit.runtime import make_session
from tests.oracle import predict

N, T, D, F = 8, 16, 32, 32
RUNS = 150


def _attention(x: str, wq: str, wk: str, wv: str, suffix: str) -> list:
    """Single-head attention of ``x`` ``[N, T, D]``: q, k, logits, p, v, o (names + suffix)."""
    q, k, kt, logits, p, v, o = (n + suffix for n in ("q", "k", "kt", "logits", "p", "v", "o"))
    return [helper.make_node("MatMul", [x, wq], [q]),
            helper.make_node("MatMul", [x, wk], [k]),
            helper.make_node("Transpose", [k], [kt], perm=[0, 2, 1]),
            helper.make_node("MatMul", [q, kt], [logits]),
            helper.make_node("Softmax", [logits], [p], axis=-1),
            helper.make_node("MatMul", [x, wv], [v]),
            helper.make_node("MatMul", [p, v], [o])]


def _dense_batch_norm(x: str, w: str, names: list[str], out: str) -> list:
    """Linear + BatchNorm1d over the merged batch * token rows, as LeViT exports it:
    MatMul, Flatten(axis=2), training-mode BatchNormalization, Reshape back to [N, T, F]
    (``names``: the MatMul's, the rows', the normalised output's and the running statistics')."""
    h, rows, normed, running_mean, running_var = names
    return [helper.make_node("MatMul", [x, w], [h]),
            helper.make_node("Flatten", [h], [rows], axis=2),
            helper.make_node("BatchNormalization", [rows, "gamma", "beta", "rm", "rv"],
                             [normed, running_mean, running_var], training_mode=1),
            helper.make_node("Reshape", [normed, "back"], [out])]


def _model():
    rng = np.random.default_rng(0)
    consts = {
        "wq": rng.normal(size=(D, D)) * 0.02 / np.sqrt(D),
        "wk": rng.normal(size=(D, D)) * 0.02 / np.sqrt(D),
        # orthogonal: the features stay uncorrelated (a shared token component, not a
        # correlation between features, which the field does not describe)
        "wv": np.linalg.qr(rng.normal(size=(D, D)))[0],
        "w1": np.linalg.qr(rng.normal(size=(D, F)))[0],
        "gamma": np.ones(F), "beta": np.zeros(F), "rm": np.zeros(F), "rv": np.ones(F),
        "wq2": rng.normal(size=(F, F)) * 1.0 / np.sqrt(F),
        "wk2": rng.normal(size=(F, F)) * 1.0 / np.sqrt(F),
        "wv2": rng.normal(size=(F, F)) / np.sqrt(F),
        "gain": np.sqrt(T),
        "wc": np.linalg.qr(rng.normal(size=(F, F)))[0],
        "back": np.array([N, T, F], dtype=np.int64),
    }
    nodes = [
        *_attention("x", "wq", "wk", "wv", ""),
        # the residual stream: x plus the attention output, scaled up so that the shared
        # part is about half of each token's variance
        helper.make_node("Mul", ["o", "gain"], ["o4"]),
        helper.make_node("Add", ["x", "o4"], ["s"]),
        *_dense_batch_norm("s", "w1", ["h", "rows", "normed", "rm_out", "rv_out"], "r"),
        # a second dense layer on r, already centred over the batch by the first BatchNorm
        *_dense_batch_norm("r", "wc", ["hc", "rows_c", "normed_c", "rm_c", "rv_c"], "rc"),
        # the second attention, over the correlated tokens
        *_attention("r", "wq2", "wk2", "wv2", "2"),
    ]
    outputs = ["r", "rc", "logits2", "p2", "o2"]
    graph = helper.make_graph(
        nodes, "flattened_batch_norm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, T, D])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v, dtype=np.int64 if n == "back" else np.float32), n)
         for n, v in consts.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)


@pytest.fixture(scope="module")
def measured():
    """Each output stacked over ``RUNS`` batches of N(0, 1) inputs (float64)."""
    model = _model()
    session = make_session(model, device="cpu", optimize=False)  # batch statistics kept
    rng = np.random.default_rng(1)
    names = ["r", "rc", "logits2", "p2", "o2"]
    runs = [session.run(names, {"x": rng.standard_normal((N, T, D)).astype(np.float32)})
            for _ in range(RUNS)]
    return {n: np.stack([r[i] for r in runs]).astype(np.float64) for i, n in enumerate(names)}


@pytest.fixture(scope="module")
def result():
    return predict(_model(), {"x": Moments.scalar(0.0, 1.0)})[1]


@pytest.mark.parametrize("name", ["r", "rc"])
def test_the_tokens_stay_correlated_through_the_flattened_batch_norm(measured, result, name):
    """The field on ``r`` (back at ``[N, T, F]``) holds the within-sample token correlation
    that onnxruntime measures: the mean over token pairs s != t of ``Cov(r_s, r_t) /
    Var`` (pooled over features, samples and runs), which the batch statistics lower (the
    mean by about 1/N of the shared part, the divisor further). ``rc``: a second such layer,
    whose input the first BatchNorm centred over the batch already."""
    r = measured[name]
    centred = r - r.mean(axis=(0, 1, 2), keepdims=True)
    cov = np.einsum("abse,abte->st", centred, centred) / (r.shape[0] * N * F)
    rho = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    off = ~np.eye(T, dtype=bool)
    assert rho[off].mean() > 0.3  # strongly shared: the case the test is about
    field = result.moments[name].tokens
    assert field is not None
    c = field.cov / np.sqrt(np.outer(np.diag(field.cov), np.diag(field.cov)))
    assert c[off].mean() == pytest.approx(rho[off].mean(), abs=0.015)


@pytest.mark.parametrize("name,rtol", [("r", 0.05), ("logits2", 0.1), ("p2", 0.1),
                                       ("o2", 0.1)])
def test_the_attention_after_it_sees_the_shared_component(measured, result, name, rtol):
    _, var = result.moments[name].total()
    assert var == pytest.approx(measured[name].var(), rel=rtol)


def test_the_test_can_fail(measured):
    """Independent tokens would put P V's variance near Var(v2) / T at a flat softmax; the
    measured variance is several times that."""
    v2_scale = measured["r"].var()  # wv2 keeps the variance (N(0, 1/F) entries)
    assert measured["o2"].var() > 4 * v2_scale / T


@pytest.mark.parametrize("n,groups,shared", [(4, 8, 0.9), (16, 8, 0.5), (5, 3, 0.3)])
def test_batch_statistics_against_sampled_groups(n, groups, shared):
    """``batch_normalized`` against numpy draws of ``groups`` independent Gaussian token groups
    centred on their common mean and divided by their root mean square (few groups with a
    dominant shared part: the divisor moves with it, LeViT's 4-token stage at batch 8)."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(n, n)) * 0.3
    cov = (1 - shared) * (np.eye(n) + a @ a.T / n) + shared
    draws = rng.standard_normal((20000, groups, n)) @ np.linalg.cholesky(cov).T
    y = draws - draws.mean(axis=(1, 2), keepdims=True)
    z = y / np.sqrt((y**2).mean(axis=(1, 2), keepdims=True))
    measured = np.einsum("rks,rkt->st", z, z) / (z.shape[0] * groups)
    predicted = batch_normalized(cov, groups)
    predicted = predicted * np.trace(measured) / np.trace(predicted)
    np.testing.assert_allclose(predicted, measured, atol=0.025)
    constant_divisor = cov - cov.sum(axis=1)[:, None] / (groups * n)
    constant_divisor = constant_divisor - cov.sum(axis=1)[None, :] / (groups * n)
    constant_divisor = constant_divisor + cov.sum() / (groups * n * n)
    constant_divisor = constant_divisor * np.trace(measured) / np.trace(constant_divisor)
    if shared >= 0.5:  # the divisor's share is what the constant-divisor formula misses
        assert np.abs(constant_divisor - measured).max() > 0.03
