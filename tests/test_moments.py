import numpy as np
import pytest

from onnxinit.moments import Moments


def test_total_is_law_of_total_variance():
    m = Moments.along([0.0, 2.0], [1.0, 3.0], axis=1, rank=4)
    assert m.mean.shape == (1, 2, 1, 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200_000, 2)) * np.sqrt([1.0, 3.0]) + [0.0, 2.0]
    mean, var = m.total()
    assert mean == pytest.approx(x.mean(), abs=0.01)
    assert var == pytest.approx(x.var(), rel=0.01)
    assert var == pytest.approx(2.0 + 1.0)  # mean of vars 2, var of means 1


def test_values_along_pools_other_axes_and_broadcasts():
    m = Moments.along([1.0, 3.0], [1.0, 1.0], axis=1, rank=3)
    mean, var = m.values_along(1, 2)
    np.testing.assert_allclose(mean, [1.0, 3.0])
    mean, var = m.values_along(2, 5)  # the tracked axis is pooled away
    np.testing.assert_allclose(mean, np.full(5, 2.0))
    np.testing.assert_allclose(var, np.full(5, 2.0))
    scalar = Moments.scalar(0.5, 2.0)
    np.testing.assert_allclose(scalar.values_along(1, 3)[1], [2.0, 2.0, 2.0])


def test_negative_variance_is_clipped_and_pooled_is_scalar():
    m = Moments(np.array([[1.0, 2.0]]), np.array([[-1e-12, 1.0]]))
    assert (m.var >= 0).all()
    assert m.pooled().rank == 0
    assert m.tracked_axes() == (1,)


def test_capped_pools_the_least_varying_axes_one_at_a_time():
    rng = np.random.default_rng(0)
    shape = (1, 30, 40, 8)
    # statistics that differ mostly along the last axis (the channels of an NHWC tensor)
    mean = rng.normal(size=shape) * 0.1 + np.arange(8.0)
    var = rng.uniform(0.5, 0.6, size=shape) * np.arange(1.0, 9.0)
    m = Moments(mean, var)
    assert m.capped(30 * 40 * 8) is m
    # 1000: one of the two position axes goes (30 x 8 or 40 x 8 statistics are left)
    capped = m.capped(1000)
    assert capped.tracked_size() <= 1000 and 3 in capped.tracked_axes()
    pooled = tuple(a for a in (1, 2) if a not in capped.tracked_axes())
    assert len(pooled) == 1
    second = (var + mean**2).mean(axis=pooled, keepdims=True)
    want_mean = mean.mean(axis=pooled, keepdims=True)
    np.testing.assert_allclose(capped.mean, want_mean, rtol=1e-12)
    np.testing.assert_allclose(capped.var, second - want_mean**2, rtol=1e-12)
    # 100: only the channels are left
    capped = m.capped(100)
    assert capped.tracked_axes() == (3,)
    # each kept index: an equal mixture of N(mean, var) over the pooled positions
    second = (var + mean**2).mean(axis=(0, 1, 2))
    want_mean = mean.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(capped.mean.reshape(-1), want_mean, rtol=1e-12)
    np.testing.assert_allclose(capped.var.reshape(-1), second - want_mean**2, rtol=1e-12)
    scalar = m.capped(5)  # every axis alone is too long: one statistic
    assert scalar.is_scalar
    np.testing.assert_allclose(scalar.total(), (mean.mean(), (var + mean**2).mean()
                                                - mean.mean() ** 2), rtol=1e-12)


def test_capped_keeps_the_axis_whose_variances_differ():
    rng = np.random.default_rng(1)
    # [1, heads, tokens, features]: means that differ a little per head and feature, variances
    # that differ a lot per token (a causal attention output): too many for 4096 statistics
    mean = rng.normal(size=(1, 4, 1, 64)) * 0.01
    var = np.broadcast_to(np.linspace(0.1, 3.0, 32).reshape(1, 1, 32, 1), (1, 4, 32, 64))
    m = Moments(mean, var)
    capped = m.capped(4096)
    assert capped.tracked_axes() == (2, 3)  # the heads pooled, the tokens and features kept
    np.testing.assert_allclose(capped.var.reshape(32, 64).mean(axis=1),
                               np.linspace(0.1, 3.0, 32) + mean.var(axis=1).mean(), rtol=1e-9)
    assert capped.total() == pytest.approx(m.total(), rel=1e-12)


