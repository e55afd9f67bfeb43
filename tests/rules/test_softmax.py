"""Softmax and LogSoftmax rules (closed form, Monte Carlo rows, repeated row statistics)
against Monte Carlo runs of the same node in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules import softmax_rows
from tests.models import make_model
from tests.oracle import assert_moments_close, monte_carlo, node_model, predict
from tests.rules.test_attention import run

# ---------------------------------------------------------------------------------------------
# Softmax


@pytest.mark.parametrize("n", [2, 16, 100])
def test_softmax_iid_logits_mean_is_exactly_one_over_n(n):
    x = Moments.scalar(0.4, 2.0)
    node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
    model = node_model(node, {"x": (max(4000, 400_000 // n), n)})
    m = run(model, {"x": x})
    assert m.total()[0] == 1.0 / n


def test_softmax_per_index_logits():
    x = Moments.along(np.linspace(-1, 1, 8), np.linspace(0.5, 2, 8), axis=2, rank=3)
    node = helper.make_node("Softmax", ["x"], ["y"], axis=2)
    model = node_model(node, {"x": (20000, 3, 8)})
    m = run(model, {"x": x}, axis=2)
    np.testing.assert_allclose(m.mean.sum(), 1.0)


def test_softmax_per_channel_groups():
    x = Moments.along([-1.0, 0.0, 0.5, 2.0], [0.5, 1.0, 3.0, 0.25], axis=1, rank=4)
    node = helper.make_node("Softmax", ["x"], ["y"], axis=3)
    model = node_model(node, {"x": (5000, 4, 3, 7)})
    run(model, {"x": x}, axis=1)


def test_softmax_opset11_coerces_to_2d():
    x = Moments.scalar(0.0, 1.5)
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    model = node_model(node, {"x": (20000, 3, 4)}, opset=11)
    m = run(model, {"x": x})
    assert m.total()[0] == 1.0 / 12


def test_softmax_of_relu_uses_the_source():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Softmax", ["r"], ["y"], axis=-1),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [40000, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    run(model, {"x": Moments.scalar(0.5, 4.0)})


def test_log_softmax():
    x = Moments.scalar(0.3, 1.2)
    node = helper.make_node("LogSoftmax", ["x"], ["y"], axis=-1)
    run(node_model(node, {"x": (40000, 10)}), {"x": x})


# ---------------------------------------------------------------------------------------------
# masks: the ways exporters write a causal mask before a Softmax


@pytest.mark.parametrize("form", ["add_neg_inf", "add_finfo_min", "where_neg_inf",
                                  "mul_then_add_finfo_min"])
def test_causal_mask_forms(form):
    """Masked positions get probability 0, whichever way the mask is written; the statistics
    of the logits stay finite where they are not masked (no NaN reaches the output)."""
    s, n = 8, 4000
    causal = np.tril(np.ones((s, s), dtype=bool))
    big = np.finfo(np.float32).min
    if form == "add_neg_inf":
        consts = {"m": np.where(causal, 0.0, -np.inf).astype(np.float32)}
        nodes = [helper.make_node("Add", ["x", "m"], ["a"])]
    elif form == "add_finfo_min":
        consts = {"m": np.where(causal, 0.0, big).astype(np.float32)}
        nodes = [helper.make_node("Add", ["x", "m"], ["a"])]
    elif form == "where_neg_inf":
        consts = {"c": causal, "f": np.array(-np.inf, dtype=np.float32)}
        nodes = [helper.make_node("Where", ["c", "x", "f"], ["a"])]
    else:  # (1 - keep) * finfo.min, added
        consts = {"keep": causal.astype(np.float32), "one": np.float32(1.0),
                  "big": np.float32(big)}
        nodes = [helper.make_node("Sub", ["one", "keep"], ["drop"]),
                 helper.make_node("Mul", ["drop", "big"], ["offset"]),
                 helper.make_node("Add", ["x", "offset"], ["a"])]
    nodes.append(helper.make_node("Softmax", ["a"], ["y"], axis=-1))
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 2, s, s])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    x = Moments.scalar(0.0, 0.5)
    _, result = predict(model, {"x": x})
    assert result.rules["y"] == "softmax" and not result.fallbacks
    values = monte_carlo(model, {"x": x})["y"].astype(np.float64)
    m = result.moments["y"]
    assert np.all(np.isfinite(m.mean)) and np.all(np.isfinite(m.var))
    assert_moments_close(m, values, rtol=0.03)
    mean = np.broadcast_to(m.mean, (1, 1, s, s))[0, 0]
    np.testing.assert_array_equal(mean[~causal], 0.0)
    np.testing.assert_allclose(mean, values.mean(axis=(0, 1)), atol=0.01)


def test_causal_mask_on_logits_too_many_to_track_one_by_one():
    """GPT-2 at 128 tokens: logits that differ per head plus a finfo.min causal mask make a
    [1, heads, S, S] grid, more statistics than a tensor otherwise keeps (65,536); the mask
    must reach the Softmax as positions it ignores, not pooled into the logits' variance."""
    heads, s, n = 5, 128, 48
    causal = np.tril(np.ones((s, s), dtype=bool))
    mask = np.where(causal, 0.0, np.finfo(np.float32).min).astype(np.float32)
    nodes = [helper.make_node("Add", ["x", "m"], ["a"]),
             helper.make_node("Softmax", ["a"], ["y"], axis=-1)]
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, heads, s, s])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(mask, "m")])
    x = Moments(np.zeros((1, heads, 1, 1)), np.linspace(0.2, 0.6, heads).reshape(1, heads, 1, 1))
    _, result = predict(model, {"x": x})
    assert result.rules["y"] == "softmax" and not result.fallbacks
    assert result.moments["a"].tracked_size() > 1 << 16
    values = monte_carlo(model, {"x": x})["y"].astype(np.float64)
    m = result.moments["y"]
    assert_moments_close(m, values, rtol=0.03)
    # per key, pooled over the heads and queries (the keys at least 32 queries see: a later key
    # has too few draws): the closed form (5%) and the sampling error of skewed draws
    mean, var = m.values_along(3, s)
    keys = slice(0, s - 32)
    np.testing.assert_allclose(mean[keys], values.mean(axis=(0, 1, 2))[keys], rtol=0.05)
    np.testing.assert_allclose(var[keys], values.var(axis=(0, 1, 2))[keys], rtol=0.1)


