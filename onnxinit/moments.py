"""Mean and variance of a tensor, per channel where they can be tracked.

A ``Moments`` holds ``mean`` and ``var`` as float64 arrays that broadcast to the tensor: either
0-d (one statistic for the whole tensor) or of the tensor's rank with size 1 on every axis but
the tracked one(s), e.g. ``[1, C, 1, 1]`` for per-channel statistics of an NCHW tensor.

A Moments may also carry ``source``: the distribution it came from, described as a Gaussian with
the given moments followed by a chain of element-wise functions. Monte Carlo rules (MaxPool,
Softmax) sample that distribution instead of a Gaussian with matching moments; any rule that
mixes values resets it.

A Moments may instead carry ``mixture``: the distribution as a mixture of Gaussians, arrays
``(w, m, v)`` with a leading component axis and the rest laid out like ``mean``/``var``. The sum
of a ReLU output and an independent Gaussian (a residual Add) is one: the ReLU's zero, and its
positive part in a few quantile bins. Closed-form activations (ReLU...) integrate each component
exactly; every other rule ignores it (a Gaussian with the same moments).

A Moments may also carry ``tokens``: the covariance of a sequence tensor's elements across its
tokens (within one sample, per feature), see :class:`Tokens`. Attention averages values over
tokens, so what the tokens share passes through it undiminished; rules that know the field carry
it (rules/tokens.py), every other rule drops it (its absence means independent tokens).

A Moments may also carry ``rows``: the tensor's rows along its last axis as a weighted
multiset of per-element statistics (:class:`Rows`), where a reshape merges the batch into axes
the statistics vary along (Swin's windows, masked differently, before their Softmax): the
Softmax rule computes each row, every other rule sees the pooled mean/var.

An element whose ``mean`` is -inf (with variance 0) is masked: the tensor holds -inf there (an
additive attention mask written with -inf, before its Softmax). ``total`` describes the other
elements; Softmax gives masked elements probability 0.

A Moments of an ``[N, C, *S]`` tensor (convolution layout) may carry ``spatial``: statistics
that differ between positions (a zero-padded convolution gives border positions fewer taps, so
other means and variances), kept in *position classes* so that their size does not grow with
the map (interior positions share one class), and the correlation of neighbouring positions.
``mean``/``var`` then hold the per-channel totals over all positions (law of total variance),
so a rule that does not read ``spatial`` sees exact per-channel statistics; any rule that mixes
or moves positions in a way it does not model must not pass ``spatial`` on (a rule that builds a
new Moments drops it by construction). ``onnxinit.spatial`` builds and reads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .deferred import resolved
from .views import broadcast_arrays


@dataclass(frozen=True)
class Elementwise:
    """An element-wise function in a distribution's description; ``key`` identifies it."""

    key: tuple
    fn: Callable[[np.ndarray], np.ndarray] = field(compare=False, repr=False)
    # fn as a piecewise polynomial of degree <= 2, ``[(lo, hi, (c0, c1, c2)), ...]`` covering
    # the real line (``rules.gaussian.piecewise_closed``), where it is one: closed forms use it
    pieces: tuple | None = field(default=None, compare=False, repr=False)
    # the finitely many values fn takes, where it is a step function (a table's rows' law)
    support: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Source:
    """``chain[-1](...chain[0](z))`` with ``z ~ N(mean, var)``, arrays laid out like Moments."""

    mean: np.ndarray
    var: np.ndarray
    chain: tuple[Elementwise, ...] = ()

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        z = rng.standard_normal(shape) * np.sqrt(self.var) + self.mean
        for f in self.chain:
            z = f.fn(z)
        return z


@dataclass(frozen=True, eq=False)
class Tokens:
    """Covariance across tokens: ``Cov(x[.., s, .., d], x[.., t, .., d]) = nu_d * cov[s, t]``
    for tokens s, t of one sample and feature d, where ``nu_d`` is the Moments' variance (which
    then does not vary along the token axes: a per-token variance profile is ``diag(cov)``,
    normalised to mean 1). The token index is the flattened index of the ``span`` consecutive
    axes starting at ``axis``, counted from the end (negative: unchanged by broadcasting); when
    those axes are longer than ``cov`` (the batch merged into them, ``[B*S, D]``), token index
    = index % n. Means may vary per token; only the covariance of the random part is described
    here. ``stride`` > 1: the tokens are not the innermost digits of those axes but are
    followed by ``stride`` others merged into them (``[S*B, D]`` written from ``[S, B, D]``, as
    multi-head attention exports do before the output projection): token index = (index //
    stride) % n. A ``cov`` with a flat diagonal (a correlation) and a variance that varies
    along the token axes: the per-token variance is the Moments' own, ``Cov(x[s, d], x[t, d]) =
    sqrt(var[s, d] var[t, d]) cov[s, t]`` (a bidirectional recurrent layer's output, whose two
    directions' per-step profiles differ: token_field.attach)."""

    axis: int
    span: int
    cov: np.ndarray
    stride: int = 1

    @property
    def n(self) -> int:
        return self.cov.shape[0]


