"""A Concat of one map of each step of a recurrent layer's sequence (rules/step_maps.py), as
tf2onnx writes Keras 3's ``TimeDistributed(Dense)``: per step Slice -> Squeeze -> MatMul ->
Add -> Unsqueeze, then a Concat of the steps and the mean over time, against onnxruntime on
Gaussian inputs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

STEPS, FEATURES, UNITS, OUT = 16, 16, 32, 24
MOMENTS = {"x": Moments.scalar(0.0, 1.0)}


def _ints(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.int64), name)


def _lstm(rng) -> list:
    """A Keras-initialised LSTM (Glorot-uniform kernel, orthogonal recurrent blocks, forget
    bias 1) on x [STEPS, batch, FEATURES], its sequence squeezed to ys [STEPS, batch, UNITS]."""
    limit = np.sqrt(6 / (FEATURES + 4 * UNITS))
    w = rng.uniform(-limit, limit, (1, 4 * UNITS, FEATURES)).astype(np.float32)
    r = np.linalg.qr(rng.standard_normal((4 * UNITS, UNITS)))[0].T.reshape(4, UNITS, UNITS)
    r = np.concatenate(list(r))[None].astype(np.float32)
    bias = np.zeros((1, 8 * UNITS), np.float32)
    bias[0, 2 * UNITS:3 * UNITS] = 1.0  # forget gate (ONNX order i, o, f, c)
    nodes = [helper.make_node("LSTM", ["x", "w", "r", "bias"], ["seq"], hidden_size=UNITS),
             helper.make_node("Squeeze", ["seq", "axis1"], ["ys"])]
    return nodes, [numpy_helper.from_array(w, "w"), numpy_helper.from_array(r, "r"),
                   numpy_helper.from_array(bias, "bias"), _ints("axis1", [1]),
                   _ints("axis0", [0])]


def _dense(rng, name: str) -> list:
    limit = np.sqrt(6 / (UNITS + OUT))
    return [numpy_helper.from_array(rng.uniform(-limit, limit, (UNITS, OUT)).astype(np.float32),
                                    name),
            numpy_helper.from_array(rng.uniform(-0.1, 0.1, OUT).astype(np.float32), name + "_b")]


def _per_step(batch: int, select: str = "slice", squeeze: bool = True, act: str | None = None,
              shared: bool = True) -> onnx.ModelProto:
    """The LSTM, then for every step t: ``select`` it (a Slice [t:t+1] along time, a Gather of
    t, or one output of a Split), Squeeze it (unless ``squeeze`` is False: [1, batch, UNITS]
    throughout), MatMul by the Dense weights (the same for every step unless ``shared`` is
    False), add the bias, ``act`` (an element-wise op), Unsqueeze; the Concat of the steps
    along time, "td", and its mean over time, "y"."""
    rng = np.random.default_rng(5)
    nodes, inits = _lstm(rng)
    inits += _dense(rng, "k")
    if select == "split":
        nodes.append(helper.make_node("Split", ["ys"], [f"s{t}" for t in range(STEPS)], axis=0))
    pieces = []
    for t in range(STEPS):
        weight = "k" if shared else f"k{t}"
        if not shared:
            inits += _dense(rng, weight)
        if select == "slice":
            inits += [_ints(f"start{t}", [t]), _ints(f"end{t}", [t + 1])]
            nodes.append(helper.make_node("Slice", ["ys", f"start{t}", f"end{t}", "axis0"],
                                          [f"s{t}"]))
        elif select == "gather":
            inits.append(_ints(f"i{t}", [t]))
            nodes.append(helper.make_node("Gather", ["ys", f"i{t}"], [f"s{t}"], axis=0))
        step = f"s{t}"
        if squeeze:
            nodes.append(helper.make_node("Squeeze", [step, "axis0"], [f"q{t}"]))
            step = f"q{t}"
        nodes += [helper.make_node("MatMul", [step, weight], [f"m{t}"]),
                  helper.make_node("Add", [f"m{t}", weight + "_b"], [f"a{t}"])]
        step = f"a{t}"
        if act is not None:
            nodes.append(helper.make_node(act, [step], [f"f{t}"]))
            step = f"f{t}"
        if squeeze:
            nodes.append(helper.make_node("Unsqueeze", [step, "axis0"], [f"u{t}"]))
            step = f"u{t}"
        pieces.append(step)
    nodes += [helper.make_node("Concat", pieces, ["td"], axis=0),
              helper.make_node("ReduceMean", ["td"], ["y"], axes=[0], keepdims=0)]
    graph = helper.make_graph(
        nodes, "per_step_dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [STEPS, batch, FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, OUT]),
         helper.make_tensor_value_info("td", TensorProto.FLOAT, [STEPS, batch, OUT])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _ratio(**kwargs) -> tuple[float, dict]:
    """Predicted over measured variance of the mean over time "y" (batch 4096 measured), and
    the propagation's moments."""
    _, result = predict(_per_step(8, **kwargs), MOMENTS)
    values = monte_carlo(_per_step(4096, **kwargs), MOMENTS)
    measured = values["y"].astype(np.float64).var()
    # the steps themselves are right either way: only their correlation was missing
    td = values["td"].astype(np.float64).var()
    assert abs(result.moments["td"].total()[1] / td - 1) < 0.05
    return result.moments["y"].total()[1] / measured, result.moments


def test_time_distributed_dense_keeps_the_sequence_correlation():
    """Slice, Squeeze, MatMul, Add, Unsqueeze per step: the mean over time reads the LSTM's
    correlation across steps (before: independent steps, 0.49x)."""
    ratio, moments = _ratio()
    assert moments["td"].tokens is not None
    assert abs(ratio - 1) < 0.10, ratio


def test_gathered_steps_through_a_relu():
    """Gather of each step and a ReLU after the Dense (``TimeDistributed(Dense(activation=
    "relu"))``): the correlation goes through the ReLU by Mehler (before: 0.47x)."""
    ratio, _ = _ratio(select="gather", act="Relu")
    assert abs(ratio - 1) < 0.10, ratio


def test_split_steps_kept_unsqueezed():
    """Split into steps and no Squeeze: every piece keeps a one-step field of its own, which
    the Concat stacked as independent blocks (before: 0.49x)."""
    ratio, _ = _ratio(select="split", squeeze=False)
    assert abs(ratio - 1) < 0.10, ratio


def test_different_weights_per_step_stay_independent():
    """Another Dense at every step: the pieces are not one map of the sequence, their outputs
    are uncorrelated across steps (independent weights), and no field is made."""
    ratio, moments = _ratio(shared=False)
    assert moments["td"].tokens is None
    assert abs(ratio - 1) < 0.10, ratio
