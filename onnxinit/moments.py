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

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Elementwise:
    """An element-wise function in a distribution's description; ``key`` identifies it."""

    key: tuple
    fn: Callable[[np.ndarray], np.ndarray] = field(compare=False, repr=False)


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
class Spatial:
    """Position-dependent statistics of an ``[N, C, *S]`` tensor, compressed into classes.

    ``maps[i]`` (int array, length S_i) gives each index along spatial axis ``2 + i`` its class;
    ``cells`` is a Moments laid out ``[1, C or 1, K_0, ..., K_{n-1}]`` (K_i classes along axis
    ``2 + i``), with its own source or mixture per cell: the element at position
    ``(p_0, ..., p_{n-1})`` has the statistics of cell ``(maps[0][p_0], ..., maps[n-1][p_{n-1}])``.
    ``corr`` (optional) is the correlation of a channel's values at two positions of one sample,
    by offset (``onnxinit.spatial.Correlation``).
    """

    maps: tuple[np.ndarray, ...]
    cells: Moments
    corr: object | None = None

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(int(m.max()) + 1 if m.size else 1 for m in self.maps)


def _as_array(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Moments:
    mean: np.ndarray
    var: np.ndarray
    source: Source | None = None
    mixture: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
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
        """(mean, var) of the whole tensor: mean of means; mean of vars plus var of means."""
        mean, var = np.broadcast_arrays(self.mean, self.var)
        m = float(mean.mean())
        return m, float(var.mean() + ((mean - m) ** 2).mean())

    def second_moment(self) -> np.ndarray:
        """E[x^2] per tracked index."""
        return self.var + self.mean**2

    def pooled(self) -> Moments:
        """Scalar statistics (for when the tracked axis cannot be followed)."""
        if self.is_scalar:
            return Moments(self.mean.reshape(()), self.var.reshape(()))
        return Moments.scalar(*self.total())

    def values_along(self, axis: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """1-D (mean, var) of length ``size`` along ``axis``, pooling any other tracked axis."""
        rank = self.rank
        if rank == 0 or self.is_scalar:
            m, v = self.total()
            return np.full(size, m), np.full(size, v)
        axis %= rank
        mean, var = np.broadcast_arrays(self.mean, self.var)
        other = tuple(i for i in range(rank) if i != axis)
        m = mean.mean(axis=other)
        v = var.mean(axis=other) + ((mean - m.reshape([-1 if i == axis else 1 for i in range(rank)])) ** 2).mean(axis=other)
        if m.shape[0] != size:
            if m.shape[0] != 1:
                t_m, t_v = self.total()
                return np.full(size, t_m), np.full(size, t_v)
            m, v = np.full(size, m[0]), np.full(size, v[0])
        return m, v

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
        return Moments(mean, var, self.source, mixture)

    def __repr__(self) -> str:
        m, v = self.total()
        axes = self.tracked_axes()
        where = f", per axis {axes}" if axes else ""
        return f"Moments(mean={m:.4g}, var={v:.4g}{where})"
