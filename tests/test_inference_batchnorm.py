"""An inference BatchNormalization written as arithmetic (jax2onnx's formula, TensorFlow's
folded ``batchnorm/mul_1``) is analysed with batch statistics like a BatchNormalization node;
a per-channel affine that is not one, or one a folding exporter would fold, is left alone.

Oracle: the network computed in numpy with training-mode BatchNormalization (batch statistics
per channel) on the analysis's own seeded feeds, for the measurement (onnxruntime on the
prepared model) and the prediction."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.analysis import analyze
from onnxinit.feeds import synthetic_feeds
from onnxinit.graph import load
from onnxinit.passes import inference_batchnorms

from .models import make_model

C, OUT, BATCH = 4, 5, 16384
GAMMA = np.array([0.5, 1.0, 2.0, 1.5], np.float32)
BETA = np.array([0.1, -0.2, 0.0, 0.3], np.float32)
MOVING_VAR = np.array([2.0, 0.5, 1.0, 3.0], np.float32)
EPS = 1e-3
RNG = np.random.default_rng(0)
W = (RNG.standard_normal((C, OUT)) / np.sqrt(C)).astype(np.float32)


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _front(shape):
    """x -> Mul(3) -> Relu: a signal of variance far from 1 that follows no linear layer."""
    nodes = [helper.make_node("Mul", ["x", "three"], ["x3"]),
             helper.make_node("Relu", ["x3"], ["r"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])]
    return nodes, inputs, [_init("three", np.float32(3.0))]


def _head(y, rank):
    """y -> MatMul(W) -> out (channels last: rank-2 [N, C] or NHWC)."""
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    return [helper.make_node("MatMul", [y, "W"], ["out"])], [out], [_init("W", W)], rank


def formula_bn(x: str, y: str, rank: int, mean=np.zeros(C, np.float32)):
    """jax2onnx's inference BatchNormalization over the last axis: ``k = gamma / sqrt(var +
    eps)``, ``y = x k + (beta - mean k)``, every step an op on initializers."""
    shape = [1] * (rank - 1) + [C]
    nodes = [
        helper.make_node("Reshape", ["bn_var", "bn_shape"], ["var_r"]),
        helper.make_node("Add", ["var_r", "bn_eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["one", "std"], ["inv"]),
        helper.make_node("Reshape", ["bn_gamma", "bn_shape"], ["gamma_r"]),
        helper.make_node("Mul", ["inv", "gamma_r"], ["k"]),
        helper.make_node("Reshape", ["bn_mean", "bn_shape"], ["mean_r"]),
        helper.make_node("Neg", ["mean_r"], ["neg_mean"]),
        helper.make_node("Mul", ["neg_mean", "k"], ["mk"]),
        helper.make_node("Reshape", ["bn_beta", "bn_shape"], ["beta_r"]),
        helper.make_node("Add", ["mk", "beta_r"], ["shift"]),
        helper.make_node("Mul", [x, "k"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], [y]),
    ]
    inits = [_init("bn_var", MOVING_VAR), _init("bn_gamma", GAMMA), _init("bn_beta", BETA),
             _init("bn_mean", mean), _init("bn_shape", np.array(shape, np.int64)),
             _init("bn_eps", np.float32(EPS)), _init("one", np.float32(1.0))]
    return nodes, inits


def model_with(bn_nodes, bn_inits, shape, y="y"):
    front, inputs, front_inits = _front(shape)
    head, outputs, head_inits, _ = _head(y, len(shape))
    return make_model(front + bn_nodes + head, inputs, outputs,
                      front_inits + bn_inits + head_inits)


def reference_out(x: np.ndarray, normalise: bool, eps: float = EPS, affine=None) -> np.ndarray:
    """The network in float64: BatchNormalization with batch statistics over every axis but
    the last (``normalise``), or the affine map ``affine = (k, s)``."""
    r = np.maximum(3.0 * x.astype(np.float64), 0.0)
    axes = tuple(range(r.ndim - 1))
    if normalise:
        y = GAMMA * (r - r.mean(axis=axes)) / np.sqrt(r.var(axis=axes) + eps) + BETA
    else:
        k, s = affine
        y = r * k + s
    return y @ W.astype(np.float64)


def _checked(model, normalise: bool, **reference):
    """Prediction and onnxruntime measurement of ``out`` against the numpy reference on the
    analysis's own seeded feeds."""
    analysis = analyze(model, batch_size=BATCH, measure=True)
    feeds = synthetic_feeds(load(model, batch_size=BATCH), seed=0)
    expected = float(reference_out(feeds["x"], normalise, **reference).var())
    out = next(t for t in analysis.tensors if t.name == "out")
    # float32 batch statistics over 16384 rows in onnxruntime against float64 numpy: 1e-3
    assert out.measured_var == pytest.approx(expected, rel=2e-3)
    assert out.var == pytest.approx(expected, rel=0.05)
    return expected


