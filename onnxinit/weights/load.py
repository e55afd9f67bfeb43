"""From a mapping to the values to load, after every check: :func:`load_plan`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .batchnorm import unfold
from .layouts import layout_named
from .report import MappingError, MappingReport
from .source import WeightSource
from .values import equal


def _changed(source: WeightSource, name: str) -> bool:
    """Whether loading ``name`` matters: its new value differs from the original (unknown
    originals count as changed)."""
    ref = source.reference.get(name)
    if ref is None or name in source.approximate:
        return True
    return not equal(ref, source.new[name])


def _as_param(value: np.ndarray, layout: str, param_shape) -> np.ndarray:
    """An ONNX tensor in its parameter's layout and shape."""
    value = np.asarray(value)
    if layout != "same":
        return layout_named(layout, value.shape, param_shape).to_param(value)
    if value.size == int(np.prod(param_shape)):
        return value.reshape(param_shape)
    return value


def _unfolded(report: MappingReport, source: WeightSource, params) -> list[tuple]:
    """(ONNX name, parameter, value) for every folded tensor whose loading changes a
    parameter; a change to a BatchNormalization parameter of an ``interchangeable`` pairing
    is refused (recorded in ``report.ambiguous``): which one to change is unknown."""
    out = []
    for name, fold in report.unfold.items():
        shape = np.shape(params[fold.param]) if fold.kind == "weight" else None
        values = unfold(fold, source.new[name], params,
                        None if shape is None else lambda w, s=shape, f=fold:
                        _as_param(w, f.layout, s))
        for param, value in values.items():
            current = np.asarray(params[param], np.float64)
            if param in fold.batchnorm and np.allclose(value, current, rtol=1e-5, atol=1e-7):
                continue  # the BatchNormalization keeps its state
            if param in fold.batchnorm and fold.paired == "interchangeable":
                report.ambiguous[name] = [f"{param} (one of several equal BatchNormalizations)"]
                continue
            out.append((name, param, value.astype(np.asarray(params[param]).dtype)))
    return out


def _causes(report: MappingReport, source: WeightSource, params) -> str:
    """The three most likely causes of a mapping that found too little, with the shapes of
    what is left on each side."""
    def shapes(names, table):
        listed = ", ".join(f"{n} {list(np.shape(table[n]))}" for n in names[:4])
        return listed + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    left = shapes(report.unmapped, source.new) or "none"
    missing = shapes(report.missing, params) or "none"
    return (f"most likely causes: (1) the module is not the exported network (ONNX tensors "
            f"left: {left}; parameters left: {missing}); (2) its values changed since the "
            f"export (trained, re-initialized, another seed): pass as `original` the ONNX "
            f"model exported from this very module; (3) the exporter laid the weights out in "
            f"a way not recognised here (tried: as is, transposed, channels-last and depthwise "
            f"kernels, recurrent gate orders, BatchNormalization folded into a Conv or written as "
            f"Mul/Add)")


def load_plan(
    report: MappingReport,
    source: WeightSource,
    params: Mapping[str, np.ndarray],
    *,
    buffers: set[str] | frozenset[str] = frozenset(),
    strict: bool = False,
) -> dict[str, np.ndarray]:
    """Parameter name -> the value to load (the ONNX tensor's values and dtype, in the
    parameter's layout; folded BatchNormalization un-folded with the module's own state),
    after every check; nothing is loaded by this function.

    Raises :class:`MappingError` (carrying ``report``) when the parameters do not match: a
    same-name shape mismatch, a parameter that would receive different values from several
    tensors (tied weights rescaled differently; recorded in ``report.conflicts``), fewer than
    half of the non-buffer parameters found (parameters ``absent`` from the export do not
    count; the message names the likely causes), a folded BatchNormalization whose state would
    change but which cannot be told apart from others, or a tensor the rescale changed that
    maps to no parameter. ``strict`` also refuses any unmapped tensor or missing parameter."""
    source = source.expanded()
    values: dict[str, np.ndarray] = {}
    sources: dict[str, list[str]] = {}
    entries = [(name, param, _as_param(source.new[name], report.layout.get(name, "same"),
                                       np.shape(params[param])))
               for name, param in report.mapped.items()]
    entries += [(name, param, _as_param(source.new[name], "same", np.shape(params[param])))
                for param, name in report.merged.items()]
    entries += _unfolded(report, source, params)
    for name, param, value in entries:
        if tuple(value.shape) != tuple(np.shape(params[param])):
            report.mismatched[name] = (f"shape {tuple(value.shape)}, parameter "
                                       f"{tuple(np.shape(params[param]))}")
            continue
        sources.setdefault(param, []).append(name)
        if param in values and not np.allclose(values[param], value, rtol=1e-6, atol=0):
            report.conflicts[param] = sources[param]
            continue
        values.setdefault(param, np.ascontiguousarray(value))
    weights = [p for p in params if p not in buffers and p not in report.absent]
    found = {p for p in values if p not in buffers}
    found |= {p for into in report.folded_into.values() for p in into if p not in buffers}
    found |= {p for into in report.recurrent.values() for p in into if p not in buffers}
    lost = [n for n in report.unmapped + report.constants if _changed(source, n)]
    lost += [n for n in report.recurrent if _changed(source, n)]  # none is loaded
    problems = []
    if report.mismatched:
        problems.append("shapes differ")
    if report.conflicts:
        problems.append("tied parameters would receive different values")
    if not values and not report.folded:
        problems.append("no parameter matches")
    elif weights and len(found) * 2 < len(weights):
        problems.append(f"only {len(found)} of {len(weights)} parameters found")
    ambiguous_folds = [n for n in report.ambiguous if n in report.unfold]
    if ambiguous_folds:
        problems.append(f"{len(ambiguous_folds)} folded tensor(s) would change a "
                        "BatchNormalization that cannot be told apart from others with the "
                        "same state (give the framework's layer graph: the Keras adapter "
                        "does; or keep the biases: rescale --keep-bias)")
    if lost:
        hint = (" (give the original ONNX model to match them by value)"
                if any(n not in source.reference for n in lost) else "")
        problems.append(f"{len(lost)} rescaled tensor(s) map to no parameter{hint}")
    if strict and (report.unmapped or report.missing):
        problems.append("strict: every tensor and parameter must map")
    if problems:
        causes = ""
        if any(p.startswith(("only", "no parameter")) for p in problems) or lost:
            causes = "; " + _causes(report, source, params)
        raise MappingError(
            f"the module does not match the ONNX weights ({'; '.join(problems)}): "
            f"{report.summary()}{causes}; nothing was loaded", report)
    return values
