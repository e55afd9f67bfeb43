"""Initializer data without a copy: memory-mapped external data and chunked byte ranges.

A model read by :func:`onnxinit._loading.read_model` keeps its large external tensors on disk:
each keeps its ``external_data`` entries (``location``, ``offset``, ``length``) and gains a
``basepath`` entry (one of the keys of the ONNX external-data format) naming the model's folder,
so a tensor says where its bytes are wherever the ModelProto is copied. :func:`tensor_array`
gives its value as a read-only ``numpy.memmap`` of that byte range: nothing is read until used,
and the pages are released when the array is dropped. Inline tensors are converted as onnx does.

:func:`copy_range` and :func:`tensor_chunks` move bytes in bounded chunks, for writers that
stream tensors from the input's data files into the output's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, numpy_helper

BASEPATH = "basepath"
CHUNK_BYTES = 64 << 20  # bytes moved at a time when streaming a tensor

# element types whose bytes map 1:1 onto a numpy dtype (little-endian in the file)
_MAPPABLE = {
    TensorProto.FLOAT: "<f4", TensorProto.DOUBLE: "<f8", TensorProto.FLOAT16: "<f2",
    TensorProto.INT8: "i1", TensorProto.UINT8: "u1", TensorProto.INT16: "<i2",
    TensorProto.UINT16: "<u2", TensorProto.INT32: "<i4", TensorProto.UINT32: "<u4",
    TensorProto.INT64: "<i8", TensorProto.UINT64: "<u8", TensorProto.BOOL: "?",
    TensorProto.COMPLEX64: "<c8", TensorProto.COMPLEX128: "<c16",
}


def is_external(tensor: TensorProto) -> bool:
    """Whether the tensor's bytes are in a file rather than the message: external data, or
    a large inline initializer left in the model file by :mod:`onnxinit.wire` (which keeps its
    ``data_location``: :func:`is_inline_in_file`)."""
    return external_data_helper.uses_external_data(tensor) or (
        not tensor.HasField("raw_data") and any(e.key == BASEPATH for e in tensor.external_data))


def is_inline_in_file(tensor: TensorProto) -> bool:
    """An inline initializer whose raw data was left in the model file on load."""
    return is_external(tensor) and not external_data_helper.uses_external_data(tensor)


def _info(tensor: TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def external_file(tensor: TensorProto) -> tuple[Path, int, int | None]:
    """(file, offset, length or None) of an external tensor read by ``read_model``."""
    info = _info(tensor)
    base = info.get(BASEPATH)
    if base is None:
        raise ValueError(f"external tensor {tensor.name!r} has no base path: read the model "
                         "with onnxinit (or load its external data) first")
    length = info.get("length")
    return (Path(base) / info.get("location", ""), int(info.get("offset", 0) or 0),
            int(length) if length is not None else None)


def numpy_dtype(data_type: int) -> np.dtype:
    """The numpy dtype of an element type (bfloat16 through ml_dtypes, as onnx does)."""
    if data_type in _MAPPABLE:
        return np.dtype(_MAPPABLE[data_type])
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))


def tensor_nbytes(tensor: TensorProto) -> int:
    """Bytes of the tensor's data as stored (raw little-endian layout)."""
    if is_external(tensor):
        _, _, length = external_file(tensor)
        if length is not None:
            return length
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    return int(np.prod(tensor.dims, dtype=np.int64)) * numpy_dtype(tensor.data_type).itemsize


