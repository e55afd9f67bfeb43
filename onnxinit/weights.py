"""Weights out of ONNX and back into a framework: export files and name mapping (numpy only).

- :func:`float_initializers` reads every float initializer of a model (float32/64/16, bfloat16).
- :func:`export_weights` writes them to safetensors (default) or ``.npz``, keyed by initializer
  name, with metadata naming the source model, the method and the scale each tensor received
  (from the ``onnxinit.plan`` record ``rescale`` stores in the model); :func:`read_weights`
  reads such a file back.
- :func:`map_weights` maps ONNX initializers to a framework's parameter names, given the
  framework's current parameters as ``{name: ndarray}``: by name, by normalised name, by value
  (exact, or transposed for 2-D tensors, e.g. PyTorch's ``onnx::MatMul_123``), by value up to
  the recorded scale, and it recognises Conv weights with BatchNormalization folded in (eval-mode
  exports). Nothing is skipped silently: the :class:`MappingReport` lists every unmapped tensor
  and every missing parameter.
- :func:`load_plan` turns a report into the new value of each parameter, checking everything
  (shapes, tied parameters that would receive different values, a module that does not match)
  before an adapter writes anything.

Framework adapters (``onnxinit.adapters.torch`` ...) use these; no framework is imported here.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ._loading import read_model
from ._version import __version__
from .errors import InvalidOptionError, ModelLoadError, UnsupportedModelError, WriteError
from .writeback import WRITABLE_TYPES, _cleanup, _same_file, _write_temp, read_plan_record

FORMATS = ("safetensors", "npz")
META_PREFIX = "onnxinit."
_NPZ_META = "__onnxinit_metadata__"


class MappingError(UnsupportedModelError):
    """The framework's parameters do not match the ONNX weights; ``report`` says how."""

    def __init__(self, message: str, report: MappingReport):
        super().__init__(message)
        self.report = report


# reading initializers ---------------------------------------------------------------------------


def float_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every float initializer of the main graph (float32/64/16, bfloat16), in model order,
    with its own dtype (bfloat16 as ``ml_dtypes.bfloat16``). External data must be loaded."""
    out = {}
    for tensor in model.graph.initializer:
        if tensor.data_type in WRITABLE_TYPES:
            if onnx.external_data_helper.uses_external_data(tensor):
                raise UnsupportedModelError(
                    f"initializer {tensor.name!r} holds external data that is not loaded")
            out[tensor.name] = numpy_helper.to_array(tensor)
    return out


def identity_aliases(model: onnx.ModelProto) -> dict[str, str]:
    """Alias -> float initializer, for outputs of ``Identity`` nodes of an initializer (or of
    another alias). PyTorch's exporter deduplicates equal initializers this way: a zero bias
    shared by many layers is one initializer read through ``Identity`` nodes named after each
    layer's parameter."""
    names = {t.name for t in model.graph.initializer if t.data_type in WRITABLE_TYPES}
    aliases: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input:
            source = node.input[0]
            root = aliases.get(source, source if source in names else None)
            if root is not None and node.output and node.output[0] not in names:
                aliases[node.output[0]] = root
    return aliases


