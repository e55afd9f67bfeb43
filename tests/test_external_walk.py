"""_loading._external_tensors (one walk of the nodes) against onnx's own walk
(``external_data_helper._get_all_tensors``), order included: initializers of the graph and its
subgraphs, then attribute tensors of the graph, subgraphs and functions."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from onnxinit._loading import _external_tensors, external_data_files


def _tensor(name: str, external: bool) -> TensorProto:
    t = numpy_helper.from_array(np.arange(4, dtype=np.float32), name)
    if external:
        external_data_helper.set_external_data(t, f"{name}.bin")
        t.ClearField("raw_data")
    return t


def _constant(out: str, name: str, external: bool):
    return helper.make_node("Constant", [], [out], value=_tensor(name, external))


def _model() -> onnx.ModelProto:
    then = helper.make_graph([_constant("t_out", "then_const", True)], "then", [],
                             [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [4])],
                             initializer=[_tensor("then_init", True), _tensor("then_in", False)])
    other = helper.make_graph([_constant("e_out", "else_const", False)], "else", [],
                              [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [4])],
                              initializer=[_tensor("else_init", True)])
    nodes = [_constant("c0", "const0", True), _constant("c1", "const1", False),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("Add", ["y", "w"], ["z"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
        initializer=[_tensor("w", True), _tensor("inline", False), _tensor("w2", True)])
    function = helper.make_function("local", "f", [], ["o"], [_constant("o", "fn_const", True)],
                                    [helper.make_opsetid("", 17)])
    return helper.make_model(graph, functions=[function],
                             opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("local", 1)])


def test_external_tensors_as_onnx_walks_them():
    model = _model()
    expected = [t.name for t in external_data_helper._get_all_tensors(model)
                if external_data_helper.uses_external_data(t)]
    got = _external_tensors(model)
    assert [t.name for t in got] == expected
    assert expected == ["w", "w2", "else_init", "then_init", "const0", "then_const", "fn_const"]
    assert all(a is b or a == b for a, b in zip(got, [
        t for t in external_data_helper._get_all_tensors(model)
        if external_data_helper.uses_external_data(t)]))
    assert external_data_files(model) == external_data_files(model, got) == {
        n: f"{n}.bin" for n in expected}
