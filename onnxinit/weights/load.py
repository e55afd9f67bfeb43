"""From a mapping to the values to load, after every check: :func:`load_plan`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

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
        if param in values and not equal(values[param], value):
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

