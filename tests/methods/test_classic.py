"""Classic schemes: target variances, gains found from the graph, seeds, layouts and dtypes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.methods import METHODS
from onnxinit.methods.classic import ClassicOptions, activation_gain, planner

from ..models import make_model


def _model(activation="Relu", d_in=1024, d_out=512, dtype=np.float32, conv_groups=2):
    """Gemm(transB=1) + bias -> BatchNormalization -> activation -> Conv (grouped) -> Add
    (bias) -> Tanh, plus a MatMul whose weight is stored transposed."""
    rng = np.random.default_rng(0)
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)

    inits = [init("fc.weight", d_out, d_in), init("fc.bias", d_out),
             init("bn.scale", d_out), init("bn.bias", d_out), init("bn.mean", d_out),
             numpy_helper.from_array(np.ones(d_out, dtype), "bn.var"),
             numpy_helper.from_array(np.array([1, 32, 4, 4], np.int64), "shape"),
             init("conv.weight", 64, 32 // conv_groups, 3, 3), init("conv.bias", 64, 1, 1),
             init("mm.weight", 64, 64)]
    act = [helper.make_node(activation, ["n"], ["a"], name="act")] if activation else \
        [helper.make_node("Identity", ["n"], ["a"], name="act")]
    nodes = [
        helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["h"], transB=1, name="fc"),
        helper.make_node("BatchNormalization", ["h", "bn.scale", "bn.bias", "bn.mean", "bn.var"],
                         ["n"], name="bn"),
        *act,
        helper.make_node("Reshape", ["a", "shape"], ["img"], name="reshape"),
        helper.make_node("Conv", ["img", "conv.weight"], ["c"], group=conv_groups,
                         pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Add", ["c", "conv.bias"], ["cb"], name="conv_bias"),
        helper.make_node("Tanh", ["cb"], ["t"], name="tanh"),
        helper.make_node("Transpose", ["t"], ["tt"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("Transpose", ["mm.weight"], ["mm.weight_t"], perm=[1, 0], name="wt"),
        helper.make_node("MatMul", ["tt", "mm.weight_t"], ["y"], name="mm"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", elem, [1, d_in])],
        [helper.make_tensor_value_info("y", elem, [1, 4, 4, 64])],
        inits,
    )


def _plan(scheme, model=None, **options):
    return planner(scheme)(load(model or _model()), ClassicOptions(**options))


def test_gain_found_through_bn_and_bias_adds():
    graph = load(_model("Relu"))
    assert activation_gain(graph, "fc") == (pytest.approx(np.sqrt(2)), "Relu")
    assert activation_gain(graph, "conv") == (pytest.approx(5 / 3), "Tanh")
    assert activation_gain(graph, "mm") == (1.0, "")
    leaky = _model("LeakyRelu")
    leaky.graph.node[2].attribute.append(helper.make_attribute("alpha", 0.2))
    assert activation_gain(load(leaky), "fc")[0] == pytest.approx(np.sqrt(2 / 1.04))
    assert activation_gain(load(_model("Selu")), "fc")[0] == pytest.approx(0.75)
    assert activation_gain(load(_model(None)), "fc")[0] == 1.0  # Identity: no activation


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
@pytest.mark.parametrize(
    "scheme, expected",
    [("kaiming", 2 / 1024), ("xavier", 2 / (1024 + 512)), ("lecun", 1 / 1024)],
)
def test_large_tensors_match_the_target_variance(scheme, expected, distribution):
    p = _plan(scheme, distribution=distribution)
    w = p.changes["fc.weight"].array
    assert w.shape == (512, 1024) and w.dtype == np.float32
    assert w.var() == pytest.approx(expected, rel=0.02)
    assert abs(w.mean()) < 0.02 * np.sqrt(expected)
    if distribution == "uniform":
        assert np.abs(w).max() <= np.sqrt(3 * expected) * (1 + 1e-6)
    else:  # Gaussian tails beyond the uniform bound exist
        assert np.abs(w).max() > np.sqrt(3 * expected) * 1.2
    for bias in ("fc.bias", "conv.bias"):
        assert np.all(p.changes[bias].array == 0)
    assert "bn.scale" not in p.changes and "bn.mean" not in p.changes


def test_grouped_conv_and_transposed_matmul_fans():
    p = _plan("kaiming", distribution="normal")
    conv = p.changes["conv.weight"].array  # fan_in = 32/2 * 9 = 144, gain 5/3 (Tanh)
    assert conv.shape == (64, 16, 3, 3)
    assert conv.var() == pytest.approx((5 / 3) ** 2 / 144, rel=0.1)
    mm = p.changes["mm.weight"].array  # stored (N, K) = (64, 64)
    assert mm.shape == (64, 64) and mm.var() == pytest.approx(1 / 64, rel=0.2)


def test_same_seed_same_bytes_other_seed_other_values():
    a = _plan("xavier", seed=7).changes["fc.weight"].array
    b = _plan("xavier", seed=7).changes["fc.weight"].array
    c = _plan("xavier", seed=8).changes["fc.weight"].array
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)
    assert abs(np.corrcoef(a.ravel(), c.ravel())[0, 1]) < 0.01


def test_orthogonal_rows_with_gain_per_group_and_layout():
    p = _plan("orthogonal")
    fc = p.changes["fc.weight"].array.astype(np.float64)  # (512, 1024): orthonormal rows
    assert np.allclose(fc @ fc.T, 2 * np.eye(512), atol=1e-5)  # gain sqrt(2) for Relu
    conv = p.changes["conv.weight"].array.astype(np.float64)
    for group in (conv[:32], conv[32:]):  # 32 x 144 per group, gain 5/3
        m = group.reshape(32, 144)
        assert np.allclose(m @ m.T, (5 / 3) ** 2 * np.eye(32), atol=1e-5)
    assert not np.allclose(conv[:32], conv[32:])
    mm = p.changes["mm.weight"].array.astype(np.float64)  # square: orthogonal either way
    assert np.allclose(mm @ mm.T, np.eye(64), atol=1e-5)


def test_float16_parameters_stay_float16():
    p = _plan("lecun", model=_model(dtype=np.float16, d_in=256, d_out=128))
    assert p.changes["fc.weight"].array.dtype == np.float16
    assert p.changes["fc.weight"].array.var() == pytest.approx(1 / 256, rel=0.1)


def test_registered_names():
    for name in ("xavier", "glorot", "kaiming", "he", "lecun", "orthogonal"):
        assert METHODS[name][1] is ClassicOptions
    p = METHODS["he"][0](load(_model()), ClassicOptions(distribution="normal"))
    assert p.method == "kaiming"
    assert p.changes["fc.weight"].array.var() == pytest.approx(2 / 1024, rel=0.02)
