"""Write-back: apply a :class:`Plan` to a model and write the result atomically.

A method never edits a ModelProto; it returns a Plan (per initializer: a scale or a replacement
array, with the rule and target that produced it). :func:`write_model` writes the source model
with the Plan applied, one tensor at a time; :func:`apply_plan` gives the same model in memory.

Guarantees:

- opset imports, IR version, node/tensor names, doc strings and metadata are those of the input;
  initializers the Plan does not name keep their exact bytes (their TensorProto is copied as is,
  external data byte for byte).
- A changed tensor keeps its name, dims, data type and doc string; its data is rewritten as
  little-endian ``raw_data`` (or external bytes). Scales are applied in float64 and the result is
  rounded once to the tensor's own dtype (float16 and bfloat16 included, bfloat16 through
  ``ml_dtypes`` as onnx does), :func:`~onnxinit.plan.changed_values`.
- Tensors that were stored as external data in the source are written as external data beside the
  output, in the same relative layout (see :func:`write_model` for the naming rule).
- Bounded memory: each tensor is streamed from its source (a memory map of the input's data file,
  or the model in memory) to its output file in chunks (:data:`WORK_BYTES` of float64 work
  arrays for a changed tensor, :data:`~onnxinit.initializers.CHUNK_BYTES` copied at a time for
  an untouched one); untouched external tensors are copied byte for
  byte without passing through Python. The model file is written as a sequence of serialized
  ModelProto pieces, one per initializer and then the rest of the model: protobuf parses
  concatenated messages as one message (repeated fields appended, singular ones merged), so
  the file reads back as the model with its initializers in their order, without the whole
  model ever being serialized at once.
- Everything is written to temporary files in the target folder and moved into place with
  ``os.replace`` at the end (:mod:`onnxinit.atomic`); on any failure, including a value that
  overflows its dtype found mid-write, nothing is left.
- Deterministic: the same model and Plan give the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper

from .atomic import AtomicFiles
from .dtypes import FLOAT_TYPES
from .errors import InvalidOptionError, UnsupportedModelError, WriteError
from .initializers import (
    is_external,
    numpy_dtype,
    tensor_array,
    tensor_nbytes,
    write_tensor_bytes,
)
from .modelfile import Piece, copy_fields, field_size, field_start, serialized_model
from .output_paths import external_layout
from .plan import Change, Plan, changed_values
from .plan_record import set_plan_record

WRITABLE_TYPES = FLOAT_TYPES  # the types a Change can be applied to
WORK_BYTES = 1 << 20  # float64 bytes of a changed tensor computed at a time (cache-sized)
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data",
                 "uint64_data")
_FIELD = TensorProto.DESCRIPTOR.fields_by_name
_DATA_FIELDS = frozenset(_FIELD[name].number for name in (*_TYPED_FIELDS, "raw_data"))
_RAW_DATA_FIELD = _FIELD["raw_data"].number
_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number


# applying ---------------------------------------------------------------------------------------


def _check_changes(model: onnx.ModelProto, changes: Mapping[str, Change],
                   method: str = "") -> dict[str, TensorProto]:
    """The initializers the changes name, after checking they exist, are float and that
    replacements have their shape (everything that can be checked before writing)."""
    by_name = {t.name: t for t in model.graph.initializer}
    missing = [n for n in changes if n not in by_name]
    if missing:
        raise InvalidOptionError(
            f"plan {method!r} names {', '.join(repr(n) for n in missing)}, "
            "not an initializer of the model"
        )
    for name, change in changes.items():
        tensor = by_name[name]
        if tensor.data_type not in WRITABLE_TYPES:
            dtype = TensorProto.DataType.Name(tensor.data_type)
            raise UnsupportedModelError(
                f"initializer {name!r} is {dtype}; only float32/float64/float16/bfloat16 "
                "tensors can be rescaled"
            )
        if change.array is not None and tuple(np.shape(change.array)) != tuple(tensor.dims):
            raise InvalidOptionError(
                f"replacement for initializer {name!r} has shape "
                f"{tuple(np.shape(change.array))}, the tensor has {tuple(tensor.dims)}"
            )
    return {name: by_name[name] for name in changes}


def _little_endian(values: np.ndarray) -> np.ndarray:
    little = values.dtype.newbyteorder("<") if values.dtype.byteorder == ">" else values.dtype
    return np.ascontiguousarray(values, dtype=little)


def _changed_chunks(tensor: TensorProto, change: Change,
                    chunk_bytes: int = WORK_BYTES) -> Iterator[np.ndarray]:
    """The new data of ``tensor`` as little-endian arrays, a chunk of the flat tensor at a time
    (the same values as computing it whole: every operation is element-wise; chunks whose
    float64 work arrays fit in the processor's cache make it several times faster)."""
    dtype = numpy_dtype(tensor.data_type)
    old = tensor_array(tensor).reshape(-1) if change.scale is not None else None
    count = int(np.prod(tensor.dims, dtype=np.int64))
    step = max(1, chunk_bytes // 8)
    for start in range(0, count, step):
        where = slice(start, min(count, start + step))
        piece = old[where] if old is not None else np.empty(where.stop - start, dtype)
        yield _little_endian(changed_values(tensor.name, piece, change, where))


def _changed_bytes(tensor: TensorProto, change: Change) -> bytes:
    return b"".join(chunk.tobytes() for chunk in _changed_chunks(tensor, change))


def _set_raw(tensor: TensorProto, data: bytes) -> None:
    """Replace the data of ``tensor`` (name, dims, data_type, doc_string kept) by raw bytes."""
    for name in _TYPED_FIELDS:
        tensor.ClearField(name)
    del tensor.external_data[:]
    if tensor.data_location == TensorProto.EXTERNAL:
        tensor.ClearField("data_location")
    tensor.raw_data = data


def apply_plan(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """A copy of ``model`` with ``plan`` applied to its (top-level) initializers, in memory.

    Only the named initializers change (their new data held inline); every other part of the
    copy is the input's (memory-mapped external tensors stay references to their files).
    Raises InvalidOptionError for a name that is not an initializer or a replacement of the
    wrong shape, UnsupportedModelError for a non-float tensor or an overflow of its dtype.
    """
    _check_changes(model, plan.changes, plan.method)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_name = {t.name: t for t in out.graph.initializer}
    for name, change in plan.changes.items():
        _set_raw(by_name[name], _changed_bytes(by_name[name], change))
    return out


# saving -----------------------------------------------------------------------------------------


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _check_target(out: Path, source_path: Path | None, in_place: bool) -> None:
    if source_path is not None and _same_file(out, source_path) and not in_place:
        raise InvalidOptionError(
            f"{out}: the output is the input model; choose another -o or pass --in-place"
        )
    if out.is_dir():
        raise WriteError(f"{out}: is a folder; give a file name for the output")
    folder = out.parent
    if not folder.exists():
        raise WriteError(f"{out}: the output folder {folder} does not exist")
    if not folder.is_dir():
        raise WriteError(f"{out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WriteError(f"{out}: the output folder {folder} is not writable")


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without its graph's initializers (whose data is never copied)."""
    out = onnx.ModelProto()
    copy_fields(model, out, lambda n: n != _GRAPH_FIELD)
    copy_fields(model.graph, out.graph, lambda n: n != _INITIALIZER_FIELD)
    return out


def _header(tensor: TensorProto) -> TensorProto:
    """``tensor``'s name, dims, type, doc string... without its data."""
    out = TensorProto()
    copy_fields(tensor, out, lambda n: n not in _DATA_FIELDS)
    del out.external_data[:]
    if out.data_location == TensorProto.EXTERNAL:
        out.ClearField("data_location")
    return out


def _externalized(tensor: TensorProto, location: str, offset: int, length: int) -> TensorProto:
    """``tensor``'s header pointing at ``length`` bytes at ``offset`` of ``location``."""
    out = _header(tensor)
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(length))):
        entry = out.external_data.add()
        entry.key, entry.value = key, value
    out.data_location = TensorProto.EXTERNAL
    return out


def _data_length(tensor: TensorProto, change: Change | None) -> int:
    if change is None:
        return tensor_nbytes(tensor)
    count = int(np.prod(tensor.dims, dtype=np.int64))
    return count * numpy_dtype(tensor.data_type).itemsize


def _data_writer(tensor: TensorProto, change: Change | None):
    """A function appending the output data of ``tensor`` to a file; returns the bytes written."""
    def write(handle: BinaryIO) -> int:
        if change is None:
            return write_tensor_bytes(tensor, handle)
        total = 0
        for chunk in _changed_chunks(tensor, change):
            handle.write(chunk.reshape(-1).view(np.uint8))
            total += chunk.nbytes
        return total
    return write


def _with_raw_data(header: TensorProto, chunks: Iterable[np.ndarray],
                   length: int) -> Iterator[bytes]:
    """The bytes of ``header`` with ``raw_data`` set to the ``length`` bytes of ``chunks``, a
    chunk at a time (no copy of the whole tensor): deterministic serialization writes fields in
    number order, so the header's fields before ``raw_data``, its key and length, the data, then
    the fields after it."""
    before, after = TensorProto(), TensorProto()
    copy_fields(header, before, lambda n: n < _RAW_DATA_FIELD)
    copy_fields(header, after, lambda n: n > _RAW_DATA_FIELD)
    yield before.SerializeToString(deterministic=True)
    yield field_start(_RAW_DATA_FIELD, length)
    for chunk in chunks:
        yield chunk.tobytes()
    yield after.SerializeToString(deterministic=True)


def _inline_piece(tensor: TensorProto, change: Change | None) -> Piece:
    """The output TensorProto of a tensor written inline, serialized when its turn comes."""
    if change is None and not is_external(tensor):
        return Piece(tensor.ByteSize(), lambda: tensor.SerializeToString(deterministic=True))
    header = _header(tensor)
    length = _data_length(tensor, change)

    def serialize() -> bytes | Iterator[bytes]:
        if change is not None:
            return _with_raw_data(header, _changed_chunks(tensor, change), length)
        out = TensorProto()  # an external tensor the output holds inline (a ModelProto
        out.CopyFrom(header)  # given without a path)
        out.raw_data = _little_endian(np.asarray(tensor_array(tensor))).tobytes()
        return out.SerializeToString(deterministic=True)

    return Piece(header.ByteSize() + field_size(_RAW_DATA_FIELD, length), serialize)


class _Layout:
    """Where each externally stored output tensor goes: its file and offset, tensors packed one
    after another in each file in the order placed (as ``onnx.save_model(...,
    save_as_external_data=True)`` packs them)."""

    def __init__(self):
        self.ends: dict[str, int] = {}
        self.jobs: list[tuple[str, int, object]] = []  # (location, length, writer)

    def place(self, tensor: TensorProto, change: Change | None, location: str) -> TensorProto:
        length = _data_length(tensor, change)
        offset = self.ends.get(location, 0)
        self.ends[location] = offset + length
        self.jobs.append((location, length, _data_writer(tensor, change)))
        return _externalized(tensor, location, offset, length)

    def write(self, files: AtomicFiles, folder: Path) -> None:
        handles: dict[str, BinaryIO] = {}
        for location, length, write in self.jobs:
            if location not in handles:
                handles[location] = files.open(folder / location)
            written = write(handles[location])
            if written != length:
                raise WriteError(f"{folder / location}: wrote {written} bytes of a tensor "
                                 f"announced as {length}")


def write_model(
    model: onnx.ModelProto,
    out_path: str | os.PathLike,
    plan: Plan | None = None,
    *,
    source_path: str | os.PathLike | None = None,
    external: Mapping[str, str] | None = None,
    in_place: bool = False,
    record: dict | None = None,
) -> Path:
    """Write ``model`` with ``plan`` applied (if any) to ``out_path`` atomically; return the path.

    ``model`` is the source as read (external tensors memory-mapped, or data inline);
    ``source_path`` is its file (to refuse overwriting it unless ``in_place``); ``external``
    maps each tensor that was external in the source to its location (as
    ``ModelGraph.external``): those tensors are written as external data beside the output,
    renamed by :func:`~onnxinit.output_paths.external_location` so the input's data files are
    never overwritten (in place they keep their names and are replaced). ``record`` is stored
    as the plan record (:func:`~onnxinit.plan_record.set_plan_record`). The data files are
    moved into place before the model; see the module docstring for what happens on failure
    and how much memory is used.
    """
    out = Path(out_path)
    source = Path(source_path) if source_path is not None else None
    _check_target(out, source, in_place)
    changes = dict(plan.changes) if plan is not None else {}
    _check_changes(model, changes, plan.method if plan is not None else "")
    locations = external_layout(out, source, external, in_place)
    skeleton = _skeleton(model)
    if record is not None:
        set_plan_record(skeleton, record)
    layout, pieces = _Layout(), []
    for tensor in model.graph.initializer:
        change, location = changes.get(tensor.name), locations.get(tensor.name)
        if location is None:
            pieces.append(_inline_piece(tensor, change))
        else:
            header = layout.place(tensor, change, location)
            pieces.append(Piece(header.ByteSize(),
                                lambda h=header: h.SerializeToString(deterministic=True)))
    for tensor in external_data_helper._get_all_tensors(skeleton):  # Constant/subgraph tensors
        location = locations.get(tensor.name)
        if location is not None:
            tensor.CopyFrom(layout.place(tensor, None, location))
        elif is_external(tensor):
            _set_raw(tensor, _little_endian(np.asarray(tensor_array(tensor))).tobytes())
    with AtomicFiles(f"{out}: cannot write the model") as files:
        layout.write(files, out.parent)
        model_file = files.open(out)  # opened last: moved into place last
        try:
            for chunk in serialized_model(skeleton, pieces):
                model_file.write(chunk)
        except ValueError as exc:  # protobuf's 2 GiB limit on one message
            raise WriteError(f"{out}: the model is too large to serialize ({exc}); keep its "
                             "weights as external data") from None
        files.commit()
    return out


def save_model(
    model: onnx.ModelProto,
    out_path: str | os.PathLike,
    *,
    source_path: str | os.PathLike | None = None,
    external: dict[str, str] | None = None,
    in_place: bool = False,
) -> Path:
    """Write ``model`` as it is (see :func:`write_model`)."""
    return write_model(model, out_path, source_path=source_path, external=external,
                       in_place=in_place)
