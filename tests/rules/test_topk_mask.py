"""A mask that keeps the k keys of largest score per query, built by TopK and ScatterElements
from a signal known exactly (rules/exact_values.py).

Doge's dynamic mask adds ``exp(A softplus(x W))`` to the logits and keeps, per query, the k
keys where it is largest among those the causal mask allows; at initialization ``A = 0``, the
score is 1 at every allowed key (variance 0) and TopK of the tied row keeps the first k keys
(the lower index first). Before, TopK and the ScatterElements of its indices went to the
empirical fallback, which pooled the mask over the tensor (every key kept with probability
1/2) and the probabilities read 5x. Predictions against onnxruntime Monte Carlo runs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

B, T, D, E, K = 256, 12, 16, 8, 4
LOWEST = float(np.finfo(np.float32).min)


def _model():
    """x ~ N(0, 1) [B, T, D] -> q, k, v = x W -> s = q k^T / sqrt(E); score =
    exp(A softplus(x w)) (A = 0) over the keys, finfo.min where the causal mask hides a key;
    kept = ScatterElements(0, TopK(score, K).indices, 1); mask = Where(kept == 0, finfo.min,
    score); p = softmax(s + mask); y = p v."""
    rng = np.random.default_rng(0)
    causal = np.tril(np.ones((T, T), dtype=bool))
    consts = {
        "wq": rng.normal(size=(D, E)) / np.sqrt(D), "wk": rng.normal(size=(D, E)) / np.sqrt(D),
        "wv": rng.normal(size=(D, E)) / np.sqrt(D), "wdt": rng.normal(size=(D, 1)) / np.sqrt(D),
        "a": np.zeros(1), "scale": np.float32(1 / np.sqrt(E)), "lowest": np.float32(LOWEST),
        "zero": np.float32(0.0), "one": np.float32(1.0),
        "shape": np.array([B, T, T], dtype=np.int64), "k": np.array([K], dtype=np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["kk"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["kk"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        helper.make_node("Mul", ["qk", "scale"], ["s"]),
        helper.make_node("MatMul", ["x", "wdt"], ["dt"]),
        helper.make_node("Softplus", ["dt"], ["sp"]),
        helper.make_node("Mul", ["a", "sp"], ["asp"]),
        helper.make_node("Exp", ["asp"], ["g"]),
        helper.make_node("Transpose", ["g"], ["gt"], perm=[0, 2, 1]),
        helper.make_node("Expand", ["gt", "shape"], ["ge"]),
        helper.make_node("Where", ["causal", "ge", "lowest"], ["score"]),
        helper.make_node("TopK", ["score", "k"], ["top", "idx"], axis=-1, largest=1),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"]),
        helper.make_node("Shape", ["idx"], ["idx_shape"]),
        helper.make_node("Expand", ["one", "idx_shape"], ["ones"]),
        helper.make_node("ScatterElements", ["zeros", "idx", "ones"], ["kept"], axis=-1),
        helper.make_node("Equal", ["kept", "zero"], ["dropped"]),
        helper.make_node("Where", ["dropped", "lowest", "score"], ["mask"]),
        helper.make_node("Add", ["s", "mask"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.asarray(v, dtype=v.dtype if np.asarray(v).dtype
                                                == np.int64 else np.float32), n)
             for n, v in consts.items()]
    inits.append(numpy_helper.from_array(causal, "causal"))
    graph = helper.make_graph(
        nodes, "topk_mask_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, D])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("kept", "p", "y")],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_topk_mask_of_tied_scores_keeps_the_first_k_keys_each_query_sees():
    model = _model()
    inputs = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, inputs)
    values = monte_carlo(model, inputs, seed=3)
    kept = values["kept"]
    assert np.all(kept.sum(axis=-1) == K)  # every query keeps exactly K keys ...
    assert np.all(kept[:, :, K:] == 0)  # ... the first K of the row, hidden or not
    predicted = result.moments["kept"]
    assert np.all(predicted.var == 0)
    assert np.array_equal(np.broadcast_to(predicted.mean, kept.shape), kept)
    for name in ("p", "y"):  # p: one value per query and key, y: pooled
        m = result.moments[name]
        measured = values[name].astype(np.float64)
        mean, var = m.total()
        assert var == pytest.approx(float(np.var(measured)), rel=0.1), name
        assert mean == pytest.approx(float(np.mean(measured)), abs=0.05 * np.sqrt(var)), name
    # per query (a row keeps min(query + 1, K) keys): the variance over the samples and keys
    p_mean = np.broadcast_to(result.moments["p"].mean, (B, T, T))[0]
    p_var = np.broadcast_to(result.moments["p"].var, (B, T, T))[0]
    row_mean = p_mean.mean(axis=-1)
    row_var = (p_var + p_mean**2).mean(axis=-1) - row_mean**2
    measured = values["p"].astype(np.float64)
    assert row_var == pytest.approx(measured.var(axis=(0, 2)), rel=0.1)
    assert np.all(p_mean[:, K:] == 0) and np.all(measured[:, :, K:] == 0)


def test_topk_of_a_row_known_exactly_reads_its_values_in_onnxruntime_order():
    """The values output: the k largest of each row, ties by lower index (no fallback)."""
    model = _model()
    model.graph.output.append(helper.make_tensor_value_info("top", TensorProto.FLOAT, None))
    inputs = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, inputs)
    top = monte_carlo(model, inputs, seed=5)["top"]
    predicted = result.moments["top"]
    assert np.all(predicted.var == 0)
    assert np.array_equal(np.broadcast_to(predicted.mean, top.shape), top)
