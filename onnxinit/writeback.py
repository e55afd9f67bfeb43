"""Write-back: apply a :class:`Plan` to a copy of a model and save it atomically.

A method never edits a ModelProto; it returns a Plan (per initializer: a scale or a replacement
array, with the rule and target that produced it). :func:`apply_plan` applies it to a copy and
:func:`save_model` writes the copy.

Guarantees:

- opset imports, IR version, node/tensor names, doc strings and metadata are those of the input;
  initializers the Plan does not name keep their exact bytes (their TensorProto is copied as is).
- A changed tensor keeps its name, dims, data type and doc string; its data is rewritten as
  little-endian ``raw_data``. Scales are applied in float64 and the result is rounded once to the
  tensor's own dtype (float16 and bfloat16 included, bfloat16 through ``ml_dtypes`` as onnx does).
- Tensors that were stored as external data in the source are written as external data beside the
  output, in the same relative layout (see :func:`save_model` for the naming rule).
- Everything is written to temporary files in the target folder and moved into place with
  ``os.replace`` at the end; on any failure the temporaries are removed and nothing is left.
- Deterministic: the same model and Plan give the same bytes.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, numpy_helper

from .dtypes import FLOAT_TYPES
from .errors import InvalidOptionError, UnsupportedModelError, WriteError
from .plan import Change, Plan

WRITABLE_TYPES = FLOAT_TYPES  # the types a Change can be applied to
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data",
                 "uint64_data")


# applying ---------------------------------------------------------------------------------------


def _np_dtype(data_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))


def _new_values(tensor: TensorProto, change: Change) -> np.ndarray:
    name = tensor.name
    if tensor.data_type not in WRITABLE_TYPES:
        dtype = TensorProto.DataType.Name(tensor.data_type)
        raise UnsupportedModelError(
            f"initializer {name!r} is {dtype}; only float32/float64/float16/bfloat16 "
            "tensors can be rescaled"
        )
    if external_data_helper.uses_external_data(tensor):
        raise UnsupportedModelError(
            f"initializer {name!r} holds external data that is not loaded; load the model "
            "with its external data (onnxinit.load) before applying a plan"
        )
    dtype = _np_dtype(tensor.data_type)
    if change.scale is not None:
        values = numpy_helper.to_array(tensor).astype(np.float64) * change.scale
    else:
        values = np.asarray(change.array)
        if tuple(values.shape) != tuple(tensor.dims):
            raise InvalidOptionError(
                f"replacement for initializer {name!r} has shape {tuple(values.shape)}, "
                f"the tensor has {tuple(tensor.dims)}"
            )
        values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise InvalidOptionError(f"new values for initializer {name!r} are not all finite")
    with np.errstate(over="ignore"):
        out = values.astype(dtype)
    if not np.all(np.isfinite(out.astype(np.float64))):
        raise UnsupportedModelError(
            f"new values for initializer {name!r} overflow its dtype {dtype.name}"
        )
    return out


def _set_data(tensor: TensorProto, values: np.ndarray) -> None:
    """Replace the data of ``tensor`` (name, dims, data_type, doc_string kept) by raw bytes."""
    for name in _TYPED_FIELDS:
        tensor.ClearField(name)
    little = values.dtype.newbyteorder("<") if values.dtype.byteorder == ">" else values.dtype
    tensor.raw_data = np.ascontiguousarray(values, dtype=little).tobytes()


def apply_plan(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """A copy of ``model`` with ``plan`` applied to its (top-level) initializers.

    Only the named initializers change; every other part of the copy is the input's.
    Raises InvalidOptionError for a name that is not an initializer or a replacement of the
    wrong shape, UnsupportedModelError for a non-float tensor or an overflow of its dtype.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_name = {t.name: t for t in out.graph.initializer}
    missing = [n for n in plan.changes if n not in by_name]
    if missing:
        raise InvalidOptionError(
            f"plan {plan.method!r} names {', '.join(repr(n) for n in missing)}, "
            "not an initializer of the model"
        )
    for name, change in plan.changes.items():
        _set_data(by_name[name], _new_values(by_name[name], change))
    return out


# saving -----------------------------------------------------------------------------------------


