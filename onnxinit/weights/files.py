"""Weights files: :func:`export_weights` writes a model's float initializers to safetensors
(default) or ``.npz`` with metadata (source model, method, per-tensor scales);
:func:`read_weights` reads such a file (or any safetensors/npz file) back."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from .._version import __version__
from ..atomic import AtomicFiles
from ..errors import InvalidOptionError, ModelLoadError, UnsupportedModelError, WriteError
from ..plan_record import read_plan_record
from ..validation import check_initializers
from ..weights_files import write_npz, write_safetensors
from ..writeback import _same_file
from .tensors import float_initializers, identity_aliases, load_model

FORMATS = ("safetensors", "npz")
META_PREFIX = "onnxinit."
_NPZ_META = "__onnxinit_metadata__"


# export -----------------------------------------------------------------------------------------


def weights_metadata(model: onnx.ModelProto, model_path: str | os.PathLike | None,
                     names: list[str]) -> dict[str, str]:
    """The metadata written beside the tensors (all values are strings, as safetensors wants).

    ``onnxinit.model``: the ONNX file the weights were read from; ``onnxinit.source``: the model
    they descend from (the input of ``rescale``, else the model itself); ``onnxinit.method``:
    the rescale method(s), empty when the model was not rescaled by onnxinit; and, only for a
    rescaled model, ``onnxinit.scales``: JSON ``{tensor: scale}`` relative to the source for
    every exported tensor (1.0 when untouched, ``"replaced"`` when the method replaced it)."""
    record = read_plan_record(model)
    model_name = str(model_path) if model_path is not None else ""
    meta = {"onnxinit.version": __version__, "onnxinit.model": model_name,
            "onnxinit.source": model_name, "onnxinit.method": ""}
    aliases = identity_aliases(model)
    if aliases:
        meta["onnxinit.aliases"] = json.dumps(aliases, separators=(",", ":"))
    if record is not None:
        scales = record.get("scales", {})
        replaced = set(record.get("replaced", []))
        per_tensor = {n: ("replaced" if n in replaced else float(scales.get(n, 1.0)))
                      for n in names}
        meta["onnxinit.source"] = str(record.get("source") or "")
        meta["onnxinit.method"] = str(record.get("method") or "")
        meta["onnxinit.scales"] = json.dumps(per_tensor, separators=(",", ":"))
    return meta


def default_weights_output(model_path: str | os.PathLike, fmt: str = "safetensors") -> Path:
    """``dir/model.onnx`` -> ``dir/model.safetensors`` (or ``.npz``)."""
    path = Path(model_path)
    stem = path.stem if path.suffix else path.name
    return path.with_name(f"{stem}.{fmt}")


def format_for(output: str | os.PathLike | None, fmt: str | None) -> str:
    """The file format: ``fmt`` if given, else from the output's suffix, else safetensors."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise InvalidOptionError(f"unknown weights format {fmt!r}; use safetensors or npz")
        return fmt
    if output is not None and Path(output).suffix.lower() == ".npz":
        return "npz"
    return "safetensors"


def require_format(output: str | os.PathLike | None, fmt: str | None) -> str:
    """The format (as :func:`format_for`), after checking it can be written here: safetensors
    needs the ``safetensors`` package (a dependency of onnxinit)."""
    fmt = format_for(output, fmt)
    if fmt == "safetensors":
        try:
            import safetensors.numpy  # noqa: F401
        except ImportError:
            raise InvalidOptionError(
                "writing safetensors needs the safetensors package, a dependency of onnxinit "
                "that is not installed here: pip install safetensors (or write a .npz file)"
            ) from None
    return fmt


def check_target(output: str | os.PathLike, fmt: str | None,
                 protect: list[str | os.PathLike] | tuple = ()) -> str:
    """Checks before any work: the format can be written (:func:`require_format`) and
    ``output`` is none of the ``protect`` files (the input model). Returns the format."""
    fmt = require_format(output, fmt)
    for other in protect:
        if other is not None and _same_file(Path(output), Path(other)):
            raise InvalidOptionError(f"{output}: the weights file would overwrite the model "
                                     f"{other}; choose another file")
    return fmt


