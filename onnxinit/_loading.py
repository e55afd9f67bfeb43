"""Reading an ONNX file safely: clear errors for missing, truncated or non-ONNX files, and
external data that is missing or points outside the model's folder.

Large tensors are not read: external data stays in its files, and the raw data of large inline
initializers stays in the model file (:mod:`onnxinit.wire`); both are memory-mapped when used
(:mod:`onnxinit.initializers`), so a model is never held twice, a model larger than memory can
be analysed, and a 500 MB model file loads in a fraction of the time ``onnx.load`` takes. Small
tensors (shapes, axes, constants that shape inference reads) are read in."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from .errors import ExternalDataError, ModelLoadError
from .initializers import attach_base
from .wire import WireError, light_model_bytes

# external tensors up to this size are read into the model: every constant shape inference may
# read (at most 65,536 elements, passes.shapes.SMALL_TENSOR, of at most 16 bytes) fits
INLINE_BYTES = 1 << 20

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
LFS_HINT = ("this is a Git LFS pointer, not the file: fetch the file (git lfs pull; in GitHub "
            "Actions, actions/checkout with lfs: true)")


# what parsing a file that is not an ONNX model raises; onnx reads a file named .json or
# .textproto in that format, whose parse errors are not DecodeErrors
UNREADABLE = (DecodeError, json_format.ParseError, text_format.ParseError, ValueError,
              RuntimeError, OSError)


def is_lfs_pointer(path: Path) -> bool:
    """True for a Git LFS pointer file (a small text file that stands for the real content)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LFS_POINTER_PREFIX))
    except OSError:
        return False
    return head == LFS_POINTER_PREFIX


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors stored in external files, in the order of onnx's
    ``external_data_helper._get_all_tensors`` (the initializers of the graph and its subgraphs,
    then the attribute tensors of the graph, its subgraphs and the model's functions), found in
    one walk of the nodes where that reads them twice."""
    initializers: list = []
    attributes: list = []
    _walk(model.graph, initializers, attributes)
    for function in model.functions:
        _walk(function, None, attributes)
    return [t for t in initializers + attributes if t.data_location == _EXTERNAL]


_EXTERNAL = onnx.TensorProto.EXTERNAL
_GRAPH, _GRAPHS = onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS


def _walk(graph, initializers: list | None, attributes: list) -> None:
    """Add ``graph``'s initializers (a function has none: ``initializers`` None) and its
    attribute tensors, each subgraph's after its node's (depth first, as onnx reads them)."""
    if initializers is not None:
        initializers.extend(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                attributes.append(attribute.t)
            attributes.extend(attribute.tensors)
            if attribute.type == _GRAPH:
                _walk(attribute.g, initializers, attributes)
            elif attribute.type == _GRAPHS:
                for sub in attribute.graphs:
                    _walk(sub, initializers, attributes)


def check_external_data(model: onnx.ModelProto, base_dir: Path, model_name: str,
                        tensors: list | None = None) -> None:
    """Refuse external-data locations that escape ``base_dir`` or point past a file's end
    (``tensors``: the model's external tensors when the caller has them)."""
    root = base_dir.resolve()
    for tensor in _external_tensors(model) if tensors is None else tensors:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        target = (root / location).resolve()
        if os.path.isabs(location) or os.path.commonpath([root, target]) != str(root):
            raise ExternalDataError(
                f"{model_name}: tensor {tensor.name!r} has external data at {location!r}, "
                f"outside the model's folder {root}; refusing to read it"
            )
        if not target.is_file():
            raise ExternalDataError(
                f"{model_name}: external data file {location!r} for tensor {tensor.name!r} "
                f"is missing (looked in {root})"
            )
        if is_lfs_pointer(target):
            raise ExternalDataError(f"{model_name}: external data file {location!r}: {LFS_HINT}")
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        size = target.stat().st_size
        if length is not None and offset + int(length) > size:
            raise ExternalDataError(
                f"{model_name}: external data file {location!r} is truncated: tensor "
                f"{tensor.name!r} needs bytes {offset}..{offset + int(length)}, file has {size}"
            )


def external_data_files(model: onnx.ModelProto, tensors: list | None = None) -> dict[str, str]:
    """Initializer name -> external-data location, for a model loaded without its data
    (``tensors``: the model's external tensors when the caller has them)."""
    out = {}
    for tensor in _external_tensors(model) if tensors is None else tensors:
        info = {entry.key: entry.value for entry in tensor.external_data}
        out[tensor.name] = info.get("location", "")
    return out


def _parse(path: Path) -> onnx.ModelProto:
    """The model without the bytes of its large initializers: external data stays in its files,
    inline raw data larger than INLINE_BYTES stays in the model file (:mod:`onnxinit.wire`)."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise DecodeError("empty file")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                light = light_model_bytes(data, path, INLINE_BYTES)
            except WireError:  # something this reader does not handle: onnx reads it all
                light = None
    if light is None:
        return onnx.load(str(path), load_external_data=False)
    model = onnx.ModelProto()
    model.ParseFromString(light)
    return model


def dense_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its sparse initializers (``graph.sparse_initializer``, which onnxruntime
    reads as dense tensors) turned into dense initializers of the same name, zeros where no
    value is stored; ``model`` itself when it has none. ValueError when an index falls outside
    the shape. Subgraphs' sparse initializers are left: the analysis does not look into
    subgraphs."""
    if not model.graph.sparse_initializer:
        return model
    dense = onnx.ModelProto()
    dense.CopyFrom(model)
    for sparse in dense.graph.sparse_initializer:
        values = numpy_helper.to_array(sparse.values)
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
        shape = tuple(int(d) for d in sparse.dims)
        size = int(np.prod(shape, dtype=np.int64))
        flat = indices if indices.ndim == 1 else (
            np.ravel_multi_index(tuple(indices.T), shape) if indices.size else indices.reshape(-1))
        if flat.size != values.size or (flat.size and (flat.min() < 0 or flat.max() >= size)):
            raise ValueError(
                f"sparse initializer {sparse.values.name!r}: {flat.size} indices for "
                f"{values.size} values, or an index outside its shape {list(shape)}")
        array = np.zeros(size, dtype=values.dtype)
        array[flat] = values
        dense.graph.initializer.append(
            numpy_helper.from_array(array.reshape(shape), sparse.values.name))
    dense.graph.ClearField("sparse_initializer")
    return dense


def input_names(path: str | os.PathLike) -> list[str]:
    """The names of the graph inputs (initializers excluded) of the ONNX file at ``path``, read
    without its external data; ModelLoadError when it cannot be read."""
    try:
        model = _parse(Path(path))
    except UNREADABLE as exc:
        raise ModelLoadError(f"{path}: not a readable ONNX model ({exc})") from None
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def read_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Load ``path`` without reading its large tensors (memory-mapped on use, see the module
    docstring); also return which tensors were stored in external files (name -> location)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder, not an ONNX file")
    if is_lfs_pointer(path):
        raise ModelLoadError(f"{path}: {LFS_HINT}")
    try:
        model = _parse(path)
    except UNREADABLE as exc:
        raise ModelLoadError(
            f"{path}: not a readable ONNX model (truncated or not ONNX: {exc})"
        ) from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise ModelLoadError(f"{path}: not an ONNX model (no IR version or empty graph)")
    tensors = _external_tensors(model)
    check_external_data(model, path.parent, str(path), tensors)
    try:
        dense = dense_initializers(model)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: not a valid ONNX model: {exc}") from None
    # (inline tensors left in the file are not external; a dense copy is walked again)
    external = external_data_files(dense, tensors if dense is model else None)
    model = dense
    if external:
        try:
            attach_base(model, path.parent, INLINE_BYTES)
        except (OSError, ValueError) as exc:
            raise ExternalDataError(f"{path}: cannot read external data: {exc}") from None
    return model, external
