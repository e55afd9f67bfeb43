"""Structural mutations for ``benchmarks/malformed_models.py`` (stop 43): files that a parser
reads but that break one of ONNX's rules, or use a corner of the format real exports rarely do.

Each mutation takes the model and a ``random.Random``, edits the model in place and returns
True, or returns False (leaving the model unchanged) when the model has nothing it applies to
(no Reshape, no Conv, ...). They are general: they pick the nodes and tensors they edit by op
type and role, so they apply to any export (``--models``), not only the samples.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HUGE = 1 << 40


def _float_outputs(model: onnx.ModelProto) -> list[str]:
    """Node outputs of the top graph that some node consumes (a tensor to re-route)."""
    used = {i for n in model.graph.node for i in n.input}
    return [o for n in model.graph.node for o in n.output if o and o in used]


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto | None:
    return next((t for t in model.graph.initializer if t.name == name), None)


def _unique(model: onnx.ModelProto, stem: str) -> str:
    names = {o for n in model.graph.node for o in n.output} | {
        t.name for t in model.graph.initializer} | {v.name for v in model.graph.input}
    i = 0
    while f"{stem}{i}" in names:
        i += 1
    return f"{stem}{i}"


def _reroute(model: onnx.ModelProto, old: str, new: str, after: int) -> None:
    """Make every node after index ``after`` read ``new`` where it read ``old``."""
    for node in model.graph.node[after + 1:]:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new


def value_info_clash(model, rng) -> bool:
    """A value_info entry that contradicts the tensor's real shape (rank or dims)."""
    outputs = _float_outputs(model)
    if not outputs:
        return False
    name = rng.choice(outputs)
    for v in list(model.graph.value_info):
        if v.name == name:
            model.graph.value_info.remove(v)
    shape = rng.choice([[3, 5, 7], [1], [], [HUGE, 2], [0, 4]])
    model.graph.value_info.append(helper.make_tensor_value_info(
        name, rng.choice([TensorProto.FLOAT, TensorProto.INT64]), shape))
    return True


def input_dim_extreme(model, rng) -> bool:
    """A graph input's dim set to 0, a negative value or 2^40."""
    inputs = [v for v in model.graph.input if v.type.tensor_type.shape.dim]
    if not inputs:
        return False
    dims = rng.choice(inputs).type.tensor_type.shape.dim
    dims[rng.randrange(len(dims))].dim_value = rng.choice([0, -1, -7, HUGE])
    return True


def input_elem_type(model, rng) -> bool:
    """A graph input's element type changed (int64 for an image, float64, float16, bool,
    string)."""
    if not model.graph.input:
        return False
    value = rng.choice(model.graph.input)
    value.type.tensor_type.elem_type = rng.choice(
        [TensorProto.INT64, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BOOL,
         TensorProto.STRING, TensorProto.UINT8])
    return True


def zero_d_input(model, rng) -> bool:
    """A graph input declared as a scalar (rank 0)."""
    inputs = [v for v in model.graph.input if v.type.HasField("tensor_type")]
    if not inputs:
        return False
    shape = rng.choice(inputs).type.tensor_type.shape
    del shape.dim[:]
    return True


def shape_operand(model, rng) -> bool:
    """The shape operand of a Reshape or Expand set to -1 twice, or to huge values."""
    nodes = [n for n in model.graph.node if n.op_type in ("Reshape", "Expand", "Tile",
                                                          "ConstantOfShape")]
    if not nodes:
        return False
    node = rng.choice(nodes)
    k = 0 if node.op_type == "ConstantOfShape" else 1
    if len(node.input) <= k:
        return False
    value = rng.choice([[-1, -1], [-1, -1, 4], [HUGE, HUGE], [HUGE, -1], [1 << 62, 2], [-5]])
    name = _unique(model, "bad_shape")
    model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    node.input[k] = name
    return True


def conv_channels(model, rng) -> bool:
    """A Conv whose group does not divide its channels, or whose weight has one input channel
    too many."""
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")
             and len(n.input) > 1 and _initializer(model, n.input[1]) is not None]
    if not convs:
        return False
    node = rng.choice(convs)
    if rng.random() < 0.5:
        for a in list(node.attribute):
            if a.name == "group":
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute("group", rng.choice([3, 5, 0, -2])))
    else:
        w = _initializer(model, node.input[1])
        array = numpy_helper.to_array(w)
        grown = np.concatenate([array, array[:, :1]], axis=1) if array.ndim > 1 else array
        w.CopyFrom(numpy_helper.from_array(grown, w.name))
    return True


def gemm_transpose(model, rng) -> bool:
    """A Gemm's transA or transB flipped (or set to 2)."""
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    if not gemms:
        return False
    node = rng.choice(gemms)
    which = rng.choice(["transA", "transB"])
    old = next((a.i for a in node.attribute if a.name == which), 0)
    for a in list(node.attribute):
        if a.name == which:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(which, rng.choice([1 - old, 2])))
    return True


