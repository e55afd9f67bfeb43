"""An element-wise chain on a dense layer of LayerNorm rows of few effective features: the
tanh-GELU written out (``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, as tf2onnx and
Hugging Face's ``gelu_new`` write it, with ``x^3`` as Pow or as ``x * x * x``). Each element
of the dense output is a fixed projection of a normalized row, bounded by the row's length:
its law is the cosine law at the rows' participation ratio, lighter-tailed than the Gaussian
(``rules/normalised_chain.py``), so ``x^3``'s variance (``E[z^6]``) is below the Gaussian's;
and each output feature's variance is ``u^T S u`` (S the rows' covariance), not the sum over
independent features that the dense layer's rule takes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules.normalised_chain import cosine_moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict

N, T = 256, 16


def _model(inputs: int, features: int, pow_op: bool, seed: int = 0):
    """x [N, T, inputs] -> MatMul (low rank: ``inputs`` < ``features``) -> LayerNormalization
    -> MatMul + bias -> the written-out tanh-GELU."""
    rng = np.random.default_rng(seed)
    width = 2 * features
    basis = np.linalg.qr(rng.standard_normal((features, inputs)))[0].T  # orthonormal rows
    inits = {"w0": basis * np.sqrt(features / inputs),
             "g": 1.0 + 0.1 * rng.standard_normal(features),
             "b": 0.1 * rng.standard_normal(features),
             "w1": rng.standard_normal((features, width)) / np.sqrt(features),
             "bias": 0.3 * rng.standard_normal(width),
             "three": np.array(3.0), "c": np.array(0.044715),
             "k": np.array(np.sqrt(2 / np.pi)), "one": np.array(1.0), "half": np.array(0.5)}
    inits = {k: v.astype(np.float32) for k, v in inits.items()}
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"]),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], axis=-1,
                              epsilon=1e-5),
             helper.make_node("MatMul", ["n", "w1"], ["d0"]),
             helper.make_node("Add", ["d0", "bias"], ["d"])]
    if pow_op:
        nodes.append(helper.make_node("Pow", ["d", "three"], ["cube"]))
    else:
        nodes += [helper.make_node("Mul", ["d", "d"], ["sq"]),
                  helper.make_node("Mul", ["sq", "d"], ["cube"])]
    nodes += [helper.make_node("Mul", ["cube", "c"], ["cc"]),
              helper.make_node("Add", ["d", "cc"], ["inner"]),
              helper.make_node("Mul", ["inner", "k"], ["arg"]),
              helper.make_node("Tanh", ["arg"], ["th"]),
              helper.make_node("Add", ["th", "one"], ["th1"]),
              helper.make_node("Mul", ["d", "half"], ["dh"]),
              helper.make_node("Mul", ["dh", "th1"], ["gelu"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, T, inputs])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
            for o in ("d", "cube", "th", "gelu")]
    model = make_model(nodes, [x], outs,
                       [numpy_helper.from_array(v, k) for k, v in inits.items()], opset=17)
    return model, {"x": Moments.scalar(0.0, 1.0)}


def _ratios(inputs, features, pow_op, seed=0):
    """Predicted over onnxruntime's variance per tensor, over all its elements."""
    model, moments = _model(inputs, features, pow_op, seed)
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments)
    return {name: float(result.moments[name].total()[1]) / measured[name].astype(np.float64).var()
            for name in ("d", "cube", "th", "gelu")}


@pytest.mark.parametrize("inputs, features, pow_op", [(32, 48, False), (16, 32, True)])
def test_chain_on_dense_normalised_rows(inputs, features, pow_op):
    """``x^3`` within 5% of onnxruntime's variance (main: 1.161x, 1.269x; now 1.019x, 1.017x),
    the dense layer within 2% and the GELU and its Tanh within 2% (main 1.011x, 1.022x; now
    1.004x, 1.006x)."""
    found = _ratios(inputs, features, pow_op)
    assert found["d"] == pytest.approx(1.0, abs=0.02)
    assert found["cube"] == pytest.approx(1.0, abs=0.05)
    assert found["th"] == pytest.approx(1.0, abs=0.02)
    assert found["gelu"] == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("d", [5, 15, 28, 100])
def test_cube_over_cosine_law(d):
    """``E[c^6]`` of the cosine law, ``15 d^2 / ((d + 2)(d + 4))`` (the Beta's moments: ``E[t^2]
    = 1/d``, ``E[t^4] = 3 / (d (d + 2))``, ``E[t^6] = 15 / (d (d + 2)(d + 4))``), less the
    Gaussian's 15; and ``E[c^4] - 3 = -6 / (d + 2)`` from ``x^2``."""
    mean, var = np.zeros(1), np.ones(1)
    _, sixth = cosine_moments(lambda x: x**3, mean, var, d)
    assert sixth[0] == pytest.approx(15 * d**2 / ((d + 2) * (d + 4)) - 15, rel=1e-3, abs=1e-3)
    _, fourth = cosine_moments(lambda x: x**2, mean, var, d)
    assert fourth[0] == pytest.approx(-6 / (d + 2), rel=1e-3, abs=1e-4)