def default_output(input_path: str | os.PathLike, method: str) -> Path:
    """``dir/model.onnx`` + ``autoinit`` -> ``dir/model.autoinit.onnx``.

    A comma list of methods is joined with ``-`` (``idinit,autoinit`` ->
    ``model.idinit-autoinit.onnx``); characters other than letters, digits, ``_`` and ``-``
    become ``_``. The output always ends in ``.onnx`` whatever the input's suffix."""
    path = Path(input_path)
    tag = "-".join(p.strip() for p in method.split(",") if p.strip())
    tag = re.sub(r"[^A-Za-z0-9_-]", "_", tag) or "rescaled"
    stem = path.stem if path.suffix else path.name
    return path.with_name(f"{stem}.{tag}.onnx")


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def external_location(location: str, source_name: str | None, out_name: str,
                      in_place: bool) -> str:
    """Where a tensor stored at ``location`` (relative to the source model) goes beside the
    output: the same folder part, and a file name derived from the output's name.

    - in place: unchanged;
    - a file named after the source model file (``m.onnx.data`` for ``m.onnx``) is renamed after
      the output file (``m.autoinit.onnx.data``); one named after its stem (``m.weights``) after
      the output's stem (``m.autoinit.weights``);
    - any other name is prefixed with the output's stem (``weights.bin`` ->
      ``m.autoinit.weights.bin``).

    Tensors sharing a file in the source share one in the output, so the grouping (and the
    folder layout) is kept while the input's data files are never overwritten.
    """
    if in_place:
        return location
    folder, _, name = location.replace("\\", "/").rpartition("/")
    out_stem = Path(out_name).stem
    src_stem = Path(source_name).stem if source_name else None
    if source_name and name.startswith(source_name):
        new = out_name + name[len(source_name):]
    elif src_stem and name.startswith(src_stem + "."):
        new = out_stem + name[len(src_stem):]
    else:
        new = f"{out_stem}.{name}"
    return f"{folder}/{new}" if folder else new


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


def _external_layout(out, source_path, external, in_place):
    """{tensor name: new location} for the tensors stored externally in the source."""
    if not external:
        return {}
    source_name = source_path.name if source_path is not None else None
    layout = {n: external_location(loc, source_name, out.name, in_place)
              for n, loc in external.items()}
    if source_path is not None and not in_place:
        src_files = {(source_path.parent / loc).resolve() for loc in external.values()}
        for loc in set(layout.values()):
            if (out.parent / loc).resolve() in src_files:
                raise InvalidOptionError(
                    f"{out}: writing external data to {loc!r} would overwrite the input's data "
                    "file; choose another output name"
                )
        if out.resolve() in src_files:
            raise InvalidOptionError(f"{out}: the output is one of the input's data files")
    for loc in set(layout.values()):
        if os.path.isabs(loc) or ".." in Path(loc).parts:
            raise WriteError(f"{out}: external data location {loc!r} escapes the output folder")
    return layout


def _externalize(model: onnx.ModelProto, layout: dict[str, str]) -> dict[str, bytearray]:
    """Move the data of the tensors in ``layout`` out of ``model``; return file -> bytes.

    Tensors are packed contiguously in each file in the model's tensor order (graph
    initializers first, then subgraphs and attributes, as onnx walks them), which is what
    ``onnx.save_model(..., save_as_external_data=True)`` does; offsets are recomputed."""
    files: dict[str, bytearray] = {}
    for tensor in external_data_helper._get_all_tensors(model):
        location = layout.get(tensor.name)
        if location is None or external_data_helper.uses_external_data(tensor):
            continue
        if tensor.HasField("raw_data"):
            data = tensor.raw_data
        else:  # typed fields (a tensor a method left alone is raw after loading; be safe)
            data = numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data
        buffer = files.setdefault(location, bytearray())
        offset = len(buffer)
        buffer.extend(data)
        for name in _TYPED_FIELDS:
            tensor.ClearField(name)
        tensor.raw_data = data
        external_data_helper.set_external_data(tensor, location, offset, len(data))
        tensor.data_location = TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
    return files


