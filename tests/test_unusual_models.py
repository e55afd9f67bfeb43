"""Every command on malformed and unusual files: a result (exit 0 or 1, finite numbers) or one
line ``onnxinit: error: ...`` with exit 2 and no file left behind, never a traceback.

Each case says which it must be; the loaders' and validators' own tests (test_loading.py,
test_validation.py) cover the reasons in detail. The cases are those of real exports and
hand-edited files: old exporters that list initializers as graph inputs or write 0 for a
dynamic axis, IR 3 and IR 14 files, sparse initializers, external data in a sub-folder or with
a wrong offset or length, quantized and half-precision graphs, subgraphs, non-tensor inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze
from onnxinit._loading import dense_initializers

from .cli import run
from .models import looping_model, make_model, mlp

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 16])


def _value(name, elem=TensorProto.FLOAT, shape=(8, 16)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _weight(name="w", rows=16, cols=16, dtype=np.float32):
    rng = np.random.default_rng(0)
    return numpy_helper.from_array((rng.standard_normal((rows, cols)) / 4).astype(dtype), name)


def _matmul_relu(**kwargs):
    return make_model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                       helper.make_node("Relu", ["h"], ["y"])], [X], [_value("y")],
                      [_weight()], **kwargs)


def _external(tmp_path, location="m.data", edit=None):
    path = tmp_path / "model.onnx"
    (tmp_path / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(mlp([16, 32, 8]), path, save_as_external_data=True, location=location,
                    size_threshold=0)
    if edit is not None:
        model = onnx.load(path, load_external_data=False)
        for tensor in model.graph.initializer:
            entries = {e.key: e.value for e in tensor.external_data}
            edit(entries)
            del tensor.external_data[:]
            for key, value in entries.items():
                tensor.external_data.add(key=key, value=value)
        onnx.save(model, path)
    return path


def _typed_mlp(elem):
    model = mlp([16, 32, 8])
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor).astype(np.float32)
        tensor.CopyFrom(helper.make_tensor(tensor.name, elem, values.shape,
                                           values.flatten().tolist()))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.elem_type = elem
    return model


def _qdq():
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-100, 100, (16, 16)).astype(np.int8), "wq")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["h"]),
             helper.make_node("Relu", ["h"], ["y"])]
    return make_model(nodes, [X], [_value("y")], [scale, zero, weight])


def _qlinear_conv():
    def const(name, value, dtype):
        return numpy_helper.from_array(np.array(value, dtype), name)

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(0, 255, (8, 4, 3, 3)).astype(np.uint8), "wq")
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("QLinearConv", ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"],
                              ["yq"], pads=[1, 1, 1, 1]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    inits = [const("xs", 0.05, np.float32), const("xz", 128, np.uint8), weight,
             const("ws", 0.01, np.float32), const("wz", 128, np.uint8),
             const("ys", 0.1, np.float32), const("yz", 128, np.uint8)]
    return make_model(nodes, [_value("x", shape=(2, 4, 8, 8))],
                      [_value("y", shape=(2, 8, 8, 8))], inits)


def _sparse(coordinates=False):
    values = numpy_helper.from_array(np.array([1.0, 2.0, -1.0, 0.5], np.float32), "w")
    flat = np.array([0, 17, 40, 255], np.int64)
    indices = np.stack(np.unravel_index(flat, (16, 16)), axis=1) if coordinates else flat
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(indices, "w_idx"),
                                       [16, 16])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]),
                               helper.make_node("Relu", ["h"], ["y"])], "sparse",
                              [_value("x", shape=("N", 16))], [_value("y", shape=("N", 16))],
                              sparse_initializer=[sparse])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _loop():
    body = helper.make_graph(
        [helper.make_node("MatMul", ["s_in", "w"], ["m"]), helper.make_node("Relu", ["m"], ["s_out"]),
         helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []), _value("s_in")],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), _value("s_out")])
    return make_model([helper.make_node("Loop", ["trip", "", "x"], ["y"], body=body)], [X],
                      [_value("y")], [numpy_helper.from_array(np.array(3, np.int64), "trip"),
                                      _weight()])


def _write(model):
    def build(tmp_path):
        path = tmp_path / "model.onnx"
        onnx.save(model() if callable(model) else model, path)
        return path
    return build


def _bytes(data):
    def build(tmp_path):
        path = tmp_path / "model.onnx"
        path.write_bytes(data)
        return path
    return build


def _truncated(tmp_path):
    path = _write(mlp([16, 32, 8]))(tmp_path)
    path.write_bytes(path.read_bytes()[:150])
    return path


def _not_utf8(field: bytes):
    """The sample MLP with one text field's bytes made invalid UTF-8 (a corrupted file), which
    protobuf hands back as bytes instead of str."""
    def build(tmp_path):
        data = mlp([16, 32, 8]).SerializeToString()
        assert field in data
        path = tmp_path / "model.onnx"
        path.write_bytes(data.replace(field, field[:1] + b"\xff" + field[2:], 1))
        return path
    return build


def _folder(tmp_path):
    (tmp_path / "model.onnx").mkdir()
    return tmp_path / "model.onnx"


def _ir(version, opset=18):
    model = _matmul_relu(opset=opset)
    model.ir_version = version
    if version < 4:  # before IR 4 every initializer was also a graph input
        model.graph.input.append(_value("w", shape=(16, 16)))
    return model


def _no_opset():
    model = _matmul_relu()
    del model.opset_import[:]
    return model


def _initializers_as_inputs():
    model = mlp([16, 32, 8])
    for tensor in model.graph.initializer:
        model.graph.input.append(_value(tensor.name, tensor.data_type, tensor.dims))
    return model


def _symbolic():
    model = mlp([16, 32, 8])
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "features"
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    return model


def _cycle():
    return make_model([helper.make_node("Add", ["x", "b"], ["a"]),
                       helper.make_node("Relu", ["a"], ["b"]),
                       helper.make_node("Relu", ["a"], ["y"])], [X], [_value("y")])


def _empty_graph():
    graph = helper.make_graph([], "empty", [X], [_value("x")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _sequence_input():
    return make_model([helper.make_node("SequenceAt", ["s", "zero"], ["a"]),
                       helper.make_node("MatMul", ["a", "w"], ["y"])],
                      [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [8, 16])],
                      [_value("y")],
                      [numpy_helper.from_array(np.array(0, np.int64), "zero"), _weight()])


def _string_input():
    return make_model([helper.make_node("Identity", ["s"], ["s2"]),
                       helper.make_node("MatMul", ["x", "w"], ["y"])],
                      [_value("s", TensorProto.STRING, (8,)), X],
                      [_value("y"), _value("s2", TensorProto.STRING, (8,))], [_weight()])


def _declared_zero_batch():
    # an old exporter's 0 for a dynamic axis, on the input and the output
    return make_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                      [_value("x", shape=(0, 16))], [_value("y", shape=(0, 16))], [_weight()])


def _clash_at_run_time():
    """Two Reshapes of x to shapes built from its own Shape, [8, 2, 8] and [8, 8, 2], multiplied:
    only known once the shape subgraph is evaluated (an exporter's mistake, as in a rotary
    embedding that mixes head layouts)."""
    const = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
             helper.make_node("Concat", ["n", "a_tail"], ["shape_a"], axis=0),
             helper.make_node("Concat", ["n", "b_tail"], ["shape_b"], axis=0),
             helper.make_node("Reshape", ["x", "shape_a"], ["a"]),
             helper.make_node("Reshape", ["x", "shape_b"], ["b"]),
             helper.make_node("Mul", ["a", "b"], ["y"])]
    return make_model(nodes, [X], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                      [const("zero", [0]), const("one", [1]), const("a_tail", [2, 8]),
                       const("b_tail", [8, 2])])


def _clash_with_symbolic(dims, reduce=False):
    """:func:`_clash_at_run_time` with some input dims symbolic (the analysis assumes them),
    optionally followed by the mean square over the last axis of the shapeless product."""
    model = _clash_at_run_time()
    del model.graph.input[:]
    model.graph.input.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, dims))
    if reduce:
        model.graph.output[0].name = "p"
        model.graph.node[-1].output[0] = "p"
        model.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
        model.graph.node.append(helper.make_node("Pow", ["p", "two"], ["q"]))
        model.graph.node.append(helper.make_node("ReduceMean", ["q"], ["y"], axes=[-1]))
        model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
        del model.graph.output[0]
    return model


def _weights_of_two_ranks():
    """A weight concatenated from a matrix and a vector (the dynamo exporter's LSTM with
    ``proj_size`` writes such Concats): onnx's default shape inference lets it pass,
    onnxruntime refuses the file."""
    rows = numpy_helper.from_array(np.ones((8, 16), np.float32), "rows")
    row = numpy_helper.from_array(np.ones(16, np.float32), "row")
    return make_model([helper.make_node("Concat", ["rows", "row"], ["w"], axis=0),
                       helper.make_node("MatMul", ["x24", "w"], ["y"])],
                      [_value("x24", shape=(8, 24))], [_value("y")], [rows, row])


def _output_declared_int64():
    """A float output declared int64 (a hand edit, or a converter's wrong dtype)."""
    model = _matmul_relu()
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    return model


def _negative_transpose_perm():
    """A Transpose with ``perm`` [0, -1, 1] (the TorchScript exporter writes such perms for
    HF Mamba-2's mixer): onnx and onnxruntime both refuse it."""
    return make_model([helper.make_node("Transpose", ["x3"], ["t"], perm=[0, -1, 1]),
                       helper.make_node("MatMul", ["t", "w"], ["y"])],
                      [_value("x3", shape=(8, 4, 16))], [_value("y", shape=(8, 16, 16))],
                      [_weight(rows=4)])


def _undefined_initializer_type():
    model = _matmul_relu()
    model.graph.initializer[0].data_type = TensorProto.UNDEFINED
    return model


def _listed_twice(field):
    """A graph input or an initializer written twice (onnxruntime refuses the first; of the
    second it silently keeps the last)."""
    model = _matmul_relu()
    getattr(model.graph, field).append(getattr(model.graph, field)[0])
    return model


def _no_inputs():
    """Every tensor computed from initializers (a constant function)."""
    return make_model([helper.make_node("MatMul", ["c", "w"], ["h"]),
                       helper.make_node("Relu", ["h"], ["y"])], [], [_value("y", shape=(16, 16))],
                      [_weight(), _weight("c")])


def _scalar_reading_its_dims():
    """An input declared a scalar (rank 0) that the graph reads dim 1 of (a transformer's
    input_ids edited to rank 0): onnxruntime fails on the Gather whenever the model runs. The
    analysis went on with the tensor passed through (a prediction of a tensor that cannot
    exist), and onnxruntime's own error log printed four lines to the terminal."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["n"]),
             helper.make_node("Unsqueeze", ["n", "zero"], ["n1"]),
             helper.make_node("ConstantOfShape", ["n1"], ["c"],
                              value=numpy_helper.from_array(np.array([1.0], np.float32))),
             helper.make_node("Mul", ["c", "x"], ["y"])]
    return make_model(nodes, [_value("x", shape=())],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                      [numpy_helper.from_array(np.array(1, np.int64), "one"),
                       numpy_helper.from_array(np.array([0], np.int64), "zero")])


def _positions_past_the_table(tokens=32, rows=16):
    """Position ids computed from the input's length (Shape, Range) gathered from a table of
    ``rows`` positions, the input declared ``tokens`` long (a text model given more tokens than
    its position table holds): onnxruntime fails on the Gather. Every rule that runs a subgraph
    failed there and sent its node to the fallback (75 s for the transformer sample at 1000
    tokens), predicting tensors that cannot exist."""
    const = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["n"]),
             helper.make_node("Range", ["zero", "n", "one"], ["positions"]),
             helper.make_node("Gather", ["table", "positions"], ["p"]),
             helper.make_node("Add", ["x", "p"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["y"])]
    table = np.random.default_rng(0).standard_normal((rows, 16)).astype(np.float32)
    return make_model(nodes, [_value("x", shape=(8, tokens, 16))],
                      [_value("y", shape=(8, tokens, 16))],
                      [const("zero", 0), const("one", 1), _weight(),
                       numpy_helper.from_array(table, "table")])


def _image_declared_uint8():
    """A float MLP whose input is declared uint8 (an image's dtype, a hand edit): onnx's
    strict inference and onnxruntime refuse the Gemm. It was analysed (exit 0, one float
    tensor) and `rescale` ended in "internal error (StopIteration)"."""
    model = mlp([16, 32, 8])
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    return model


def _if_branches_disagree(second_output=False):
    """An If on a constant true whose else branch returns an int64 constant (or two outputs)
    where the then branch returns the float signal: onnxruntime refuses the file. The analysis
    inlined the then branch and never looked at the other (exit 0)."""
    then_branch = helper.make_graph([helper.make_node("Identity", ["h"], ["t"])], "then", [],
                                    [_value("t")])
    if second_output:
        else_nodes = [helper.make_node("Neg", ["h"], ["e"]), helper.make_node("Abs", ["h"], ["f"])]
        else_outputs = [_value("e"), _value("f")]
    else:
        else_nodes = [helper.make_node("Constant", [], ["e"], value=numpy_helper.from_array(
            np.ones((8, 16), np.int64)))]
        else_outputs = [_value("e", TensorProto.INT64)]
    else_branch = helper.make_graph(else_nodes, "else", [], else_outputs)
    return make_model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                       helper.make_node("If", ["cond"], ["i"], then_branch=then_branch,
                                        else_branch=else_branch),
                       helper.make_node("Relu", ["i"], ["y"])], [X], [_value("y")],
                      [numpy_helper.from_array(np.array(True), "cond"), _weight()])


def _required_input_empty():
    """A Gather whose data input is named "" (the marker of an omitted optional input), in a
    side branch: shape inference skips the node, the analysis passed it through (exit 0);
    onnx's checker and onnxruntime refuse the file."""
    return make_model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                       helper.make_node("Gather", ["", "idx"], ["g"]),
                       helper.make_node("Add", ["h", "g"], ["y"])], [X], [_value("y")],
                      [numpy_helper.from_array(np.zeros(16, np.int64), "idx"), _weight()])


