"""The statistics of a gradient dL/dx at initialization (the backward counterpart of
:class:`~onnxinit.moments.Moments`).

A :class:`Gradient` holds ``mean`` and ``var`` as float64 arrays that broadcast to the tensor,
like Moments: 0-d for the whole tensor, per channel (``[1, C, 1, 1]``) or per feature
(``[1, F]``) where a rule can follow the axis. Two optional fields carry what the batch
statistics of normalization layers and the weight gradients need:

- ``sample_var`` (convolution layout ``[N, C, *S]``): per channel, the variance over samples of
  a sample's spatial mean ``(1/S) sum_s g[n, c, s]``. A gradient broadcast back by a global
  average pool is the same at every position of a sample (``sample_var = var``); independent
  positions give ``var / S``. Absent: ``var / S``.
- ``profile`` (convolution layout): the second moment at each position over the map's average,
  ``[*S]`` with mean 1 (a zero-padded convolution sends fewer taps back to the border).
- ``cov`` (``[F, F]``, the last axis, F <= MAX_COV): the covariance across features of one
  sample (the softmax cross-entropy head: the gradients of one row sum to zero; a linear layer
  maps it to ``W Cov W^T``). Through a deep stack of narrow layers the off-diagonal terms
  matter: the diagonal alone is the average over random weights, not these weights.
- ``selected`` (``(k, r)``): the gradient is non-zero only at the maxima of windows of k
  values of the forward tensor, correlated r with each other (a MaxPool sends each output's
  gradient to its window's argmax). An element-wise function before it sees its derivative at
  the window maxima, not at a typical element. Kept only through element-wise rules.
- ``given`` (:class:`~.conditional.Conditional`): the gradient's second moment as a function of
  the tensor's own forward value, ``E[g^2 | x] / E[g^2]`` (set by element-wise rules, passed
  through a residual Add and mixed at forks): an activation's derivative is not independent
  of a gradient that is larger where its output is larger (a ResNet's stream of gates).
- ``tokens`` (:class:`~onnxinit.moments.Tokens`): the covariance across the tokens of one
  sample (:mod:`.tokens`; a loss on the mean over a sequence gives every token the same dy).
- ``pair``: the second moments over the last two axes as a sum of Kronecker products
  (:mod:`.pairs`), from the attention MatMul P V to the Softmax and on to Q K^T.
- ``centred`` (:class:`~.batch_share.Centred`): the shares of E[g^2] whose batch mean is
  exactly zero (a BatchNorm's input gradient, through linear maps) or ``f'(a)`` times such a
  part; the BatchNorm rule removes less from them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..moments import Tokens, pooled_along
from . import tokens as token_field
from .batch_share import Centred, mixed as centred_mixed
from .conditional import Conditional, mixed

MAX_COV = 1024


def _array(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Gradient:
    mean: np.ndarray
    var: np.ndarray
    sample_var: np.ndarray | None = None
    profile: np.ndarray | None = None
    cov: np.ndarray | None = None
    selected: tuple[int, float] | None = None
    given: Conditional | None = None
    tokens: Tokens | None = None
    pair: tuple | None = None
    centred: Centred | None = None

    def __post_init__(self):
        object.__setattr__(self, "mean", _array(self.mean))
        object.__setattr__(self, "var", np.maximum(_array(self.var), 0.0))
        if self.sample_var is not None:
            object.__setattr__(self, "sample_var", np.maximum(_array(self.sample_var), 0.0))

    @classmethod
    def scalar(cls, mean: float, var: float) -> Gradient:
        return cls(np.float64(mean), np.float64(var))

    @property
    def rank(self) -> int:
        return max(self.mean.ndim, self.var.ndim)

    def second_moment(self) -> np.ndarray:
        return self.var + self.mean**2

    def total(self) -> tuple[float, float]:
        """(mean, var) over every element: the mean of the means; the mean of the variances
        plus the variance of the means."""
        mean, var = np.broadcast_arrays(self.mean, self.var)
        m = float(mean.mean())
        return m, float(var.mean() + ((mean - m) ** 2).mean())

    def pooled(self) -> Gradient:
        """The statistics of the whole tensor (a rule that cannot follow the tracked axis)."""
        return Gradient.scalar(*self.total())

    def scaled(self, factor) -> Gradient:
        """``factor * g`` for a constant ``factor`` broadcasting like the statistics."""
        f = _array(factor)
        sample_var = None if self.sample_var is None else self.sample_var * f**2
        cov, pair = None, None
        if f.size == 1:
            square = float(f.reshape(())) ** 2
            cov = None if self.cov is None else self.cov * square
            pair = None if self.pair is None else tuple((r * square, c) for r, c in self.pair)
        return Gradient(self.mean * f, self.var * f**2, sample_var, self.profile, cov,
                        tokens=self.tokens, pair=pair)

    def scaled_second(self, share: float) -> Gradient:
        """The gradient of elements whose second moment is ``share`` times the tensor's (the
        token field's profile over a part taken, :mod:`.token_moves`), means kept."""
        if share == 1.0:
            return self
        var = np.maximum(share * (self.var + self.mean**2) - self.mean**2, 0.0)
        cov = None if self.cov is None else self.cov * share
        sample_var = None if self.sample_var is None else self.sample_var * share
        return replace(self, var=var, cov=cov, sample_var=sample_var)

    def plain(self) -> Gradient:
        """Mean and variance only."""
        return Gradient(self.mean, self.var)

    def expand_rank(self, rank: int) -> Gradient:
        def pad(a):
            if a is None or a.ndim == 0 or a.ndim >= rank:
                return a
            return a.reshape((1,) * (rank - a.ndim) + a.shape)

        return replace(self, mean=pad(self.mean), var=pad(self.var),
                       sample_var=pad(self.sample_var))

    def values_along(self, axis: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """1-D (mean, var) of length ``size`` along ``axis`` (other tracked axes pooled)."""
        if self.rank == 0 or np.broadcast(self.mean, self.var).size == 1:
            m, v = self.total()
            return np.full(size, m), np.full(size, v)
        return pooled_along(self.mean, self.var, axis, size, self.total)

    def channels(self, rank: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (axis 1) mean and variance, 1-D."""
        return self.expand_rank(rank).values_along(1, channels)

    def channel_sample_var(self, rank: int, channels: int, positions: int) -> np.ndarray:
        """Per channel, 1-D: ``sample_var`` (default: the variance over the positions)."""
        if self.sample_var is not None:
            sv = self.expand_rank(rank).sample_var
            sv = np.broadcast_to(sv, np.broadcast_shapes(sv.shape, (1,) * rank))
            if sv.ndim >= 2 and sv.shape[1] == channels:
                return sv.reshape(sv.shape[0], channels, -1).mean(axis=(0, 2))
            return np.full(channels, float(sv.mean()))
        return self.channels(rank, channels)[1] / max(positions, 1)


def along(mean, var, axis: int, rank: int, sample_var=None, profile=None) -> Gradient:
    """A Gradient of 1-D per-index statistics along ``axis`` of a rank-``rank`` tensor."""
    mean, var = _array(mean).reshape(-1), _array(var).reshape(-1)
    size = max(mean.size, var.size)
    shape = [1] * rank
    shape[axis % rank] = size
    mean = np.broadcast_to(mean, (size,)).reshape(shape)
    var = np.broadcast_to(var, (size,)).reshape(shape)
    if sample_var is not None:
        sample_var = np.broadcast_to(_array(sample_var).reshape(-1), (size,)).reshape(shape)
    return Gradient(mean, var, sample_var, profile)


def add(parts: list[Gradient]) -> Gradient:
    """The sum of gradients reaching one tensor from several uses (a fork), taken as
    uncorrelated: means add, variances add (``sample_var`` too); the position profile is the
    second-moment-weighted average of the parts'."""
    parts = [p for p in parts if p is not None]
    if len(parts) == 1:
        return parts[0]
    rank = max(p.rank for p in parts)
    parts = [p.expand_rank(rank) for p in parts]
    try:
        mean = sum(p.mean for p in parts)
        var = sum(p.var for p in parts)
    except ValueError:  # tracked axes that do not broadcast: pool
        mean = sum(p.total()[0] for p in parts)
        var = sum(p.total()[1] for p in parts)
        return Gradient(mean, var)
    sample_var = None
    if all(p.sample_var is not None for p in parts):
        try:
            sample_var = sum(p.sample_var for p in parts)
        except ValueError:
            sample_var = None
    profile = None
    cov = None
    if any(p.cov is not None for p in parts):
        covs = [p.cov if p.cov is not None else feature_cov(p) for p in parts]
        if all(c is not None and c.shape == covs[0].shape for c in covs):
            cov = sum(covs)
    profiles = [p.profile for p in parts if p.profile is not None]
    if profiles and all(p.profile is None or p.profile.shape == profiles[0].shape
                        for p in parts):
        weights = [float(np.mean(p.second_moment())) for p in parts]
        ones = np.ones_like(profiles[0])
        profile = sum(w * (p.profile if p.profile is not None else ones)
                      for w, p in zip(weights, parts)) / max(sum(weights), 1e-300)
    tokens = token_field.summed([(p.tokens, p.total()[1]) for p in parts])
    centred = centred_mixed([(p.centred, float(np.mean(p.second_moment()))) for p in parts])
    return Gradient(mean, var, sample_var, profile, cov, None, _given(parts), tokens,
                    centred=centred)


def _given(parts: list[Gradient]) -> Conditional | None:
    """The parts' conditionals mixed by their second moments (:func:`.conditional.mixed`)."""
    if all(p.given is None for p in parts):
        return None
    return mixed([(p.given, p.second_moment()) for p in parts])


def feature_cov(g: Gradient) -> np.ndarray | None:
    """The covariance across the last axis: ``g.cov``, or the diagonal of the variances when
    they vary along the last axis only; None when the statistics do not allow it."""
    if g.cov is not None:
        return g.cov
    var = np.asarray(g.var)
    if var.ndim == 0 or any(n > 1 for n in var.shape[:-1]) or var.shape[-1] > MAX_COV:
        return None
    return np.diag(var.reshape(-1))


def last_axis(a, size: int) -> np.ndarray | None:
    """``a`` as a vector along the last axis (a scalar repeated); None when it varies along
    another axis."""
    a = np.asarray(a, dtype=np.float64)
    if a.size == 1:
        return np.full(size, float(a.reshape(())))
    if any(n > 1 for n in a.shape[:-1]) or a.shape[-1] != size:
        return None
    return a.reshape(-1)