def test_softmax_statistics_repeated_over_the_batch():
    # a causal mask expanded over an axis (GPT-2's over the batch): per-row logit statistics
    # repeated along it count once (200 distributions, not 2 x 200: over the sampling limit)
    rows = np.linspace(-1, 1, 200)[:, None] * np.linspace(0, 2, 6)[None, :]
    mean = np.broadcast_to(rows, (1, 2, 200, 6))
    x = Moments(mean, np.full((1, 1, 1, 6), 0.5))
    node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
    model = node_model(node, {"x": (500, 2, 200, 6)})
    _, result = predict(model, {"x": x})
    assert result.rules["y"] == "softmax" and not result.fallbacks
    values = monte_carlo(model, {"x": x})
    m = result.moments["y"]
    assert m.mean.shape == (1, 1, 200, 6)
    got = values["y"].astype(np.float64)
    np.testing.assert_allclose(m.total()[1], got.var(), rtol=0.03)
    # per row: 3333 draws in the rule, 1000 here: a few hundredths of sampling error
    np.testing.assert_allclose(m.mean[0, 0], got.mean(axis=(0, 1)), atol=0.03)


def test_per_head_bias_merged_with_the_batch_keeps_its_heads():
    # ALiBi (BLOOM): the bias slope * key position differs per head and is added on logits
    # laid out [B*H, S, S], then reshaped to [B, H, S, S] for the Softmax. The reshape keeps
    # every head's bias exactly; pooled over the heads, BLOOM's attention came out 2.8x measured
    b, h, s = 300, 4, 16
    slopes = 2.0 ** -np.arange(0, 2 * h, 2)  # 1, 1/4, 1/16, 1/64
    bias = np.tile(slopes[:, None, None] * np.arange(s)[None, None, :], (b, 1, 1))
    nodes = [helper.make_node("Add", ["x", "bias"], ["a"]),
             helper.make_node("Reshape", ["a", "shape"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b * h, s, s])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(bias.astype(np.float32), "bias"),
         numpy_helper.from_array(np.array([b, h, s, s], np.int64), "shape")])
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    got = monte_carlo(model, {"x": x})["y"].astype(np.float64)
    _, var = result.moments["y"].values_along(1, h)  # pooled over batch, queries and keys
    np.testing.assert_allclose(var, got.var(axis=(0, 2, 3)), rtol=0.05)


def test_monte_carlo_chunking_keeps_the_draws(monkeypatch):
    """The Monte Carlo path evaluates its draws in chunks; the chunk size must change only how
    the sums are grouped, never which draws are made (one generator stream): the result of
    every chunk size agrees with one chunk holding all the draws to rounding, while a
    different seed moves it by the Monte Carlo error."""
    mean = np.array([[0.3, -0.5, 1.2, 0.0, -2.0, 0.7], [1.0, 1.0, -1.0, 0.2, 0.0, -0.3]])
    var = np.full(mean.shape, 2.5)  # above CLOSED_FORM_MAX_VAR: sampled
    results = {}
    for chunk in (1 << 22, 1 << 12, 97):
        monkeypatch.setattr(softmax_rows, "_CHUNK", chunk)
        results[chunk] = softmax_rows.softmax_rows(mean, var, rng=np.random.default_rng(0))
    whole = results[1 << 22]
    for chunk in (1 << 12, 97):
        for got, want in zip(results[chunk], whole):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    other_seed = softmax_rows.softmax_rows(mean, var, rng=np.random.default_rng(1))
    assert np.max(np.abs(other_seed[0] - whole[0])) > 1e-6


@pytest.mark.parametrize("log", [False, True])
def test_closed_form_rows_in_blocks_equal_each_row_alone(log):
    """Many closed-form rows are evaluated a block of rows at a time (cache-sized); every step
    is per row, so each row's result must be the one it gets alone (to the rounding of the
    quadrature's sums, whose grouping follows the number of values evaluated at once: a few
    ulps of E[y^2], which Var = E[y^2] - E[y]^2 keeps in absolute terms): causal masks (finfo.min), a row masked entirely, rows of identical logits and
    rows that differ."""
    rng = np.random.default_rng(3)
    rows, n = 3 * softmax_rows._ROW_BLOCK + 17, 24
    mean = rng.normal(size=(rows, n))
    var = rng.uniform(0.0, 0.9, size=(rows, n))
    causal = np.arange(n)[None, :] > (np.arange(rows) % n)[:, None]
    mean[causal] = np.finfo(np.float32).min
    mean[5] = np.finfo(np.float32).min  # every element masked
    mean[7], var[7] = 0.4, 0.3  # identically distributed
    ex, vx = softmax_rows.softmax_rows(mean, var, log=log)
    for r in range(rows):
        alone = softmax_rows.softmax_rows(mean[r:r + 1], var[r:r + 1], log=log)
        np.testing.assert_allclose(ex[r], alone[0][0], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(vx[r], alone[1][0], rtol=1e-12, atol=1e-13)
