"""BatchNormalization folded by an inference export, and its exact un-folding.

An inference export (tf2onnx, Keras 3's ``model.export``, PyTorch in eval mode) replaces a
BatchNormalization by ``y = k x + (beta - mean k)`` with ``k = gamma / sqrt(var + eps)``, and
folds that into the layer before it: the Conv kernel becomes ``W k`` (per output channel), its
bias ``(b - mean) k + beta``; a BatchNormalization after anything else becomes a Mul by ``k``
and an Add of ``beta - mean k``. With the framework's own BatchNormalization state the
factor is known exactly, so rescaled values can be un-folded (:func:`unfold`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from .report import Fold

# (gamma, beta, mean, variance) leaf names: PyTorch, Keras, Flax (scale/bias in ``params``,
# mean/var in ``batch_stats``)
_ROLES = (("weight", "gamma", "scale"), ("bias", "beta"),
          ("running_mean", "moving_mean", "mean"), ("running_var", "moving_variance", "var"))
_COLLECTIONS = ("params", "batch_stats")
# Keras's default, Keras Applications' ResNets, PyTorch/Flax, others seen in the wild
EPSILONS = (1e-3, 1.001e-5, 1e-5, 1e-6, 1e-4, 0.0)


def split_name(name: str) -> tuple[str, str]:
    """(layer, leaf) of a parameter name: ``conv2d/kernel:0`` -> (``conv2d``, ``kernel``);
    ``batch_stats/BatchNorm_0/mean`` -> (``BatchNorm_0``, ``mean``), a Flax collection
    dropped so that one layer's parameters and statistics share a layer."""
    key = re.sub(r":\d+$", "", name)
    parts = re.split(r"[/.]", key)
    if len(parts) > 2 and parts[0] in _COLLECTIONS:
        parts = parts[1:]
    return "/".join(parts[:-1]), parts[-1]


def batchnorm_groups(params: Mapping[str, np.ndarray]) -> list[tuple[str, str, str, str]]:
    """Every (gamma, beta, mean, variance) quadruple of one layer, all 1-D of one size, in
    the order of the parameters."""
    layers: dict[str, dict[str, str]] = {}
    for name in params:
        layer, leaf = split_name(name)
        layers.setdefault(layer, {})[leaf] = name
    groups = []
    for leaves in layers.values():
        found = [[leaves[r] for r in role if r in leaves] for role in _ROLES]
        if all(len(f) == 1 for f in found):
            group = tuple(f[0] for f in found)
            shapes = {np.shape(params[n]) for n in group}
            if len(shapes) == 1 and len(next(iter(shapes))) == 1:
                groups.append(group)
    return groups


def layer_bias(kernel: str, params: Mapping[str, np.ndarray]) -> str | None:
    """The bias parameter of the layer that holds ``kernel`` (``conv2d/kernel:0`` ->
    ``conv2d/bias:0``, ``conv.weight`` -> ``conv.bias``), if the framework has one."""
    match = re.fullmatch(r"(.*[/.])(kernel|weight)(:\d+)?", kernel)
    if match is None:
        return None
    name = f"{match.group(1)}bias{match.group(3) or ''}"
    return name if name in params else None


def factor(group, params: Mapping[str, np.ndarray], eps: float) -> np.ndarray:
    """``k = gamma / sqrt(var + eps)`` in float64."""
    gamma = np.asarray(params[group[0]], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero variance with eps 0: inf
        return gamma / np.sqrt(np.asarray(params[group[3]], np.float64) + eps)


def fitting_eps(group, params: Mapping[str, np.ndarray], k: np.ndarray) -> float | None:
    """The usual epsilon (:data:`EPSILONS`) for which ``group``'s factor equals ``k`` (within
    1e-4 relative), the closest if several; None when none does."""
    k = np.asarray(k, np.float64).reshape(-1)
    if np.shape(params[group[0]]) != k.shape:
        return None
    best, best_err = None, 1e-4
    for eps in EPSILONS:
        with np.errstate(invalid="ignore"):
            err = float(np.max(np.abs(factor(group, params, eps) - k)
                               / np.maximum(np.abs(k), 1e-30)))
        if err < best_err:
            best, best_err = eps, err
    return best


def channel_factor(folded: np.ndarray, weight: np.ndarray) -> np.ndarray | None:
    """k with ``folded[c] == k[c] * weight[c]`` for every output channel c (axis 0), else
    None (also when k is 1 everywhere: nothing was folded)."""
    f = np.asarray(folded, np.float64).reshape(folded.shape[0], -1)
    w = np.asarray(weight, np.float64).reshape(weight.shape[0], -1)
    norms = np.sum(w * w, axis=1)
    if np.any(norms == 0):
        return None
    k = np.sum(f * w, axis=1) / norms
    residual = np.linalg.norm(f - k[:, None] * w)
    if residual > 1e-5 * max(np.linalg.norm(f), 1e-30) or np.all(k == 1.0):
        return None
    return k


def same_state(groups, params: Mapping[str, np.ndarray]) -> bool:
    """Whether every group holds the same four vectors (a freshly built network's do)."""
    first = [np.asarray(params[n]) for n in groups[0]]
    return all(all(np.array_equal(a, np.asarray(params[n])) for a, n in zip(first, group))
               for group in groups[1:])


def unfold(fold: Fold, onnx_value: np.ndarray, params: Mapping[str, np.ndarray],
           param_value=None) -> dict[str, np.ndarray]:
    """The parameter values (float64) that make the framework compute what the ONNX tensor
    ``onnx_value`` computes, with the BatchNormalization's mean and variance kept:

    - ``weight``: ``W = W' / k`` (per output channel, then into the parameter's layout by
      ``param_value(array)``);
    - ``bias``: ``b = (b' - beta) / k + mean`` into the layer's bias, or, for a layer without
      one, ``beta = b' + mean k``;
    - ``scale``: ``gamma = k' sqrt(var + eps)``; ``shift``: ``beta = s' + mean k``."""
    gamma_name, beta_name, mean_name, _ = fold.batchnorm
    k = factor(fold.batchnorm, params, fold.eps)
    mean = np.asarray(params[mean_name], np.float64)
    value = np.asarray(onnx_value, np.float64)
    if fold.kind == "weight":
        w = value / k.reshape((-1,) + (1,) * (value.ndim - 1))
        return {fold.param: param_value(w) if param_value is not None else w}
    value = value.reshape(-1)
    if fold.kind == "bias":
        if fold.param is not None:
            beta = np.asarray(params[beta_name], np.float64)
            return {fold.param: (value - beta) / k + mean}
        return {beta_name: value + mean * k}
    var = np.asarray(params[fold.batchnorm[3]], np.float64)
    if fold.kind == "scale":
        return {gamma_name: value * np.sqrt(var + fold.eps)}
    return {beta_name: value + mean * k}