def concat_ranks(model, rng) -> bool:
    """A Concat given one more input of another rank (or an int64 one)."""
    concats = [n for n in model.graph.node if n.op_type == "Concat"]
    if not concats:
        return False
    node = rng.choice(concats)
    name = _unique(model, "odd_rank")
    dtype = rng.choice([np.float32, np.int64])
    model.graph.initializer.append(numpy_helper.from_array(
        np.ones(rng.choice([(2,), (1, 1, 1, 1, 1), ()]), dtype), name))
    node.input.append(name)
    return True


def attribute_type(model, rng) -> bool:
    """An attribute of the wrong type: ints where an int is expected, a tensor, a string, a
    float where ints are expected, or a graph."""
    nodes = [n for n in model.graph.node if n.attribute]
    if not nodes:
        return False
    node = rng.choice(nodes)
    a = rng.choice(node.attribute)
    name = a.name
    node.attribute.remove(a)
    replacement = rng.choice([
        helper.make_attribute(name, [1, 2]),
        helper.make_attribute(name, numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_attribute(name, "text"),
        helper.make_attribute(name, 0.5),
        helper.make_attribute(name, 3),
        helper.make_attribute(name, helper.make_graph([], "g", [], [])),
    ])
    node.attribute.append(replacement)
    return True


def empty_names(model, rng) -> bool:
    """A node input or output replaced by "" (the optional-argument marker), or an extra ""
    output."""
    nodes = [n for n in model.graph.node if n.input]
    if not nodes:
        return False
    node = rng.choice(nodes)
    choice = rng.randrange(3)
    if choice == 0:
        node.input[rng.randrange(len(node.input))] = ""
    elif choice == 1:
        node.output.append("")
    else:
        node.output[0] = ""
    return True


def duplicate_output(model, rng) -> bool:
    """Two nodes writing the same tensor (an SSA violation)."""
    if len(model.graph.node) < 2:
        return False
    a, b = rng.sample(range(len(model.graph.node)), 2)
    model.graph.node[b].output[0] = model.graph.node[a].output[0]
    return True


def duplicate_initializer(model, rng) -> bool:
    """An initializer written twice, the second copy with other values or another shape."""
    if not model.graph.initializer:
        return False
    tensor = rng.choice(model.graph.initializer)
    array = numpy_helper.to_array(tensor)
    other = (array * 2 if rng.random() < 0.5 else np.zeros((3,), array.dtype)).astype(array.dtype)
    model.graph.initializer.append(numpy_helper.from_array(other, tensor.name))
    return True


def initializer_named_as_input(model, rng) -> bool:
    """An initializer with a graph input's name (IR >= 4: a default the caller may override);
    of the input's declared shape or of another."""
    inputs = [v for v in model.graph.input if _initializer(model, v.name) is None]
    if not inputs:
        return False
    value = rng.choice(inputs)
    dims = [d.dim_value if d.dim_value > 0 else 2 for d in value.type.tensor_type.shape.dim]
    if rng.random() < 0.5:
        dims = [3]
    elem = value.type.tensor_type.elem_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem not in (
        0, TensorProto.STRING) else np.float32
    if int(np.prod(dims)) > 1 << 22:
        dims = [3]
    model.graph.initializer.append(numpy_helper.from_array(np.ones(dims, dtype), value.name))
    return True


def local_function(model, rng) -> bool:
    """A node moved into a model-local function (FunctionProto) and called from the graph,
    or a call to a function that is not defined."""
    nodes = [n for n in model.graph.node if n.domain in ("", "ai.onnx")]
    if not nodes:
        return False
    node = rng.choice(nodes)
    domain = "local.fn"
    inputs = [f"i{k}" for k in range(len(node.input))]
    outputs = [f"o{k}" for k in range(len(node.output))]
    inner = helper.make_node(node.op_type, inputs, outputs)
    inner.attribute.extend(node.attribute)
    if rng.random() < 0.8:
        model.functions.append(helper.make_function(
            domain, f"Fn_{node.op_type}", inputs, outputs, [inner],
            [helper.make_opsetid("", next((o.version for o in model.opset_import
                                           if o.domain in ("", "ai.onnx")), 17))]))
    call = helper.make_node(f"Fn_{node.op_type}", list(node.input), list(node.output),
                            domain=domain, name=node.name)
    node.CopyFrom(call)
    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, 1))
    return True


def foreign_domain_op(model, rng) -> bool:
    """An elementwise node replaced by an ai.onnx.ml or com.microsoft op (Scaler, Normalizer,
    Gelu, FastGelu, FusedMatMul of a tensor by itself)."""
    nodes = [n for n in model.graph.node if n.op_type in (
        "Relu", "Sigmoid", "Tanh", "Add", "Mul", "Identity", "Gelu", "Erf", "Softmax",
        "HardSigmoid", "HardSwish", "Div", "Sub")]
    if not nodes:
        return False
    node = rng.choice(nodes)
    domain, op, attrs = rng.choice([
        ("ai.onnx.ml", "Scaler", {"scale": [2.0], "offset": [0.5]}),
        ("ai.onnx.ml", "Normalizer", {"norm": "L2"}),
        ("com.microsoft", "Gelu", {}),
        ("com.microsoft", "FastGelu", {}),
        ("com.microsoft", "BiasGelu", {}),
    ])
    new = helper.make_node(op, [node.input[0]] + (
        [node.input[1]] if op == "BiasGelu" and len(node.input) > 1 else []),
        [node.output[0]], domain=domain, **attrs)
    node.CopyFrom(new)
    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, 1))
    return True


