"""AutoInit on layers whose bias is a separate Add, against onnxruntime measurements."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.data import synthetic_feeds
from onnxinit.graph import load
from onnxinit.measure import measure
from onnxinit.rescale import rescale

from ..models import make_model


def _conv_add_bias_model():
    """Conv without a bias input, then Add of a per-channel constant (how some converters write
    a Conv's bias), twice, with a ReLU between; and a MatMul + Add (an exported Linear)."""
    rng = np.random.default_rng(0)

    def init(name, *shape, scale=1.0):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)

    inits = [init("conv1.weight", 8, 3, 3, 3), init("conv1.bias", 1, 8, 1, 1, scale=3.0),
             init("conv2.weight", 8, 8, 3, 3), init("conv2.bias", 1, 8, 1, 1, scale=3.0),
             numpy_helper.from_array(np.array([-1, 8 * 8 * 8], np.int64), "flat"),
             init("fc.weight", 8 * 8 * 8, 10), init("fc.bias", 10, scale=3.0)]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Add", ["c1", "conv1.bias"], ["b1"], name="bias1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["conv2.bias", "c2"], ["b2"], name="bias2"),
        helper.make_node("Relu", ["b2"], ["r2"], name="relu2"),
        helper.make_node("Reshape", ["r2", "flat"], ["f"], name="reshape"),
        helper.make_node("MatMul", ["f", "fc.weight"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "fc.bias"], ["y"], name="fc_bias"),
    ]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)


def test_the_parameter_table_finds_add_biases():
    graph = load(_conv_add_bias_model())
    layers = {layer.node: layer for layer in graph.layers}
    assert {n: (layer.bias, layer.output) for n, layer in layers.items()} == {
        "conv1": ("conv1.bias", "b1"), "conv2": ("conv2.bias", "b2"), "fc": ("fc.bias", "y")}


def test_autoinit_zeroes_a_conv_bias_written_as_an_add_and_reaches_its_target():
    result = rescale(_conv_add_bias_model(), "autoinit", write=False)
    for bias in ("conv1.bias", "conv2.bias", "fc.bias"):
        change = result.plan.changes[bias]
        assert change.array is not None and not np.any(change.array), bias
    # measured in onnxruntime on the rescaled model: every layer's output (after its bias)
    # has the target variance 1
    graph = load(result.model, batch_size=256)
    measured = measure(graph, synthetic_feeds(graph, seed=1), ["b1", "b2", "y"], device="cpu")
    for tensor, (_, var) in measured.items():
        assert abs(var - 1.0) < 0.1, (tensor, var)
