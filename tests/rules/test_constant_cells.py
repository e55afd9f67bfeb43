"""A signal's law through a constant that varies along axes its statistics do not
(``rules/constant_cells.py``), and a causal Conv1d's border positions through a transpose
(``shape.sequence_positions``): Mamba's selective scan, hand-built and small, against
onnxruntime measurements and through ``rescale --method autoinit``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze
from onnxinit.graph import load
from tests.cli import run
from tests.models import make_model
from tests.real.compare import measured_moments, predicted_and_measured

N, S, D, C, K = 64, 8, 32, 16, 12  # batch, tokens, features, channels, states


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _scan_step(bias: float, steps: int = S):
    """dt = Softplus(x W + bias) [N, S, C]; dA = Exp(A * dt[..., None]) with A[c, k] = -(k + 1)
    (Mamba's -exp(A_log)) [N, S, C, K]; the scan h_t = dA_t h_{t-1} + dt_t u_t b_t over the
    states k, y_t = sum_k h_t[k] c_t[k], and out = y W_out, with u = v W_u [N, S, C], b = w W_b
    and c = q W_c [N, S, K] projections of independent inputs (Mamba computes them from one
    tensor; their correlation is not what this tests). Returns the model and the tensors the
    scan computes."""
    rng = np.random.default_rng(0)
    a = -np.tile(np.arange(1, K + 1, dtype=np.float64), (C, 1))
    inits = [_init("w_dt", rng.standard_normal((D, C)) / np.sqrt(D)),
             _init("b_dt", np.full(C, bias)), _init("A", a),
             _init("w_u", rng.standard_normal((D, C)) / np.sqrt(D)),
             _init("w_b", rng.standard_normal((D, K)) / np.sqrt(D)),
             _init("w_c", rng.standard_normal((D, K)) / np.sqrt(D)),
             _init("w_out", rng.standard_normal((C, C)) / np.sqrt(C)),
             numpy_helper.from_array(np.array([-1], np.int64), "last"),
             numpy_helper.from_array(np.array([2], np.int64), "third")]
    nodes = [helper.make_node("MatMul", ["x", "w_dt"], ["u_dt"]),
             helper.make_node("Add", ["u_dt", "b_dt"], ["z_dt"]),
             helper.make_node("Softplus", ["z_dt"], ["dt"]),
             helper.make_node("Unsqueeze", ["dt", "last"], ["dt4"]),
             helper.make_node("Mul", ["A", "dt4"], ["a_dt"]),
             helper.make_node("Exp", ["a_dt"], ["dA"]),
             helper.make_node("MatMul", ["v", "w_u"], ["u"]),
             helper.make_node("Mul", ["dt", "u"], ["du"]),
             helper.make_node("Unsqueeze", ["du", "last"], ["du3"]),
             helper.make_node("MatMul", ["w", "w_b"], ["b"]),
             helper.make_node("Unsqueeze", ["b", "third"], ["b4"]),
             helper.make_node("Mul", ["du3", "b4"], ["du4"]),
             helper.make_node("MatMul", ["q", "w_c"], ["c"]),
             helper.make_node("Unsqueeze", ["c", "third"], ["c4"])]
    ys, state = [], None
    for t in range(steps):
        index = f"t{t}"
        inits.append(numpy_helper.from_array(np.array(t, np.int64), index))
        nodes += [helper.make_node("Gather", ["dA", index], [f"dA_{t}"], axis=1),
                  helper.make_node("Gather", ["du4", index], [f"du_{t}"], axis=1),
                  helper.make_node("Gather", ["c4", index], [f"c_{t}"], axis=1)]
        if state is None:
            nodes.append(helper.make_node("Identity", [f"du_{t}"], [f"h_{t}"]))
        else:
            nodes += [helper.make_node("Mul", [f"dA_{t}", state], [f"decayed_{t}"]),
                      helper.make_node("Add", [f"decayed_{t}", f"du_{t}"], [f"h_{t}"])]
        state = f"h_{t}"
        nodes += [helper.make_node("Mul", [state, f"c_{t}"], [f"hc_{t}"]),
                  helper.make_node("ReduceSum", [f"hc_{t}", "last"], [f"y_{t}"], keepdims=0)]
        ys.append(f"y_{t}")
    nodes += [helper.make_node("Concat", ys, ["y"], axis=1),  # [N, steps * C]
              helper.make_node("Reshape", ["y", "shape"], ["y3"]),
              helper.make_node("MatMul", ["y3", "w_out"], ["out"])]
    inits.append(numpy_helper.from_array(np.array([N, steps, C], np.int64), "shape"))
    inputs = [_value(name, (N, S, D)) for name in ("x", "v", "w", "q")]
    model = make_model(nodes, inputs, [_value("out", (N, steps, C))], inits, opset=17)
    return model, ["dt", "a_dt", "dA", f"h_{steps - 1}", "y", "out"]


@pytest.mark.parametrize("bias", [0.0, -2.0])
def test_exp_of_a_per_state_constant_times_a_positive_step(bias):
    """dt = Softplus(.) >= 0, so exp(A dt) <= 1 for A < 0: each (channel, state) cell is
    exp(a_k softplus(z)) over the step's own law. Described as a Gaussian with the product's
    moments per cell, E[exp(2 X)] = exp(2 mu + 2 nu) grew without bound with a_k (9e42 at
    bias 0, against 0.04 measured); the scan built on it overflowed to inf. Bias 0 is what
    autoinit leaves; Mamba starts near -4 (dt ~ 0.02), where the products' heavy tails need
    far more draws to measure, -2 is between."""
    model, names = _scan_step(bias)
    predicted, measured = predicted_and_measured(model, names, N, runs=16)
    for name in names:
        p, (m_mean, m_var) = predicted[name], measured[name]
        assert p.var == pytest.approx(m_var, rel=0.1), (name, p.var, m_var)
        assert p.mean == pytest.approx(m_mean, rel=0.1, abs=0.1 * np.sqrt(m_var)), name


def test_autoinit_rescales_the_scan_to_its_target(tmp_path, capsys):
    """autoinit zeroes the step's bias (dt ~ 0.7 instead of 0.02) and scales every weight:
    the prediction it scales by must stay finite and right. It stopped with a non-finite
    prediction at the scan; now it completes and the rescaled output measures the target
    variance 1 (onnxruntime)."""
    model, _ = _scan_step(-4.0)
    source, out = tmp_path / "scan.onnx", tmp_path / "scan.autoinit.onnx"
    onnx.save(model, source)
    code, stdout, err = run(["rescale", source, "--method", "autoinit", "-o", out,
                             "--batch-size", N], capsys)
    assert code == 0, err
    rescaled = onnx.load(out)
    bias = numpy_helper.to_array(next(i for i in rescaled.graph.initializer if i.name == "b_dt"))
    assert np.all(bias == 0)
    measured = measured_moments(load(rescaled, batch_size=N), ["out"], N, runs=4)
    assert measured["out"][1] == pytest.approx(1.0, rel=0.15)


def _causal_conv_sequence():
    """Mamba's causal depthwise Conv1d: [N, C, S] padded by 3 on both sides, kernel 4, the
    first S outputs kept (position t sees min(t + 1, 4) taps), then moved to [N, S, C] and
    projected: the first positions have 1/4, 2/4, 3/4 of the interior variance."""
    rng = np.random.default_rng(1)
    inits = [_init("w", rng.standard_normal((C, 1, 4)) / 2), _init("proj", rng.standard_normal((C, K)) / 4),
             numpy_helper.from_array(np.array([0], np.int64), "start"),
             numpy_helper.from_array(np.array([S], np.int64), "stop"),
             numpy_helper.from_array(np.array([2], np.int64), "axis"),
             numpy_helper.from_array(np.array(0, np.int64), "first")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], group=C, pads=[3, 3],
                              kernel_shape=[4]),
             helper.make_node("Slice", ["conv", "start", "stop", "axis"], ["kept"]),
             helper.make_node("Transpose", ["kept"], ["tokens"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["tokens", "proj"], ["projected"]),
             helper.make_node("Gather", ["projected", "first"], ["at_first"], axis=1)]
    return make_model(nodes, [_value("x", (N, C, S))], [_value("at_first", (N, K))], inits,
                      opset=17)


def test_causal_conv_border_positions_survive_the_transpose():
    """The first token of a causal Conv1d sees one tap of four: the projection's output there
    has a quarter of the interior variance (it was given the pooled variance, 3.3x)."""
    tensors = {t.name: t for t in analyze(_causal_conv_sequence(), measure=True).tensors}
    for name in ("tokens", "projected", "at_first"):
        t = tensors[name]
        assert t.var == pytest.approx(t.measured_var, rel=0.1), (name, t.var, t.measured_var)


def _wide_step(biases):
    """dt = Softplus(x W + b) over 8192 channels, times A[c, k] = -(k + 1) over 12 states:
    98304 (channel, state) cells, more than are kept per tensor; then Exp."""
    channels, states = 8192, 12
    rng = np.random.default_rng(2)
    inits = [_init("w", rng.standard_normal((D, channels)) / np.sqrt(D)), _init("b", biases),
             _init("A", -np.tile(np.arange(1, states + 1, dtype=np.float64), (channels, 1))),
             numpy_helper.from_array(np.array([-1], np.int64), "last")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["u"]),
             helper.make_node("Add", ["u", "b"], ["z"]),
             helper.make_node("Softplus", ["z"], ["dt"]),
             helper.make_node("Unsqueeze", ["dt", "last"], ["dt4"]),
             helper.make_node("Mul", ["dt4", "A"], ["a_dt"]),
             helper.make_node("Exp", ["a_dt"], ["dA"])]
    batch = 8
    model = make_model(nodes, [_value("x", (batch, 4, D))],
                       [_value("dA", (batch, 4, channels, states))], inits, opset=17)
    return model, batch


@pytest.mark.parametrize("spread", [0.0, 2.0])
def test_a_per_state_constant_on_more_cells_than_are_kept(spread):
    """Past 65536 cells the step is pooled over its channels (one Gaussian for their
    pre-activations, softplus kept) and the states stay cells: exp(A dt) <= 1 still. Folding
    the states into each channel's Gaussian instead gave dA a variance of 1e39 (bias 0)."""
    biases = np.linspace(-spread, 0.0, 8192)
    model, batch = _wide_step(biases)
    names = ["a_dt", "dA"]
    predicted = {t.name: t for t in analyze(model).tensors}
    measured = measured_moments(load(model, batch_size=batch), names, batch, runs=2)
    for name in names:
        assert predicted[name].var == pytest.approx(measured[name][1], rel=0.1), name
        assert predicted[name].mean == pytest.approx(measured[name][0], rel=0.1), name