def _load_model(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    if isinstance(model, onnx.ModelProto):
        return model, None
    return read_model(model)[0], Path(model)


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
    needs the ``safetensors`` package (``pip install onnxinit[weights]``)."""
    fmt = format_for(output, fmt)
    if fmt == "safetensors":
        try:
            import safetensors.numpy  # noqa: F401
        except ImportError:
            raise InvalidOptionError(
                "writing safetensors needs the safetensors package: pip install "
                "onnxinit[weights] (or write .npz: -o FILE.npz or --format npz)"
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


def _safetensors_bytes(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> bytes:
    from safetensors.numpy import save

    arrays = {n: np.ascontiguousarray(a) for n, a in tensors.items()}
    return save(arrays, metadata=meta)


def _npz_bytes(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> bytes:
    """npz cannot hold bfloat16 without pickle: such tensors are stored as their uint16 bits and
    named in the ``onnxinit.dtypes`` metadata entry; :func:`read_weights` restores them."""
    import io

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
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _atomic_write(out: Path, data: bytes) -> None:
    folder = out.parent
    if out.is_dir():
        raise WriteError(f"{out}: is a folder; give a file name for the weights")
    if not folder.is_dir():
        raise WriteError(f"{out}: the output folder {folder} does not exist")
    temps: list[Path] = []
    try:
        os.replace(_write_temp(folder, out.name, data, temps), out)
    except OSError as exc:
        _cleanup(temps, [])
        raise WriteError(f"{out}: cannot write the weights: {exc.strerror or exc}") from None
    except BaseException:
        _cleanup(temps, [])
        raise


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
    proto, path = _load_model(model)
    path = path if path is not None else (Path(model_path) if model_path is not None else None)
    if output is None:
        if path is None:
            raise InvalidOptionError("exporting the weights of a ModelProto needs an output path")
        output = default_weights_output(path, fmt)
    out = Path(output)
    check_target(out, fmt, [path, *protect])
    tensors = float_initializers(proto)
    if not tensors:
        raise UnsupportedModelError(f"{path or 'model'}: the model has no float initializers")
    meta = weights_metadata(proto, path, list(tensors))
    data = _safetensors_bytes(tensors, meta) if fmt == "safetensors" else _npz_bytes(tensors, meta)
    _atomic_write(out, data)
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


# sources ----------------------------------------------------------------------------------------


@dataclass
class WeightSource:
    """What to load (``new``), what to match the framework's current values against
    (``reference``: the original values where known), which references are only approximate
    (rescaled values divided by their recorded scale), and the graph when there is one.
    ``aliases`` (alias -> initializer, see :func:`identity_aliases`) are names that carry an
    initializer's values; :meth:`expanded` adds them to ``new`` and ``reference``."""

    new: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    approximate: set[str] = field(default_factory=set)
    model: onnx.ModelProto | None = None
    aliases: dict[str, str] = field(default_factory=dict)

    def expanded(self) -> WeightSource:
        """A copy where every alias of a known initializer is an entry of its own."""
        aliases = {a: i for a, i in self.aliases.items() if i in self.new and a not in self.new}
        new = dict(self.new)
        reference = dict(self.reference)
        for alias, name in aliases.items():
            new[alias] = self.new[name]
            if name in self.reference:
                reference[alias] = self.reference[name]
        approximate = self.approximate | {a for a, i in aliases.items() if i in self.approximate}
        return WeightSource(new=new, reference=reference, approximate=approximate,
                            model=self.model, aliases=aliases)


def _is_weights_file(obj) -> bool:
    return isinstance(obj, (str, os.PathLike)) and Path(obj).suffix.lower() in (
        ".safetensors", ".npz")


def weight_source(rescaled, original=None) -> WeightSource:
    """Resolve what an adapter loads.

    ``rescaled``: an ONNX path or ModelProto, a ``.safetensors``/``.npz`` path, or a dict
    name -> array. ``original``: the ONNX model (path or ModelProto, or the weights file
    exported from it) the framework module was exported as; values are matched against it. Without it, tensors the ``onnxinit.plan`` record
    marks as scaled are matched against ``new / scale`` (approximately), replaced ones by name
    only, and the rest against their own (unchanged) values."""
    model = None
    record = None
    aliases: dict[str, str] = {}
    if isinstance(rescaled, Mapping):
        new = {str(k): np.asarray(v) for k, v in rescaled.items()}
    elif _is_weights_file(rescaled):
        new, meta = read_weights(rescaled)
        record = record_from_metadata(meta)
        aliases = json.loads(meta.get("onnxinit.aliases", "{}"))
    else:
        model, _ = _load_model(rescaled)
        new = float_initializers(model)
        record = read_plan_record(model)
        aliases = identity_aliases(model)
    if original is not None:
        if _is_weights_file(original):
            reference = read_weights(original)[0]
        else:
            original_model, _ = _load_model(original)
            model = model if model is not None else original_model
            aliases = aliases or identity_aliases(original_model)
            reference = float_initializers(original_model)
        for name, value in new.items():
            if name in reference and reference[name].shape != value.shape:
                raise InvalidOptionError(
                    f"the original model's {name!r} has shape {reference[name].shape}, the "
                    f"rescaled one {value.shape}: they are not the same network")
        return WeightSource(new=new, reference=reference, model=model, aliases=aliases)
    reference, approximate = {}, set()
    scales = (record or {}).get("scales", {})
    replaced = set((record or {}).get("replaced", []))
    for name, value in new.items():
        if name in replaced:
            continue
        scale = scales.get(name)
        if scale is None or scale == 1.0:
            reference[name] = value
        elif scale != 0.0:
            reference[name] = value.astype(np.float64) / scale
            approximate.add(name)
    return WeightSource(new=new, reference=reference, approximate=approximate, model=model,
                        aliases=aliases)


# name mapping -----------------------------------------------------------------------------------


@dataclass
class MappingReport:
    """How ONNX initializers map onto a framework's parameters.

    ``mapped``: ONNX name -> parameter name (several ONNX tensors may map to one parameter:
    tied weights); ``unmapped``: ONNX float initializers with no parameter; ``missing``:
    parameters with no ONNX initializer (buffers are only counted when they were mapped);
    ``folded``: ONNX tensors recognised as a Conv weight or bias with BatchNormalization folded
    in (eval-mode export), ``folded_into`` the parameters each one combines; ``transposed``:
    mapped tensors that are their parameter transposed, ``reshaped`` those that differ from it
    only by size-1 dimensions (a bias written as ``[1, C]``); ``how``: the rule that mapped each
    tensor; ``mismatched``: same-name tensors whose shapes differ; ``ambiguous``: tensors equal
    to several parameters that could not be told apart; ``conflicts``: parameters that would
    receive different values from different tensors; ``aliases``: mapped names that are not
    initializers but read one through ``Identity`` (alias -> initializer; an initializer counts
    as mapped when it or one of its aliases is)."""

    mapped: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)
    folded_into: dict[str, list[str]] = field(default_factory=dict)
    transposed: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    how: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, str] = field(default_factory=dict)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    conflicts: dict[str, list[str]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: counts, then the first few names of each problem."""
        parts = [f"{len(self.mapped)} mapped", f"{len(self.unmapped)} unmapped",
                 f"{len(self.missing)} missing"]
        if self.folded:
            parts.append(f"{len(self.folded)} folded (eval-mode export: BatchNormalization "
                         "folded into Conv; re-export in training mode)")
        for label, items in (("mismatched", self.mismatched), ("conflicting", self.conflicts),
                             ("unmapped", self.unmapped), ("missing", self.missing),
                             ("ambiguous", self.ambiguous)):
            if items:
                names = list(items)[:3]
                more = f" and {len(items) - 3} more" if len(items) > 3 else ""
                detail = ", ".join(
                    f"{n} ({items[n]})" if isinstance(items, dict) and label == "mismatched"
                    else n for n in names)
                parts.append(f"{label}: {detail}{more}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "params.", "net.")


def normalize_name(name: str) -> str:
    """A name with exporter decorations removed, for matching: ``:0`` suffixes dropped, ``/``
    and ``:`` read as ``.``, wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``,
    ``params.``, ``net.``) and torch.export's ``p_``/``b_`` (of a flat name) stripped, and every
    run of non-alphanumerics made one ``_``."""
    key = re.sub(r":\d+$", "", name).replace("/", ".").replace(":", ".").strip(".")
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                key, changed = key[len(prefix):], True
    if re.fullmatch(r"[pb]_\w+", key):  # torch.export's flat p_conv1_weight / b_bn_running_mean
        key = key[2:]
    return re.sub(r"[^0-9A-Za-z]+", "_", key).strip("_")


def _squeezed(shape) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _value_key(array: np.ndarray) -> tuple:
    """A cheap lookup key: the shape without its size-1 dimensions (an exporter may write a bias
    of shape [C] as [1, C]) and 256 evenly spaced values. Equal arrays have equal keys; a match
    is always confirmed with :func:`_equal`."""
    flat = np.asarray(array).reshape(-1)
    if flat.size > 256:
        flat = flat[np.linspace(0, flat.size - 1, 256).astype(np.int64)]
    return _squeezed(array.shape), np.asarray(flat, dtype=np.float32).tobytes()


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Exactly equal, up to size-1 dimensions."""
    if _squeezed(a.shape) != _squeezed(b.shape):
        return False
    return bool(np.array_equal(np.asarray(a, np.float64).reshape(b.shape),
                               np.asarray(b, np.float64)))


