"""GatherElements by constant indices (``rules/gather_elements.py``): BigBird's block-sparse
attention gathers its random key and value blocks so. Each output element copies one element of
the data, so it keeps that element's mean and variance; the empirical fallback kept the
statistics along one axis and pooled the rest, and a fixed per-position pattern (position
embeddings) was pooled: the mean over the gathered elements below read 1.99x and 1.22x of
its variance.
Against onnxruntime on the same graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import OPSET, monte_carlo, predict

B, H, N, D, K = 16, 2, 8, 4, 6


def _model(axis: int = 2):
    rng = np.random.default_rng(1)
    pos = rng.normal(0, 1.0, (N, D)).astype(np.float32)  # a fixed pattern per position
    shape = [B, H, K, D] if axis == 2 else [B, H, N, 3]
    size = N if axis == 2 else D  # distinct indices along the axis (a repeated element would
    # correlate with its copy, which the mean over them does not read), some of them negative
    order = np.argsort(rng.random([*shape[:axis], size, *shape[axis + 1:]]), axis=axis)
    index = np.take(order, np.arange(shape[axis]), axis=axis)
    index = np.where(rng.random(shape) < 0.5, index - size, index).astype(np.int64)
    nodes = [helper.make_node("Add", ["x", "pos"], ["h"]),
             helper.make_node("GatherElements", ["h", "idx"], ["g"], axis=axis),
             helper.make_node("ReduceMean", ["g", "axes"], ["m"], keepdims=0)]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, H, N, D])],
                       [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "gm"],
                       [numpy_helper.from_array(pos, "pos"), numpy_helper.from_array(index, "idx"),
                        numpy_helper.from_array(np.array([axis], np.int64), "axes")],
                       opset=OPSET)
    return model, pos, index


@pytest.mark.parametrize("axis", [2, 3])
def test_gathered_elements_keep_their_own_statistics(axis):
    model, pos, index = _model(axis)
    moments = {"x": Moments.scalar(0.0, 0.25)}
    _, result = predict(model, moments)
    assert result.rules["g"] == "gather_elements"  # rules/shape.py registers it
    runs = [monte_carlo(model, moments, seed=s) for s in range(32)]
    g = np.stack([r["g"].astype(np.float64) for r in runs])  # [runs, B, ...]
    m = np.stack([r["m"].astype(np.float64) for r in runs])
    expected = np.take_along_axis(np.broadcast_to(pos, (B, H, N, D)), index % [N, D][axis - 2],
                                  axis=axis)
    mean = np.broadcast_to(result.moments["g"].mean, expected.shape)
    np.testing.assert_allclose(mean, expected, atol=1e-6)
    np.testing.assert_allclose(g.mean(axis=0), expected, atol=0.4)  # 4 sd of 32 draws
    assert result.moments["g"].total()[1] == pytest.approx(g.var(), rel=0.05)
    assert result.moments["m"].total()[1] == pytest.approx(m.var(), rel=0.05)
