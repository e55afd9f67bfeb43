"""Static shapes: concrete input dims, and onnx shape inference that keeps what the exporter
declared where inference knows less (custom-op outputs)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from ..errors import UnsupportedModelError
from .base import model_pass

log = logging.getLogger("onnxinit")

# Tensors up to this many elements are values (shapes, axes, pads); larger ones are weights.
SMALL_TENSOR = 1 << 16



def shape_of(type_proto: onnx.TypeProto) -> tuple | None:
    """Dims of a tensor type: ints, dim_param names, or None for an unnamed unknown dim; None
    when the type has no shape."""
    if not type_proto.HasField("tensor_type"):
        return None
    tensor_type = type_proto.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return tuple([d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                  for d in tensor_type.shape.dim])


def is_static(shape) -> bool:
    if shape is None:
        return False
    for d in shape:  # (a loop, not all() of a generator: called for every tensor, every round)
        if not (isinstance(d, int) and d >= 0):
            return False
    return True


def value_info(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    """A value_info entry with ``value``'s element type and shape."""
    return helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)
    )


@model_pass(in_place=True)
def set_input_shapes(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], *, require_all: bool = False
) -> None:
    """Give the graph inputs named in ``shapes`` those concrete dims (initializers listed as
    inputs are left alone); with ``require_all``, every other input is an error."""
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if value.name not in shapes:
            if require_all:
                raise UnsupportedModelError(f"no shape given for model input {value.name!r}")
            continue
        dims = value.type.tensor_type.shape
        dims.ClearField("dim")
        for size in shapes[value.name]:
            dims.dim.add().dim_value = int(size)


def _informative(vi: onnx.ValueInfoProto) -> int:
    """How much a value_info says: 0 nothing, 1 a type, 2 a rank, 3 a static shape (every dim
    a value >= 0: :func:`is_static` of :func:`shape_of`, without building the tuple)."""
    if not vi.type.HasField("tensor_type"):
        return 0
    tensor_type = vi.type.tensor_type
    if not tensor_type.HasField("shape"):
        return 1
    for d in tensor_type.shape.dim:
        if d.WhichOneof("value") != "dim_value" or d.dim_value < 0:
            return 2
    return 3


def described(vi: onnx.ValueInfoProto) -> tuple[str, int | None, tuple | None, int]:
    """(name, element type or None without a tensor type, :func:`shape_of`, informativeness as
    :func:`_informative`) of a value_info, read once (each dim read once)."""
    type_proto = vi.type
    if not type_proto.HasField("tensor_type"):
        return vi.name, None, None, 0
    tensor_type = type_proto.tensor_type
    if not tensor_type.HasField("shape"):
        return vi.name, tensor_type.elem_type, None, 1
    dims, level = [], 3
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value"):
            value = d.dim_value
            if value < 0:
                level = 2
        else:
            value, level = d.dim_param or None, 2
        dims.append(value)
    return vi.name, tensor_type.elem_type, tuple(dims), level


class DeclaredMerge:
    """Repeated :func:`keep_declared` ``(graph, graph.value_info, replace=infos)`` kept in
    Python until :meth:`write`: each entry is read once (:func:`described`), no proto is copied
    per round, and :attr:`entries` gives the merged value_info's descriptions in order (what
    ``GraphStructure._index_tensors`` reads)."""

    def __init__(self, graph: onnx.GraphProto):
        self.skip = {o.name for o in graph.output} | {i.name for i in graph.input}
        self.protos = list(graph.value_info)
        self._read: dict[bytes, tuple] = {}  # described() by serialized entry: most repeat
        self.entries = self._described(self.protos)

    def _described(self, protos: Sequence[onnx.ValueInfoProto]) -> list[tuple]:
        """:func:`described` of each entry, read once per distinct serialization."""
        read, out = self._read, []
        for vi in protos:
            key = vi.SerializeToString()
            entry = read.get(key)
            if entry is None:
                entry = read[key] = described(vi)
            out.append(entry)
        return out

    def replace(self, infos: Sequence[onnx.ValueInfoProto]) -> None:
        """The merge of :func:`keep_declared` with ``replace=infos``: ``infos`` in order, then
        each current entry where ``infos`` has none of its name (appended in order) or a less
        informative one (the last of that name replaced)."""
        protos = list(infos)
        entries = self._described(protos)
        known = {entry[0]: i for i, entry in enumerate(entries)}
        for proto, entry in zip(self.protos, self.entries):
            if entry[0] in self.skip:
                continue
            i = known.get(entry[0])
            if i is None:
                known[entry[0]] = len(entries)
                protos.append(proto)
                entries.append(entry)
            elif entry[3] > entries[i][3]:
                protos[i], entries[i] = proto, entry
        self.protos, self.entries = protos, entries

    def write(self, graph: onnx.GraphProto) -> None:
        """Make the merged entries ``graph``'s value_info (copied out before the graph's own
        entries, which may be among them, are cleared)."""
        held = onnx.GraphProto()
        held.value_info.extend(self.protos)
        del graph.value_info[:]
        graph.value_info.extend(held.value_info)


