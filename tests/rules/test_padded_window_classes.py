"""Cosine attention over several windows of a zero-padded map (Swin V2-T's stages 1 and 2 at
224x224: 28 -> 32 and 14 -> 16 in 8x8 windows), against onnxruntime on Gaussian inputs.

The map ``[B, 28, 28, 96]`` is padded to ``[B, 32, 32, 96]`` (98,304 statistics, over the Pad's
former cap of 2^16), cut into 16 windows of 8x8 tokens merged with the batch (``[B*16, 64,
96]``), and each window runs cosine attention (``F.normalize`` of q and k, logits times 10 plus a
constant bias, softmax, P V), then the windows go back on the map, cropped to 28x28. Seven of the
16 windows hold padding (exact zeros, so are their keys after ``normalize``), nine do not.

Before (da3ab2b), the Pad's grid was over its cap and the merge pooled the windows: the padding
was mixed into every token's variance, and the queries' and keys' norms lost the real/padded
difference that makes most of their measured variance (0.1x), the cosines 1.3x, the softmax 1.4x.
Now the windows are kept apart by class (``onnxinit/window_classes.py``: interior, right
column, bottom row, corner).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict
from .test_padded_windows import cosine_attention_nodes

B, M, WS, D, H = 8, 28, 8, 96, 3  # batch, map side, window side, features, heads
P = -(-M // WS) * WS  # padded side
NW = (P // WS) ** 2  # windows
T, DH = WS * WS, D // H


def _windowed_cosine_attention() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    ints = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    w = {k: f32(k, rng.standard_normal((D, D)) / np.sqrt(D)) for k in ("wq", "wk", "wv")}
    nodes = [
        helper.make_node("Add", ["x", "shift"], ["xs"]),
        helper.make_node("Pad", ["xs", "pads"], ["xp"], mode="constant"),
        helper.make_node("Reshape", ["xp", "grid"], ["xg"]),
        helper.make_node("Transpose", ["xg"], ["xt"], perm=[0, 1, 3, 2, 4, 5]),
        helper.make_node("Reshape", ["xt", "tokens"], ["xw"]),
    ]
    nodes += cosine_attention_nodes("xw") + [
        helper.make_node("Transpose", ["o"], ["o_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["o_t", "back"], ["o_g"]),
        helper.make_node("Transpose", ["o_g"], ["o_gt"], perm=[0, 1, 3, 2, 4, 5]),
        helper.make_node("Reshape", ["o_gt", "map"], ["o_map"]),
        helper.make_node("Slice", ["o_map", "zeros", "ends", "axes"], ["cropped"]),
    ]
    outputs = {"xw": [B * NW, T, D], "k_norm": [B * NW, H, T, 1], "q_norm": [B * NW, H, T, 1],
               "q_unit": [B * NW, H, T, DH], "cosine": [B * NW, H, T, T],
               "p": [B * NW, H, T, T], "o": [B * NW, H, T, DH], "cropped": [B, M, M, D]}
    n = P // WS
    graph = helper.make_graph(
        nodes, "cosine_windows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, M, M, D])],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in outputs.items()],
        [*w.values(), f32("shift", rng.standard_normal(D)), f32("eps", 1e-12),
         f32("scale", 10.0), f32("bias", 0.02 * rng.standard_normal((H, T, T))),
         ints("pads", [0, 0, 0, 0, 0, P - M, P - M, 0]), ints("grid", [B, n, WS, n, WS, D]),
         ints("tokens", [B * NW, T, D]), ints("split", [B * NW, T, H, DH]),
         ints("head_shape", [B * NW, H, T, DH]), ints("back", [B, n, n, WS, WS, D]),
         ints("map", [B, P, P, D]), ints("zeros", [0, 0]), ints("ends", [M, M]),
         ints("axes", [1, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_padded_windows_keep_the_padding_apart():
    """The windows merged with the batch keep their padding: the norms, the cosines, the
    softmax and P V against onnxruntime (the padded grid is over the former Pad cap)."""
    model = _windowed_cosine_attention()
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    tolerances = {"xw": 0.02, "q_norm": 0.1, "k_norm": 0.1, "q_unit": 0.05, "cosine": 0.1,
                  "p": 0.15, "o": 0.1, "cropped": 0.15}
    ratios = {name: result.moments[name].total()[1] / values[name].astype(np.float64).var()
              for name in tolerances}
    off = {name: round(r, 3) for name, r in ratios.items() if abs(r - 1) > tolerances[name]}
    assert not off, off