def test_capped_keeps_the_token_field():
    from onnxinit.moments import Tokens

    rng = np.random.default_rng(2)
    # per-token means (position embeddings) and per-feature variances over a token field
    mean = rng.normal(size=(1, 64, 128))
    var = rng.uniform(0.5, 2.0, size=(1, 1, 128))
    cov = np.full((64, 64), 0.5) + 0.5 * np.eye(64)
    m = Moments(mean, var, tokens=Tokens(-2, 1, cov))
    capped = m.capped(1000)
    assert capped.tokens is m.tokens
    assert capped.tracked_size() <= 1000
    assert capped.total() == pytest.approx(m.total(), rel=1e-12)


def test_propagation_caps_the_statistics_a_rule_tracks():
    from onnx import TensorProto, helper

    from onnxinit.graph import load
    from onnxinit.propagate import MAX_TRACKED, propagate
    from tests.models import make_model

    shape = (1, 8, 100, 100)  # 80,000 positions: over the cap
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    rng = np.random.default_rng(0)
    x = Moments(rng.normal(size=shape), rng.uniform(0.5, 2.0, size=shape))
    result = propagate(load(model), initial={"x": x})
    y = result.moments["y"]
    assert y.tracked_size() <= MAX_TRACKED and len(y.tracked_axes()) >= 1
    others = tuple(i for i in range(4) if i not in y.tracked_axes())
    # the capped statistics pool the exact per-position ReLU moments
    mu, s = x.mean, np.sqrt(x.var)
    from scipy import stats

    a = mu / s
    e1 = mu * stats.norm.cdf(a) + s * stats.norm.pdf(a)
    e2 = (mu**2 + s**2) * stats.norm.cdf(a) + mu * s * stats.norm.pdf(a)
    want = e1.mean(axis=others, keepdims=True)
    np.testing.assert_allclose(y.mean, want, rtol=1e-9)
    np.testing.assert_allclose(y.var, e2.mean(axis=others, keepdims=True) - want**2, rtol=1e-9)


def _numpy_pooled(mean, var, axis):
    """values_along's formula with ndarray.mean (the code before the unwrapped sums)."""
    mean, var = np.broadcast_arrays(mean, var)
    other = tuple(i for i in range(mean.ndim) if i != axis)
    m = mean.mean(axis=other)
    shaped = m.reshape([-1 if i == axis else 1 for i in range(mean.ndim)])
    return m, var.mean(axis=other) + ((mean - shaped) ** 2).mean(axis=other)


def test_values_along_and_total_equal_numpys_means_bit_for_bit():
    rng = np.random.default_rng(1)
    for shape in [(1, 7, 5, 5), (3, 4, 1, 6), (2, 9), (1, 64, 1, 1), (5,)]:
        mean = rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 8, size=shape)
        var = rng.random(shape[:-1] + (1,)) * 1e6
        m = Moments(mean, var)
        for axis in range(len(shape)):
            got = m.values_along(axis, shape[axis])
            want = _numpy_pooled(m.mean, m.var, axis)
            assert got[0].tobytes() == want[0].tobytes() and got[1].tobytes() == want[1].tobytes()
        b_mean, b_var = np.broadcast_arrays(m.mean, m.var)
        spread = (b_mean - float(b_mean.mean())) ** 2
        assert m.total() == (float(b_mean.mean()), float(b_var.mean() + spread.mean()))


def test_values_along_is_kept_but_each_answer_is_a_fresh_copy():
    m = Moments(np.array([[1.0, 2.0], [3.0, 5.0]]), np.array([[1.0, 1.0], [2.0, 4.0]]))
    first = m.values_along(1, 2)
    first[0][:] = -1.0  # a caller changing its answer in place
    first[1][:] = -1.0
    again = m.values_along(1, 2)
    np.testing.assert_array_equal(again[0], [2.0, 3.5])
    np.testing.assert_array_equal(again[1], [2.5, 4.75])
    assert again[0] is not m.values_along(1, 2)[0]