def opset_twice(model, rng) -> bool:
    """The default domain listed twice in opset_import (the same or another version)."""
    default = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not default:
        return False
    version = default[0].version + rng.choice([0, -2, 1])
    model.opset_import.append(helper.make_opsetid(rng.choice(["", "ai.onnx"]), version))
    return True


def if_mismatch(model, rng) -> bool:
    """An If on a constant condition inserted on a tensor, whose branches output tensors of
    different ranks and types (or a different number of outputs)."""
    outputs = _float_outputs(model)
    if not outputs:
        return False
    t = rng.choice(outputs)
    producer = next(i for i, n in enumerate(model.graph.node) if t in n.output)
    out, cond = _unique(model, "if_out"), _unique(model, "if_cond")
    then_g = helper.make_graph([helper.make_node("Identity", [t], ["then_y"])], "then", [],
                               [helper.make_tensor_value_info("then_y", TensorProto.FLOAT,
                                                              None)])
    kind = rng.randrange(3)
    if kind == 0:
        else_nodes = [helper.make_node("Constant", [], ["else_y"], value=numpy_helper.from_array(
            np.ones((2, 3), np.int64)))]
        else_out = [helper.make_tensor_value_info("else_y", TensorProto.INT64, [2, 3])]
    elif kind == 1:
        else_nodes = [helper.make_node("Identity", [t], ["else_y"]),
                      helper.make_node("Identity", [t], ["else_z"])]
        else_out = [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, None),
                    helper.make_tensor_value_info("else_z", TensorProto.FLOAT, None)]
    else:
        else_nodes = [helper.make_node("ReduceSum", [t], ["else_y"], keepdims=0)]
        else_out = [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, [])]
    else_g = helper.make_graph(else_nodes, "else", [], else_out)
    model.graph.initializer.append(numpy_helper.from_array(
        np.array(rng.random() < 0.5), cond))
    model.graph.node.insert(producer + 1, helper.make_node(
        "If", [cond], [out], then_branch=then_g, else_branch=else_g))
    _reroute(model, t, out, producer + 1)
    return True


def loop_huge(model, rng) -> bool:
    """A Loop with a trip count of 2^62 (and a true condition) inserted on a tensor, its body
    the identity of the carried tensor."""
    outputs = _float_outputs(model)
    if not outputs:
        return False
    t = rng.choice(outputs)
    producer = next(i for i, n in enumerate(model.graph.node) if t in n.output)
    out, trip, cond = (_unique(model, s) for s in ("loop_out", "loop_trip", "loop_cond"))
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Identity", ["s_in"], ["s_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, None)])
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(rng.choice([1 << 62, 1 << 31, -1]), np.int64), trip),
        numpy_helper.from_array(np.array(True), cond)])
    model.graph.node.insert(producer + 1, helper.make_node("Loop", [trip, cond, t], [out],
                                                           body=body))
    _reroute(model, t, out, producer + 1)
    return True


def external_escape(model, rng) -> bool:
    """An initializer whose data is declared external at a location outside the model's
    folder (``../../etc/passwd``, an absolute path, a symlink-like ``a/../../x``)."""
    if not model.graph.initializer:
        return False
    tensor = rng.choice(model.graph.initializer)
    tensor.ClearField("raw_data")
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    location = rng.choice(["../../etc/passwd", "/etc/passwd", "a/../../../etc/hostname",
                           "../" * 12 + "etc/passwd"])
    tensor.external_data.add(key="location", value=location)
    if rng.random() < 0.5:
        tensor.external_data.add(key="length", value=str(rng.choice([4, 1 << 20])))
    return True


def metadata_big(model, rng) -> bool:
    """metadata_props and doc strings with big or odd strings (8 MB, control characters)."""
    big = rng.choice(["x" * (8 << 20), "\x1b[31m\n\r\x00" * 1000, "é" * 100_000])
    model.metadata_props.add(key="big", value=big)
    model.doc_string = big[:1 << 20]
    if model.graph.node:
        rng.choice(model.graph.node).doc_string = big[:1000]
    return True


def output_not_computed(model, rng) -> bool:
    """The graph's only output is an initializer or a graph input."""
    candidates = [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT]
    candidates += [v.name for v in model.graph.input]
    if not candidates:
        return False
    name = rng.choice(candidates)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return True


MUTATIONS = {f.__name__: f for f in (
    value_info_clash, input_dim_extreme, input_elem_type, zero_d_input, shape_operand,
    conv_channels, gemm_transpose, concat_ranks, attribute_type, empty_names, duplicate_output,
    duplicate_initializer, initializer_named_as_input, local_function, foreign_domain_op,
    opset_twice, if_mismatch, loop_huge, external_escape, metadata_big, output_not_computed)}