def _copied(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    return out


def keep_declared(graph: onnx.GraphProto, declared: Iterable[onnx.ValueInfoProto],
                  replace: Iterable[onnx.ValueInfoProto] | None = None) -> bool:
    """Merge ``declared`` value_info into ``graph``'s (in place): a declared entry is kept where
    inference has none or a less precise one. With ``replace``, ``graph``'s value_info becomes
    ``replace`` first. True if any declared entry was kept. (Only the entries kept are copied,
    and each entry's informativeness is computed once.)"""
    declared = list(declared)
    outputs = {o.name for o in graph.output} | {i.name for i in graph.input}
    current = list(graph.value_info) if replace is None else list(replace)
    known = {vi.name: i for i, vi in enumerate(current)}
    levels: dict[int, int] = {}
    appended: list[onnx.ValueInfoProto] = []
    overwrite: dict[int, onnx.ValueInfoProto] = {}
    for vi in declared:
        if vi.name in outputs:
            continue
        i = known.get(vi.name)
        if i is None:  # copies, made before anything changes: vi may be an entry of the graph
            known[vi.name] = i = len(current) + len(appended)
            appended.append(_copied(vi))
            levels[i] = _informative(vi)
            continue
        if i not in levels:
            levels[i] = _informative(current[i])
        mine = _informative(vi)
        if mine > levels[i]:
            levels[i] = mine
            if i >= len(current):
                appended[i - len(current)] = _copied(vi)
            else:
                overwrite[i] = _copied(vi)
    if replace is not None:
        del graph.value_info[:]
        graph.value_info.extend(current)
    for i, vi in overwrite.items():
        graph.value_info[i].CopyFrom(vi)
    graph.value_info.extend(appended)
    return bool(appended or overwrite)


def without_large_data(model: onnx.ModelProto, value_info: bool = True) -> onnx.ModelProto:
    """A copy for shape inference that declares large initializers as typed graph inputs
    instead of serializing their data (small ones stay: data propagation reads them); without
    the value_info when ``value_info`` is False."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    if value_info:
        graph.value_info.extend(model.graph.value_info)
    declared = {value.name for value in model.graph.input}
    for init in model.graph.initializer:
        if int(np.prod(init.dims)) <= SMALL_TENSOR:
            graph.initializer.append(init)
        elif init.name not in declared:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type,
                                                             list(init.dims)))
    return light


def _inferred(model: onnx.ModelProto, strict: bool = False) -> onnx.GraphProto:
    """``model``'s graph after onnx's shape inference (with data propagation): value_info and
    output types filled in. Raises what onnx raises (``strict``: also on inconsistent shapes or
    types, which a lenient run skips)."""
    return _inferred_light(without_large_data(model), strict)


def _inferred_light(light: onnx.ModelProto, strict: bool = False) -> onnx.GraphProto:
    """:func:`_inferred` of a model that holds no large initializer already."""
    return onnx.shape_inference.infer_shapes(light, strict_mode=strict, check_type=strict,
                                             data_prop=True).graph


def _take_inferred(model: onnx.ModelProto, inferred: onnx.GraphProto) -> None:
    """Replace ``model``'s value_info and outputs by the inferred ones."""
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.output)


@model_pass(in_place=False)
def infer_shapes(model: onnx.ModelProto, declared: Iterable[onnx.ValueInfoProto] = ()
                 ) -> tuple[onnx.ModelProto, str, bool]:
    """A copy of ``model`` whose value_info is onnx's shape inference (with data propagation)
    merged with ``declared`` (kept where inference knows less; then inference runs again from
    them), a warning ('' when inference ran), and whether strict inference (shapes and types
    checked) failed, leaving a lenient run's result. The model's own value_info is replaced."""
    declared = list(declared)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    del work.graph.value_info[:]
    strict_failed = False
    try:
        _take_inferred(work, _inferred(work, strict=True))
    except Exception:  # noqa: BLE001 - the caller decides whether the model is invalid
        strict_failed = True
    try:
        if strict_failed:
            _take_inferred(work, _inferred(work))
    except Exception as exc:  # noqa: BLE001 - onnx raises unrelated types; best effort
        keep_declared(work.graph, declared)
        return work, f"shape inference failed ({exc}); shapes measured instead", True
    if keep_declared(work.graph, declared):
        # declared shapes filled gaps (custom-op outputs): infer again from them
        try:
            _take_inferred(work, _inferred(work))
        except Exception as exc:  # noqa: BLE001 - keep the first inference
            log.debug("shape inference from declared value_info failed: %s", exc)
    return work, "", strict_failed


@model_pass(in_place=False)
def types_and_shapes(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, tuple]]:
    """Element types and shapes (None for unknown dims) of ``model``'s tensors by shape
    inference (what the graph declares counts as known); initializers as stored."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    del work.graph.value_info[:]
    inferred = _inferred(work)
    types, shapes = {}, {}
    for entry in [*inferred.input, *inferred.value_info, *inferred.output]:
        if not entry.type.HasField("tensor_type"):
            continue
        tensor_type = entry.type.tensor_type
        types[entry.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            shapes[entry.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
            )
    for init in model.graph.initializer:
        types[init.name] = init.data_type
        shapes[init.name] = tuple(init.dims)
    return types, shapes