def _write_temp(folder: Path, final_name: str, data: bytes, temps: list[Path]) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{final_name}.", suffix=".tmp", dir=folder)
    temp = Path(name)
    temps.append(temp)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
    return temp


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_model(
    model: onnx.ModelProto,
    out_path: str | os.PathLike,
    *,
    source_path: str | os.PathLike | None = None,
    external: dict[str, str] | None = None,
    in_place: bool = False,
) -> Path:
    """Write ``model`` (data held in memory) to ``out_path`` atomically; return the path.

    ``source_path`` is the input model's file (to refuse overwriting it unless ``in_place``);
    ``external`` maps each tensor that was external in the source to its location (as
    ``ModelGraph.external``): those tensors are written as external data beside the output,
    renamed by :func:`external_location` so the input's data files are never overwritten (in
    place they keep their names and are replaced). Every file is first written as a temporary
    in its target folder; the data files and then the model are moved into place with
    ``os.replace``. On failure the temporaries, files moved into place that did not exist
    before, and any data sub-folder created are removed (a data file that already existed and
    was replaced before the failure stays replaced: only the final model move can fail there).
    """
    out = Path(out_path)
    source = Path(source_path) if source_path is not None else None
    _check_target(out, source, in_place)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    files = _externalize(work, _external_layout(out, source, external, in_place))
    try:
        payload = work.SerializeToString(deterministic=True)
    except ValueError as exc:  # protobuf's 2 GiB limit
        raise WriteError(f"{out}: the model is too large to serialize ({exc}); keep its "
                         "weights as external data") from None
    temps: list[Path] = []
    created: list[Path] = []
    moves: list[tuple[Path, Path]] = []
    placed: list[Path] = []  # new files already moved into place (removed again on failure)
    try:
        for location in sorted(files):
            target = out.parent / location
            missing = []
            parent = target.parent
            while not parent.exists():
                missing.append(parent)
                parent = parent.parent
            for folder in reversed(missing):
                folder.mkdir()
                created.append(folder)
            moves.append((_write_temp(target.parent, target.name, files[location], temps), target))
        moves.append((_write_temp(out.parent, out.name, payload, temps), out))
        for temp, target in moves:
            existed = target.exists()
            os.replace(temp, target)
            temps.remove(temp)
            if not existed:
                placed.append(target)
    except OSError as exc:
        _cleanup(temps + placed, created)
        raise WriteError(f"{out}: cannot write the model: {exc.strerror or exc}") from None
    except BaseException:
        _cleanup(temps + placed, created)
        raise
    return out


def _cleanup(files: list[Path], created: list[Path]) -> None:
    for temp in files:
        try:
            temp.unlink()
        except FileNotFoundError:
            pass
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            pass


# the plan record ---------------------------------------------------------------------------------

PLAN_METADATA_KEY = "onnxinit.plan"


def plan_record(plan: Plan, source: str | os.PathLike | None,
                previous: dict | None = None) -> dict:
    """What ``rescale`` stores under ``metadata_props["onnxinit.plan"]`` (as JSON).

    ``{"version": 1, "source": path of the input model, "method": "autoinit",
    "scales": {initializer: scale}, "replaced": [initializer, ...]}``. Scales are relative to
    ``source``. When the input was itself a rescaled model (``previous``, its own record),
    the records compose so that ``source`` stays the first model and every scale is relative to
    it: scales multiply, a replaced tensor stays replaced, a replacement replaces."""
    scales, replaced = plan.scales(), plan.replaced()
    record = {"version": 1, "source": str(source) if source is not None else None,
              "method": plan.method, "scales": scales, "replaced": replaced}
    if not previous:
        return record
    old_scales = dict(previous.get("scales", {}))
    old_replaced = list(previous.get("replaced", []))
    for name, scale in scales.items():
        if name in old_scales:
            old_scales[name] *= scale
        elif name not in old_replaced:
            old_scales[name] = scale
    for name in replaced:
        old_scales.pop(name, None)
        if name not in old_replaced:
            old_replaced.append(name)
    return {"version": 1, "source": previous.get("source", record["source"]),
            "method": ",".join(m for m in (previous.get("method"), plan.method) if m),
            "scales": old_scales, "replaced": old_replaced}


def read_plan_record(model: onnx.ModelProto) -> dict | None:
    """The record :func:`plan_record` stored in ``model``, or None (absent or not readable)."""
    for prop in model.metadata_props:
        if prop.key == PLAN_METADATA_KEY:
            try:
                record = json.loads(prop.value)
            except ValueError:
                return None
            return record if isinstance(record, dict) else None
    return None


def set_plan_record(model: onnx.ModelProto, record: dict) -> None:
    """Store ``record`` as JSON under ``metadata_props["onnxinit.plan"]`` (replacing one there);
    every other metadata entry is kept in order."""
    value = json.dumps(record, sort_keys=True, separators=(",", ":"))
    for prop in model.metadata_props:
        if prop.key == PLAN_METADATA_KEY:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key = PLAN_METADATA_KEY
    entry.value = value
