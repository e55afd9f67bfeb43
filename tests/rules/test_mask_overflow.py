"""Two masks of ``finfo.min`` on the same logits (GPT-Neo: ``Where(causal, logits, finfo.min)``
plus the padding mask ``Where(keep, 0, finfo.min)``): where both mask, the float32 sum
overflows to -inf, which the runtime's Softmax and the comparison skip. Summed in float64 the
offsets were a finite -6.8e38 and the logits' variance 1e77 (rules/masks.overflowed). Where
only the first masks (a local window inside the causal mask), finfo.min stays. Against
onnxruntime: the variance over the elements that are not -inf."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.propagate import propagate
from onnxinit.runtime import make_session

B, T = 64, 16
LOW = float(np.finfo(np.float32).min)


def _two_masks(window: int | None) -> onnx.ModelProto:
    q, k = np.arange(T)[:, None], np.arange(T)[None, :]
    first = k <= q if window is None else (k <= q) & (q - k < window)
    nodes = [
        helper.make_node("Where", ["first", "logits", "low"], ["masked"]),
        helper.make_node("Where", ["causal", "zero", "low"], ["padding"]),
        helper.make_node("Add", ["masked", "padding"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
    ]
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    graph = helper.make_graph(
        nodes, "two_masks",
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [B, 1, T, T])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("scores", "p")],
        [numpy_helper.from_array(first[None, None], "first"),
         numpy_helper.from_array((k <= q)[None, None], "causal"),
         f32("low", LOW), f32("zero", 0.0)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _measured(model: onnx.ModelProto) -> dict[str, float]:
    session = make_session(model, device="cpu", optimize=False)
    logits = np.random.default_rng(0).standard_normal((B, 1, T, T)).astype(np.float32)
    out = {}
    for name, value in zip(("scores", "p"), session.run(["scores", "p"], {"logits": logits})):
        v = value.astype(np.float64)
        out[name] = float(np.var(v[~np.isneginf(v)]))
    return out


def test_two_finfo_min_masks_overflow_to_minus_infinity():
    model = _two_masks(None)
    result = propagate(load(model))
    measured = _measured(model)
    ratios = {n: result.moments[n].total()[1] / measured[n] for n in measured}
    assert all(abs(r - 1) < 0.1 for r in ratios.values()), ratios


def test_one_finfo_min_mask_stays_finite():
    model = _two_masks(4)
    result = propagate(load(model))
    measured = _measured(model)
    assert measured["scores"] > 1e70  # finfo.min entries inside the causal mask
    ratios = {n: result.moments[n].total()[1] / measured[n] for n in measured}
    assert all(abs(r - 1) < 0.1 for r in ratios.values()), ratios
