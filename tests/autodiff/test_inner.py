"""Inner products of gradients with constant directions (autodiff/inner.py): <dW, D> as
sum(g * Conv(x, D)) for every weight-gradient term, never forming dW. Checked against the
inner products of the full gradients (the gradient program's, and stage 2 of the same derived
program asked for its full tensors) on convolutions with strides, asymmetric pads, dilations,
groups, a weight shared by two convolutions and a ConvTranspose."""

import numpy as np
import pytest

from onnxinit.autodiff import GradientProgram
from onnxinit.autodiff.backward.windows import WeightGradientGeometry
from onnxinit.autodiff.inner import with_inner_products
from onnxinit.autodiff.scaled import directional
from onnxinit.autodiff.staged import split, staged_or_none
from onnxinit.methods.gradinit import norm_graph
from onnxinit.runtime import make_session

from .gradcheck import make_model, node, randn


def _windows_model():
    """Conv (stride 2, asymmetric pads) -> Tanh -> two Convs sharing one weight (dilation 2 and
    group 2; stride 1) summed -> Tanh -> ConvTranspose (stride 2) -> the output."""
    nodes = [
        node("Conv", ["x", "w1", "b1"], "c1", strides=[2, 2], pads=[1, 0, 2, 1]),
        node("Tanh", ["c1"], "t1"),
        node("Conv", ["t1", "w2"], "c2", group=2, dilations=[2, 2], pads=[2, 2, 2, 2]),
        node("Conv", ["t1", "w2"], "c3", group=2, pads=[1, 1, 1, 1]),
        node("Add", ["c2", "c3"], "s"),
        node("Tanh", ["s"], "t2"),
        node("ConvTranspose", ["t2", "w3"], "y", strides=[2, 2], pads=[1, 1, 0, 0]),
    ]
    values = {"x": randn(2, 3, 9, 9, seed=1), "w1": randn(4, 3, 3, 3, seed=2),
              "b1": randn(4, seed=3), "w2": randn(4, 2, 3, 3, seed=4),
              "w3": randn(4, 3, 3, 3, seed=5)}
    return make_model(nodes, values, "y")


def _program():
    program = GradientProgram(_windows_model(), {}, loss="mse", device="cpu")
    rng = np.random.default_rng(0)
    labels = rng.standard_normal(_output_shape(program))
    directions = {n: rng.standard_normal(program.parameters[n].shape) for n in program.wrt}
    return program, labels, directions


def _output_shape(program):
    forward = make_session(_windows_model(), device="cpu")
    return forward.run(None, {})[0].shape


def _dots(tensors, directions, names):
    return np.array([float(np.sum(np.asarray(tensors[n], np.float64) * directions[n]))
                     for n in names])


def test_directional_gradient_equals_the_gradients_inner_products():
    program, labels, directions = _program()
    model = directional(program.graph.model, program.wrt, directions)
    assert not any(WeightGradientGeometry.of(n) for n in model.graph.node)  # no dW formed
    session = make_session(model, device="cpu")
    feeds = program.session_feeds({}, labels, None)
    names = {i.name for i in session.get_inputs()}
    loss, *inner = session.run(None, {k: v for k, v in feeds.items() if k in names})
    plain_loss, grads = program.gradients({}, labels)
    assert float(loss) == pytest.approx(plain_loss, rel=1e-6)
    expected = _dots(grads, directions, program.wrt)
    np.testing.assert_allclose(np.array(inner, np.float64), expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


def test_second_stage_inner_products_equal_the_full_tensors():
    """GradInit's norm program (phi = |g|_2): stage 2 asked for <dphi_i, D_i> gives the inner
    products of stage 2's full dphi, from the same stage 1, and forms no weight gradient."""
    program, labels, directions = _program()
    wrt = program.wrt
    derived = norm_graph("sgd")(program.graph)
    along = with_inner_products(derived, "dphi", directions)
    outputs = [along.tensors[f"dphi.dir:{n}"] for n in wrt]
    _, rest = split(program.graph.model, along.model, outputs)
    assert not any(WeightGradientGeometry.of(n) for n in rest.graph.node)
    assert sum(n.op_type == "Conv" for n in rest.graph.node) >= 4  # eq. (1) per dW term
    full = staged_or_none(program, derived, [f"dphi:{n}" for n in wrt])
    inner = staged_or_none(program, along, [f"dphi.dir:{n}" for n in wrt])
    feeds = program.session_feeds({}, labels, None)
    loss, grads, carry = inner.first(feeds)
    _, _, full_carry = full.first(feeds)
    plain_loss, plain_grads = program.gradients({}, labels)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    for n in wrt:
        np.testing.assert_allclose(grads[n], plain_grads[n], rtol=1e-6, atol=1e-7)
    out = inner.rest(carry, {})
    got = np.array([float(out[f"dphi.dir:{n}"]) for n in wrt])
    tensors = full.rest(full_carry, {})
    expected = _dots({n: tensors[f"dphi:{n}"] for n in wrt}, directions, wrt)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