def _infinite_weight():
    """A bias with an inf (a corrupted weight): the fallback's numpy printed two lines of
    RuntimeWarning before the one-line error."""
    bias = np.ones(16, np.float32)
    bias[0] = np.inf
    return make_model([helper.make_node("Add", ["x", "b"], ["h"]),
                       helper.make_node("Relu", ["h"], ["y"])], [X], [_value("y")],
                      [numpy_helper.from_array(bias, "b")])


def _escaping(location, link=False):
    """The sample MLP's tensors declared external at ``location``, outside the model's folder
    (``link``: a symbolic link in the folder to a file outside it, named ``location``). onnx
    and onnxruntime refuse both; every command must refuse without reading the file."""
    def build(tmp_path):
        path = _external(tmp_path)
        if link:
            outside = tmp_path.parent / "outside.data"
            (tmp_path / "m.data").rename(outside)
            (tmp_path / location).symlink_to(outside)
        model = onnx.load(path, load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, path)
        return path
    return build


def _offset_past_end(entries):
    entries["offset"] = str(int(entries.get("offset", 0)) + 100_000)


def _length_short(entries):
    entries["length"] = str(int(entries["length"]) - 4)


# case -> (builder, None when every command gives a result, else words of the one-line error
# analyze gives)
CASES = {
    "zero bytes": (_bytes(b""), "empty file"),
    "truncated protobuf": (_truncated, "not a readable ONNX model"),
    "PNG image": (_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2), "not a readable ONNX"),
    "text file": (_bytes(b"hello world\n" * 20), "not a readable ONNX model"),
    "op type not valid UTF-8": (_not_utf8(b"Relu"), "not valid UTF-8"),
    "folder": (_folder, "folder"),
    "external data missing": (
        lambda p: (_external(p), (p / "m.data").unlink())[0], "is missing"),
    "external data offset past its end": (
        lambda p: _external(p, edit=_offset_past_end), "is truncated"),
    "external data length short": (
        lambda p: _external(p, edit=_length_short), "holds 2044 bytes"),
    "external data in a sub-folder": (lambda p: _external(p, "weights/m.data"), None),
    "external data at ../../etc/passwd": (_escaping("../../etc/passwd"),
                                          "outside the model's folder"),
    "external data through a link out of the folder": (_escaping("link.data", link=True),
                                                       "outside the model's folder"),
    "cycle": (_write(_cycle), "cycle"),
    "undefined input": (_write(make_model([helper.make_node("MatMul", ["x", "nope"], ["y"])],
                                          [X], [_value("y")])), "'nope'"),
    "output listed twice": (_write(make_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                                              [X], [_value("y"), _value("y")], [_weight()])),
                            None),
    "custom-domain op": (_write(make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Mystery", ["h"], ["y"], domain="com.example")], [X], [_value("y")],
        [_weight()], extra_opsets=[("com.example", 1)])), None),
    "opset newer than onnx's": (_write(lambda: _matmul_relu(opset=onnx.defs.onnx_opset_version()
                                                             + 5)), None),
    "no opset import": (_write(_no_opset), "no default-domain opset"),
    "IR version 14": (_write(lambda: _ir(14)), None),
    "IR version 3": (_write(lambda: _ir(3, opset=7)), None),
    "no initializers": (_write(make_model([helper.make_node("Relu", ["x"], ["h"]),
                                           helper.make_node("Tanh", ["h"], ["y"])], [X],
                                          [_value("y")])), None),
    "symbolic dims only": (_write(_symbolic), None),
    "float16": (_write(lambda: _typed_mlp(TensorProto.FLOAT16)), None),
    "bfloat16": (_write(lambda: _typed_mlp(TensorProto.BFLOAT16)), None),
    "int8 QuantizeLinear/DequantizeLinear": (_write(_qdq), None),
    "QLinearConv": (_write(_qlinear_conv), None),
    "initializers listed as inputs": (_write(_initializers_as_inputs), None),
    "sparse initializer": (_write(_sparse), None),
    "empty graph": (_write(_empty_graph), "empty graph"),
    "If subgraph": (_write(lambda: make_model(
        [helper.make_node("If", ["cond"], ["y"],
                          then_branch=helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["t"])],
                                                        "then", [], [_value("t")]),
                          else_branch=helper.make_graph([helper.make_node("Neg", ["x"], ["e"])],
                                                        "else", [], [_value("e")]))],
        [X], [_value("y")], [numpy_helper.from_array(np.array(True), "cond"), _weight()])), None),
    "Loop subgraph": (_write(_loop), None),
    "sequence input": (_write(_sequence_input), "no declared shape"),
    "string input": (_write(_string_input), None),
    "declared 0 for a dynamic axis": (_write(_declared_zero_batch), None),
    "shapes that clash only at run time": (_write(_clash_at_run_time),
                                           "onnxruntime cannot run it either"),
    "shapes that clash at run time, batch assumed": (
        _write(lambda: _clash_with_symbolic(["batch", 16])), "onnxruntime cannot run it either"),
    "shapes that clash at run time, length assumed": (
        _write(lambda: _clash_with_symbolic([8, "length"], reduce=True)), None),
    "weights concatenated from two ranks": (_write(_weights_of_two_ranks),
                                            "onnxruntime refuses it too"),
    "float output declared int64": (_write(_output_declared_int64), "onnxruntime refuses it too"),
    "initializer of undefined type": (_write(_undefined_initializer_type), "no element type"),
    "negative Transpose perm": (_write(_negative_transpose_perm), "Invalid attribute perm"),
    "graph input listed twice": (_write(lambda: _listed_twice("input")),
                                 "graph input 'x' is defined twice"),
    "initializer listed twice": (_write(lambda: _listed_twice("initializer")),
                                 "initializer 'w' is defined twice"),
    "op newer than the imported opset": (_write(lambda: make_model(
        [helper.make_node("Gelu", ["x"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])],
        [X], [_value("y")], [_weight()], opset=13)), "Gelu is not in opset 13"),
    "attribute of the wrong type": (_write(lambda: make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Softmax", ["h"], ["y"], axis=1.0)], [X], [_value("y")], [_weight()])),
        "attribute 'axis' is float"),
    "no inputs": (_write(_no_inputs), None),
    # stop 43 (benchmarks/malformed_models.py's structural mutations, docs/robustness.md)
    "Loop that never stops": (_write(looping_model), "runs 4611686018427387904 steps"),
    "scalar input whose dims are read": (_write(_scalar_reading_its_dims),
                                         "onnxruntime cannot run it either (inputs x scalar)"),
    "positions past the position table": (_write(_positions_past_the_table),
                                          "reads index 31 of axis 0 of 'table'"),
    "an inf in a weight": (_write(_infinite_weight), "non-finite"),
    "float input declared uint8": (_write(_image_declared_uint8), "has unsupported type"),
    # a 2-layer BERT declared 2^40 tokens: the rules' per-row work ran past a 90 s alarm
    "input axis of 2^40": (_write(lambda: make_model(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])],
        [_value("x", shape=(8, 1 << 40))], [_value("y", shape=(8, 1 << 40))])),
        "an axis of more than 2147483647"),
    "If branches of different types": (_write(_if_branches_disagree),
                                       "output 0 is float in one and int64 in the other"),
    "If branches with different output counts": (
        _write(lambda: _if_branches_disagree(second_output=True)), "return 1 and 2 outputs"),
    "required input named ''": (_write(_required_input_empty),
                                "its input 0 (data) is required but named ''"),
}

