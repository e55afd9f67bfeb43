"""Constant folding's numpy evaluations give what onnx's reference evaluator gives (the oracle),
value and dtype, on the cases exporters write; what they do not handle is left to it."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxinit.passes import numpy_ops

I64 = np.int64


def _reference(node, inputs, opset):
    names = [n for n in node.input if n]
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), None)
         for n, v in zip(names, inputs, strict=False) if v is not None],
        [helper.make_tensor_value_info(o, 0, None) for o in node.output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=8)
    feeds = {n: v for n, v in zip(node.input, inputs, strict=False) if n and v is not None}
    return ReferenceEvaluator(model).run(None, feeds)


def _node(op, n_inputs, **attrs):
    return helper.make_node(op, [f"i{k}" if k >= 0 else "" for k in range(n_inputs)], ["y"],
                            **attrs)


CASES = [
    ("Constant", [], {"value": numpy_helper.from_array(np.arange(6, dtype=np.float32)
                                                        .reshape(2, 3))}, 17),
    ("Constant", [], {"value_ints": [3, -1, 2]}, 17),
    ("Constant", [], {"value_float": 0.5}, 17),
    ("Unsqueeze", [np.array(7, I64), np.array([0], I64)], {}, 17),
    ("Unsqueeze", [np.ones((2, 3), I64), np.array([-1, 0], I64)], {}, 17),
    ("Unsqueeze", [np.ones((2, 3), I64)], {"axes": [1, 3]}, 11),
    ("Squeeze", [np.ones((1, 3, 1), I64), np.array([0], I64)], {}, 17),
    ("Squeeze", [np.ones((1, 3, 1), I64)], {}, 17),
    ("Gather", [np.array([8, 128, 768], I64), np.array(1, I64)], {"axis": 0}, 17),
    ("Gather", [np.arange(12, dtype=I64).reshape(3, 4), np.array([-1, 0], I64)], {"axis": 1},
     17),
    ("Concat", [np.array([1], I64), np.array([-1, 64], I64)], {"axis": 0}, 17),
    ("Reshape", [np.arange(24, dtype=np.float32), np.array([2, -1, 3], I64)], {}, 17),
    ("Reshape", [np.arange(24, dtype=I64).reshape(2, 12), np.array([0, 3, -1], I64)], {}, 17),
    ("ConstantOfShape", [np.array([2, 3], I64)],
     {"value": numpy_helper.from_array(np.array([1], dtype=I64))}, 17),
    ("ConstantOfShape", [np.array([4], I64)], {}, 17),
    ("Add", [np.array([3, 4], I64), np.array(2, I64)], {}, 17),
    ("Sub", [np.array([3.5], np.float32), np.array([1.25], np.float32)], {}, 17),
    ("Mul", [np.array([3, -4], I64), np.array([5, 6], I64)], {}, 17),
    ("Div", [np.array([7, -7, 7, -7], I64), np.array([2, 2, -2, -2], I64)], {}, 17),
    ("Div", [np.array([1.0, 3.0], np.float32), np.array([3.0, 7.0], np.float32)], {}, 17),
    ("Mod", [np.array([7, -7, 7, -7], I64), np.array([3, 3, -3, -3], I64)], {}, 17),
    ("Mod", [np.array([7, -7], I64), np.array([3, 3], I64)], {"fmod": 1}, 17),
    ("Equal", [np.array([1, 2, 3], I64), np.array(2, I64)], {}, 17),
    ("Where", [np.array([True, False]), np.array([1, 2], I64), np.array([3, 4], I64)], {}, 17),
    ("Slice", [np.arange(10, dtype=I64), np.array([2], I64), np.array([-1], I64)], {}, 17),
    ("Slice", [np.arange(20, dtype=I64).reshape(4, 5), np.array([-1, 9], I64),
               np.array([-(2**63), 0], I64), np.array([0, 1], I64), np.array([-1, -2], I64)],
     {}, 17),
    ("Slice", [np.arange(10, dtype=I64), np.array([1], I64),
               np.array([2**63 - 1], I64)], {}, 17),
    ("Slice", [np.arange(10, dtype=I64)], {"starts": [1], "ends": [4]}, 9),
    ("Cast", [np.array([1.7, -1.7, 3.0], np.float32)], {"to": TensorProto.INT64}, 17),
    ("Cast", [np.array([3, 4], I64)], {"to": TensorProto.FLOAT}, 17),
    ("Transpose", [np.arange(6, dtype=I64).reshape(2, 3)], {"perm": [1, 0]}, 17),
    ("Transpose", [np.arange(24, dtype=I64).reshape(2, 3, 4)], {}, 17),
    ("Range", [np.array(0, I64), np.array(10, I64), np.array(3, I64)], {}, 17),
    ("Range", [np.array(5, I64), np.array(-3, I64), np.array(-2, I64)], {}, 17),
    ("Identity", [np.array([1, 2], I64)], {}, 17),
    ("Expand", [np.array([[1], [2]], I64), np.array([2, 3], I64)], {}, 17),
    ("Expand", [np.ones((3, 1), np.float32), np.array([2, 1, 4], I64)], {}, 17),
    ("Expand", [np.array([True, False]), np.array([3, 1], I64)], {}, 17),
    ("LessOrEqual", [np.arange(4, dtype=I64), np.array([[1], [2]], I64)], {}, 17),
    ("Less", [np.array([1.0, 2.0], np.float32), np.array(1.5, np.float32)], {}, 17),
    ("Greater", [np.array([1, 5], I64), np.array([3, 3], I64)], {}, 17),
    ("GreaterOrEqual", [np.array([1, 3], I64), np.array(3, I64)], {}, 17),
    ("Not", [np.array([True, False])], {}, 17),
    ("And", [np.array([True, True, False]), np.array([True, False, False])], {}, 17),
    ("Or", [np.array([True, False, False]), np.array([False, False, True])], {}, 17),
    # Swin-T's attention scale, ViT's, Swin-T's shifted-window masks, a position-id gather
    ("Pow", [np.array(32.0, np.float32), np.array(-0.5, np.float32)], {}, 17),
    ("Pow", [np.array([2.0, 3.0], np.float32), np.array(3, I64)], {}, 17),
    ("Pow", [np.array([2, 3], I64), np.array([2, 0], I64)], {}, 17),
    ("Sqrt", [np.array([96.0], np.float32)], {}, 17),
    ("Sqrt", [np.array([2.0, 0.0], np.float64)], {}, 17),
    ("ScatterND", [np.zeros((14, 14), np.float32),
                   np.stack(np.meshgrid(np.arange(7, 14), np.arange(3), indexing="ij"), -1),
                   np.full((7, 3), 4.0, np.float32)], {}, 17),
    ("ScatterND", [np.arange(8, dtype=I64), np.array([[1], [1], [5]], I64),
                   np.array([3, 4, 5], I64)], {"reduction": "add"}, 17),
    ("GatherElements", [np.arange(12, dtype=I64).reshape(3, 4),
                        np.array([[0, -1], [3, 2], [1, 1]], I64)], {"axis": 1}, 17),
    ("GatherElements", [np.arange(12, dtype=np.float32).reshape(3, 4),
                        np.array([[2, 0, 1, 0]], I64)], {"axis": 0}, 17),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_numpy_evaluation_matches_the_reference_evaluator(op, inputs, attrs, opset):
    node = _node(op, len(inputs), **attrs)
    (got,) = numpy_ops.evaluate(node, inputs, opset)
    (expected,) = _reference(node, inputs, opset)
    assert got.dtype == np.asarray(expected).dtype
    np.testing.assert_array_equal(got, expected)


def test_what_is_not_handled_is_said_so():
    with pytest.raises(numpy_ops.NotHandled):
        numpy_ops.evaluate(_node("Softmax", 1), [np.ones(3, np.float32)], 17)
    with pytest.raises(numpy_ops.NotHandled):
        numpy_ops.evaluate(_node("Range", 3), [np.array(0.0, np.float32)] * 3, 17)
    with pytest.raises(numpy_ops.NotHandled):
        numpy_ops.evaluate(helper.make_node("Split", ["x"], ["a", "b"], axis=0),
                           [np.ones(4, I64)], 17)


def test_gather_elements_beyond_the_reference_matches_onnxruntime():
    """BERT's token-type gather ([1, 512] by [1, 128] indices along axis 1): onnx's reference
    evaluator cannot (np.choose takes at most 64 choices), onnxruntime folded it before."""
    import onnxruntime as ort

    data = np.arange(512, dtype=I64).reshape(1, 512) * 3
    indices = np.arange(128, dtype=I64).reshape(1, 128)[:, ::-1].copy()
    node = helper.make_node("GatherElements", ["d", "i"], ["y"], axis=1)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("d", TensorProto.INT64, [1, 512]),
                      helper.make_tensor_value_info("i", TensorProto.INT64, [1, 128])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (expected,) = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"]).run(
        None, {"d": data, "i": indices})
    (got,) = numpy_ops.evaluate(node, [data, indices], 17)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(numpy_ops.NotHandled):  # out of range: left to the evaluators
        numpy_ops.evaluate(node, [data, indices + 500], 17)