@dataclass(frozen=True, eq=False)
class Rows:
    """Rows along the last axis: ``mean``/``var`` [R, n] and each row's share ``weight`` [R]
    (summing to 1) of the tensor's rows."""

    mean: np.ndarray
    var: np.ndarray
    weight: np.ndarray


@dataclass(frozen=True, eq=False)
class Spatial:
    """Position-dependent statistics of an ``[N, C, *S]`` tensor, compressed into classes.

    ``maps[i]`` (int array, length S_i) gives each index along spatial axis ``2 + i`` its class;
    ``cells`` is a Moments laid out ``[1, C or 1, K_0, ..., K_{n-1}]`` (K_i classes along axis
    ``2 + i``), with its own source or mixture per cell: the element at position
    ``(p_0, ..., p_{n-1})`` has the statistics of cell ``(maps[0][p_0], ..., maps[n-1][p_{n-1}])``.
    ``corr`` (optional) is the correlation of a channel's values at two positions of one sample,
    by offset (``onnxinit.spatial.Correlation``): ``given``, computed on the first read when a
    :class:`~onnxinit.deferred.Deferred`."""

    maps: tuple[np.ndarray, ...]
    cells: Moments
    given: object | None = None
    corr = property(lambda self: resolved(self.given))

    @cached_property
    def classes(self) -> tuple[int, ...]:
        """Classes per spatial axis, computed once (every rule on a spatial tensor asks)."""
        return tuple(int(m.max()) + 1 if m.size else 1 for m in self.maps)


