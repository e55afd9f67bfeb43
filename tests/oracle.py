"""Numerical oracles for tests: single-node models and their Monte Carlo moments in onnxruntime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import ModelGraph, load
from onnxinit.moments import Moments
from onnxinit.propagate import propagate
from onnxinit.runtime import make_session

OPSET = 18


def node_model(
    node: onnx.NodeProto,
    inputs: Mapping[str, Sequence[int]],
    constants: Mapping[str, np.ndarray] | None = None,
    opset: int = OPSET,
    dtype: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """A model of one node: ``inputs`` are float graph inputs with static shapes, ``constants``
    become initializers; every output is a graph output (its type left to inference)."""
    graph = helper.make_graph(
        [node],
        "single",
        [helper.make_tensor_value_info(n, dtype, list(s)) for n, s in inputs.items()],
        # outputs untyped: an op's output type is its own (Cast to int64, Dropout's bool mask)
        [onnx.ValueInfoProto(name=o) for o in node.output if o],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (constants or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def sample(m: Moments, shape, rng) -> np.ndarray:
    m = m.expand_rank(len(shape))
    return (rng.standard_normal(shape) * np.sqrt(m.var) + m.mean).astype(np.float32)


def monte_carlo(
    model: onnx.ModelProto, moments: Mapping[str, Moments], seed: int = 0
) -> dict[str, np.ndarray]:
    """Run ``model`` on Gaussian samples of its inputs with the given moments; output arrays."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in model.graph.input:
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = sample(moments[inp.name], shape, rng)
    session = make_session(model, device="cpu", optimize=False)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def measured_over_token_ids(model: onnx.ModelProto, names: list[str], vocab: int,
                            shape: tuple[int, int], batches: int) -> dict[str, float]:
    """Variance of each of ``names`` pooled over ``batches`` runs of ``model`` on uniform token
    ids below ``vocab`` (its input "ids", of ``shape``)."""
    session = make_session(model, device="cpu", optimize=False)
    rng = np.random.default_rng(1)
    runs = [session.run(names, {"ids": rng.integers(0, vocab, shape)}) for _ in range(batches)]
    return {n: float(np.var(np.stack([r[i] for r in runs]).astype(np.float64)))
            for i, n in enumerate(names)}


def predict(model: onnx.ModelProto, moments: Mapping[str, Moments]) -> tuple[ModelGraph, dict]:
    """The propagation's moments for every tensor of ``model`` given input moments."""
    graph = load(model)
    result = propagate(graph, initial=dict(moments))
    return graph, result


def per_channel(values: np.ndarray, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    other = tuple(i for i in range(values.ndim) if i != axis % values.ndim)
    v = values.astype(np.float64)
    return v.mean(axis=other), v.var(axis=other)


def assert_moments_close(predicted: Moments, values: np.ndarray, rtol=0.05, axis=None, atol=None):
    """Total (or per-index along ``axis``) mean and variance agree with the sample's.

    The variance must agree within ``rtol`` relative; the mean within ``rtol`` of the sample
    standard deviation (``atol`` absolute if given), since means near 0 have no relative scale."""
    v = values.astype(np.float64)
    if axis is None:
        mean, var = predicted.total()
        got_mean, got_var = v.mean(), v.var()
        scale = np.sqrt(got_var)
    else:
        size = v.shape[axis]
        mean, var = predicted.values_along(axis, size)
        got_mean, got_var = per_channel(v, axis)
        scale = np.sqrt(got_var.mean())
    np.testing.assert_allclose(var, got_var, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(mean, got_mean, atol=atol if atol is not None else rtol * scale + 1e-12)


def check_rule(model: onnx.ModelProto, moments: Mapping[str, Moments], out: str = "y",
               axis: int | None = 1, rtol: float = 0.05):
    """Predict ``model`` and compare tensor ``out`` (made by a rule, not a fallback) with a
    Monte Carlo run of the model on samples of the input moments; the Propagation."""
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    assert result.rules[out] not in ("empirical", "pass-through"), result.fallbacks
    assert_moments_close(result.moments[out], values[out], rtol=rtol, axis=axis)
    return result