def _close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-5) -> bool:
    """Equal within ``rtol`` relative to the largest magnitude of ``b`` (a first look at a few
    elements rejects most pairs cheaply)."""
    if _squeezed(a.shape) != _squeezed(b.shape):
        return False
    if a.shape != b.shape:
        a = a.reshape(b.shape)
    head_a = np.asarray(a.flat[:64], np.float64)  # .flat: no copy of a transposed view
    head_b = np.asarray(b.flat[:64], np.float64)
    if not np.allclose(head_a, head_b, rtol=10 * rtol, atol=10 * rtol * np.max(np.abs(head_b),
                                                                               initial=0.0)):
        return False
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.max(np.abs(b64), initial=0.0)), 1e-30)
    return bool(np.allclose(a64, b64, rtol=rtol, atol=rtol * scale))


def _degenerate(array: np.ndarray) -> bool:
    """All elements equal (zeros, ones): a value that says nothing about which tensor it is."""
    flat = np.asarray(array).reshape(-1)
    return flat.size <= 1 or bool(np.all(flat == flat[0]))


_TORCH_BN = ("weight", "bias", "running_mean", "running_var")
_KERAS_BN = ("gamma", "beta", "moving_mean", "moving_variance")


class _Mapper:
    def __init__(self, reference, params, buffers, new, approximate, model):
        self.ref = reference
        self.params = params
        self.buffers = set(buffers)
        self.new = new
        self.approximate = approximate
        self.model = model
        self.report = MappingReport()
        self._index: dict[tuple, list[str]] | None = None
        first = {n for n in new if n in reference or n in params}
        self.todo = [n for n in new if n in first] + [n for n in new if n not in first]

    # helpers
    def _used(self) -> set[str]:
        return set(self.report.mapped.values())

    def _map(self, onnx_name: str, param: str, how: str, transposed: bool = False) -> None:
        self.report.mapped[onnx_name] = param
        reshaped = not transposed and self.new[onnx_name].shape != self.params[param].shape
        self.report.how[onnx_name] = how + (" (transposed)" if transposed else "") + (
            " (reshaped)" if reshaped else "")
        if transposed:
            self.report.transposed.append(onnx_name)
        if reshaped:
            self.report.reshaped.append(onnx_name)

    def _remaining(self) -> list[str]:
        done = set(self.report.mapped) | set(self.report.mismatched) | set(self.report.folded)
        return [n for n in self.todo if n not in done]

    def _fit(self, onnx_name: str, param: str) -> bool | None:
        """False: same shape (up to size-1 dimensions); True: transposed 2-D; None: shapes do
        not fit."""
        shape, pshape = tuple(self.new[onnx_name].shape), tuple(self.params[param].shape)
        if _squeezed(shape) == _squeezed(pshape):
            return False
        if len(shape) == 2 and shape[::-1] == pshape:
            return True
        return None

    # steps
    def by_name(self) -> None:
        for name in self._remaining():
            if name in self.params:
                fit = self._fit(name, name)
                if fit is None:
                    self.report.mismatched[name] = (
                        f"shape {tuple(self.new[name].shape)}, parameter "
                        f"{tuple(self.params[name].shape)}")
                else:
                    self._map(name, name, "name", fit)

    def by_normalized_name(self) -> None:
        used = self._used()
        onnx_keys: dict[str, list[str]] = {}
        for name in self._remaining():
            onnx_keys.setdefault(normalize_name(name), []).append(name)
        param_keys: dict[str, list[str]] = {}
        for param in self.params:
            if param not in used:
                param_keys.setdefault(normalize_name(param), []).append(param)
        for key, names in onnx_keys.items():
            params = param_keys.get(key, [])
            if len(names) == 1 and len(params) == 1:
                fit = self._fit(names[0], params[0])
                if fit is not None:
                    self._map(names[0], params[0], "normalized name", fit)
        self._by_name_suffix(onnx_keys, param_keys)

    def _by_name_suffix(self, onnx_keys, param_keys) -> None:
        """One normalised name ending with the other at a ``_`` boundary (a model-name prefix
        such as Keras's ``sequential/``), unique in both directions."""
        def suffix(a: str, b: str) -> bool:
            return a != b and (a.endswith("_" + b) or b.endswith("_" + a))

        used = self._used()
        onnx_left = {k: v[0] for k, v in onnx_keys.items()
                     if len(v) == 1 and v[0] not in self.report.mapped}
        param_left = {k: v[0] for k, v in param_keys.items() if len(v) == 1 and v[0] not in used}
        for okey, name in onnx_left.items():
            hits = [pkey for pkey in param_left if suffix(okey, pkey)]
            if len(hits) != 1 or sum(suffix(o, hits[0]) for o in onnx_left) != 1:
                continue
            fit = self._fit(name, param_left[hits[0]])
            if fit is not None:
                self._map(name, param_left[hits[0]], "name suffix", fit)

    def by_value(self, degenerate: bool) -> None:
        """Exact value matches (hash, verified with array_equal). ``degenerate`` selects the
        tensors whose elements are all equal (done last: they rarely identify a parameter)."""
        if self._index is None:
            self._index = {}
            for param, value in self.params.items():
                self._index.setdefault(_value_key(value), []).append(param)
        index = self._index
        groups: dict[tuple, list[str]] = {}
        for name in self._remaining():
            if name in self.approximate or name not in self.ref:
                continue
            ref = self.ref[name]
            if _degenerate(ref) != degenerate:
                continue
            candidates = [(p, False) for p in index.get(_value_key(ref), [])
                          if _equal(ref, self.params[p])]
            if ref.ndim == 2:
                exact = {c[0] for c in candidates}
                candidates += [(p, True) for p in index.get(_value_key(ref.T), [])
                               if p not in exact and _equal(ref.T, self.params[p])]
            self._choose(name, candidates, "value", groups)
        self._resolve_groups(groups, "value")

    def _choose(self, name, candidates, how, groups) -> None:
        if not candidates:
            return
        if len(candidates) == 1:
            self._map(name, candidates[0][0], how, candidates[0][1])
            return
        used = self._used()
        free = [c for c in candidates if c[0] not in used]
        if len(free) == 1:
            self._map(name, free[0][0], how, free[0][1])
            return
        groups.setdefault(tuple(sorted(free or candidates)), []).append(name)

    def _resolve_groups(self, groups, how) -> None:
        """k tensors equal to the same k parameters are interchangeable when the values to load
        are equal too (then every assignment loads the same thing); otherwise ambiguous."""
        for candidates, names in groups.items():
            values = [self.new[n] for n in names]
            same = all(_equal(values[0], v) for v in values[1:])
            if len(candidates) == len(names) and same and len({c[1] for c in candidates}) == 1:
                for name, (param, transposed) in zip(names, candidates):
                    self._map(name, param, how + " (interchangeable)", transposed)
            else:
                for name in names:
                    self.report.ambiguous[name] = [c[0] for c in candidates]

    def by_scaled_value(self) -> None:
        """Rescaled tensors without the original: ``new / scale`` close to one parameter."""
        used = self._used()
        groups: dict[tuple, list[str]] = {}
        for name in self._remaining():
            if name not in self.approximate:
                continue
            ref = self.ref[name]
            candidates = []
            for param, value in self.params.items():
                if param in used:
                    continue
                fit = self._fit(name, param)
                if fit is None:
                    continue
                for transposed in ((False, True) if ref.ndim == 2 and not fit
                                   and ref.shape[0] == ref.shape[1] else (fit,)):
                    if _close(ref.T if transposed else ref, value):
                        candidates.append((param, transposed))
                        break
            self._choose(name, candidates, "scaled value", groups)
        self._resolve_groups(groups, "scaled value")

    def folded_batchnorm(self) -> None:
        """An unmapped tensor equal to an unmapped Conv weight times a per-output-channel factor
        ``gamma / sqrt(var + eps)`` of some BatchNorm's parameters: BN folded into the Conv.
        The Conv's bias input (from the graph) is folded too."""
        used = self._used()
        batchnorms = self._batchnorm_groups()
        for name in self._remaining():
            ref = self.ref.get(name)
            if ref is None or ref.ndim < 3:
                continue
            for param, weight in self.params.items():
                if param in used or tuple(weight.shape) != tuple(ref.shape) or param in self.buffers:
                    continue
                factor = _channel_factor(ref, weight)
                if factor is None:
                    continue
                bn = _closest_batchnorm(param, factor, batchnorms, self.params)
                if bn is None:
                    continue
                into = [param] + bn
                self.report.folded.append(name)
                self.report.folded_into[name] = into
                bias = self._conv_bias(name)
                if bias is not None and bias in self._remaining():
                    conv_bias = param.rsplit(".", 1)[0] + ".bias" if "." in param else None
                    extra = [conv_bias] if conv_bias in self.params else []
                    self.report.folded.append(bias)
                    self.report.folded_into[bias] = extra + bn
                break

    def _conv_bias(self, weight: str) -> str | None:
        if self.model is None:
            return None
        for node in self.model.graph.node:
            if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 2 \
                    and node.input[1] == weight:
                return node.input[2] or None
        return None

    def _batchnorm_groups(self) -> list[list[str]]:
        """[scale, shift, mean, variance] names sharing a prefix: PyTorch's ``weight, bias,
        running_mean, running_var`` and Keras's ``gamma, beta, moving_mean, moving_variance``."""
        out = []
        for suffixes in (_TORCH_BN, _KERAS_BN):
            for name in self.params:
                if name.endswith(suffixes[3]):
                    prefix = name[: -len(suffixes[3])]
                    group = [prefix + s for s in suffixes]
                    if all(g in self.params for g in group):
                        out.append(group)
        return out

    def finish(self, onnx_order: list[str], aliases: dict[str, str]) -> MappingReport:
        report = self.report
        done = set(report.mapped) | set(report.folded)
        done |= {aliases[n] for n in done if n in aliases}
        report.aliases = {n: aliases[n] for n in report.mapped if n in aliases}
        report.unmapped = [n for n in onnx_order if n not in done and n not in aliases]
        for name in [n for n in report.ambiguous if n in aliases or n in done]:
            del report.ambiguous[name]
        used = self._used()
        report.missing = [p for p in self.params if p not in used and p not in self.buffers]
        return report


