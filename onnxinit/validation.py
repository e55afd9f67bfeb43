"""Refusing files that are not valid ONNX graphs, with the reason, before any analysis.

Two checks:

- structure (:func:`check_structure`): every tensor a node reads is defined (a graph input, an
  initializer, a node's output, or for a subgraph the outer scope) and every tensor is defined
  once (the static single assignment the ONNX spec requires; a graph input or initializer
  listed twice too). Linear in the nodes; nothing else
  would notice, since a rule cannot tell a missing input from an unknown one.
- data (:func:`check_initializers`): each initializer holds as many bytes (or values) as its
  shape and element type need (a truncated tensor would otherwise be reshaped wrongly or
  skipped).
- ops outside the imported opset (:func:`opset_mismatch`): an op added in a later opset
  (Gelu at opset 13), or an attribute of another type than the op's schema, refused when
  onnxruntime refuses the model too.
- opsets older than onnxruntime implements (:func:`legacy_opset`): ai.onnx opsets before 7,
  refused when onnxruntime has no kernel for one of the file's nodes at that opset (no rule
  reads those ops' old semantics either: a Gemm-1 would only be passed through unchanged).
- unknown ops (:func:`unknown_default_op`): an op of the default domain that onnx does not
  know is refused only when onnxruntime does not know it either: onnxruntime registers contrib
  ops there (SimplifiedLayerNormalization), which the fallback runs.
- weights (:func:`weight_mismatch`): a Conv or ConvTranspose whose constant weight does not fit
  its input's channels or its own ``kernel_shape``, or whose bias is not one value per output
  channel; an InstanceNormalization, LayerNormalization or Gemm whose constant scale or bias does
  not fit its input. Neither onnx's inference nor onnxruntime's
  session creation checks this; onnxruntime fails only when the node runs.
- consistency (:func:`inconsistency`): an op that cannot compute its output from its inputs'
  shapes, types or count, or with an attribute out of range, as onnx's strict shape inference
  says (a MatMul of incompatible dimensions, an Add of float and int64). Strict
  inference runs anyway when a model is prepared (:func:`onnxinit.passes.infer_shapes`), so this
  costs nothing on a valid model; on a failure the model as given is checked again, and it is
  refused only when onnxruntime refuses it too, so a gap in onnx's inference never refuses a
  model onnxruntime runs. Unordered nodes are not an error (the analysis sorts them).
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import TensorProto

from .errors import ModelLoadError
from .initializers import external_file, is_external
from .passes.shapes import without_large_data
from .runtime import onnxruntime

# element types stored one fixed-size item per element (raw data: item size x elements)
_FIXED_SIZE = {TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.FLOAT16: 2,
               TensorProto.BFLOAT16: 2, TensorProto.INT8: 1, TensorProto.UINT8: 1,
               TensorProto.INT16: 2, TensorProto.UINT16: 2, TensorProto.INT32: 4,
               TensorProto.UINT32: 4, TensorProto.INT64: 8, TensorProto.UINT64: 8,
               TensorProto.BOOL: 1}
_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _subgraphs(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _defined_twice(values, kind: str, name: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value.name in seen:
            raise ModelLoadError(f"{name}: not a valid ONNX graph: {kind} {value.name!r} is "
                                 f"defined twice; each tensor must have one definition")
        seen.add(value.name)


def _check_text(node: onnx.NodeProto, index: int, name: str) -> None:
    """protobuf hands a text field that is not valid UTF-8 (a corrupted file) back as bytes;
    onnx's schema lookup then raises TypeError on the op type or domain. (A tensor name in
    bytes is found undefined by the checks below.)"""
    if not (isinstance(node.op_type, str) and isinstance(node.domain, str)):
        raise ModelLoadError(f"{name}: not a valid ONNX model: node {index}'s op type or "
                             f"domain is not valid UTF-8 text")


def _check_graph(graph: onnx.GraphProto, outer: set[str], name: str) -> None:
    # onnxruntime refuses a duplicated input; of two initializers it silently keeps the last
    if not all(isinstance(v.name, str) for v in (*graph.input, *graph.output,
                                                   *graph.initializer)):
        raise ModelLoadError(f"{name}: not a valid ONNX model: a graph input, output or "
                             f"initializer name is not valid UTF-8 text")
    _defined_twice(graph.input, "graph input", name)
    _defined_twice(graph.initializer, "initializer", name)
    defined = set(outer)
    declared = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined.update(declared)
    produced: dict[str, str] = {}
    for i, node in enumerate(graph.node):
        _check_text(node, i, name)
        node_name = node.name or f"{node.op_type}_{i}"
        for out in node.output:
            if not out:
                continue
            if out in produced:
                raise ModelLoadError(
                    f"{name}: not a valid ONNX graph: tensor {out!r} is written by two nodes "
                    f"({produced[out]!r} and {node_name!r}); each tensor must have one producer")
            if out in declared:
                raise ModelLoadError(
                    f"{name}: not a valid ONNX graph: node {node_name!r} writes {out!r}, which "
                    f"is already a graph input or initializer")
            produced[out] = node_name
    defined.update(produced)
    for i, node in enumerate(graph.node):
        for read in node.input:  # a subgraph's reads: checked in it, below
            if read and read not in defined:
                raise ModelLoadError(
                    f"{name}: not a valid ONNX graph: node {node.name or f'{node.op_type}_{i}'!r}"
                    f" ({node.op_type}) reads {read!r}, which no node, graph input or "
                    f"initializer defines")
        for sub in _subgraphs(node):
            _check_graph(sub, defined, name)
    for out in graph.output:
        if out.name not in defined:
            raise ModelLoadError(f"{name}: not a valid ONNX graph: output {out.name!r} is not "
                                 f"computed by any node")


def check_structure(model: onnx.ModelProto, name: str) -> None:
    """Raise ModelLoadError naming the first tensor that is read but never defined, or defined
    twice, in ``model``'s graph or its subgraphs."""
    _check_graph(model.graph, set(), name)


