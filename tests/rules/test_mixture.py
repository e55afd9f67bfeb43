"""The law of a nonlinearity of a sum of independent terms of known law (a Gaussian, a ReLU of
one, their scaled and shifted versions): the Add keeps the sum as a Gaussian mixture
(rules/mixture.py) and the activation integrates it per component. Checked against Monte Carlo
runs of the same graph in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict

ROWS = 200000


def _relu(x, p):
    return [helper.make_node("Relu", [x], [p + "r"])], [], p + "r"


def _scaled(a):
    def build(x, p):
        return [helper.make_node("Mul", [x, p + "c"], [p + "m"])], [(p + "c", a)], p + "m"

    return build


def _relu_plus(b):
    def build(x, p):
        nodes = [helper.make_node("Relu", [x], [p + "r"]),
                 helper.make_node("Add", [p + "r", p + "c"], [p + "a"])]
        return nodes, [(p + "c", b)], p + "a"

    return build


def _scaled_relu(a):
    def build(x, p):
        nodes = [helper.make_node("Relu", [x], [p + "r"]),
                 helper.make_node("Mul", [p + "r", p + "c"], [p + "m"])]
        return nodes, [(p + "c", a)], p + "m"

    return build


TERMS = {
    "relu": _relu,
    "0.3g": _scaled(0.3),
    "1.5g": _scaled(1.5),
    "relu+0.5": _relu_plus(0.5),
    "relu-0.4": _relu_plus(-0.4),
    "0.7relu": _scaled_relu(0.7),
}
PAIRS = [("relu", "0.3g"), ("0.3g", "relu"), ("relu", "relu+0.5"), ("relu-0.4", "1.5g"),
         ("relu", "relu"), ("0.7relu", "0.3g")]


def _model(first, second, activation, channels):
    n1, c1, a = TERMS[first]("x1", "p")
    n2, c2, b = TERMS[second]("x2", "q")
    nodes = [*n1, *n2, helper.make_node("Add", [a, b], ["s"]),
             helper.make_node(activation, ["s"], ["y"])]
    shape = [ROWS, channels]
    consts = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in c1 + c2]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x1", "x2")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        consts,
        opset=20,  # Gelu
    )
    return model


@pytest.mark.parametrize("activation", ["Relu", "Tanh", "Sigmoid", "Gelu"])
@pytest.mark.parametrize("pair", PAIRS, ids=["+".join(p) for p in PAIRS])
def test_activation_of_a_sum_of_independent_terms(pair, activation):
    # scalar statistics (rank-2 graph, x1, x2 ~ N(0, 1)): the sum's point mass and skew move
    # ReLU's variance by up to 26% and Tanh's by up to 2.7x from a Gaussian's
    moments = {"x1": Moments.scalar(0.0, 1.0), "x2": Moments.scalar(0.0, 1.0)}
    model = _model(*pair, activation, channels=2)
    _, result = predict(model, moments)
    assert result.rules["y"] not in ("empirical", "pass-through"), result.fallbacks
    got = monte_carlo(model, moments, seed=3)["y"].astype(np.float64)
    mean, var = (float(a) for a in result.moments["y"].total())
    assert var == pytest.approx(got.var(), rel=0.02)
    assert abs(mean - got.mean()) < 0.02 * got.std()


@pytest.mark.parametrize("activation", ["Relu", "Tanh"])
def test_per_channel_sum(activation):
    # per-channel statistics on both sides, one channel far from zero
    moments = {
        "x1": Moments.along([0.0, 1.0, -0.5], [1.0, 0.5, 2.0], axis=1, rank=2),
        "x2": Moments.along([0.2, 0.0, 0.0], [1.0, 1.0, 0.3], axis=1, rank=2),
    }
    model = _model("relu-0.4", "0.3g", activation, channels=3)
    _, result = predict(model, moments)
    got = monte_carlo(model, moments, seed=5)["y"].astype(np.float64)
    mean, var = result.moments["y"].values_along(1, 3)
    np.testing.assert_allclose(var, got.var(axis=0), rtol=0.02)
    np.testing.assert_allclose(mean, got.mean(axis=0), atol=0.02 * got.std(axis=0).min())


def test_brief_case_relu_of_relu_plus_scaled_gaussian():
    # Relu(Relu(x1) + 0.3 x2): a Gaussian with the sum's moments gives 0.258, 26% low
    moments = {"x1": Moments.scalar(0.0, 1.0), "x2": Moments.scalar(0.0, 1.0)}
    model = _model("relu", "0.3g", "Relu", channels=1)
    _, result = predict(model, moments)
    assert result.moments["s"].mixture is not None
    got = monte_carlo(model, moments, seed=11)["y"].astype(np.float64).var()
    assert float(result.moments["y"].total()[1]) == pytest.approx(got, rel=0.015)
