"""A channel shuffle (ShuffleNetV2's ``[N, C, H, W] -> [N, g, C/g, H, W]``, transposed over its
groups, reshaped back) moves no position: the map it puts back keeps the per-position
statistics of the Convs before it, whose padded borders see fewer taps (rules/position_floor.py).
Without normalization (torch.onnx's dynamo exporter folds BatchNorm into the Convs) a channel
keeps its mean, and the border rows' and columns' means differ from the interior's: pooling them
into the channel's variance at the shuffle read ShuffleNetV2's later stages 1.1-1.8x high.
Against onnxruntime."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict

N, C, S, G = 2048, 32, 6, 2  # batch, channels, map side, shuffle groups


def _model(blocks: int = 3):
    """x -> [3x3 Conv (pad 1) -> Relu -> channel shuffle] x blocks -> 3x3 Conv -> Relu -> y;
    He-scaled zero-mean weights, no BatchNorm: the Convs sum the Relu outputs' means into a
    mean per channel, and the border positions, which see fewer taps, into means of their own."""
    rng = np.random.default_rng(3)
    nodes, consts, t = [], {}, "x"
    consts["s5"] = np.array([0, G, C // G, S, S], dtype=np.int64)
    consts["s4"] = np.array([0, C, S, S], dtype=np.int64)
    for b in range(blocks + 1):
        w = rng.standard_normal((C, C, 3, 3)) * np.sqrt(2 / (9 * C))
        consts[f"w{b}"] = w.astype(np.float32)
        nodes += [helper.make_node("Conv", [t, f"w{b}"], [f"c{b}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{b}"], [f"r{b}"])]
        t = f"r{b}"
        if b == blocks:
            break
        nodes += [helper.make_node("Reshape", [t, "s5"], [f"v{b}"]),
                  helper.make_node("Transpose", [f"v{b}"], [f"t{b}"], perm=[0, 2, 1, 3, 4]),
                  helper.make_node("Reshape", [f"t{b}", "s4"], [f"u{b}"])]
        t = f"u{b}"
    nodes.append(helper.make_node("Identity", [t], ["y"]))
    outputs = [f"c{b}" for b in range(blocks + 1)] + [f"u{b}" for b in range(blocks)] + ["y"]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, C, S, S])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in consts.items()]), outputs


def _ratios(blocks: int = 3) -> dict[str, float]:
    model, outputs = _model(blocks)
    moments = {"x": Moments(0.0, 1.0)}
    _, predicted = predict(model, moments)
    measured = monte_carlo(model, moments)
    return {n: predicted.moments[n].total()[1] / float(np.var(measured[n].astype(np.float64)))
            for n in outputs}


def test_channel_shuffle_keeps_the_border_positions():
    ratios = _ratios()
    for name, ratio in ratios.items():
        assert abs(ratio - 1) < 0.05, (name, ratio)  # main: 0.82 at y