def _stored(tensor: TensorProto) -> tuple[int, str] | None:
    """(amount, unit) of data ``tensor`` holds: bytes of raw or external data, else values of
    its typed field; None when an external tensor does not say its length."""
    if is_external(tensor):
        length = external_file(tensor)[2]
        return None if length is None else (length, "bytes")
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data), "bytes"
    return sum(len(getattr(tensor, f)) for f in _TYPED_FIELDS), "values"


def check_initializers(model: onnx.ModelProto, name: str) -> None:
    """Raise ModelLoadError naming the first initializer whose data does not fill its shape."""
    for tensor in model.graph.initializer:
        if tensor.data_type == TensorProto.UNDEFINED:
            raise ModelLoadError(f"{name}: initializer {tensor.name!r} has no element type "
                                 "(data_type 0, UNDEFINED)")
        itemsize = _FIXED_SIZE.get(tensor.data_type)
        stored = _stored(tensor) if itemsize else None
        if stored is None:
            continue
        count = int(np.prod(tensor.dims, dtype=np.int64))
        amount, unit = stored
        needed = count * itemsize if unit == "bytes" else count
        if amount != needed:
            dims = "x".join(str(d) for d in tensor.dims) or "scalar"
            raise ModelLoadError(
                f"{name}: initializer {tensor.name!r} holds {amount} {unit} of data; its shape "
                f"{dims} of {TensorProto.DataType.Name(tensor.data_type).lower()} needs {needed}")