def _channel_factor(folded: np.ndarray, weight: np.ndarray) -> np.ndarray | None:
    """k with ``folded[c] == k[c] * weight[c]`` for every output channel c, else None."""
    f = np.asarray(folded, np.float64).reshape(folded.shape[0], -1)
    w = np.asarray(weight, np.float64).reshape(weight.shape[0], -1)
    norms = np.sum(w * w, axis=1)
    if np.any(norms == 0):
        return None
    k = np.sum(f * w, axis=1) / norms
    residual = np.linalg.norm(f - k[:, None] * w)
    if residual > 1e-5 * max(np.linalg.norm(f), 1e-30):
        return None
    return k


def _closest_batchnorm(param: str, factor: np.ndarray, groups: list[list[str]],
                       params: Mapping[str, np.ndarray]) -> list[str] | None:
    """The BatchNorm group whose ``gamma / sqrt(var + eps)`` equals ``factor`` for a usual eps;
    among several, the one whose name shares the longest prefix with ``param``."""
    best, best_len = None, -1
    for group in groups:
        gamma = np.asarray(params[group[0]], np.float64)
        var = np.asarray(params[group[3]], np.float64)
        if gamma.shape != factor.shape:
            continue
        if not any(np.allclose(gamma / np.sqrt(var + eps), factor, rtol=1e-4, atol=0)
                   for eps in (1e-5, 1e-3, 1e-6, 1e-4, 0.0)):
            continue
        common = len(os.path.commonprefix([param, group[0]]))
        if common > best_len:
            best, best_len = group, common
    return best


