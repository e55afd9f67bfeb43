"""Reverse over reverse through convolutions: a convolution's weight gradient, differentiated
again, takes its closed form (a ConvTranspose and a Conv, backward/linear.py) instead of the
adjoints of its im2col primitives. Exact Hessian-vector products against central differences
of float64 gradient passes, over the geometries the closed form has to get right."""

import numpy as np
import pytest

from onnxinit.autodiff import GradientProgram
from onnxinit.autodiff.higher_order import HessianVectorProgram

from .gradcheck import _output_shape, make_model, node, randn

GEOMETRIES = {
    "stride 2, odd size": ((2, 3, 7, 7), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "dilation 2, uneven pads": ((2, 3, 6, 7), (4, 3, 2, 3),
                                dict(dilations=[2, 2], pads=[0, 1, 2, 0])),
    "two groups": ((2, 4, 5, 5), (6, 2, 2, 2), dict(group=2)),
    "1x1 stride 2": ((2, 3, 6, 6), (5, 3, 1, 1), dict(strides=[2, 2])),
    "1-D stride 3, trailing samples": ((2, 3, 11), (4, 3, 3), dict(strides=[3])),
}


def _model(op, x_shape, w_shape, attrs):
    nodes = [node(op, ["x", "w"], "c", **attrs), node("Tanh", ["c"], "y")]
    return make_model(nodes, {"x": randn(*x_shape, seed=1), "w": randn(*w_shape, seed=2)}, "y")


def _check_products(model):
    """H v (exact program, float64) against (g(t + e v) - g(t - e v)) / 2e over x and w."""
    program = GradientProgram(model, {}, loss="mse", dtype="float64")
    rng = np.random.default_rng(3)
    targets = rng.standard_normal(_output_shape(model))
    v = {name: rng.standard_normal(program.parameters[name].shape) for name in program.wrt}
    exact = HessianVectorProgram(program)(None, v, {}, targets)
    step = 1e-5
    shifted = [program.gradients({}, targets, {n: program.parameters[n] + s * step * v[n]
                                               for n in program.wrt})[1] for s in (1, -1)]
    for name in program.wrt:
        expected = (shifted[0][name] - shifted[1][name]) / (2 * step)
        np.testing.assert_allclose(exact[name], expected, rtol=1e-6,
                                   atol=1e-8 * np.abs(expected).max())
    return exact


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_conv_hessian_vector_products(geometry):
    _check_products(_model("Conv", *GEOMETRIES[geometry]))


def test_conv_transpose_hessian_vector_products():
    """ConvTranspose's weight gradient is the Conv one with the roles of its input and output
    gradient exchanged, with an output_padding that the crop of dg has to undo."""
    attrs = dict(strides=[2, 2], pads=[1, 0, 1, 1], output_padding=[1, 1])
    _check_products(_model("ConvTranspose", (2, 3, 4, 5), (3, 4, 3, 3), attrs))


def test_weight_gradient_is_differentiated_in_closed_form():
    """The second derivation of a stride-2 Conv emits no adjoint of a strided Slice
    (ScatterElements) or of a tap (Pad): the weight gradient went the closed-form way."""
    model = _model("Conv", *GEOMETRIES["stride 2, odd size"])
    program = GradientProgram(model, {}, loss="mse", dtype="float32", device="cpu")
    ops = [n.op_type for n in HessianVectorProgram(program).graph.model.graph.node]
    assert "ScatterElements" not in ops
    # one per im2col (the weight gradient, and in the second derivation those of the Conv and
    # of its input gradient's ConvTranspose), none per kernel tap
    assert ops.count("Pad") == 3
