"""One step of a recurrent Loop's scan output (Keras 3 and tf2onnx write recurrent layers as
Loops; the layer after reads the first step by a Slice, Keras' masked LSTM peels it off the
loop). The empirical fallback measures the Loop; its scan output kept one mean per unit pooled
over the steps, so a Slice of the first step read the pooled means' spread over the units as
variance: a state that starts at zero has other means at its first steps than later (with a
bias per unit: ``h_1 = tanh(x W + b)``, later ``tanh(h R + x W + b)``). Keras 3's
Embedding(mask_zero) + 2 LSTMs read 1.18-1.34x at the second LSTM's first step. The scan
output now keeps its means per step and unit (:func:`onnxinit.rules.scan_steps._per_step`)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict
from .test_recurrent_exports import B, H, T, _body, _loop_constants

I = H  # the input's features tracked like the units (as an embedding's output)


def _model():
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((I, H)) / np.sqrt(I)).astype(np.float32)
    r = (rng.standard_normal((H, H)) * 1.5 / np.sqrt(H)).astype(np.float32)
    b = rng.uniform(-0.3, 0.3, H).astype(np.float32)
    body = _body([helper.make_node("MatMul", ["h_in", "r"], ["hr"]),
                  helper.make_node("MatMul", ["x", "w"], ["xw"]),
                  helper.make_node("Add", ["hr", "xw"], ["s"]),
                  helper.make_node("Cast", ["i"], ["k"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["k", "b"], ["kb"]),
                  helper.make_node("Add", ["s", "kb"], ["pre"]),
                  helper.make_node("Tanh", ["pre"], ["h_out"]),
                  helper.make_node("Identity", ["h_out"], ["scan"])], B, scan=True)
    ints = {"zero": [0], "one": [1], "last": [T - 1], "end": [T]}
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "h0"], ["h", "seq"], body=body),
         helper.make_node("Transpose", ["seq"], ["batch_first"], perm=[1, 0, 2]),
         helper.make_node("Transpose", ["batch_first"], ["time_first"], perm=[1, 0, 2]),
         helper.make_node("Slice", ["time_first", "zero", "one", "zero"], ["first"]),
         helper.make_node("Slice", ["time_first", "last", "end", "zero"], ["final"])],
        "loop_steps", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, I])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("first", "final")],
        _loop_constants(B) + [numpy_helper.from_array(w, "w"), numpy_helper.from_array(r, "r"),
                              numpy_helper.from_array(b, "b")]
        + [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in ints.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_step_of_a_loop_scan_output_has_its_own_means():
    model = _model()
    moments = {"x": Moments(np.zeros((1, I)), np.linspace(0.5, 1.5, I).reshape(1, I))}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    for name in ("first", "final"):
        measured = values[name].astype(np.float64).var()
        ratio = result.moments[name].total()[1] / measured
        assert abs(ratio - 1) < 0.05, (name, ratio)


def _channels_model(positions: int = 4, channels: int = 8):
    """A Loop over a state ``[B, positions, channels]`` (a ConvLSTM's map) with a bias per
    channel, ``h = tanh(h R + x W + b)``, and the mean over the positions after it (Keras'
    GlobalAveragePooling)."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((I, channels)) / np.sqrt(I)).astype(np.float32)
    r = (rng.standard_normal((channels, channels)) / np.sqrt(channels)).astype(np.float32)
    b = np.linspace(-1.2, 1.2, channels).astype(np.float32)
    shape = [B, positions, channels]
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "r"], ["hr"]),
         helper.make_node("MatMul", ["x", "w"], ["xw"]),
         helper.make_node("Add", ["hr", "xw"], ["s"]),
         helper.make_node("Add", ["s", "b"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, shape)])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "h0"], ["h"], body=body),
         helper.make_node("ReduceMean", ["h"], ["pool"], axes=[1], keepdims=0)],
        "loop_channels",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, positions, I])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("h", "pool")],
        [numpy_helper.from_array(np.array(T, np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "cond"),
         numpy_helper.from_array(np.zeros(shape, np.float32), "h0"),
         numpy_helper.from_array(w, "w"), numpy_helper.from_array(r, "r"),
         numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_loop_state_keeps_its_channels_means():
    """Its input tracks no axis, so the fallback measured the Loop's state with one mean for
    all channels: the mean over positions after it took the channels' means spread as variance
    that averages out (0.45x here; Keras 3's ConvLSTM1D's pool 0.85x). The state's last axis
    (units, channels) is now measured each on its own: within 5%."""
    model = _channels_model()
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    for name in ("h", "pool"):
        ratio = result.moments[name].total()[1] / values[name].astype(np.float64).var()
        assert abs(ratio - 1) < 0.05, (name, ratio)


def _sequence_channels_model(positions: int = 4, channels: int = 8):
    """A Loop reading step ``i`` of a sequence ``[T, B, positions, I]`` (a first ConvLSTM's
    states, which the second reads), ``h = tanh(h R + x_i W + b)`` with a bias per channel,
    its states stacked as a scan output ``[T, B, positions, channels]``; the last step sliced
    and squeezed, and the mean over its positions (Keras' GlobalAveragePooling)."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((I, channels)) / np.sqrt(I)).astype(np.float32)
    r = (rng.standard_normal((channels, channels)) / np.sqrt(channels)).astype(np.float32)
    b = np.linspace(-1.2, 1.2, channels).astype(np.float32)
    shape = [B, positions, channels]
    body = helper.make_graph(
        [helper.make_node("Gather", ["seq", "i"], ["x"], axis=0),
         helper.make_node("MatMul", ["h_in", "r"], ["hr"]),
         helper.make_node("MatMul", ["x", "w"], ["xw"]),
         helper.make_node("Add", ["hr", "xw"], ["s"]),
         helper.make_node("Add", ["s", "b"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h_out"]),
         helper.make_node("Identity", ["h_out"], ["scan"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, shape),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, shape)])
    ints = {"axis0": [0], "last": [T - 1], "end": [T]}
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "h0"], ["h", "states"], body=body),
         helper.make_node("Slice", ["states", "last", "end", "axis0"], ["final"]),
         helper.make_node("Squeeze", ["final", "axis0"], ["final_map"]),
         helper.make_node("ReduceMean", ["final_map"], ["pool"], axes=[1], keepdims=0)],
        "loop_sequence_channels",
        [helper.make_tensor_value_info("seq", TensorProto.FLOAT, [T, B, positions, I])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("final", "pool")],
        [numpy_helper.from_array(np.array(T, np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "cond"),
         numpy_helper.from_array(np.zeros(shape, np.float32), "h0"),
         numpy_helper.from_array(w, "w"), numpy_helper.from_array(r, "r"),
         numpy_helper.from_array(b, "b")]
        + [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in ints.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_loop_over_a_sequence_keeps_its_channels_means():
    """The Loop reads a sequence whose moments track the steps (axis 0), so the fallback
    measured its scan output per step only: the channels' means spread was lost, and the mean
    over positions of the last step read it as variance that averages out (0.32x here; Keras
    3's two stacked ConvLSTM2D's pool 0.71x over 64 batches). The scan output's last axis is
    now measured each on its own beside the steps: within 5%."""
    model = _sequence_channels_model()
    moments = {"seq": Moments(np.zeros((T, 1, 1, 1)), np.linspace(0.5, 1.5, T).reshape(T, 1, 1, 1))}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    for name in ("final", "pool"):
        ratio = result.moments[name].total()[1] / values[name].astype(np.float64).var()
        assert abs(ratio - 1) < 0.05, (name, ratio)
