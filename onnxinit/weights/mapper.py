"""Name and value matching of ONNX initializers onto framework parameters: :func:`map_weights`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import folds
from .batchnorm import split_name
from .layouts import Layout, layouts
from .recurrent import recurrent_weights
from .report import MappingReport
from .source import WeightSource
from .values import close, equal, is_degenerate, normalize_name, value_key


class _Mapper:
    def __init__(self, reference, params, buffers, new, approximate, model, follows):
        self.ref = reference
        self.params = params
        self.buffers = set(buffers)
        self.new = new
        self.approximate = approximate
        self.model = model
        self.follows = dict(follows or {})
        self.report = MappingReport()
        self._index: dict[tuple, list[str]] | None = None
        self._layouts: dict[tuple, list[Layout]] = {}
        first = {n for n in new if n in reference or n in params}
        self.todo = [n for n in new if n in first] + [n for n in new if n not in first]

    # helpers
    def _used(self) -> set[str]:
        """Parameters that received a tensor, directly, merged or through a fold."""
        used = set(self.report.mapped.values()) | set(self.report.merged)
        for into in (*self.report.folded_into.values(), *self.report.recurrent.values()):
            used.update(into)
        return used

    def _map(self, onnx_name: str, param: str, how: str, layout: Layout | None = None) -> None:
        layout = layout or Layout("same", tuple(self.params[param].shape))
        self.report.mapped[onnx_name] = param
        reshaped = layout.name == "same" and self.new[onnx_name].shape != self.params[param].shape
        self.report.how[onnx_name] = how + (f" ({layout.name})" if layout.name != "same"
                                            else "") + (" (reshaped)" if reshaped else "")
        if layout.name != "same":
            self.report.layout[onnx_name] = layout.name
        if layout.transposed:
            self.report.transposed.append(onnx_name)
        if reshaped:
            self.report.reshaped.append(onnx_name)

    def _remaining(self) -> list[str]:
        done = (set(self.report.mapped) | set(self.report.mismatched) | set(self.report.folded)
                | set(self.report.recurrent))
        return [n for n in self.todo if n not in done]

    def _fit(self, onnx_name: str, param: str) -> Layout | None:
        """The most likely layout from the tensor's shape to the parameter's (see
        :func:`~onnxinit.weights.layouts.layouts`); None: the shapes do not fit."""
        fits = self._fits(onnx_name, param)
        return fits[0] if fits else None

    def _fits(self, onnx_name: str, param: str) -> list[Layout]:
        return self._layouts_between(self.new[onnx_name].shape, self.params[param].shape)

    def _layouts_between(self, onnx_shape, param_shape) -> list[Layout]:
        key = (tuple(onnx_shape), tuple(param_shape))
        if key not in self._layouts:
            self._layouts[key] = layouts(*key)
        return self._layouts[key]

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
        index = self.value_index()
        groups: dict[tuple, list[str]] = {}
        for name in self._remaining():
            if name in self.approximate or name not in self.ref:
                continue
            ref = self.ref[name]
            if is_degenerate(ref) != degenerate:
                continue
            candidates = []
            for shape in self._param_shapes():
                for layout in self._layouts_between(ref.shape, shape):
                    view = layout.to_param(ref)
                    candidates += [(p, layout) for p in index.get(value_key(view), [])
                                   if p not in {c[0] for c in candidates}
                                   and equal(view, self.params[p])]
            self._choose(name, candidates, "value", groups)
        self._resolve_groups(groups, "value")

    def value_index(self) -> dict[tuple, list[str]]:
        """value_key -> the parameters with that key (built once)."""
        if self._index is None:
            self._index = {}
            for param, value in self.params.items():
                self._index.setdefault(value_key(value), []).append(param)
        return self._index

    def _param_shapes(self) -> list[tuple[int, ...]]:
        return list(dict.fromkeys(tuple(v.shape) for v in self.params.values()))

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
            same = all(equal(values[0], v) for v in values[1:])
            if len(candidates) == len(names) and same and len({c[1] for c in candidates}) == 1:
                for name, (param, layout) in zip(names, candidates):
                    self._map(name, param, how + " (interchangeable)", layout)
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
                for layout in self._fits(name, param):
                    if close(layout.to_param(ref), value):
                        candidates.append((param, layout))
                        break
            self._choose(name, candidates, "scaled value", groups)
        self._resolve_groups(groups, "scaled value")

    def finish(self, onnx_order: list[str], aliases: dict[str, str]) -> MappingReport:
        report = self.report
        done = set(report.mapped) | set(report.folded) | set(report.recurrent)
        done |= {aliases[n] for n in done if n in aliases}
        report.aliases = {n: aliases[n] for n in report.mapped if n in aliases}
        left = [n for n in onnx_order if n not in done and n not in aliases]
        report.constants = [n for n in left if np.size(self.new[n]) == 1]
        report.unmapped = [n for n in left if np.size(self.new[n]) != 1]
        for name in [n for n in report.ambiguous if n in aliases or n in done]:
            del report.ambiguous[name]
        used = self._used()
        left = [p for p in self.params if p not in used and p not in self.buffers]
        found_layers = {split_name(p)[0] for p in used}
        report.absent = [p for p in left if split_name(p)[0] in found_layers
                         and not np.any(self.params[p])]
        report.missing = [p for p in left if p not in report.absent]
        return report


def map_weights(
    source: WeightSource | Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    *,
    buffers: set[str] | frozenset[str] = frozenset(),
    follows: Mapping[str, str] | None = None,
) -> MappingReport:
    """Map ONNX initializers to the framework parameters ``params`` (name -> current values).

    Order: same name; same normalised name (:func:`normalize_name`, unique on both sides);
    same value in any layout that fits (:mod:`~onnxinit.weights.layouts`: as is, transposed,
    channels-last kernels) for tensors whose values are not all equal; a recurrent op's W, R, B
    per direction in a framework's gate order (:mod:`~onnxinit.weights.recurrent`: recorded,
    nothing to load); ``new / scale`` close to
    a parameter (rescaled tensors with no original given); BatchNormalization folded into a
    layer or written as constants (:mod:`~onnxinit.weights.folds`); finally exact values of
    constant tensors (zeros, ones), where k tensors equal to the same k parameters map only
    when the values to load are equal too. A parameter may receive several tensors (tied
    weights). ``buffers`` names entries of ``params`` that are optional (BatchNorm running
    statistics): mapped when an initializer matches them, never reported missing; a zero
    parameter of a layer whose other parameters were found is ``absent`` (exporters drop zero
    biases), not missing. ``follows``: kernel parameter -> the gamma of the BatchNormalization
    that follows its layer in the framework's graph (the Keras adapter reads it from the
    model); it tells a folded BatchNormalization apart from others with the same state."""
    if not isinstance(source, WeightSource):
        values = {str(k): np.asarray(v) for k, v in source.items()}
        source = WeightSource(new=values, reference=values)
    source = source.expanded()
    params = {str(k): np.asarray(v) for k, v in params.items()}
    mapper = _Mapper(source.reference, params, buffers, source.new, source.approximate,
                     source.model, follows)
    mapper.by_name()
    mapper.by_normalized_name()
    mapper.by_value(degenerate=False)
    recurrent_weights(mapper)
    mapper.by_scaled_value()
    folds.folded_weights(mapper)
    folds.batchnorm_nodes(mapper)
    folds.batchnorm_constants(mapper)
    mapper.by_value(degenerate=True)
    return mapper.finish(list(source.new), source.aliases)


