"""Arithmetic rules (Add, Sub, Mul, Div, Pow, Sum, Mean, Max, Min, Where, Concat) against Monte
Carlo runs of the same node in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules.grids import fold
from tests.models import make_model
from tests.oracle import assert_moments_close, monte_carlo, node_model, predict

SHAPE = (4000, 4, 5, 5)  # 100k elements per channel
PC = Moments.along([-1.0, 0.0, 0.5, 2.0], [0.5, 1.0, 2.0, 0.25], axis=1, rank=4)
PC2 = Moments.along([0.3, -0.7, 1.0, 0.0], [1.5, 0.3, 0.6, 1.0], axis=1, rank=4)
SEQ = (2000, 6, 8)  # [N, S, D]
PF = Moments.along(np.linspace(-1, 1, 8), np.linspace(0.5, 1.5, 8), axis=2, rank=3)
RNG = np.random.default_rng(7)


def check(model, moments, out="y", axis=1, rtol=0.05, rule=None):
    _, result = predict(model, moments)
    values = monte_carlo(model, moments, seed=1)
    if rule is None:
        assert result.rules[out] not in ("empirical", "pass-through"), result.fallbacks
    else:
        assert result.rules[out] == rule, (result.rules[out], result.fallbacks)
    assert_moments_close(result.moments[out], values[out], rtol=rtol, axis=axis)
    return result.moments[out]


def binary_model(op, a_shape, b_shape=None, const=None, const_first=False, **attrs):
    if const is None:
        node = helper.make_node(op, ["a", "b"], ["y"], **attrs)
        return node_model(node, {"a": a_shape, "b": b_shape})
    ins = ["c", "a"] if const_first else ["a", "c"]
    node = helper.make_node(op, ins, ["y"], **attrs)
    return node_model(node, {"a": a_shape}, {"c": np.asarray(const, np.float32)})


# ---------------------------------------------------------------------------------------------
# signal and constant


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize(
    "const",
    [np.float32(1.7), RNG.uniform(0.5, 2.0, (4, 1, 1)), RNG.uniform(0.5, 2.0, (1, 5))],
    ids=["scalar", "per_channel", "along_width"],
)
def test_constant_operand(op, const):
    check(binary_model(op, SHAPE, const=const), {"a": PC})


@pytest.mark.parametrize("op", ["Sub", "Div"])
def test_constant_first(op):
    # c - x exactly; c / x element-wise, with x kept away from 0
    moments = PC if op == "Sub" else Moments.along([3.0, 4.0, -5.0, 6.0], [0.2] * 4, 1, 4)
    check(binary_model(op, SHAPE, const=RNG.uniform(1, 2, (4, 1, 1)), const_first=True),
          {"a": moments})  # fmt: skip


def test_positional_embedding_add_tracks_positions_and_features():
    # the [S, D] grid is small: kept whole (per position and feature), so that a later mean
    # over the sequence averages the positional means instead of counting them as noise;
    # pooled over positions it is the law of total variance
    c = RNG.standard_normal((6, 8)).astype(np.float32)
    m = check(binary_model("Add", SEQ, const=c), {"a": PF}, axis=2)
    assert m.tracked_axes() == (1, 2)
    mu, nu = PF.values_along(2, 8)
    np.testing.assert_allclose(m.mean[0], mu + c, atol=1e-6)
    np.testing.assert_allclose(m.var[0], np.broadcast_to(nu, (6, 8)), rtol=1e-6)
    pooled_mean, pooled_var = m.values_along(2, 8)
    np.testing.assert_allclose(pooled_mean, mu + c.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(pooled_var, nu + c.astype(np.float64).var(axis=0), rtol=1e-5)


def test_positional_embedding_on_scalar_signal_keeps_last_axis():
    c = RNG.standard_normal((6, 8)).astype(np.float32)
    m = check(binary_model("Add", SEQ, const=c), {"a": Moments.scalar(0.3, 0.8)}, axis=2)
    assert m.tracked_axes() == (1, 2)


def test_mul_by_constant_varying_along_an_untracked_axis():
    c = RNG.uniform(-2, 2, (6, 1)).astype(np.float32)
    m = check(binary_model("Mul", SEQ, const=c), {"a": PF}, axis=2)
    assert m.tracked_axes() == (1, 2)
    mu, nu = PF.values_along(2, 8)
    c64 = c.astype(np.float64).ravel()
    mean = mu * c64.mean()
    pooled_mean, pooled_var = m.values_along(2, 8)
    np.testing.assert_allclose(pooled_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(pooled_var, (nu + mu**2) * (c64**2).mean() - mean**2, rtol=1e-6)


def test_affine_constant_keeps_the_source():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Mul", ["r", "c"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.float32(2.5), "c")],
    )
    m = check(model, {"x": PC})
    assert m.source is not None and len(m.source.chain) == 2


# ---------------------------------------------------------------------------------------------
# two signals


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
def test_two_signals_per_channel(op):
    check(binary_model(op, SHAPE, SHAPE), {"a": PC, "b": PC2})


@pytest.mark.parametrize("op", ["Add", "Mul"])
def test_two_signals_broadcast(op):
    b = Moments.along([1.0, -1.0, 0.5, 0.0], [0.3, 0.6, 1.0, 2.0], axis=1, rank=4)
    check(binary_model(op, SHAPE, (4000, 4, 1, 1)), {"a": PC, "b": b})


def test_two_signals_different_tracked_axes():
    b = Moments.along(np.linspace(-1, 1, 5), np.linspace(0.2, 2, 5), axis=3, rank=4)
    model = binary_model("Mul", SHAPE, (4000, 1, 1, 5))
    m = check(model, {"a": PC, "b": b}, axis=1)
    assert set(m.tracked_axes()) == {1, 3}
    check(model, {"a": PC, "b": b}, axis=3)


def test_div_by_signal_is_measured():
    model = binary_model("Div", SHAPE, SHAPE)
    check(model, {"a": PC, "b": Moments.scalar(5.0, 0.1)}, rule="empirical")


def test_swish_is_fused_not_independent():
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Mul", ["x", "s"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    check(model, {"x": PC})


def test_pow_constant_exponent():
    check(binary_model("Pow", SHAPE, const=np.float32(2.0)), {"a": PC})


# ---------------------------------------------------------------------------------------------
# Sum, Mean


@pytest.mark.parametrize("op", ["Sum", "Mean"])
def test_variadic_with_constant(op):
    node = helper.make_node(op, ["a", "b", "c"], ["y"])
    model = node_model(
        node, {"a": SHAPE, "b": SHAPE}, {"c": RNG.uniform(-1, 1, (4, 1, 1)).astype(np.float32)}
    )
    check(model, {"a": PC, "b": PC2})


@pytest.mark.parametrize("op", ["Sum", "Mean"])
def test_variadic_single_input(op):
    node = helper.make_node(op, ["a"], ["y"])
    check(node_model(node, {"a": SHAPE}), {"a": PC})


# ---------------------------------------------------------------------------------------------
# Max, Min


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_extreme_two_gaussians(op):
    check(binary_model(op, SHAPE, SHAPE), {"a": PC, "b": PC2})


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_extreme_with_constant(op):
    # constants near each channel's bulk, so the clipped part is no rare event
    check(binary_model(op, SHAPE, const=np.float32([-0.5, 0.3, 0.0, 2.2]).reshape(4, 1, 1)),
          {"a": PC})  # fmt: skip


def test_extreme_with_constant_along_untracked_axis():
    m = check(binary_model("Max", SEQ, const=RNG.uniform(-1, 1, (6, 1))), {"a": PF}, axis=2)
    assert m.tracked_axes() == (1, 2)


def test_leaky_relu_as_max_is_fused():
    nodes = [
        helper.make_node("Mul", ["x", "alpha"], ["ax"]),
        helper.make_node("Max", ["x", "ax"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.float32(0.2), "alpha")],
    )
    check(model, {"x": PC})


def test_max_of_non_gaussian_signals_by_monte_carlo():
    nodes = [
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Max", ["r", "b"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(SHAPE)) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    check(model, {"a": PC, "b": PC2})


# ---------------------------------------------------------------------------------------------
# Where


def test_where_constant_condition_mixes_signals():
    cond = RNG.random((1, 1, 5, 5)) < 0.3
    node = helper.make_node("Where", ["cond", "a", "b"], ["y"])
    model = node_model(node, {"a": SHAPE, "b": SHAPE}, {"cond": cond})
    m = check(model, {"a": PC, "b": PC2})
    assert m.tracked_axes() == (1, 2, 3)  # per position: which branch the condition takes


def test_where_with_constant_branch():
    cond = RNG.random((6, 8)) < 0.5
    node = helper.make_node("Where", ["cond", "a", "c"], ["y"])
    model = node_model(node, {"a": SEQ}, {"cond": cond, "c": np.float32(-1.5)})
    check(model, {"a": PF}, axis=2)


# ---------------------------------------------------------------------------------------------
# Concat


def concat_model(shapes, axis, constants=None):
    names = [f"x{i}" for i in range(len(shapes))] + list(constants or {})
    node = helper.make_node("Concat", names, ["y"], axis=axis)
    return node_model(node, {f"x{i}": s for i, s in enumerate(shapes)}, constants)


def test_concat_along_tracked_axis():
    model = concat_model([SHAPE, (4000, 4, 5, 5)], axis=1)
    m = check(model, {"x0": PC, "x1": PC2})
    assert m.mean.shape == (1, 8, 1, 1)


def test_concat_along_untracked_axis_mixes_per_channel():
    model = concat_model([(4000, 4, 2, 5), (4000, 4, 6, 5)], axis=2)
    check(model, {"x0": PC, "x1": PC2})


def test_concat_pooled_scalar_inputs():
    model = concat_model([(1000, 30), (1000, 70)], axis=1)
    check(model, {"x0": Moments.scalar(1.0, 0.5), "x1": Moments.scalar(-0.5, 2.0)}, axis=None)


def test_concat_with_constant_class_token():
    token = RNG.standard_normal((2000, 1, 8)).astype(np.float32)
    model = concat_model([SEQ], axis=1, constants={"cls": token})
    check(model, {"x0": PF}, axis=2)


def test_fold_is_the_law_of_total_variance():
    mean = RNG.standard_normal((1, 3, 4))
    var = RNG.uniform(0.1, 1, (1, 3, 4))
    m = fold(mean, var, {2})
    assert m.mean.shape == (1, 1, 4)
    np.testing.assert_allclose(m.var.ravel(), var.mean(axis=1).ravel() + mean.var(axis=1).ravel())


@pytest.mark.parametrize("op", ["Add", "Sub"])
def test_relu_of_relu_plus_gaussian(op):
    # a residual block's end: ReLU(skip + branch) with skip a ReLU output; the sum is not
    # Gaussian (a point mass of the skip at 0), which moves ReLU's variance by 6-9%: the Add
    # keeps it as a Gaussian mixture and the ReLU integrates each component
    shape = [200000, 3]
    nodes = [
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node(op, ["r", "b"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("s", "y")],
    )
    moments = {
        "a": Moments.along([0.4, 0.0, 1.0], [1.0, 1.0, 2.0], axis=1, rank=2),
        "b": Moments.along([0.0, 0.3, -0.5], [1.0, 0.5, 1.0], axis=1, rank=2),
    }
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    assert result.moments["s"].mixture is not None
    got = values["y"].astype(np.float64)
    mean, var = result.moments["y"].values_along(1, 3)
    np.testing.assert_allclose(var, got.var(axis=0), rtol=0.015)
    np.testing.assert_allclose(mean, got.mean(axis=0), rtol=0.01)