COMMANDS = {
    "analyze": lambda m, d: ["analyze", m],
    "check": lambda m, d: ["check", m],
    "rescale": lambda m, d: ["rescale", m, "--method", "autoinit", "-o", d / "out.onnx"],
    "export-weights": lambda m, d: ["export-weights", m, "-o", d / "w.npz"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_result_or_one_line_error(case, command, tmp_path, capsys):
    build, refusal = CASES[case]
    folder = tmp_path / "case"
    folder.mkdir()
    path = build(folder)
    before = set(folder.rglob("*"))
    code, out, err = run(COMMANDS[command](path, folder), capsys)
    assert "Traceback" not in out + err, (code, err)
    if code == 2:
        assert out == "" and len(err.strip().splitlines()) == 1, err
        assert err.startswith("onnxinit: error:"), err
        assert set(folder.rglob("*")) == before, "a failed command left a file"
    else:
        assert code in (0, 1), (code, err)
        for word in ("nan", "inf"):
            assert word not in out.lower().replace("info", "").split(), out
    if command == "analyze":
        if refusal is None:
            assert code == 0, err
        else:
            assert code == 2 and refusal in err, err


@pytest.mark.parametrize("case", ["symbolic dims only", "declared 0 for a dynamic axis"])
def test_input_shape_given_for_dynamic_axes(case, tmp_path, capsys):
    path = CASES[case][0](tmp_path)
    code, out, err = run(["analyze", path, "--input-shape", "x:4x16", "--json"], capsys)
    assert code == 0, err
    shapes = [t["shape"] for t in json.loads(out)["tensors"]]
    assert shapes[0] == [4, 16] and all(s[0] == 4 for s in shapes)


def test_sparse_initializers_read_as_onnxruntime_reads_them():
    """A sparse initializer (flat or coordinate indices) is the dense tensor onnxruntime
    computes with: the densified model gives onnxruntime's outputs for the sparse one, and the
    analysis predicts the measured variance."""
    feeds = {"x": np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)}
    for coordinates in (False, True):
        model = _sparse(coordinates)
        dense = dense_initializers(model)
        assert not dense.graph.sparse_initializer and len(dense.graph.initializer) == 1
        outputs = [ort.InferenceSession(m.SerializeToString(),
                                        providers=["CPUExecutionProvider"]).run(None, feeds)[0]
                   for m in (model, dense)]
        np.testing.assert_array_equal(outputs[0], outputs[1])
    # 4 non-zero weights: each h column is one input column times a weight (or 0)
    result = analyze(_sparse(), batch_size=4096, measure=True)
    h = next(t for t in result.tensors if t.name == "h")
    assert h.var == pytest.approx(h.measured_var, rel=0.1)


def test_declared_zero_axis_is_analysed_at_the_resolved_size():
    """An output declared [0, 16] (an exporter's 0 for a dynamic axis, as on the input) is the
    tensor shape inference computes, not an empty one: it is predicted, and checked."""
    result = analyze(_declared_zero_batch(), measure=True)
    y = result.tensors[-1]
    assert y.name == "y" and y.shape == [32, 16]
    assert y.var == pytest.approx(y.measured_var, rel=0.15)


def test_measured_overflow_is_left_out_not_reported_as_nan():
    """Weights of 1e12 overflow float32 by the third MatMul: onnxruntime computes inf there; the
    comparison leaves those tensors out with a warning instead of a NaN error."""
    weight = numpy_helper.from_array(np.full((16, 16), 1e12, np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h1"]),
             helper.make_node("MatMul", ["h1", "w"], ["h2"]),
             helper.make_node("MatMul", ["h2", "w"], ["y"])]
    model = make_model(nodes, [X], [_value("y")], [weight])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": np.ones((8, 16), np.float32)})[0]
    assert not np.isfinite(y).all()
    result = analyze(model, measure=True)
    errors = [t.relative_error for t in result.tensors if t.relative_error is not None]
    assert errors and all(math.isfinite(e) for e in errors)
    assert result.tensors[-1].measured_var is None
    assert any("overflowed" in w and "'y'" in w for w in result.warnings)


def test_pointwise_convs_of_huge_weights_predict_finite_variances():
    """The same for 1x1 Convs of weights 1e12 after a 3x3 Conv: the channels' cross-term
    factor overflowed its float32 product, and the Conv predicted NaN (an error naming a bug);
    it is computed in float64 there (every output channel the same sum: the cross terms are
    most of the variance)."""
    rng = np.random.default_rng(0)
    first = numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "w0")
    huge = numpy_helper.from_array(np.full((16, 16, 1, 1), 1e12, np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h0"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["h0", "w"], ["h1"]),
             helper.make_node("Conv", ["h1", "w"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [8, 16, 8, 8])],
                       [_value("y", shape=(8, 16, 8, 8))], [first, huge])
    result = analyze(model, measure=True)
    assert all(math.isfinite(t.var) for t in result.tensors)
    errors = [t.relative_error for t in result.tensors if t.relative_error is not None]
    assert errors and all(abs(e) < 0.05 for e in errors)


def test_newer_opset_warning_names_the_file_once(tmp_path, capsys):
    path = _write(lambda: _matmul_relu(opset=onnx.defs.onnx_opset_version() + 5))(tmp_path)
    code, _, err = run(["analyze", path], capsys)
    line = next(line for line in err.splitlines() if "knows up to" in line)
    assert code == 0 and line.count(str(path)) == 1, line


@pytest.mark.parametrize("reduction", ["none", "max"])
def test_partly_masked_channel_written_by_a_scatter(reduction):
    """Longformer's pattern: a ScatterND writes finite values into a channel an attention mask
    had set to -inf. The channel then mixes -inf and finite elements; its moments are those of
    the finite ones (as onnxruntime's measurement leaves -inf out), not NaN, which stopped the
    analysis. Reduction "none" has a rule (rules/scatter.py: the written samples take the
    updates' statistics); "max" (``max(-inf, u) = u``) has none, so the empirical fallback
    measures the mixed channel."""
    mask = np.zeros((1, 4, 1), np.float32)
    mask[:, 3] = -np.inf
    constants = [numpy_helper.from_array(mask, "mask"),
                 numpy_helper.from_array(np.arange(4, dtype=np.int64).reshape(4, 1), "rows"),
                 numpy_helper.from_array(np.array([0], np.int64), "start"),
                 numpy_helper.from_array(np.array([4], np.int64), "end"),
                 numpy_helper.from_array(np.array([0], np.int64), "axis")]
    nodes = [helper.make_node("Add", ["x", "mask"], ["a"]),
             helper.make_node("Slice", ["x", "start", "end", "axis"], ["u"]),
             helper.make_node("ScatterND", ["a", "rows", "u"], ["y"], reduction=reduction),
             helper.make_node("Softmax", ["y"], ["p"], axis=1)]
    model = make_model(nodes, [_value("x", shape=(8, 4, 6))], [_value("p", shape=(8, 4, 6))],
                       constants, opset=18)
    result = analyze(model, measure=True)
    assert all(math.isfinite(t.var) and math.isfinite(t.mean) for t in result.tensors)
    y = next(t for t in result.tensors if t.name == "y")
    expected = "scatter_nd" if reduction == "none" else "empirical"
    assert y.rule == expected and y.var == pytest.approx(y.measured_var, rel=0.2)


def test_rms_norm_over_a_narrow_row():
    """A decomposed RMSNorm over 16 features (a per-head query/key norm): the mean of squares'
    Gaussian law crosses 0 at 2.8 standard deviations, where the tensor is nonnegative. The
    square root is predicted over the Gamma law of a mean of squares (it was refused, and the
    fallback measured NaN on the negative draws: the analysis stopped); checked against
    onnxruntime."""
    def const(name, value):
        return numpy_helper.from_array(np.array(value, np.float32), name)

    nodes = [helper.make_node("Mul", ["x", "scale"], ["xs"]),
             helper.make_node("Pow", ["xs", "two"], ["squares"]),
             helper.make_node("ReduceMean", ["squares"], ["mean_square"], axes=[-1]),
             helper.make_node("Add", ["mean_square", "eps"], ["shifted"]),
             helper.make_node("Sqrt", ["shifted"], ["rms"]),
             helper.make_node("Div", ["one", "rms"], ["inverse"]),
             helper.make_node("Mul", ["xs", "inverse"], ["y"])]
    shape = (64, 32, 16)
    model = make_model(nodes, [_value("x", shape=shape)], [_value("y", shape=shape)],
                       [const("scale", 0.16), const("two", 2.0), const("eps", 1e-6),
                        const("one", 1.0)], opset=17)
    result = {t.name: t for t in analyze(model, measure=True).tensors}
    for name in ("rms", "inverse"):
        assert result[name].var == pytest.approx(result[name].measured_var, rel=0.1), name


def test_variances_past_1e154_are_predicted_not_an_internal_error(capsys):
    """Weights of 1e9 and two squarings make variances of 1e159: their squares overflow a
    Python float in the pairs' algebra (an OverflowError ended `rescale` on Mamba as an
    internal error). The variances are still finite in float64 and are reported; float32
    holds none of them, so there is no measurement to compare with."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal((16, 16)) * 1e9).astype(np.float32),
                                       name) for name in ("w1", "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]),
             helper.make_node("MatMul", ["z", "w2"], ["b"]),
             helper.make_node("Mul", ["a", "b"], ["ab"]),
             helper.make_node("Mul", ["ab", "ab"], ["ab2"]),
             helper.make_node("Mul", ["b", "b"], ["bb"]),
             helper.make_node("Mul", ["bb", "bb"], ["b4"]),
             helper.make_node("Add", ["ab2", "b4"], ["s"]),
             helper.make_node("Pow", ["s", "two"], ["squares"]),
             helper.make_node("ReduceMean", ["squares"], ["y"], axes=[-1])]
    model = make_model(nodes, [X, _value("z")], [_value("y", shape=(8, 1))],
                       [*weights, numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    tensors = {t.name: t for t in analyze(model).tensors}
    # independent a and b: Var(a b) = mean over columns of Var a_j Var b_j, in float64
    w1, w2 = (numpy_helper.to_array(w).astype(np.float64) for w in weights)
    expected = np.mean((w1 ** 2).sum(axis=0) * (w2 ** 2).sum(axis=0))
    assert tensors["ab"].var == pytest.approx(expected, rel=1e-6)
    assert 1e154 < tensors["y"].var < np.inf


def test_token_ids_through_index_arithmetic_are_drawn_as_token_ids():
    """Keras 3's Embedding, as tf2onnx writes it, maps a negative index i to i + rows (Less,
    Where, Add) before the Gather: the input is still token ids, drawn uniformly over the
    table by --measure (it was fed zeros: every token the same row, and a transformer's
    attention measured uniform)."""
    rows = 64
    table = np.random.default_rng(0).uniform(-0.05, 0.05, (rows, 16)).astype(np.float32)
    nodes = [helper.make_node("Less", ["ids", "zero"], ["negative"]),
             helper.make_node("Add", ["ids", "rows"], ["wrapped"]),
             helper.make_node("Where", ["negative", "wrapped", "ids"], ["index"]),
             helper.make_node("Gather", ["table", "index"], ["e"]),
             helper.make_node("Relu", ["e"], ["y"])]
    model = make_model(nodes, [_value("ids", TensorProto.INT32, (64, 32))],
                       [_value("y", shape=(64, 32, 16))],
                       [numpy_helper.from_array(table, "table"),
                        numpy_helper.from_array(np.array(0, np.int32), "zero"),
                        numpy_helper.from_array(np.array(rows, np.int32), "rows")])
    result = {t.name: t for t in analyze(model, measure=True).tensors}
    assert result["e"].var == pytest.approx(table.var(), rel=0.05)
    assert result["e"].measured_var == pytest.approx(table.var(), rel=0.1)


def test_sequence_tensors_are_not_measured_and_do_not_stop_the_run():
    """A list built with SequenceEmpty/SequenceInsert and concatenated (MViT's pooling writes
    one in a Loop): the sequences have no element type, and asking onnxruntime for them as
    outputs made it refuse the whole model, so neither the missing shapes nor --measure ran;
    SequenceEmpty was also folded as a float64 tensor. Now the tensors are measured and
    predicted; the sequences are left out."""
    weight = _weight()
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("SequenceEmpty", [], ["empty"], dtype=TensorProto.FLOAT),
             helper.make_node("SequenceInsert", ["empty", "h"], ["s1"]),
             helper.make_node("SequenceInsert", ["s1", "h"], ["s2"]),
             helper.make_node("ConcatFromSequence", ["s2"], ["c"], axis=1),
             helper.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, [_value("x", shape=("N", 16))],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    result = analyze(model, measure=True)
    tensors = {t.name: t for t in result.tensors}
    assert tensors["c"].shape == [32, 32] and tensors["s1"].measured_var is None
    for name in ("c", "y"):
        assert tensors[name].var == pytest.approx(tensors[name].measured_var, rel=0.1), name


def test_check_without_a_loss_judges_the_forward_pass(tmp_path, capsys):
    """`check` runs the backward analysis by default; a model no loss can be put on (here
    its only float output depends on no input; MViT's output shape is not static) was refused
    (exit 2). It is judged on its forward pass, with a warning that says why 005/006 were
    not."""
    model = make_model([helper.make_node("MatMul", ["w", "w2"], ["y"])], [],
                       [_value("y", shape=(16, 16))], [_weight(), _weight("w2")])
    path = _write(model)(tmp_path)
    code, out, err = run(["check", path], capsys)
    assert code == 0 and "passed" in out, (code, out, err)
    assert "gradients not analysed" in err and "Traceback" not in err


def test_time_first_token_ids_are_token_ids(tmp_path, capsys):
    """XLNet transposes its ids to time-first before the lookup: they were taken for an input
    that is no index, fed as zeros (one row for every token), and `check` failed the model
    with ONNXINIT002 at the embedding (signal variance 0)."""
    table = np.random.default_rng(0).normal(0, 0.02, (64, 16)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["ids"], ["time_first"], perm=[1, 0]),
             helper.make_node("Gather", ["table", "time_first"], ["e"]),
             helper.make_node("MatMul", ["e", "w"], ["y"])]
    model = make_model(nodes, [_value("ids", TensorProto.INT64, (8, 32))],
                       [_value("y", shape=(32, 8, 16))],
                       [numpy_helper.from_array(table, "table"), _weight()])
    result = {t.name: t for t in analyze(model, measure=True).tensors}
    assert result["e"].var == pytest.approx(result["e"].measured_var, rel=0.1)
    path = _write(model)(tmp_path)
    code, out, err = run(["check", path], capsys)
    assert code == 0 and "ONNXINIT002" not in out, out


def _pool_mixer(residual: bool):
    """PoolFormer's token mixer, ``h + gamma * (AvgPool(h) - h)`` with LayerScale gamma = 1e-5
    per channel, between two convolutions; ``residual=False`` drops the skip (``gamma * (...)``
    alone: the signal really is 1e-10 of its input)."""
    rng = np.random.default_rng(0)
    conv = [numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) / np.sqrt(72))
                                    .astype(np.float32), f"k{i}") for i in range(2)]
    gamma = numpy_helper.from_array(np.full((8, 1, 1), 1e-5, np.float32), "gamma")
    nodes = [helper.make_node("Conv", ["x", "k0"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["h"], ["pooled"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], count_include_pad=0),
             helper.make_node("Sub", ["pooled", "h"], ["mixed"]),
             helper.make_node("Mul", ["gamma", "mixed"], ["scaled"]),
             helper.make_node("Add", ["h", "scaled"], ["block"]) if residual else
             helper.make_node("Identity", ["scaled"], ["block"]),
             helper.make_node("Conv", ["block", "k1"], ["y"], pads=[1, 1, 1, 1])]
    shape = (8, 8, 16, 16)
    return make_model(nodes, [_value("x", shape=shape)], [_value("y", shape=shape)],
                      [*conv, gamma])


@pytest.mark.parametrize("residual", [True, False])
def test_layer_scaled_branch_without_a_layer_is_a_side_path(residual, tmp_path, capsys):
    """A residual branch with no Conv or MatMul, only LayerScale (PoolFormer): its 1e-10 signal
    is the branch's, beside an identity skip that carries the signal (onnxruntime: the output's
    variance stays of the order of the input's), so `check` notes it; `check` failed it with
    ONNXINIT002. Without the skip the signal does vanish, and the error stands."""
    model = _pool_mixer(residual)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((8, 8, 16, 16)).astype(np.float32)
    measured = float(session.run(None, {"x": x})[0].var())
    code, out, _ = run(["check", _write(model)(tmp_path)], capsys)
    if residual:
        assert measured > 0.1 and code == 0 and "ONNXINIT002" not in out, out
        assert "ONNXINIT007" in out and "residual branch" in out
    else:
        assert measured < 1e-7 and code == 1 and "ONNXINIT002" in out, out


def test_clip_to_bounds_computed_from_the_signal(tmp_path, capsys):
    """T5 exported in float16 clamps its hidden states to +-finfo.max, or 1000 below it when an
    inf appeared: `Where(ReduceSum(IsInf(h)) > 0, 64504, 65504)`, so the Clip's bounds are
    signals. They were the main path to `check` (a scalar of no spread: ONNXINIT002) and the
    Clip went to the fallback; now the bounds are statistics and the Clip is predicted with
    their predicted values, here the identity, as onnxruntime measures."""
    def const(name, value, dtype=np.float32):
        return numpy_helper.from_array(np.array(value, dtype), name)

    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("IsInf", ["h"], ["inf"]),
             helper.make_node("Cast", ["inf"], ["inf_count"], to=TensorProto.INT64),
             helper.make_node("ReduceSum", ["inf_count"], ["infs"], keepdims=0),
             helper.make_node("Greater", ["infs", "zero"], ["any_inf"]),
             helper.make_node("Where", ["any_inf", "below_max", "max"], ["bound"]),
             helper.make_node("Neg", ["bound"], ["lower"]),
             helper.make_node("Clip", ["h", "lower", "bound"], ["clamped"]),
             helper.make_node("Tanh", ["clamped"], ["y"])]
    model = make_model(nodes, [X], [_value("y")],
                       [_weight(), const("zero", 0, np.int64), const("below_max", 64504.0),
                        const("max", 65504.0)])
    result = {t.name: t for t in analyze(model, measure=True).tensors}
    assert result["clamped"].rule == "clip"
    assert result["clamped"].var == pytest.approx(result["h"].var, rel=1e-9)
    assert result["y"].var == pytest.approx(result["y"].measured_var, rel=0.15)
    code, out, _ = run(["check", _write(model)(tmp_path)], capsys)
    assert code == 0 and "ONNXINIT002" not in out, out


@pytest.mark.parametrize("method", ["lsuv", "metainit"])
def test_methods_that_run_the_model_say_onnxruntime_cannot(method, tmp_path, capsys):
    """lsuv, gradinit, metainit and nio run the model in onnxruntime, which has no bfloat16
    Gemm on the CPU: one line saying so (it read "internal error"), and no file written."""
    model = _typed_mlp(TensorProto.BFLOAT16)
    assert _runtime_cannot_run(model)
    path = _write(model)(tmp_path)
    code, out, err = run(["rescale", path, "--method", method, "-o", tmp_path / "out.onnx",
                          "-q"], capsys)
    assert code == 2 and "onnxruntime cannot run this model" in err, err
    assert "internal error" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


def _runtime_cannot_run(model) -> bool:
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - onnxruntime's own error types
        return True
    return False


@pytest.mark.parametrize("method", ["gradinit", "metainit"])
def test_gradient_methods_feed_a_string_input(method, tmp_path, capsys):
    """A model with a string input beside its float one: the gradient programs feed it as a
    numpy array (onnxruntime makes no OrtValue of a string array: "internal error" before),
    and the rescaled model runs in onnxruntime like the original."""
    path = _write(_string_input)(tmp_path)
    out_path = tmp_path / "out.onnx"
    code, _, err = run(["rescale", path, "--method", method, "-o", out_path, "-q"], capsys)
    assert code == 0 and "internal error" not in err, err
    feeds = {"s": np.array(["a"] * 8, dtype=object),
             "x": np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)}
    y = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"]).run(
        ["y"], feeds)[0]
    assert y.shape == (8, 16) and np.isfinite(y).all()


def test_rescale_of_a_model_without_inputs_says_so(tmp_path, capsys):
    """A model with no inputs has weights (``c`` and ``w``) but no signal through them:
    `rescale` said "no float parameters to rescale"."""
    path = _write(_no_inputs)(tmp_path)
    code, out, err = run(["rescale", path, "--method", "autoinit", "-o", tmp_path / "o.onnx"],
                         capsys)
    assert code == 2 and "has no inputs" in err, err


def test_a_node_passed_through_at_an_assumed_length_says_how_to_set_it(tmp_path, capsys):
    """A model that cannot run at the length the analysis assumed for a symbolic axis: the
    warning of each node it could not predict says the sizes were assumed and how to give
    them."""
    path = CASES["shapes that clash at run time, length assumed"][0](tmp_path)
    code, out, err = run(["analyze", path], capsys)
    assert code == 0, err
    passed = [line for line in err.splitlines() if "passed through unchanged" in line]
    assert passed and all("lengths were assumed (x:8x128)" in line and "--input-shape" in line
                          for line in passed), err


@pytest.mark.parametrize("command", ["analyze", "check"])
def test_onnxruntimes_own_error_log_is_not_printed(command, tmp_path, capfd):
    """onnxruntime logs a failed run to the terminal itself (native code, past Python's
    sys.stderr) unless told not to: four red lines before onnxinit's one."""
    path = _write(_scalar_reading_its_dims)(tmp_path)
    code, out, err = run([command, path], capfd)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "[E:onnxruntime" not in err


def test_numpys_runtime_warnings_are_not_printed(tmp_path):
    """numpy's RuntimeWarning on the inf (two lines: the warning and the source line) was
    printed before the one-line error. A real process: pytest records warnings itself."""
    path = _write(_infinite_weight)(tmp_path)
    done = subprocess.run([sys.executable, "-m", "onnxinit", "analyze", str(path)],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1],
                          timeout=120)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "RuntimeWarning" not in done.stderr
