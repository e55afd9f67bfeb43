from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.errors import InvalidOptionError
from onnxinit.graph import load, parse_input_shapes, parse_stats

from .models import make_model, mlp


def _exporter_like_model():
    """Conv -> Shape/Gather/Unsqueeze/Concat -> Reshape -> MatMul with a transposed weight."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "conv.weight"),
        numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "dw.weight"),
        numpy_helper.from_array(rng.standard_normal((10, 8 * 6 * 6)).astype(np.float32), "fc.weight"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv"),
        helper.make_node("Conv", ["c", "dw.weight"], ["d"], group=8, pads=[1, 1, 1, 1], name="dw"),
        helper.make_node("Shape", ["d"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"]),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["shape"], axis=0),
        helper.make_node("Reshape", ["d", "shape"], ["flat"]),
        helper.make_node("Transpose", ["fc.weight"], ["fc.weight_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["flat", "fc.weight_t"], ["y"], name="fc"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )


def test_shape_subgraph_is_constant_and_not_signal():
    graph = load(_exporter_like_model(), batch_size=5)
    assert graph.shape("flat") == (5, 288)
    for tensor in ("s", "n", "n1", "shape", "fc.weight_t"):
        assert graph.is_constant(tensor) and not graph.is_signal(tensor)
    assert graph.value("shape").tolist() == [5, -1]
    assert graph.float_activations() == ["x", "c", "d", "flat", "y"]
    assert graph.is_shape_node("Shape_2") and not graph.is_shape_node("conv")


def test_parameters_and_fan():
    graph = load(_exporter_like_model())
    assert set(graph.parameters) == {"conv.weight", "dw.weight", "fc.weight"}
    assert graph.parameter_of("fc.weight_t") == "fc.weight"
    assert graph.parametric_nodes == ["conv", "dw", "fc"]
    assert graph.fan_in_out("conv") == (36, 72)
    assert graph.fan_in_out("dw") == (9, 9)  # depthwise: one input channel per group
    assert graph.fan_in_out("fc") == (288, 10)


def test_gemm_fan_with_transB():
    graph = load(mlp([6, 5, 3]))
    assert graph.fan_in_out("fc0") == (6, 5)
    assert graph.parameters["w0"].roles == {"weight"}
    assert graph.parameters["b0"].roles == {"bias"}


def test_symbolic_dims_resolution_and_errors():
    graph = load(mlp([6, 5]), batch_size=7)
    assert graph.input_shapes == {"x": (7, 6)}
    assert load(mlp([6, 5]), input_shapes={"x": (3, 6)}).shape("h0") == (3, 5)
    with pytest.raises(InvalidOptionError, match="does not match"):
        load(mlp([6, 5]), input_shapes={"x": (3, 7)})
    with pytest.raises(InvalidOptionError, match="not an input"):
        load(mlp([6, 5]), input_shapes={"nope": (3, 6)})


def test_option_parsers():
    assert parse_input_shapes(["x:1x3x224x224", "ids:2,16"]) == {"x": (1, 3, 224, 224), "ids": (2, 16)}
    assert parse_stats(["x:0.5,2"]) == {"x": (0.5, 2.0)}
    for bad in (["x"], ["x:1xq"]):
        with pytest.raises(InvalidOptionError):
            parse_input_shapes(bad)
    for bad in (["x:1"], ["x:0,-1"], ["x:a,b"]):
        with pytest.raises(InvalidOptionError):
            parse_stats(bad)
