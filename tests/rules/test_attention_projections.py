"""Attention as ``nn.MultiheadAttention`` writes it, against onnxruntime: keys and values
projected from a dense layer's output (``kdim``/``vdim`` fed by a Linear: correlated features),
and the packed ``in_proj`` of self-attention (one MatMul, split by Reshape, Unsqueeze,
Transpose, Squeeze and Gather), whose keys and values are projections of the same tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze
from onnxinit.graph import load
from onnxinit.measure import measurable_model
from onnxinit.moments import Moments
from onnxinit.propagate import propagate
from onnxinit.runtime import make_session
from tests.models import make_model
from tests.oracle import monte_carlo, predict
from tests.real.compare import measured_moments


def test_dense_layer_of_a_dense_layers_features():
    """x [N, T, 32] -> MatMul [32, 24] of rank 3 (+ bias) -> MatMul [24, 16]: the first
    layer's 24 features are combinations of 3, so each output feature's variance is
    ``w_j^T S w_j`` with S the first layer's ``W1^T W1``: the independent sum was 0.26-48x
    the measured (only a dense layer of a tensor with a field started one), 0.99-1.02x now."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((32, 3)) @ rng.standard_normal((3, 24)) / 10
    inits = {"w1": w1.astype(np.float32), "b1": (0.3 * rng.standard_normal(24)).astype(np.float32),
             "w2": (rng.standard_normal((24, 16)) / 5).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m"]),
             helper.make_node("Add", ["m", "b1"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [512, 16, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = make_model(nodes, [x], [y], [numpy_helper.from_array(v, n) for n, v in inits.items()])
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments)["y"].astype(np.float64).var(axis=(0, 1))
    np.testing.assert_allclose(result.moments["y"].values_along(2, 16)[1], measured, rtol=0.06)


class _Attention(torch.nn.Module):
    """``nn.MultiheadAttention`` (batch first) on x [N, 16, 32]: ``packed``, self-attention
    (one ``in_proj``), else keys and values of ``kdim = vdim = 24`` from a Linear. The keys'
    and values' projections are tied, so that a key's logit and its value are strongly
    correlated (random projections correlate them by about ``1/sqrt(d)``: the same term,
    smaller)."""

    def __init__(self, packed: bool):
        super().__init__()
        torch.manual_seed(0)
        dim = None if packed else 24
        self.attention = torch.nn.MultiheadAttention(32, 4, batch_first=True, kdim=dim,
                                                     vdim=dim)
        self.packed = packed
        self.keys = torch.nn.Linear(32, 24)
        with torch.no_grad():
            a = self.attention
            if packed:
                a.in_proj_weight[64:] = a.in_proj_weight[32:64]
            else:
                a.v_proj_weight.copy_(a.k_proj_weight)

    def forward(self, x):
        source = x if self.packed else self.keys(x)
        return self.attention(x, source, source, need_weights=False)[0]


def _export(module, path):
    torch.onnx.export(module, (torch.randn(2, 16, 32),), str(path), input_names=["x"],
                      dynamo=False, opset_version=17, dynamic_axes={"x": {0: "batch"}})


@pytest.mark.parametrize("packed", [False, True])
def test_multihead_attention_values_selected_with_their_keys(tmp_path, packed):
    """P V of ``nn.MultiheadAttention``'s export against onnxruntime (64 batches of 8).
    Before: the packed ``in_proj`` was not traced to its keys and values (no selection term:
    P V 0.68x of onnxruntime, 0.99x now), and with ``kdim``/``vdim`` the selection term and
    the keys' and values' variances took the Linear's features as independent (0.76x, 1.01x)."""
    path = tmp_path / "mha.onnx"
    _export(_Attention(packed), path)
    graph = load(str(path), batch_size=8)
    softmax = next(graph.node(i).output[0] for i in graph.order
                   if graph.node(i).op_type == "Softmax")
    pv = next(graph.node(i).output[0] for i in graph.order
              if graph.node(i).op_type == "MatMul" and graph.node(i).input[0] == softmax)
    predicted = {t.name: t.var for t in analyze(graph).tensors}
    measured = measured_moments(load(str(path), batch_size=8), [pv], 8, 64)
    assert predicted[pv] == pytest.approx(measured[pv][1], rel=0.08)


class _LowRankValues(torch.nn.Module):
    """Packed self-attention (``nn.MultiheadAttention``, 4 heads of 8, batch first) whose
    value projection ``W_v`` has rank 2: every head's values, and the heads' against each
    other, are strongly correlated; the output projection is ``W_v^T``, whose rows lie where
    the merged values vary (the cross terms add up instead of cancelling)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.attention = torch.nn.MultiheadAttention(32, 4, batch_first=True)
        with torch.no_grad():
            self.attention.in_proj_weight[64:] = torch.randn(32, 2) @ torch.randn(2, 32) / 8
            self.attention.out_proj.weight.copy_(self.attention.in_proj_weight[64:].T)

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0]


def test_output_projection_of_correlated_heads(tmp_path):
    """The output projection (a Gemm after the heads are merged back) of values of rank 2:
    each output feature's variance is ``w_j^T C w_j`` with C the merged heads' covariance
    (rules/mixed_values.py). Taken as independent features, the output's variance was 0.14x
    onnxruntime's (64 batches of 8); 0.97x now. (Per feature, P V's own variances are off
    where the values' variances differ much: its selection term is one number per tensor.)"""
    path = tmp_path / "mha.onnx"
    _export(_LowRankValues(), path)
    graph = load(str(path), batch_size=8)
    gemm = next(graph.node(i).output[0] for i in graph.order if graph.node(i).op_type == "Gemm")
    predicted = propagate(graph, initial={"x": Moments.scalar(0.0, 1.0)}).moments[gemm]
    session = make_session(measurable_model(graph, [gemm]), device="cpu")
    rng = np.random.default_rng(0)
    values = np.concatenate([session.run([gemm], {"x": rng.standard_normal((8, 16, 32)).astype(
        np.float32)})[0].astype(np.float64) for _ in range(64)])
    ratio = predicted.values_along(1, 32)[1].mean() / values.var(axis=0).mean()
    assert ratio == pytest.approx(1.0, abs=0.06)