def _attribute(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _broadcasts_to(shape, target) -> bool:
    """Whether ``shape`` broadcasts one-directionally to ``target`` (unknown dims fit)."""
    if len(shape) > len(target):
        return False
    return all(not isinstance(t, int) or d in (1, t)
               for d, t in zip(reversed(shape), reversed(target)))


def _conv_mismatch(node, label, x, w, constants) -> str | None:
    kernel = _attribute(node, "kernel_shape", None)
    if kernel is not None and list(kernel) != list(w[2:]):
        return (f"{label}: kernel_shape {list(kernel)} but its weight {node.input[1]!r} "
                f"has kernel {list(w[2:])}")
    group = int(_attribute(node, "group", 1))
    outputs = w[0] if node.op_type == "Conv" else w[1] * group
    bias = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if bias is not None and tuple(bias) != (outputs,):
        return (f"{label}: its bias {node.input[2]!r} has shape {list(bias)} but its weight "
                f"{node.input[1]!r} of shape {'x'.join(map(str, w))} (group {group}) makes "
                f"{outputs} output channels")
    channels = x[1] if x is not None and len(x) > 1 and isinstance(x[1], int) else None
    if channels is None:
        return None
    expected = w[1] * group if node.op_type == "Conv" else w[0]
    if expected != channels:
        return (f"{label}: its input {node.input[0]!r} has {channels} channels but its weight "
                f"{node.input[1]!r} of shape {'x'.join(map(str, w))} (group {group}) reads "
                f"{expected}")
    return None


def _affine_mismatch(node, label, x, constants) -> str | None:
    """InstanceNormalization's scale and B are ``[C]``; LayerNormalization's broadcast to
    ``X.shape[axis:]``; Gemm's C to ``[M, N]``."""
    if not x:
        return None
    exact = node.op_type == "InstanceNormalization"
    if exact:
        if len(x) < 2:
            return None
        wanted, where, params = (x[1],), f"its input's {x[1]} channels", node.input[1:3]
    elif node.op_type == "LayerNormalization":
        axis = int(_attribute(node, "axis", -1))
        wanted, params = tuple(x[axis % len(x):]), node.input[1:3]
        where = f"its input's shape {list(x)} from axis {axis}"
    else:  # Gemm
        b = constants.get(node.input[1])
        if len(x) != 2 or b is None or len(b) != 2:
            return None
        rows = x[1] if _attribute(node, "transA", 0) else x[0]
        columns = b[0] if _attribute(node, "transB", 0) else b[1]
        wanted, where, params = (rows, columns), f"its output [{rows}, {columns}]", node.input[2:3]
    if not all(isinstance(d, int) for d in wanted):
        return None
    for name in params:
        shape = constants.get(name) if name else None
        if shape is None:
            continue
        if tuple(shape) != wanted if exact else not _broadcasts_to(shape, wanted):
            return f"{label}: its parameter {name!r} of shape {list(shape)} does not fit {where}"
    return None


def weight_mismatch(nodes, shapes: dict, constants: dict) -> str | None:
    """Why a node of ``nodes`` cannot run with its constant parameters, or None. Conv's weight
    ``[M, C/group, k...]`` and ConvTranspose's ``[C, M/group, k...]`` must match the input's
    ``C`` (axis 1), ``kernel_shape``, when given, the weight's ``k``, and a bias must be
    ``[M]``; InstanceNormalization's scale and B ``[C]``, LayerNormalization's broadcast to
    the normalised shape, Gemm's C to the output ``[M, N]``. ``shapes``: tensor -> static
    shape; ``constants``: initializer name -> dims."""
    for index, node in enumerate(nodes):
        if len(node.input) < 2:
            continue
        label = f"node {node.name or f'{node.op_type}_{index}'!r} ({node.op_type})"
        x = shapes.get(node.input[0])
        if node.op_type in ("Conv", "ConvTranspose"):
            w = constants.get(node.input[1])
            reason = _conv_mismatch(node, label, x, w, constants) if w and len(w) >= 3 else None
        elif node.op_type in ("InstanceNormalization", "LayerNormalization", "Gemm"):
            reason = _affine_mismatch(node, label, x, constants)
        else:
            continue
        if reason:
            return reason
    return None


# what strict inference says when an op cannot compute anything from its inputs (their shapes,
# types or count, or an attribute out of range): the analysis would predict a tensor that
# cannot exist. Other complaints (a training-mode BatchNormalization whose statistics outputs
# a tool pruned, a declared output type) leave the computation defined: analysed.
_UNCOMPUTABLE = ("Incompatible dimensions", "inconsistent type", "bound to different types",
                 "not in range", "must be in", "Dimension mismatch", "must have same rank",
                 "elem type differs", "Invalid attribute", "out of data bounds",
                 "has unsupported type")


def says_uncomputable(message: str) -> bool:
    """Whether an onnx or onnxruntime error ``message`` says an op cannot compute its output
    from its inputs' shapes or types."""
    return any(phrase in message for phrase in _UNCOMPUTABLE + ("ShapeInferenceError",))


def _refused_by_onnxruntime(light: onnx.ModelProto) -> str | None:
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        # large initializers are graph inputs in ``light``: no weight is read
        ort.InferenceSession(light.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        return " ".join(str(exc).split())
    return None


def unknown_default_op(model: onnx.ModelProto) -> str | None:
    """The first op of the default domain in ``model``'s main graph that neither onnx nor
    onnxruntime knows, or None (no session is made unless onnx does not know an op)."""
    unknown = sorted({n.op_type for n in model.graph.node
                      if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)})
    if not unknown:
        return None
    reason = _refused_by_onnxruntime(without_large_data(model))
    if reason is None or not ("No Op registered" in reason or "op_type" in reason):
        return None
    named = ", ".join(op or "with an empty op_type" for op in unknown)
    return f"no op {named} in the default ONNX domain, and onnxruntime has none either"


def _outside_opset(node: onnx.NodeProto, opset: int) -> str | None:
    """Why ``node`` (a default-domain op onnx knows) is not an op of ``opset``: the op came
    later, or an attribute has another type than the op's schema at that opset."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        first = onnx.defs.get_schema(node.op_type).since_version
        return f"{node.op_type} is not in opset {opset} (onnx has it from opset {first})"
    for attr in node.attribute:
        expected = schema.attributes.get(attr.name)
        if expected is not None and attr.type != expected.type:
            return (f"{node.op_type}'s attribute {attr.name!r} is "
                    f"{onnx.AttributeProto.AttributeType.Name(attr.type).lower()}, opset {opset} "
                    f"wants {onnx.AttributeProto.AttributeType.Name(expected.type).lower()}")
    return None


def opset_mismatch(model: onnx.ModelProto) -> str | None:
    """The first node of ``model``'s main graph that its default-domain opset does not define
    as written (:func:`_outside_opset`), when onnxruntime refuses the model too; else None (a
    session is made only when such a node is found)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    for index, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type):
            continue
        reason = _outside_opset(node, opset)
        if reason is None:
            continue
        if _refused_by_onnxruntime(without_large_data(model)) is None:
            return None
        return f"node {node.name or f'{node.op_type}_{index}'!r}: {reason}"
    return None


