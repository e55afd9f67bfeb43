"""Loss heads: the statistics of dL/dz at the output z the loss is put on, the start of the
backward sweep. The loss is a mean over the P = numel / K rows (batch, and any other axis but
the class axis), as :mod:`onnxinit.autodiff.loss` writes it.

- ``cross_entropy``: softmax cross-entropy over the last axis with labels drawn uniformly from
  the K classes, independent of the input: ``g = (p - onehot(y)) / P`` with
  ``E[g_k] = (E[p_k] - 1/K) / P`` and
  ``Cov(g_k, g_l) = (E[p_k p_l] - (E[p_k] + E[p_l]) / K + [k = l] / K) / P^2 - E[g_k] E[g_l]``,
  the softmax moments by Monte Carlo over Gaussian logits with the predicted per-class
  moments (seeded). Each row's gradients sum to zero; ``cov`` carries that to the layer
  before.
- ``mse``: ``mean((z - t)^2)`` with targets ``t ~ N(0, 1)`` independent of z:
  ``g = 2 (z - t) / numel``, ``E[g] = 2 E[z] / numel``, ``Var[g] = 4 (Var[z] + 1) / numel^2``.
- ``unit``: ``g ~ N(0, 1)`` per element (``L = sum(z * r)`` with a fixed standard normal r):
  a loss-free probe of how the network scales a gradient.
- ``self``: a scalar output is the loss itself (a model exported with its loss): ``g = 1``.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .gradient import Gradient, along

LOSSES = ("cross_entropy", "mse", "unit")
MAX_COV_CLASSES = 256  # above, the zero row sum changes a variance by under 0.4%
MC_ELEMENTS = 1 << 22


def _positions(shape) -> int:
    return int(np.prod(shape[2:])) if shape is not None and len(shape) > 2 else 1


def cross_entropy(z: Moments, shape, seed: int = 0) -> Gradient:
    """dL/dz of softmax cross-entropy over the last axis, uniform labels (see module)."""
    classes = int(shape[-1])
    rows = int(np.prod(shape[:-1]))
    mean, var = z.values_along(len(shape) - 1, classes) if len(shape) else z.total()
    samples = max(256, min(8192, MC_ELEMENTS // max(classes, 1)))
    rng = np.random.default_rng([seed, classes])
    logits = mean + np.sqrt(var) * rng.standard_normal((samples, classes))
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    ep = p.mean(axis=0)
    g_mean = (ep - 1.0 / classes) / rows
    ep2 = (p * p).mean(axis=0)
    g_var = (ep2 - 2.0 * ep / classes + 1.0 / classes) / rows**2 - g_mean**2
    cov = None
    if classes <= MAX_COV_CLASSES:
        epp = p.T @ p / samples
        cov = (epp - (ep[:, None] + ep[None, :]) / classes + np.eye(classes) / classes) / rows**2
        cov -= np.outer(g_mean, g_mean)
        cov[np.diag_indices(classes)] = g_var
    g = along(g_mean, g_var, -1, len(shape))
    return Gradient(g.mean, g.var, None, None, cov)


def mse(z: Moments, shape) -> Gradient:
    """dL/dz of the mean squared error against independent N(0, 1) targets (see module)."""
    n = float(np.prod(shape))
    g = Gradient(2.0 * z.mean / n, 4.0 * (z.var + 1.0) / n**2)
    if len(shape) > 2:
        return Gradient(g.mean, g.var, g.var / _positions(shape))
    return g


def unit(shape) -> Gradient:
    """A unit-variance, zero-mean gradient with independent elements."""
    if len(shape) > 2:
        return Gradient(0.0, 1.0, np.float64(1.0 / _positions(shape)))
    return Gradient.scalar(0.0, 1.0)


def loss_gradient(loss: str, z: Moments, shape, seed: int = 0) -> Gradient:
    if loss == "self":
        return Gradient.scalar(1.0, 0.0)
    if loss == "cross_entropy":
        return cross_entropy(z, tuple(shape), seed)
    if loss == "mse":
        return mse(z, tuple(shape))
    return unit(tuple(shape))
