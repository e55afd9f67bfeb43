"""Fused backward rules: lowered BatchNormalization differentiated in closed form."""

import numpy as np
from onnx import helper, numpy_helper

from onnxinit.autodiff import build_gradient_graph, lower
from onnxinit.autodiff.fused import match_batch_norm

from .gradcheck import check_gradients, make_model, node, randn


def _stats(channels):
    return [node("Constant", [], "m", value=numpy_helper.from_array(
                np.linspace(-1, 1, channels).astype(np.float32))),
            node("Constant", [], "v", value=numpy_helper.from_array(
                np.linspace(0.5, 2, channels).astype(np.float32)))]


def test_batch_norm_2d_against_finite_differences():
    bn = node("BatchNormalization", ["x", "g", "b", "m", "v"], epsilon=1e-3, training_mode=1)
    check_gradients([*_stats(4), bn], {"x": randn(6, 4) * 2 + 1, "g": randn(4, seed=1),
                                        "b": randn(4, seed=2)})


def test_batch_norm_4d_against_finite_differences():
    bn = node("BatchNormalization", ["x", "g", "b", "m", "v"], epsilon=1e-3, training_mode=1)
    check_gradients([*_stats(3), bn], {"x": randn(2, 3, 3, 5, seed=3), "g": randn(3, seed=4),
                                        "b": randn(3, seed=5)})


def test_batch_norm_with_running_statistics_in_the_loss():
    """The running-mean and running-var outputs feed the loss: their gradients reach x through
    the generic rules of the batch mean and variance, alongside the fused rule."""
    nodes = [*_stats(3),
             helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"],
                              ["bn", "rm", "rv"], epsilon=1e-3, momentum=0.8, training_mode=1),
             node("Constant", [], "shape", value=numpy_helper.from_array(
                 np.array([1, 3, 1, 1], np.int64))),
             node("Reshape", ["rm", "shape"], "rm4"),
             node("Reshape", ["rv", "shape"], "rv4"),
             node("Add", ["bn", "rm4"], "shifted"),
             node("Mul", ["shifted", "rv4"], "y")]
    check_gradients(nodes, {"x": randn(4, 3, 2, 2, seed=6) * 1.5 - 0.5, "g": randn(3, seed=7),
                            "b": randn(3, seed=8)})


def test_lowered_batch_norm_takes_the_fused_rule():
    bn = node("BatchNormalization", ["x", "g", "b", "m", "v"], epsilon=1e-3, training_mode=1)
    model = make_model([*_stats(3), bn], {"x": randn(2, 3, 2, 2), "g": randn(3, seed=1),
                                          "b": randn(3, seed=2)}, "y")
    lowered = lower(model, {}).graph
    producers = {name: n for n in lowered.node for name in n.output}
    consumers = {}
    for n in lowered.node:
        for name in n.input:
            consumers[name] = consumers.get(name, 0) + 1
    assert sum(match_batch_norm(n, producers, consumers) is not None for n in lowered.node) == 1
    graph = build_gradient_graph(model, {}, loss="mse").model.graph
    # the generic rules of Sqrt and ReduceSumSquare are not used
    grad_ops = [n.op_type for n in graph.node if n.name.startswith("grad/")]
    assert "Sqrt" not in grad_ops and "Reciprocal" not in grad_ops
    # reverse over reverse lowers the gradient graph again, and lowering gives every
    # BatchNormalization batch statistics: the backward must not use one
    assert "BatchNormalization" not in grad_ops
    assert grad_ops.count("Div") <= 2 and grad_ops.count("ReduceSum") <= 2