def _as_array(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Moments:
    mean: np.ndarray
    var: np.ndarray
    source: Source | None = None
    mixture: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    tokens: Tokens | None = None
    rows: Rows | None = None
    spatial: Spatial | None = None

    def __post_init__(self):
        object.__setattr__(self, "mean", _as_array(self.mean))
        object.__setattr__(self, "var", np.maximum(_as_array(self.var), 0.0))

    # construction -----------------------------------------------------------------------------

    @classmethod
    def scalar(cls, mean: float, var: float) -> Moments:
        return cls(np.float64(mean), np.float64(var))

    @classmethod
    def along(cls, mean, var, axis: int, rank: int) -> Moments:
        """Per-index statistics along ``axis`` of a rank-``rank`` tensor (1-D ``mean``/``var``)."""
        mean, var = _as_array(mean), _as_array(var)
        if rank == 0 or mean.ndim == 0:
            return cls(mean, var)
        shape = [1] * rank
        shape[axis % rank] = mean.shape[0]
        return cls(mean.reshape(shape), np.broadcast_to(var, mean.shape).reshape(shape))

    def gaussian(self) -> Moments:
        """The same moments, described as Gaussian (after a rule that mixes values)."""
        return Moments(self.mean, self.var)

    def scaled(self, factor: float) -> Moments:
        """The moments of ``factor * X`` for ``factor > 0``: means times ``factor``, variances
        times ``factor**2``, the distribution's description scaled with them (a Gaussian source
        or mixture component directly, a chain of element-wise functions by one more, rows'
        moments and position classes likewise; the token covariance and spatial correlation,
        normalised, unchanged). What a
        rule linear in a weight gives when the weight is scaled (autoinit)."""
        f = float(factor)
        source = self.source
        if source is not None:
            if source.chain:
                scale = Elementwise(("scale", f), lambda x, f=f: x * f)
                source = Source(source.mean, source.var, (*source.chain, scale))
            else:
                source = Source(source.mean * f, source.var * f * f)
        mixture = None
        if self.mixture is not None:
            w, m, v = self.mixture
            mixture = (w, m * f, v * f * f)
        rows = None
        if self.rows is not None:
            rows = Rows(self.rows.mean * f, self.rows.var * f * f, self.rows.weight)
        spatial = None
        if self.spatial is not None:  # position classes scale alike; correlations do not change
            spatial = Spatial(self.spatial.maps, self.spatial.cells.scaled(f), self.spatial.given)
        # the token covariance is normalised to mean 1 (a correlation profile): scale-free
        return Moments(self.mean * f, self.var * f * f, source, mixture, self.tokens, rows, spatial)

    def with_source(self) -> Moments:
        """These moments, remembered as the Gaussian that element-wise functions start from."""
        return Moments(self.mean, self.var, Source(self.mean, self.var))

    # queries ----------------------------------------------------------------------------------

    @property
    def rank(self) -> int:
        return max(self.mean.ndim, self.var.ndim)

    @property
    def is_scalar(self) -> bool:
        return self.mean.size == 1 and self.var.size == 1

    def tracked_axes(self) -> tuple[int, ...]:
        shape = np.broadcast_shapes(self.mean.shape, self.var.shape)
        return tuple(i for i, n in enumerate(shape) if n > 1)

    def total(self) -> tuple[float, float]:
        """(mean, var) of the whole tensor: mean of means; mean of vars plus var of means
        (over the elements that are not masked, when some are). Computed once: the
        propagator's finiteness check and the report both ask (Moments are not changed in
        place)."""
        cached = self.__dict__.get("_total")
        if cached is None:
            cached = self._total_of_grid()
            object.__setattr__(self, "_total", cached)
        return cached

    def _total_of_grid(self) -> tuple[float, float]:
        mean, var = broadcast_arrays(self.mean, self.var)
        # any -inf at all (fmin skips NaN), before the mask itself
        if mean.size and np.fmin.reduce(mean, axis=None) == -np.inf:
            masked = np.isneginf(mean)
            if not masked.all():
                mean, var = mean[~masked], var[~masked]
        m = float(_mean(mean, None))
        spread = mean - m
        spread *= spread
        return m, float(_mean(var, None) + _mean(spread, None))

    def second_moment(self) -> np.ndarray:
        """E[x^2] per tracked index."""
        return self.var + self.mean**2

    def pooled(self) -> Moments:
        """Scalar statistics (for when the tracked axis cannot be followed)."""
        if self.is_scalar:
            return Moments(self.mean.reshape(()), self.var.reshape(()))
        return Moments.scalar(*self.total())

    def tracked_size(self) -> int:
        """How many statistics are tracked (1 for scalar moments)."""
        if self.mean.shape == self.var.shape:  # the usual case, without numpy's broadcasting
            return math.prod(self.mean.shape)
        return int(np.prod(np.broadcast_shapes(self.mean.shape, self.var.shape)))

    def capped(self, limit: int) -> Moments:
        """These moments when they track at most ``limit`` statistics; else the tracked axes
        pooled one at a time (law of total variance: mean of means, mean of vars plus var of
        means), the one along which the statistics differ least first, until at most ``limit``
        are left (one statistic when each axis alone is longer). An axis's score is the share
        of the spread of the means and of the second moments over all tracked indices that is
        between its indices (the shortest axis goes first on a tie), so the axes that matter
        (channels; the tokens of a causal attention's output, whose variances differ) are kept.
        Pooling mixes values: source, mixture and rows go; the token field stays (its variance
        is the same along the token axes, and pooling other axes keeps it so)."""
        if self.tracked_size() <= limit:
            return self
        mean, var = (np.array(a) for a in np.broadcast_arrays(self.mean, self.var))
        masked = np.isneginf(mean)
        if masked.any():  # -inf offsets (masks) do not pool into a variance: one statistic
            return Moments.scalar(*self.total())
        while mean.size > limit:
            second = var + mean**2
            axes = [a for a in range(mean.ndim) if mean.shape[a] > 1]
            totals = [float(np.var(a)) for a in (mean, second)]

            def score(axis):
                others = tuple(i for i in range(mean.ndim) if i != axis)
                return (sum(float(np.var(a.mean(axis=others))) / t
                            for a, t in zip((mean, second), totals) if t > 0), mean.shape[axis])

            axis = min(axes, key=score)
            m = mean.mean(axis=axis, keepdims=True)
            var = var.mean(axis=axis, keepdims=True) + ((mean - m) ** 2).mean(axis=axis, keepdims=True)
            mean = m
        if mean.size == 1:
            return Moments(mean.reshape(()), var.reshape(()), tokens=self.tokens)
        return Moments(mean, var, tokens=self.tokens)

    def values_along(self, axis: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """1-D (mean, var) of length ``size`` along ``axis``, pooling any other tracked axis.
        Computed once per axis and size (rules downstream ask for the same channel statistics
        again: ResNet-164, 923 calls on 545 pairs), a fresh copy returned each time."""
        kept = self.__dict__.get("_along")
        if kept is None:
            kept = {}
            object.__setattr__(self, "_along", kept)
        found = kept.get((axis, size))
        if found is None:
            if self.rank == 0 or self.is_scalar:
                m, v = self.total()
                found = np.full(size, m), np.full(size, v)
            else:
                found = pooled_along(self.mean, self.var, axis, size, self.total)
            kept[(axis, size)] = found
        return found[0].copy(), found[1].copy()

    def expand_rank(self, rank: int) -> Moments:
        """Left-pad the arrays with size-1 axes up to ``rank`` (numpy broadcasting semantics)."""
        if self.rank == 0 or self.rank >= rank:
            return self
        pad = (1,) * (rank - self.rank)
        mean = self.mean.reshape(pad + self.mean.shape) if self.mean.ndim else self.mean
        var = self.var.reshape(pad + self.var.shape) if self.var.ndim else self.var
        mixture = None
        if self.mixture is not None and all(a.ndim == self.rank + 1 for a in self.mixture[1:]):
            mixture = tuple(
                a.reshape(a.shape[:1] + (1,) * (rank - a.ndim + 1) + a.shape[1:])
                for a in self.mixture
            )
        return Moments(mean, var, self.source, mixture, self.tokens, self.rows)

    def __repr__(self) -> str:
        m, v = self.total()
        axes = self.tracked_axes()
        where = f", per axis {axes}" if axes else ""
        return f"Moments(mean={m:.4g}, var={v:.4g}{where})"


def _within(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    """``np.allclose(a, b, rtol=0, atol=tol)`` in two passes: |a - b| <= tol, equal
    infinities close, NaN never (allclose's general form costs ~8 passes)."""
    if not np.isfinite(tol):
        return bool(np.allclose(a, b, rtol=0, atol=tol))
    with np.errstate(invalid="ignore"):
        d = np.subtract(a, b)
        np.abs(d, out=d)
        close = d <= tol
    if close.all():
        return True
    return bool(np.all(close | (a == b)))


def compressed(mean: np.ndarray, var: np.ndarray) -> Moments:
    """Moments of the grid, without the axes along which it does not vary (to rounding: 1e-12
    of the grid's largest magnitude)."""
    tol_m = 1e-12 * float(np.max(np.abs(mean), where=np.isfinite(mean), initial=0.0))
    tol_v = 1e-12 * float(np.max(np.abs(var), initial=0.0))
    for axis in range(mean.ndim):
        if mean.shape[axis] > 1:
            m0, v0 = np.take(mean, [0], axis=axis), np.take(var, [0], axis=axis)
            # the second slab first: where the axis varies, it nearly always does there
            m1, v1 = np.take(mean, [1], axis=axis), np.take(var, [1], axis=axis)
            if not (_within(m1, m0, tol_m) and _within(v1, v0, tol_v)):
                continue
            if _within(mean, m0, tol_m) and _within(var, v0, tol_v):
                mean, var = m0, v0
    if mean.size == 1:
        return Moments(mean.reshape(()), var.reshape(()))
    return Moments(mean, var)


def _mean(a: np.ndarray, axis):
    """``a.mean(axis=axis)`` (``axis`` None or a tuple), for float64 ``a`` as numpy computes it
    (``np.add.reduce``, then a division by the count) without its Python wrapper's 1-2 us:
    the propagator pools every tensor's statistics this way."""
    if a.dtype != np.float64:
        return a.mean(axis=axis)
    n = a.size if axis is None else math.prod([a.shape[i] for i in axis])
    return np.add.reduce(a, axis=axis) / n


def pooled_along(mean, var, axis: int, size: int, total) -> tuple[np.ndarray, np.ndarray]:
    """1-D (mean, var) of length ``size`` along ``axis`` of broadcastable per-element ``mean`` and
    ``var``, the other axes pooled by the law of total variance:
    m_a = E_other[mean], v_a = E_other[var] + Var_other[mean]. An axis tracked at another length
    than ``size`` falls back to ``total()`` everywhere."""
    mean, var = broadcast_arrays(mean, var)
    rank = mean.ndim
    axis %= rank
    other = tuple(i for i in range(rank) if i != axis)
    m = _mean(mean, other)
    shaped = m.reshape([-1 if i == axis else 1 for i in range(rank)])
    v = _mean(var, other) + _mean((mean - shaped) ** 2, other)
    if m.shape[0] != size:
        if m.shape[0] != 1:
            t_m, t_v = total()
            return np.full(size, t_m), np.full(size, t_v)
        m, v = np.full(size, m[0]), np.full(size, v[0])
    return m, v