@pytest.mark.parametrize("shape", [(BATCH, C), (BATCH, 3, 3, C)], ids=["rank2", "nhwc"])
def test_formula_form_is_analysed_with_batch_statistics(shape):
    nodes, inits = formula_bn("r", "y", len(shape))
    model = model_with(nodes, inits, shape)
    assert sum(n.op_type == "BatchNormalization" for n in load(model).model.graph.node) == 1
    normalised = _checked(model, normalise=True)
    k = GAMMA / np.sqrt(MOVING_VAR + EPS)
    x = synthetic_feeds(load(model, batch_size=BATCH), seed=0)["x"]
    affine = float(reference_out(x, False, affine=(k, BETA)).var())
    assert abs(normalised / affine - 1) > 0.3  # the two semantics are far apart here


def test_tensorflow_folded_form_is_analysed_with_batch_statistics():
    """Keras 3's TensorFlow export: ``Mul(k)`` and ``Add(s)`` under tf.nn.batch_normalization's
    op names, k folded from a fresh moving variance of 1."""
    k = (GAMMA / np.sqrt(1.0 + EPS)).astype(np.float32)
    nodes = [helper.make_node("Mul", ["r", "k"], ["scaled"],
                              name="model/batch_normalization/batchnorm/mul_1"),
             helper.make_node("Add", ["scaled", "s"], ["y"],
                              name="model/batch_normalization/batchnorm/add_1")]
    model = model_with(nodes, [_init("k", k), _init("s", BETA)], (BATCH, C))
    # the node's scale is k = gamma / sqrt(1 + eps): the prediction is within eps of gamma's
    _checked(model, normalise=True)


def _unchanged(model):
    prepared = load(model).model
    assert not any(n.op_type == "BatchNormalization" for n in prepared.graph.node)


def test_plain_per_channel_affine_is_left_alone():
    """A per-channel Mul and Add of constants, not computed as sqrt(var + eps) and not under
    TensorFlow's batchnorm names (a layer scale, input standardisation): the affine map."""
    k, s = np.array([0.7, 1.3, 0.2, 2.0], np.float32), BETA
    nodes = [helper.make_node("Mul", ["r", "k"], ["scaled"], name="scale/mul_1"),
             helper.make_node("Add", ["scaled", "s"], ["y"], name="scale/add_1")]
    model = model_with(nodes, [_init("k", k), _init("s", s)], (BATCH, C))
    _unchanged(model)
    _checked(model, normalise=False, affine=(k, s))


def test_standardisation_by_a_computed_std_is_left_alone():
    """``x / sqrt(var)`` (no eps under the root) and a scalar ``1 / sqrt(d)``: no
    BatchNormalization."""
    nodes = [helper.make_node("Sqrt", ["v"], ["std"]),
             helper.make_node("Div", ["one", "std"], ["inv"]),
             helper.make_node("Mul", ["r", "inv"], ["a"]),
             helper.make_node("Add", ["d", "eps"], ["d_eps"]),
             helper.make_node("Sqrt", ["d_eps"], ["sd"]),
             helper.make_node("Div", ["one", "sd"], ["scalar_inv"]),
             helper.make_node("Mul", ["a", "scalar_inv"], ["y"])]
    inits = [_init("v", MOVING_VAR), _init("one", np.float32(1)), _init("d", np.float32(4)),
             _init("eps", np.float32(EPS))]
    model = model_with(nodes, inits, (BATCH, C))
    _unchanged(model)
    k = 1.0 / np.sqrt(MOVING_VAR) / np.sqrt(4 + EPS)
    _checked(model, normalise=False, affine=(k, 0.0))


