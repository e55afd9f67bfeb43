"""A float32 tensor holds the float nearest to each exact value (onnxinit/float_rounding.py). In
an eval-mode export whose BatchNorms were folded at their initial statistics (torch's default
dynamo exporter folds them in either mode) the signal vanishes to 1e-9 and the gates after it,
``Sigmoid`` = ``0.5 + x/4``, are constants in float32: onnxruntime measures variance 0 where
the exact law gave 1e-19 (an infinite ratio: 40 of EfficientNet-B0's 239 tensors). Near one
ulp the rounding changes the variance by up to 2x. Against onnxruntime, and the rounding law
against numpy's own float32 rounding of Gaussian draws. Also: ``tests.real.compare``'s pooled
measurement of such a gate, which lost its variance to cancellation in ``E[v^2] - E[v]^2``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.analysis import analyze
from onnxinit.feeds import synthetic_feeds
from onnxinit.float_rounding import reported_total, rounded_cells
from onnxinit.graph import load
from onnxinit.moments import Moments
from onnxinit.runtime import make_session
from tests.real.compare import measured_moments

N, C, S = 32, 16, 8


def _gate(scale: float, op: str) -> onnx.ModelProto:
    """x [N, 8, S, S] -> Mul(scale) -> Conv 3x3 -> op (Sigmoid, HardSigmoid 1/6) -> Mul with
    the Conv's output (a squeeze-excite-like gate of a vanished signal)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((C, 8, 3, 3)) * np.sqrt(1 / 72)).astype(np.float32)
    attrs = {"alpha": 1 / 6} if op == "HardSigmoid" else {}
    nodes = [helper.make_node("Mul", ["x", "scale"], ["xs"]),
             helper.make_node("Conv", ["xs", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c"], ["g"], **attrs),
             helper.make_node("Mul", ["c", "g"], ["y"])]
    graph = helper.make_graph(
        nodes, "gate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, 8, S, S])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(scale, np.float32), "scale"),
         numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _measured(model: onnx.ModelProto, names: list[str], batches: int = 4) -> dict[str, float]:
    """Variance of each tensor over ``batches`` batches of N(0, 1) inputs, centred on each
    tensor's first value (exact for a tensor of a few float32 values)."""
    for name in names:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = make_session(model, device="cpu", optimize=False)
    rng = np.random.default_rng(1)
    runs = [session.run(names, {"x": rng.standard_normal((N, 8, S, S)).astype(np.float32)})
            for _ in range(batches)]
    out = {}
    for i, name in enumerate(names):
        v = np.concatenate([r[i].ravel() for r in runs]).astype(np.float64)
        out[name] = float(np.var(v - v[0]))
    return out


@pytest.mark.parametrize("op", ["Sigmoid", "HardSigmoid"])
def test_gate_of_a_vanished_signal_is_a_constant(op):
    """The gate's exact variance ~1e-20 (its sd 1e-10, a fiftieth of float32's step at 0.5):
    onnxruntime's values are all 0.5; the product after it keeps the Conv's variance / 4."""
    model = _gate(1e-8, op)
    predicted = {t.name: t for t in analyze(model, batch_size=N).tensors}
    measured = _measured(_gate(1e-8, op), ["g", "c", "y"])
    assert measured["g"] == 0.0 and measured["c"] > 0  # the oracle: a constant in float32
    assert predicted["g"].var == 0.0 and predicted["g"].mean == 0.5
    for name in ("c", "y"):
        assert predicted[name].var == pytest.approx(measured[name], rel=0.05, abs=0)


@pytest.mark.parametrize("op, scale", [("Sigmoid", 3.6e-8), ("HardSigmoid", 5.4e-8),
                                       ("Sigmoid", 1.5e-7)])
def test_gate_within_an_ulp_is_rounded(op, scale):
    """The gate's sd a fraction of float32's step at 0.5 (2^-25 below, 2^-24 above) to one
    step: onnxruntime's rounded values have 0.3-0.5x the exact variance, then 1.15x; the
    analysis reported the exact one."""
    model = _gate(scale, op)
    predicted = {t.name: t.var for t in analyze(model, batch_size=N).tensors}
    measured = _measured(_gate(scale, op), ["g", "c"])
    slope = 0.25 if op == "Sigmoid" else 1 / 6
    exact = slope**2 * measured["c"]
    assert abs(measured["g"] / exact - 1) > 0.12  # the oracle: rounding matters here
    assert predicted["g"] == pytest.approx(measured["g"], rel=0.08, abs=0)


@pytest.mark.parametrize("m, s, dtype", [(0.5, 1e-8, np.float32), (0.5, 3e-8, np.float32),
                                         (1.0, 1.5e-7, np.float32), (-3.0, 4e-7, np.float32),
                                         (0.75, 2e-4, np.float16), (0.5, 3e-9, np.float32)])
def test_rounding_law_against_numpy_rounding(m, s, dtype):
    """E and Var of N(m, s^2) rounded to ``dtype`` against numpy's rounding of 10^6 draws."""
    draws = np.random.default_rng(2).normal(m, s, 1_000_000).astype(dtype).astype(np.float64)
    mean, var = rounded_cells(np.array([m]), np.array([s * s]), dtype)
    f0 = float(dtype(m))
    assert mean[0] - f0 == pytest.approx(draws.mean() - f0, abs=0.02 * s + 1e-30)
    assert var[0] == pytest.approx(np.var(draws - f0), rel=0.02, abs=1e-3 * s * s)


def test_wide_cells_are_kept_bit_for_bit():
    """Cells whose spread is many steps of their mean (every healthy tensor), a zero mean, a
    variance of 0 and a masked -inf cell: the moments' own total, unchanged."""
    mean = np.array([[0.5, 0.0, 2.0, -np.inf]]).reshape(1, 4, 1, 1)
    var = np.array([[1e-6, 1e-30, 0.0, 0.0]]).reshape(1, 4, 1, 1)
    m = Moments(mean, var)
    assert reported_total(m, TensorProto.FLOAT) == m.total()
    assert reported_total(Moments(mean[:, :1], var[:, :1] * 1e-12), TensorProto.BFLOAT16) == \
        Moments(mean[:, :1], var[:, :1] * 1e-12).total()


def test_pooled_measurement_keeps_a_gates_variance():
    """``measured_moments`` pools batches by their centred variances: a gate 0.5 + 2.5e-7 z
    (variance ~6e-14) read 0 or rounding noise as E[v^2] - E[v]^2. Against numpy's variance of
    the same two batches (the same seeded feeds)."""
    model = _gate(1e-6, "Sigmoid")
    graph = load(model, batch_size=N)
    pooled = measured_moments(graph, ["g"], N, runs=2)["g"][1]
    model.graph.output.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, None))
    session = make_session(model, device="cpu", optimize=False)
    rng = np.random.default_rng(0)  # measured_moments' seed 0
    v = np.concatenate([session.run(["g"], synthetic_feeds(graph, rng=rng))[0].ravel()
                        for _ in range(2)]).astype(np.float64)
    direct = float(np.var(v - 0.5))
    assert direct > 0 and pooled == pytest.approx(direct, rel=1e-6, abs=0)