def tensor_array(tensor: TensorProto) -> np.ndarray:
    """The value of ``tensor``: a read-only memory map of its bytes when it is external (a view
    of the file, nothing read until used), else a numpy array as ``numpy_helper.to_array``."""
    if not is_external(tensor):
        return numpy_helper.to_array(tensor)
    path, offset, length = external_file(tensor)
    shape = tuple(tensor.dims)
    if tensor.data_type not in _MAPPABLE and tensor.data_type != TensorProto.BFLOAT16:
        return numpy_helper.to_array(inline_copy(tensor))  # packed sub-byte types, strings
    dtype = numpy_dtype(tensor.data_type)
    if tensor.data_type == TensorProto.BFLOAT16:
        dtype = dtype.newbyteorder("<")
    count = int(np.prod(shape, dtype=np.int64))
    if length is not None and length != count * dtype.itemsize:
        raise ValueError(f"external tensor {tensor.name!r}: {length} bytes for {count} "
                         f"elements of {dtype}")
    if count == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def inline_copy(tensor: TensorProto) -> TensorProto:
    """A copy of ``tensor`` with its external bytes read into ``raw_data``."""
    out = TensorProto()
    out.CopyFrom(tensor)
    if is_external(tensor):
        path, offset, length = external_file(tensor)
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read() if length is None else handle.read(length)
        del out.external_data[:]
        if out.data_location == TensorProto.EXTERNAL:
            out.ClearField("data_location")
        out.raw_data = data
    return out


def attach_base(model: onnx.ModelProto, base_dir: str | os.PathLike,
                inline_below: int) -> None:
    """Give every external tensor of ``model`` the base path ``base_dir`` (replacing one the
    file may carry) and read those of at most ``inline_below`` bytes into the model (shape
    inference reads small constants: shapes, axes)."""
    base = str(Path(base_dir).resolve())
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        kept = [(e.key, e.value) for e in tensor.external_data if e.key != BASEPATH]
        del tensor.external_data[:]
        for key, value in kept + [(BASEPATH, base)]:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        if tensor_nbytes(tensor) <= inline_below:
            tensor.CopyFrom(inline_copy(tensor))


def copy_range(source: Path, offset: int, length: int, out: BinaryIO) -> None:
    """Append ``length`` bytes of ``source`` from ``offset`` to the open file ``out``, in
    chunks (``os.copy_file_range`` where the system has it: no copy through user space)."""
    out.flush()
    with open(source, "rb") as src:
        remaining, position = length, offset
        fast = hasattr(os, "copy_file_range")
        while remaining > 0:
            step = min(remaining, CHUNK_BYTES)
            copied = 0
            if fast:
                try:
                    copied = os.copy_file_range(src.fileno(), out.fileno(), step, position)
                except OSError:
                    fast = False
            if not copied:
                src.seek(position)
                data = src.read(step)
                if len(data) < step:
                    raise OSError(f"{source}: file ends before byte {position + step}")
                out.write(data)
                out.flush()
                copied = step
            remaining -= copied
            position += copied


def tensor_chunks(tensor: TensorProto, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """The tensor's value as consecutive flat pieces of about ``chunk_bytes`` each (views of the
    memory map for an external tensor), for computing over it without a whole copy."""
    flat = tensor_array(tensor).reshape(-1)
    step = max(1, chunk_bytes // max(1, flat.dtype.itemsize))
    for start in range(0, flat.size, step):
        yield flat[start:start + step]


def write_tensor_bytes(tensor: TensorProto, out: BinaryIO) -> int:
    """Append the stored bytes of ``tensor`` (unchanged) to ``out``; return how many."""
    if is_external(tensor):
        path, offset, length = external_file(tensor)
        length = tensor_nbytes(tensor) if length is None else length
        copy_range(path, offset, length, out)
        return length
    if tensor.HasField("raw_data"):
        out.write(tensor.raw_data)
        return len(tensor.raw_data)
    data = numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data
    out.write(data)
    return len(data)


def external_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializer name -> memory-mapped value, for the main graph's external tensors (what
    onnxruntime must be handed when it is given the model's bytes without its folder)."""
    return {t.name: tensor_array(t) for t in model.graph.initializer if is_external(t)}


def as_external(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy in which inline initializers left in the model file are marked as
    external data (what onnxruntime needs to accept their values from
    ``add_external_initializers``)."""
    inline = [i for i, t in enumerate(model.graph.initializer) if is_inline_in_file(t)]
    if not inline:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i in inline:
        out.graph.initializer[i].data_location = TensorProto.EXTERNAL
    return out
