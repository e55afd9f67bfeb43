"""Name and value matching of ONNX initializers onto framework parameters: :func:`map_weights`."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from .report import MappingReport
from .source import WeightSource
from .values import close, equal, is_degenerate, normalize_name, squeezed, value_key

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
        if squeezed(shape) == squeezed(pshape):
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
                self._index.setdefault(value_key(value), []).append(param)
        index = self._index
        groups: dict[tuple, list[str]] = {}
        for name in self._remaining():
            if name in self.approximate or name not in self.ref:
                continue
            ref = self.ref[name]
            if is_degenerate(ref) != degenerate:
                continue
            candidates = [(p, False) for p in index.get(value_key(ref), [])
                          if equal(ref, self.params[p])]
            if ref.ndim == 2:
                exact = {c[0] for c in candidates}
                candidates += [(p, True) for p in index.get(value_key(ref.T), [])
                               if p not in exact and equal(ref.T, self.params[p])]
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
            same = all(equal(values[0], v) for v in values[1:])
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
                    if close(ref.T if transposed else ref, value):
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