def map_weights(
    source: WeightSource | Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    *,
    buffers: set[str] | frozenset[str] = frozenset(),
) -> MappingReport:
    """Map ONNX initializers to the framework parameters ``params`` (name -> current values).

    Order: same name; same normalised name (:func:`normalize_name`, unique on both sides);
    same value (exact, or transposed for 2-D tensors) for tensors whose values are not all
    equal; ``new / scale`` close to a parameter (rescaled tensors with no original given);
    BatchNorm folded into a Conv; finally exact values of constant tensors (zeros, ones), where
    k tensors equal to the same k parameters map only when the values to load are equal too.
    A parameter may receive several tensors (tied weights). ``buffers`` names entries of
    ``params`` that are optional (BatchNorm running statistics): mapped when an initializer
    matches them, never reported missing."""
    if not isinstance(source, WeightSource):
        values = {str(k): np.asarray(v) for k, v in source.items()}
        source = WeightSource(new=values, reference=values)
    source = source.expanded()
    params = {str(k): np.asarray(v) for k, v in params.items()}
    mapper = _Mapper(source.reference, params, buffers, source.new, source.approximate,
                     source.model)
    mapper.by_name()
    mapper.by_normalized_name()
    mapper.by_value(degenerate=False)
    mapper.by_scaled_value()
    mapper.folded_batchnorm()
    mapper.by_value(degenerate=True)
    return mapper.finish(list(source.new), source.aliases)


