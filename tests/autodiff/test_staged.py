"""Derived programs in two stages (autodiff/staged.py): stage 1 is the gradient pass, stage 2
the rest of the derived graph on stage 1's tensors. Against the one-run derived program and the
gradient program (independent sessions of the whole graphs)."""

import numpy as np
import pytest

from onnxinit.autodiff import GradientProgram
from onnxinit.autodiff.higher_order import HessianVectorProgram
from onnxinit.autodiff.staged import split, staged_or_none
from tests.models import mlp

from .gradcheck import _output_shape, make_model, node, randn


def _programs():
    rng = np.random.default_rng(0)
    program = GradientProgram(mlp([4, 6, 3], activation="Tanh", seed=2), {"x": (5, 4)},
                              device="cpu")
    yield program, {"x": rng.standard_normal((5, 4))}, np.array([0, 2, 1, 1, 0])
    conv = make_model([node("Conv", ["x", "w"], "c", strides=[2, 2], pads=[1, 1, 1, 1]),
                       node("Relu", ["c"], "r"), node("MaxPool", ["r"], "y", kernel_shape=[2, 2])],
                      {"x": randn(2, 3, 7, 7, seed=1), "w": randn(4, 3, 3, 3, seed=2)}, "y")
    yield (GradientProgram(conv, {}, loss="mse", device="cpu"), {},
           rng.standard_normal(_output_shape(conv)))


@pytest.mark.parametrize("case", range(2))
def test_two_stages_equal_one_run(case):
    program, feeds, labels = list(_programs())[case]
    products = HessianVectorProgram(program)
    wrt = program.wrt
    staged = staged_or_none(program, products.graph, [f"dphi:{n}" for n in wrt])
    assert staged is not None
    rng = np.random.default_rng(1)
    v = {n: rng.standard_normal(program.parameters[n].shape).astype(np.float32) for n in wrt}
    loss, grads, carry = staged.first(program.session_feeds(feeds, labels, None))
    whole_loss, whole_grads, whole_products = products.with_gradient(None, v, feeds, labels)
    plain_loss, plain_grads = program.gradients(feeds, labels)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    assert loss == pytest.approx(whole_loss, rel=1e-6)
    rest = staged.rest(carry, {products.graph.tensors[f"v:{n}"]: v[n] for n in wrt})
    for n in wrt:
        np.testing.assert_allclose(grads[n], plain_grads[n], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(grads[n], whole_grads[n], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rest[f"dphi:{n}"], whole_products[n], rtol=1e-5, atol=1e-6)
    # stage 2 again on the same carry, another direction: the carry is not consumed
    again = staged.rest(carry, {products.graph.tensors[f"v:{n}"]: 2 * v[n] for n in wrt})
    for n in wrt:
        np.testing.assert_allclose(again[f"dphi:{n}"], 2 * rest[f"dphi:{n}"], rtol=1e-5,
                                   atol=1e-6)


def test_no_split_when_a_first_order_node_differs():
    program, _, _ = next(_programs())
    products = HessianVectorProgram(program)
    outputs = [products.graph.tensors[f"dphi:{n}"] for n in program.wrt]
    assert split(program.graph.model, products.graph.model, outputs) is not None
    changed = type(products.graph.model)()
    changed.CopyFrom(products.graph.model)
    first_tanh = next(n for n in changed.graph.node if n.op_type == "Tanh")
    first_tanh.op_type = "Sigmoid"
    assert split(program.graph.model, changed, outputs) is None
    # the loss and first-order gradients come from stage 1, never from stage 2
    assert split(program.graph.model, products.graph.model, [program.graph.loss]) is None
