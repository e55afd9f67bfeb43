"""A squeeze-excite pool after a depthwise Conv whose input carries a zero-padding border
pattern (Keras' EfficientNetV2 on a small map: its first convs see a nearly constant image),
against onnxruntime. The pool's Edgeworth terms (rules/pool_skewness.py) take the conv input's
third and fourth cumulants; pooled per channel over the position classes they counted the
pattern, the same in every sample, as fluctuation."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict




def _patterned_block(batch=4096, channels=32, size=4, seed=0, scale=0.5):
    """x * scale + 1 (a nearly constant image) -> Conv 3x3, zero-padded -> BatchNorm -> SiLU
    ("h") -> depthwise Conv 3x3, zero-padded -> BatchNorm -> SiLU -> GlobalAveragePool
    ("y"); BatchNorm on batch statistics."""
    rng = np.random.default_rng(seed)
    c = channels
    consts = {"w1": rng.standard_normal((c, 4, 3, 3)) / 6.0,
              "wd": rng.standard_normal((c, 1, 3, 3)) / 3.0,
              "scale": np.array(scale), "shift": np.array(1.0)}
    for name in ("1", "d"):
        consts.update({f"g{name}": np.ones(c), f"b{name}": np.zeros(c),
                       f"m{name}": np.zeros(c), f"v{name}": np.ones(c)})

    def bn_silu(name, x, y):
        return [helper.make_node("BatchNormalization", [x] + [f"{p}{name}" for p in "gbmv"],
                                 [y + "_n", f"rm{name}", f"rv{name}"], training_mode=1),
                helper.make_node("Sigmoid", [y + "_n"], [y + "_s"]),
                helper.make_node("Mul", [y + "_n", y + "_s"], [y])]

    nodes = [helper.make_node("Mul", ["x", "scale"], ["xs"]),
             helper.make_node("Add", ["xs", "shift"], ["xa"]),
             helper.make_node("Conv", ["xa", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             *bn_silu("1", "c1", "h"),
             helper.make_node("Conv", ["h", "wd"], ["z"], pads=[1, 1, 1, 1], group=c),
             *bn_silu("d", "z", "a"),
             helper.make_node("GlobalAveragePool", ["a"], ["y"])]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in consts.items()])


@pytest.mark.parametrize("size,seed", [(4, 1), (6, 0)])
def test_pool_terms_read_the_cumulants_about_each_position_class(size, seed):
    # h's cumulants pooled per channel over the map hold its border pattern: the Edgeworth
    # terms read the pool 1.68x (4x4) and 1.44x (6x6) of onnxruntime's; about each position
    # class's own mean 1.01x and 0.98x
    model = _patterned_block(size=size, seed=seed)
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    measured = monte_carlo(model, {"x": x})["y"].astype(np.float64).var(axis=(0, 2, 3)).sum()
    np.testing.assert_allclose(result.moments["y"].var.sum(), measured, rtol=0.05)
