"""Mapping steps for BatchNormalization as inference exports write it (see
:mod:`~onnxinit.weights.batchnorm` for the arithmetic):

- :func:`folded_weights`: a Conv kernel ``W k`` and its bias ``(b - mean) k + beta``;
- :func:`batchnorm_nodes`: a BatchNormalization node whose four inputs are initializers, one of
  which may stand for two equal parameters (tf2onnx writes gamma and a variance of ones once);
- :func:`batchnorm_constants`: a BatchNormalization written as ``Mul(k)`` and ``Add(shift)``
  (Keras 3's TensorFlow export of a BatchNormalization that follows no Conv).

Each step takes the mapper (``onnxinit.weights.mapper``) and records what it found in its
report; a BatchNormalization is paired with one tensor at most.
"""

from __future__ import annotations

import numpy as np

from .batchnorm import (
    batchnorm_groups,
    channel_factor,
    factor,
    fitting_eps,
    layer_bias,
    same_state,
)
from .report import Fold
from .values import equal


def _consumers(model) -> dict[str, list]:
    out: dict[str, list] = {}
    if model is not None:
        for node in model.graph.node:
            for index, name in enumerate(node.input):
                out.setdefault(name, []).append((node, index))
    return out


def _free_groups(mapper) -> list[tuple[str, str, str, str]]:
    used = mapper._used()
    return [g for g in batchnorm_groups(mapper.params) if not used.intersection(g)]


def _pair(mapper, candidates: list, kernel: str | None):
    """(group, eps, how) among ``candidates`` [(group, eps)]: the one the framework's graph
    names after ``kernel``, else the only one, else the first of several with equal state
    (``interchangeable``); None when they differ."""
    if not candidates:
        return None
    follows = mapper.follows.get(kernel) if kernel is not None else None
    if follows is not None:
        named = [c for c in candidates if c[0][0] == follows]
        return (*named[0], "graph") if named else None
    if len(candidates) == 1:
        return (*candidates[0], "unique")
    if len({eps for _, eps in candidates}) == 1 and same_state([g for g, _ in candidates],
                                                               mapper.params):
        return (*candidates[0], "interchangeable")
    return None


def _record(mapper, name: str, fold: Fold) -> None:
    report = mapper.report
    report.folded.append(name)
    report.unfold[name] = fold
    report.folded_into[name] = ([fold.param] if fold.param else []) + list(fold.batchnorm)
    report.how[name] = f"folded BatchNormalization ({fold.kind}, {fold.paired})"


def folded_weights(mapper) -> None:
    """An unmapped tensor equal, in some layout, to an unmapped kernel times a per-output-
    channel factor that is some free BatchNormalization's ``gamma / sqrt(var + eps)``; then
    the Conv's bias input (from the graph), which holds the shift."""
    consumers = _consumers(mapper.model)
    for name in mapper._remaining():
        ref = mapper.ref.get(name)
        if ref is None or ref.ndim < (2 if mapper.model is not None else 3):
            continue  # without the graph, only kernels of a convolution are candidates
        conv = next((node for node, index in consumers.get(name, ())
                     if node.op_type == "Conv" and index == 1), None)
        if mapper.model is not None and conv is None:
            continue
        found = _fold_of(mapper, name, ref)
        if found is None:
            continue
        param, layout, (group, eps, paired) = found
        _record(mapper, name, Fold("weight", param, group, eps, layout.name, paired))
        bias = conv.input[2] if conv is not None and len(conv.input) > 2 else ""
        if bias and bias in mapper._remaining() and bias in mapper.new:
            _record(mapper, bias, Fold("bias", layer_bias(param, mapper.params), group, eps,
                                       paired=paired))
        elif bias in mapper.report.unfold:
            _shared_bias(mapper, bias, param, group)


def _shared_bias(mapper, bias: str, kernel: str, group) -> None:
    """tf2onnx writes equal tensors once: one zero bias may serve several folded Convs. Its
    layers and BatchNormalizations are accounted for; loading it is refused if the rescale
    changed it (each layer would need its own un-folding)."""
    conv_bias = layer_bias(kernel, mapper.params)
    mapper.report.folded_into[bias] += ([conv_bias] if conv_bias else []) + list(group)
    if bias not in mapper.ref or not equal(mapper.ref[bias], mapper.new[bias]):
        mapper.report.ambiguous[bias] = ["a folded bias shared by several layers, changed"]


