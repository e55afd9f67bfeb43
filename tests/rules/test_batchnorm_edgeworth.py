"""The skewness of a depthwise Conv's output through a training-mode BatchNorm (every torchvision
MobileNetV3 / EfficientNet block: depthwise Conv -> BatchNorm -> HardSwish or SiLU), and what
it does to the element-wise function after the BatchNorm (rules/edgeworth.py's terms, gamma
with the BatchNorm scale's sign): predicted against onnxruntime runs of the same graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict

C, SIDE, N = 8, 12, 1500


def _block(act: str, kernel: int, negative_scale: bool = False):
    """x -> Conv 1x1 -> BatchNorm -> HardSwish -> depthwise Conv (``kernel``, zero padding,
    kernels tilted positive or negative per channel as random kernels are) -> BatchNorm
    (``negative_scale``: two channels of every four with scale -1) -> ``act`` ("y");
    BatchNorm on batch statistics."""
    rng = np.random.default_rng(3)
    tilt = np.where(np.arange(C) % 2 == 0, 1.0, -1.0)[:, None, None, None]
    consts = {"w1": rng.standard_normal((C, C, 1, 1)) * np.sqrt(2.0 / C),
              "w2": rng.standard_normal((C, 1, kernel, kernel)) * 0.3 + 0.1 * tilt}
    for name in "1d":
        consts.update({f"g{name}": np.ones(C), f"b{name}": np.zeros(C),
                       f"m{name}": np.zeros(C), f"v{name}": np.ones(C)})
    if negative_scale:
        consts["gd"] = np.where(np.arange(C) % 4 < 2, 1.0, -1.0)

    def bn(name, x, y):
        return helper.make_node("BatchNormalization", [x] + [f"{p}{name}" for p in "gbmv"],
                                [y, f"rm{name}", f"rv{name}"], training_mode=1)

    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"]), bn("1", "a", "u"),
             helper.make_node("HardSwish", ["u"], ["h"]),
             helper.make_node("Conv", ["h", "w2"], ["z"], group=C, pads=[kernel // 2] * 4),
             bn("d", "z", "n")]
    if act == "SiLU":  # the exporters' SiLU: x * Sigmoid(x)
        nodes += [helper.make_node("Sigmoid", ["n"], ["s"]),
                  helper.make_node("Mul", ["n", "s"], ["y"])]
    else:
        nodes.append(helper.make_node(act, ["n"], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, C, SIDE, SIDE])
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y",)]
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in consts.items()]
    return make_model(nodes, [x], out, inits), {"x": Moments.scalar(0.0, 1.0)}


@pytest.mark.parametrize("act,kernel,negative_scale", [
    ("HardSwish", 3, False), ("HardSwish", 5, False), ("Relu", 3, False), ("SiLU", 3, False),
    ("HardSwish", 3, True),
])  # fmt: skip
def test_function_of_a_batch_normed_depthwise_conv(act, kernel, negative_scale):
    model, moments = _block(act, kernel, negative_scale)
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    y = values["y"].astype(np.float64)
    inner = (slice(None), slice(None), slice(kernel, SIDE - kernel), slice(kernel, SIDE - kernel))
    got = result.moments["y"]
    # per channel over the interior positions: the Gaussian of the BatchNorm's output read
    # 0.67-1.57x of onnxruntime's (its sign the kernel's tilt's times the BatchNorm scale's),
    # 0.93-0.98x in total; with the Edgeworth terms of the Conv's cumulants 0.92-1.06x per
    # channel, 0.99-1.00x in total
    cells = got.spatial.cells
    var = np.broadcast_to(cells.var, (1, C) + tuple(np.shape(cells.var)[2:]))
    centre = tuple(int(np.asarray(m)[SIDE // 2]) for m in got.spatial.maps)
    predicted = var[(0, slice(None)) + centre]
    np.testing.assert_allclose(predicted, y[inner].var(axis=(0, 2, 3)), rtol=0.08)
    np.testing.assert_allclose(got.total()[1], y.var(), rtol=0.015)
