"""Cosine attention (Swin V2) and a zero-padded window, against onnxruntime on Gaussian inputs.

* ``F.normalize`` of rows (``ReduceL2`` -> ``Clip(min=eps)`` -> ``Expand`` -> ``Div``): each
  row's squares sum to 1 and its per-feature means are kept (``rules/unit_rows.py``). Before,
  the quotient went to the empirical fallback: the rows' common direction (their means) was
  lost and the cosines read 1.1-1.2x.
* A window larger than the map, zero-padded (Swin V2's last stages): the padded tokens are
  exact zeros (``Pad`` spells out the padded axes), so are their keys and queries after
  ``normalize`` (``0 / eps``), their cosine logits are constants, and the real keys share
  ``q . mean(k)`` against the padding (``rules/key_groups.py``: the softmax samples the row's
  keys jointly). Before, the padding was a mixture pooled over every token: the softmax read
  3-4x its measured variance, P V and the tokens cropped back 0.5x; then P V 0.88x until it
  read the probabilities' covariance across the keys (0.95x, cropped 0.93x).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

B, M, WS, D, H = 256, 3, 6, 32, 2  # batch, map side, window side, features, heads
T = WS * WS
DH = D // H


def cosine_attention_nodes(tokens: str) -> list:
    """Cosine attention over the windows ``tokens`` ``[N, T, D]`` -> ``o`` ``[N, H, T, DH]``:
    q, k, v projections (``wq``, ``wk``, ``wv``) split into heads (``split``), ``F.normalize``
    of q and k (``eps``, ``head_shape``), logits times ``scale`` plus ``bias``, softmax ``p``,
    P V."""
    nodes = []
    heads = {}
    for name in ("q", "k", "v"):
        nodes += [
            helper.make_node("MatMul", [tokens, "w" + name], [name + "_lin"]),
            helper.make_node("Reshape", [name + "_lin", "split"], [name + "_4"]),
            helper.make_node("Transpose", [name + "_4"], [name + "_h"], perm=[0, 2, 1, 3]),
        ]
        heads[name] = name + "_h"
    for name in ("q", "k"):  # F.normalize(t, dim=-1)
        nodes += [
            helper.make_node("ReduceL2", [heads[name]], [name + "_norm"], axes=[-1], keepdims=1),
            helper.make_node("Clip", [name + "_norm", "eps", ""], [name + "_clip"]),
            helper.make_node("Expand", [name + "_clip", "head_shape"], [name + "_den"]),
            helper.make_node("Div", [heads[name], name + "_den"], [name + "_unit"]),
        ]
    nodes += [
        helper.make_node("Transpose", ["k_unit"], ["k_t"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q_unit", "k_t"], ["cosine"]),
        helper.make_node("Mul", ["cosine", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v_h"], ["o"]),
    ]
    return nodes

def _cosine_attention() -> onnx.ModelProto:
    """x [B, M, M, D] + a per-feature mean, padded to [B, WS, WS, D]; one window of T tokens;
    q, k, v projections; cosine logits times 10 plus a constant bias; softmax; P V; the
    window put back and cropped to the map."""
    rng = np.random.default_rng(5)
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    ints = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    w = {k: f32(k, rng.standard_normal((D, D)) / np.sqrt(D)) for k in ("wq", "wk", "wv")}
    nodes = [
        helper.make_node("Add", ["x", "shift"], ["xs"]),
        helper.make_node("Pad", ["xs", "pads"], ["xp"], mode="constant"),
        helper.make_node("Reshape", ["xp", "tokens"], ["xw"]),
    ]
    nodes += cosine_attention_nodes("xw") + [
        helper.make_node("Transpose", ["o"], ["o_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["o_t", "window"], ["o_map"]),
        helper.make_node("Slice", ["o_map", "zeros", "ends", "axes"], ["cropped"]),
    ]
    outputs = {"xp": [B, WS, WS, D], "q_unit": [B, H, T, DH], "cosine": [B, H, T, T],
               "p": [B, H, T, T], "o": [B, H, T, DH], "cropped": [B, M, M, D]}
    graph = helper.make_graph(
        nodes, "cosine_window",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, M, M, D])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        [*w.values(), f32("shift", rng.standard_normal(D)), f32("eps", 1e-12),
         f32("scale", 10.0), f32("bias", 8.0 + 0.02 * rng.standard_normal((H, T, T))),
         ints("pads", [0, 0, 0, 0, 0, WS - M, WS - M, 0]), ints("tokens", [B, T, D]),
         ints("split", [B, T, H, DH]), ints("head_shape", [B, H, T, DH]),
         ints("window", [B, WS, WS, D]), ints("zeros", [0, 0]), ints("ends", [M, M]),
         ints("axes", [1, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _compare(names, rtol):
    model = _cosine_attention()
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    for name in names:
        measured = values[name].astype(np.float64).var()
        predicted = result.moments[name].total()[1]
        assert abs(predicted / measured - 1) < rtol, (name, predicted / measured)
    return result, values


def test_unit_rows_keep_their_means_and_the_padding():
    result, values = _compare(["xp", "q_unit", "cosine"], 0.05)
    unit = values["q_unit"].astype(np.float64)
    # the padded tokens are exact zeros, and so predicted
    predicted = np.broadcast_to(result.moments["q_unit"].var, (1, H, T, DH))
    padded = np.ones((WS, WS), bool)
    padded[:M, :M] = False
    assert np.all(unit[:, :, padded.ravel()] == 0)
    assert np.all(predicted[:, :, padded.ravel()] == 0)
    # the rows' common direction: the energy of the per-feature means
    mean = result.moments["q_unit"].mean
    real = ~padded.ravel()
    measured_energy = (unit[:, :, real].mean(axis=0) ** 2).mean()
    predicted_energy = (np.broadcast_to(mean, (1, H, T, DH))[0][:, real] ** 2).mean()
    assert abs(predicted_energy / measured_energy - 1) < 0.1, predicted_energy / measured_energy


def test_softmax_over_a_zero_padded_window():
    _compare(["p"], 0.1)


def test_values_averaged_over_a_zero_padded_window():
    """The real keys' probabilities move together (their shared logit component), so their
    summed weight on the values' common mean fluctuates more than independent keys': P V reads
    the probabilities' covariance (softmax.probability_covariance). Before, 0.88x (o)."""
    _compare(["o", "cropped"], 0.1)