def _npz_arrays(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> dict[str, np.ndarray]:
    """npz cannot hold bfloat16 without pickle: such tensors are stored as their uint16 bits and
    named in the ``onnxinit.dtypes`` metadata entry; :func:`read_weights` restores them."""
    if _NPZ_META in tensors:
        raise UnsupportedModelError(f"an initializer is named {_NPZ_META!r}; write safetensors")
    arrays, bf16 = {}, []
    for name, array in tensors.items():
        if array.dtype.name == "bfloat16":
            arrays[name] = np.ascontiguousarray(array).view(np.uint16)
            bf16.append(name)
        else:
            arrays[name] = array
    meta = dict(meta)
    if bf16:
        meta["onnxinit.dtypes"] = json.dumps({n: "bfloat16" for n in bf16})
    arrays[_NPZ_META] = np.array(json.dumps(meta, sort_keys=True))
    return arrays


def _write_weights(out: Path, fmt: str, tensors: dict[str, np.ndarray],
                   meta: dict[str, str]) -> None:
    """Stream the file to a temporary beside ``out`` (tensor by tensor, from their memory maps)
    and rename it into place: all or nothing."""
    folder = out.parent
    if out.is_dir():
        raise WriteError(f"{out}: is a folder; give a file name for the weights")
    if not folder.is_dir():
        raise WriteError(f"{out}: the output folder {folder} does not exist")
    arrays = _npz_arrays(tensors, meta) if fmt == "npz" else None
    with AtomicFiles(f"{out}: cannot write the weights") as files:
        handle = files.open(out)
        if arrays is not None:
            write_npz(handle, arrays)
        else:
            write_safetensors(handle, tensors, meta)
        files.commit()


def export_weights(
    model: str | os.PathLike | onnx.ModelProto,
    output: str | os.PathLike | None = None,
    *,
    fmt: str | None = None,
    model_path: str | os.PathLike | None = None,
    protect: list[str | os.PathLike] | tuple = (),
) -> Path:
    """Write every float initializer of ``model`` to ``output`` and return its path.

    The format is ``fmt`` (``safetensors`` or ``npz``), else the output's suffix (``.npz``),
    else safetensors. The default output is ``<stem>.safetensors`` (``.npz``) beside the model.
    Tensors keep their dtype (float16 and bfloat16 included). ``model_path`` names the file a
    ModelProto came from (for the metadata, the default name and the overwrite check);
    ``protect`` lists more files that must not be overwritten. The input model is never
    overwritten; the file is written to a temporary and renamed."""
    fmt = require_format(output, fmt)
    proto, path = load_model(model)
    path = path if path is not None else (Path(model_path) if model_path is not None else None)
    if output is None:
        if path is None:
            raise InvalidOptionError("exporting the weights of a ModelProto needs an output path")
        output = default_weights_output(path, fmt)
    out = Path(output)
    check_target(out, fmt, [path, *protect])
    check_initializers(proto, str(path or "model"))
    tensors = float_initializers(proto)
    if not tensors:
        raise UnsupportedModelError(f"{path or 'model'}: the model has no float initializers")
    meta = weights_metadata(proto, path, list(tensors))
    _write_weights(out, fmt, tensors, meta)
    return out


# reading weights files --------------------------------------------------------------------------

_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "BOOL": "bool"}


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse the file directly (8-byte header length, JSON header, data): no package needed."""
    data = path.read_bytes()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
    except (struct.error, ValueError):
        raise ModelLoadError(f"{path}: not a safetensors file") from None
    meta = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
    base = 8 + length
    tensors = {}
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ModelLoadError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        raw = memoryview(data)[base + start:base + end]  # no copy: astype below copies once
        array = np.frombuffer(raw, dtype=_np_dtype(dtype).newbyteorder("<"))
        tensors[name] = array.reshape(info["shape"]).astype(_np_dtype(dtype), copy=True)
    return tensors, meta


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a readable .npz file ({exc})") from None
    meta_array = arrays.pop(_NPZ_META, None)
    meta = json.loads(str(meta_array)) if meta_array is not None else {}
    for name in json.loads(meta.get("onnxinit.dtypes", "{}")):
        arrays[name] = arrays[name].view(_np_dtype("bfloat16"))
    return arrays, meta


def read_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors by name, metadata) of a file written by :func:`export_weights` (or any
    safetensors / npz file; the format is read from the file, not its suffix)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    with path.open("rb") as handle:
        zipped = handle.read(2) == b"PK"  # npz is a zip file, whatever its suffix
    if zipped:
        return _read_npz(path)
    return _read_safetensors(path)


def record_from_metadata(meta: Mapping[str, str]) -> dict | None:
    """The plan record (``scales``, ``replaced``) carried by a weights file's metadata."""
    if "onnxinit.scales" not in meta:
        return None
    per_tensor = json.loads(meta["onnxinit.scales"])
    return {"source": meta.get("onnxinit.source"), "method": meta.get("onnxinit.method"),
            "scales": {n: s for n, s in per_tensor.items() if s != "replaced"},
            "replaced": [n for n, s in per_tensor.items() if s == "replaced"]}