def test_formula_after_a_linear_layer_is_analysed_with_batch_statistics():
    """Directly after a MatMul: a BatchNormalization the network trains with, as after any
    other op (jax2onnx writes it so after every Conv and Dense)."""
    nodes, inits = formula_bn("h", "y", 2)
    front, inputs, front_inits = _front((BATCH, C))
    first = [helper.make_node("MatMul", ["r", "V"], ["h"])]
    head, outputs, head_inits, _ = _head("y", 2)
    eye = np.eye(C, dtype=np.float32)
    model = make_model(front + first + nodes + head, inputs, outputs,
                       front_inits + [_init("V", eye)] + inits + head_inits)
    assert sum(n.op_type == "BatchNormalization" for n in load(model).model.graph.node) == 1
    _checked(model, normalise=True)


def _conv_model(conv_output: str) -> onnx.ModelProto:
    """x -> Conv (3x3, 4 -> 6 channels, bias) named ``conv_output`` -> Relu."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((6, 4, 3, 3)) * 0.7).astype(np.float32)
    b = np.linspace(-0.5, 0.5, 6).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], [conv_output], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", [conv_output], ["out"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", 1, [BATCH, 4, 5, 5])],
                      [helper.make_tensor_value_info("out", 1, [BATCH, 6, 5, 5])],
                      [_init("w", w), _init("b", b)])


@pytest.mark.parametrize("conv_output", [
    "net/block_1/bn/FusedBatchNormV3:0",  # Keras 2: the fused batch norm
    "functional_1/bn/batchnorm/mul_1:0",  # Keras 3, zero shift: the Add was dropped
    "functional_1/bn/batchnorm/add_1:0",  # Keras 3: the Add folded into the bias
    "inception_v3_1/bn/batchnorm/mul:0",  # Keras 3, scale=False: x * rsqrt(var + eps)
])
def test_conv_that_tf2onnx_folded_is_analysed_with_batch_statistics(conv_output):
    """tf2onnx folds a Keras BatchNormalization into the Conv before it and names the Conv's
    output after TensorFlow's batch-norm op: the analysis puts the normalization back
    (scale 1, shift the folded bias), so the Relu after it sees a unit-variance input
    shifted by the bias, per channel, as in training."""
    model = _conv_model(conv_output)
    analysis = analyze(model, batch_size=BATCH, measure=True)
    x = synthetic_feeds(load(model, batch_size=BATCH), seed=0)["x"].astype(np.float64)
    w, b = (numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer)
    windows = np.lib.stride_tricks.sliding_window_view(
        np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), axis=(2, 3))
    conv = np.einsum("ncijkl,ockl->noij", windows, w)  # the folded bias cancels in the mean
    mean, var = conv.mean(axis=(0, 2, 3), keepdims=True), conv.var(axis=(0, 2, 3), keepdims=True)
    normalised = (conv - mean) / np.sqrt(var + 1e-5) + b.reshape(1, -1, 1, 1)
    expected = float(np.maximum(normalised, 0).var())
    out = next(t for t in analysis.tensors if t.name == "out")
    assert out.measured_var == pytest.approx(expected, rel=2e-3)
    assert out.var == pytest.approx(expected, rel=0.05)
    # an ordinary Conv output stays what it computes
    plain = load(_conv_model("net/block_1/conv/Conv2D:0")).model
    assert not any(n.op_type == "BatchNormalization" for n in plain.graph.node)


def test_no_match_returns_the_model_itself():
    model = model_with([helper.make_node("Identity", ["r"], ["y"])], [], (BATCH, C))
    prepared = load(model).model
    assert inference_batchnorms(prepared) is prepared