def _fold_of(mapper, name: str, ref: np.ndarray):
    used = mapper._used()
    groups = _free_groups(mapper)
    for param, weight in mapper.params.items():
        if param in used or param in mapper.buffers or weight.ndim < 2:
            continue
        for layout in mapper._fits(name, param):
            k = channel_factor(ref, layout.to_onnx(weight, ref.shape))
            if k is None:
                continue
            candidates = [(g, eps) for g in groups
                          if (eps := fitting_eps(g, mapper.params, k)) is not None]
            paired = _pair(mapper, candidates, param)
            if paired is not None:
                return param, layout, paired
    return None


def batchnorm_nodes(mapper) -> None:
    """A BatchNormalization node whose scale, bias, mean and variance are unmapped
    initializers equal to a free group's four parameters (and whose epsilon is the group's
    usual one): each input maps to its parameter; an input that already stands for another
    parameter (tf2onnx writes equal tensors once: gamma and a variance of ones, the zeros of
    beta and mean, shared across nodes too) stands for this one as well, recorded in
    ``merged``."""
    if mapper.model is None:
        return
    for node in mapper.model.graph.node:
        if node.op_type != "BatchNormalization" or len(node.input) < 5:
            continue
        inputs = list(node.input[1:5])
        remaining = set(mapper._remaining())
        seen = set(mapper.report.mapped) | set(mapper.report.unfold)
        if not all((n in remaining or n in seen) and n in mapper.ref for n in inputs):
            continue
        values = [mapper.ref[n] for n in inputs]
        candidates = [(g, None) for g in _free_groups(mapper)
                      if all(equal(v, mapper.params[p]) for v, p in zip(values, g))]
        paired = _pair(mapper, candidates, None)
        if paired is None:
            continue
        group, _, how = paired
        for onnx_name, param in zip(inputs, group):
            if onnx_name in seen or onnx_name in mapper.report.mapped:
                mapper.report.merged[param] = onnx_name
            else:
                mapper._map(onnx_name, param, f"BatchNormalization input ({how})")


def batchnorm_constants(mapper) -> None:
    """An unmapped per-channel tensor multiplied into a signal (``Mul``) that equals a free
    group's ``gamma / sqrt(var + eps)``, and the tensor of the ``Add`` right after it (the
    shift ``beta - mean k``): a BatchNormalization written as constants. A tensor written once
    for several equal BatchNormalizations (tf2onnx shares equal constants) stands for each."""
    consumers = _consumers(mapper.model)
    for name in mapper._remaining():
        ref = mapper.ref.get(name)
        muls = [node for node, _ in consumers.get(name, ()) if node.op_type == "Mul"]
        if ref is None or not muls or np.count_nonzero(np.array(ref.shape) > 1) != 1:
            continue
        k = np.asarray(ref, np.float64).reshape(-1)
        for mul in muls:
            candidates = [(g, eps) for g in _free_groups(mapper)
                          if (eps := fitting_eps(g, mapper.params, k)) is not None]
            paired = _pair(mapper, candidates, None)
            if paired is None:
                break
            group, eps, how = paired
            _record_shared(mapper, name, Fold("scale", None, group, eps, paired=how))
            shift = _shift_after(mapper, consumers, mul)
            if shift is not None:
                expected = (np.asarray(mapper.params[group[1]], np.float64)
                            - np.asarray(mapper.params[group[2]], np.float64)
                            * factor(group, mapper.params, eps))
                if np.allclose(np.asarray(mapper.ref[shift], np.float64).reshape(-1), expected,
                               rtol=1e-4, atol=1e-6):
                    _record_shared(mapper, shift, Fold("shift", None, group, eps, paired=how))


def _record_shared(mapper, name: str, fold: Fold) -> None:
    """Record ``fold``, or, for a tensor already recorded, account for one more
    BatchNormalization (refused at loading if the rescale changed the tensor)."""
    if name not in mapper.report.unfold:
        _record(mapper, name, fold)
        return
    mapper.report.folded_into[name] += list(fold.batchnorm)
    if not equal(mapper.ref[name], mapper.new[name]):
        mapper.report.ambiguous[name] = ["a constant shared by several BatchNormalizations, "
                                         "changed"]


def _shift_after(mapper, consumers, mul) -> str | None:
    adds = [node for node, _ in consumers.get(mul.output[0], ()) if node.op_type == "Add"]
    if len(adds) != 1:
        return None
    other = [n for n in adds[0].input if n != mul.output[0]]
    if len(other) == 1 and other[0] in mapper.ref and (
            other[0] in mapper._remaining() or other[0] in mapper.report.unfold):
        return other[0]
    return None