ONNXRUNTIME_FIRST_OPSET = 7  # onnxruntime guarantees ai.onnx from opset 7 on


def legacy_opset(model: onnx.ModelProto) -> str | None:
    """Why ``model``, importing an ai.onnx opset older than :data:`ONNXRUNTIME_FIRST_OPSET`,
    cannot be analysed: onnxruntime has no implementation of one of its nodes at that opset
    (it keeps legacy kernels of a few ops only); else None. No session is made for opset 7+."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not 0 < opset < ONNXRUNTIME_FIRST_OPSET:
        return None
    reason = _refused_by_onnxruntime(without_large_data(model))
    if reason is None:
        return None
    missing = re.search(r"implementation for (\w+)\((\d+)\) node", reason)
    node = re.search(r'In Node, \("([^"]*)", (\w+),.*, Error (.*)', reason)
    if missing:
        what = f"it has no {missing.group(1)}-{missing.group(2)}"
    elif node:
        what = f"node {node.group(1)!r} ({node.group(2)}): {node.group(3).strip()}"
    else:
        what = _first_error(reason)
    return (f"it imports ai.onnx opset {opset}, older than onnxruntime implements "
            f"({ONNXRUNTIME_FIRST_OPSET} and later; {what}); convert it first, e.g. "
            f"onnx.version_converter.convert_version(model, 13)")


def inconsistency(model: onnx.ModelProto) -> str | None:
    """Why ``model`` (as given: its own input shapes) is not a consistent ONNX model, or None:
    onnx's strict shape inference with type checks finds an op that cannot compute its output
    (``_UNCOMPUTABLE``) and onnxruntime refuses the model."""
    light = without_large_data(model)
    try:
        onnx.shape_inference.infer_shapes(light, strict_mode=True, check_type=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError or RuntimeError
        reason = " ".join(str(exc).split())
    else:
        return None
    if not any(phrase in reason for phrase in _UNCOMPUTABLE):
        return None
    return _first_error(reason) if _refused_by_onnxruntime(light) else None


def _first_error(reason: str) -> str:
    """The first of the node errors onnx lists in one message (an exporter's broken graph can
    list dozens), with a count of the others."""
    head, *errors = reason.split(" (op_type:")
    if len(errors) < 2:
        return reason
    return f"{head} (op_type:{errors[0]} (and {len(errors) - 1} more node errors)"


__all__ = ["check_initializers", "check_structure", "inconsistency", "legacy_opset",
           "opset_mismatch", "says_uncomputable", "unknown_default_op", "weight_mismatch"]