# loading ----------------------------------------------------------------------------------------


def _changed(source: WeightSource, name: str) -> bool:
    """Whether loading ``name`` matters: its new value differs from the original (unknown
    originals count as changed)."""
    ref = source.reference.get(name)
    if ref is None or name in source.approximate:
        return True
    return not _equal(ref, source.new[name])


def load_plan(
    report: MappingReport,
    source: WeightSource,
    params: Mapping[str, np.ndarray],
    *,
    buffers: set[str] | frozenset[str] = frozenset(),
    strict: bool = False,
) -> dict[str, np.ndarray]:
    """Parameter name -> the value to load (the ONNX tensor's values and dtype, transposed back
    where the mapping was transposed), after every check; nothing is loaded by this function.

    Raises :class:`MappingError` (carrying ``report``) when the parameters do not match: a
    same-name shape mismatch, a parameter that would receive different values from several
    tensors (tied weights rescaled differently; recorded in ``report.conflicts``), fewer than
    half of the non-buffer parameters found, BatchNorm folded into Conv (eval-mode export), or a
    tensor the rescale changed that maps to no parameter. ``strict`` also refuses any unmapped
    tensor or missing parameter."""
    source = source.expanded()
    values: dict[str, np.ndarray] = {}
    sources: dict[str, list[str]] = {}
    for name, param in report.mapped.items():
        value = np.asarray(source.new[name])
        if name in report.transposed:
            value = value.T
        if name in report.reshaped and value.size == int(np.prod(np.shape(params[param]))):
            value = value.reshape(np.shape(params[param]))
        if tuple(value.shape) != tuple(np.shape(params[param])):
            report.mismatched[name] = (f"shape {tuple(value.shape)}, parameter "
                                       f"{tuple(np.shape(params[param]))}")
            continue
        sources.setdefault(param, []).append(name)
        if param in values and not _equal(values[param], value):
            report.conflicts[param] = sources[param]
            continue
        values.setdefault(param, np.ascontiguousarray(value))
    weights = [p for p in params if p not in buffers]
    found = {p for p in values if p not in buffers}
    lost = [n for n in report.unmapped if _changed(source, n)]
    problems = []
    if report.mismatched:
        problems.append("shapes differ")
    if report.conflicts:
        problems.append("tied parameters would receive different values")
    if not values:
        problems.append("no parameter matches")
    elif weights and len(found) * 2 < len(weights):
        problems.append(f"only {len(found)} of {len(weights)} parameters found")
    if report.folded:
        problems.append("BatchNormalization is folded into Conv (eval-mode export); export the "
                        "model in training mode and rescale that")
    if lost:
        hint = (" (give the original ONNX model to match them by value)"
                if any(n not in source.reference for n in lost) else "")
        problems.append(f"{len(lost)} rescaled tensor(s) map to no parameter{hint}")
    if strict and (report.unmapped or report.missing):
        problems.append("strict: every tensor and parameter must map")
    if problems:
        raise MappingError(
            f"the module does not match the ONNX weights ({'; '.join(problems)}): "
            f"{report.summary()}; nothing was loaded", report)
    return values
