"""The gradient's second moment given its tensor's forward value (:class:`Conditional`).

For a tensor X with gradient g = dL/dX, ``r(x) = E[g^2 | X = x] / E[g^2]`` (``E_X[r(X)] = 1``).
An element-wise ``y = f(x)`` multiplies the gradient by ``f'(x)``, which is not independent of
the gradient when that gradient itself depends on y: on a ResNet's stream
``s_{k+1} = ReLU(s_k + o_k)`` the gradient of ``s_{k+1}`` is larger where ``s_{k+1}`` is larger
(its own next gate ``1[s_{k+1} + o_{k+1} > 0]`` is open more often there, and the one after it,
...), so ``E[g^2 1[a > 0]]`` is not ``E[g^2] P(a > 0)``. Exactly, with ``r_y`` the gradient's
conditional at y::

    E[dx^2 | x] = f'(x)^2 E[dy^2 | y = f(x)]
    E[dx^2] = E[dy^2] p2,   p2 = E_x[f'(x)^2 r_y(f(x))]
    r_x(x) = f'(x)^2 r_y(f(x)) / p2          (ReLU: 1[x > 0] r_y(x) / p2)

a sum ``a = s + o`` with o independent of s (a residual Add; o taken as N(mu_o, v_o)) passes
``r_s(x) = E_o[r_a(x + o)]``, and the parts of a fork (uncorrelated) mix by their second moments
``M_i``: ``r = sum_i M_i r_i / sum_i M_i`` (a part without one has r = 1). Any other rule drops
it (r = 1: the gradient is taken as independent of the value). Without a conditional on dy
(r_y = 1) p2 is ``E[f'^2]``, the independent rule; with it the whole chain of gates down the
stream is carried, where a single gate (``P(a_k > 0 | a_{k+1} > 0)``) is not enough once the
forward law is exact.

Representation: r as a table at ``NODES`` equally spaced values spanning X's forward mean +- 6
standard deviations (per tracked index), linearly interpolated (clamped at the ends), times
``1[x > cut]``: a ReLU's step stays exact (the cut) and the smooth rest is tabulated. Its
expectation under a Gaussian ``N(m, v)`` is a Gauss-Legendre rule on
``[max(cut, m - 6 s), m + 6 s]``, where the integrand is smooth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

NODES = 49
SPAN = 6.0  # standard deviations either side
_LEG_T, _LEG_W = np.polynomial.legendre.leggauss(16)
_OUTSIDE = 1e-6  # probability of the nodes outside h's domain that may be dropped


@dataclass(frozen=True, eq=False)
class Conditional:
    """``r(x) = 1[x > cut] table(x)``, table linear between ``NODES`` values from ``lo`` to
    ``hi`` (``lo``, ``hi``, ``cut`` per tracked index; ``table`` with a leading node axis)."""

    lo: np.ndarray
    hi: np.ndarray
    table: np.ndarray
    cut: float = -np.inf

    @property
    def rank(self) -> int:
        return self.table.ndim - 1

    def nodes(self) -> np.ndarray:
        return grid_nodes(self.lo, self.hi)

    def smooth(self, x: np.ndarray) -> np.ndarray:
        """The table at ``x`` (any leading axes before the tracked ones), without the cut."""
        x = np.asarray(x, dtype=np.float64)
        lead = x.ndim - self.rank
        tracked = np.broadcast_shapes(x.shape[lead:], self.table.shape[1:])
        lead_shape = x.shape[:lead]
        x = np.broadcast_to(x, lead_shape + tracked).reshape((-1,) + tracked)
        span = np.where(self.hi > self.lo, self.hi - self.lo, 1.0)
        t = np.clip((x - self.lo) / span * (NODES - 1), 0.0, NODES - 1.0)
        undefined = np.isnan(t)  # x outside the function's domain (Log of y <= 0): NaN out
        t = np.where(undefined, 0.0, t)
        i = np.minimum(t.astype(np.int64), NODES - 2)
        frac = t - i
        # a flat gather: node i of tracked index j is element i * cells + j of the table
        cells = int(np.prod(tracked))
        table = np.ascontiguousarray(np.broadcast_to(self.table, (NODES,) + tracked)).ravel()
        flat = i * cells + np.arange(cells).reshape(tracked)
        left, right = table[flat], table[flat + cells]
        value = np.where(undefined, np.nan, left + frac * (right - left))
        return value.reshape(lead_shape + tracked)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return np.where(x > self.cut, self.smooth(x), 0.0)

    def expectation(self, mean, var) -> np.ndarray:
        """``E[r(Y)]`` for ``Y ~ N(mean, var)`` element-wise (arrays with leading axes before
        the tracked ones broadcast against the table's)."""
        return truncated_expectation(self.smooth, mean, var, self.cut)


def grid_nodes(lo, hi) -> np.ndarray:
    """``NODES`` equally spaced values from lo to hi, a leading node axis."""
    t = np.linspace(0.0, 1.0, NODES).reshape((-1,) + (1,) * np.ndim(lo))
    return lo + t * (hi - lo)


def span_of(mean, var) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): ``mean -+ SPAN`` standard deviations (a point gets a tiny interval)."""
    mean, var = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(var, np.float64))
    s = np.sqrt(np.maximum(var, 0.0))
    half = np.maximum(SPAN * s, 1e-6 * np.maximum(np.abs(mean), 1.0))
    return mean - half, mean + half


def truncated_expectation(h: Callable, mean, var, cut=-np.inf) -> np.ndarray:
    """``E[1[Y > cut] h(Y)]`` for ``Y ~ N(mean, var)``: Gauss-Legendre on
    ``[max(cut, mean - 6 s), mean + 6 s]`` (a point mass: ``1[mean > cut] h(mean)``).
    ``h`` takes an array with one more leading axis (the nodes). Nodes where h is not finite
    are dropped and the rest renormalised when they carry at most ``_OUTSIDE`` of the
    probability; otherwise the expectation is NaN (and the analysis says so)."""
    mean, var = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(var, np.float64))
    s = np.sqrt(np.maximum(var, 0.0))
    point = s <= 0
    safe = np.where(point, 1.0, s)
    lo = np.maximum(mean - SPAN * safe, cut)
    hi = np.maximum(mean + SPAN * safe, lo)
    shape = (-1,) + (1,) * mean.ndim
    y = (lo + hi) / 2 + (hi - lo) / 2 * _LEG_T.reshape(shape)
    density = np.exp(-0.5 * ((y - mean) / safe) ** 2) / (np.sqrt(2 * np.pi) * safe)
    weights = _LEG_W.reshape(shape) * (hi - lo) / 2 * density
    with np.errstate(invalid="ignore"):
        values = h(y)
    finite = np.isfinite(values)
    if finite.all():
        spread = (weights * values).sum(axis=0)
    else:  # nodes outside h's domain (Sqrt's input 5.4 deviations from 0): dropped when rare
        outside = np.where(finite, 0.0, weights).sum(axis=0)
        spread = np.where(finite, weights * np.where(finite, values, 0.0), 0.0).sum(axis=0)
        spread = np.where(outside <= _OUTSIDE, spread / np.maximum(1.0 - outside, 0.5), np.nan)
    at_mean = np.where(mean > cut, h(mean[None])[0], 0.0)
    return np.where(point, at_mean, spread)


def law_expectation(h: Callable, law, cut=-np.inf) -> np.ndarray:
    """``E[1[X > cut] h(X)]`` over a Gaussian mixture law (w, m, v) with a leading component
    axis: ``sum_k w_k E_{N(m_k, v_k)}[...]``."""
    w, m, v = law
    return (w * truncated_expectation(h, m, v, cut)).sum(axis=0)


def pulled_back(given: Conditional | None, fn: Callable, df: Callable, law, mean, var,
                relu: bool) -> tuple[np.ndarray, Conditional]:
    """(p2, r_x) through ``y = f(x)`` (module docstring) for x's law (w, m, v) and forward
    (mean, var), ``given`` r_y (None: 1). ReLU: ``p2 = E_x[1[x > 0] r_y(x)]`` with the step
    exact; otherwise ``E_x[f'(x)^2 r_y(f(x))]``."""
    lo, hi = span_of(mean, var)
    x = grid_nodes(lo, hi)
    if relu:
        smooth = given.smooth if given is not None else np.ones_like
        p2 = law_expectation(smooth, law, max(0.0, given.cut if given is not None else 0.0))
        table = smooth(np.maximum(x, 0.0))
        cut = 0.0
    else:
        def h(y):
            d = df(y) ** 2
            return d * given(fn(y)) if given is not None else d
        p2 = law_expectation(h, law)
        with np.errstate(invalid="ignore"):  # nodes outside f's domain: probability ~0 there
            table, cut = np.nan_to_num(h(x), nan=0.0, posinf=0.0), -np.inf
    safe = np.where(p2 > 0, p2, 1.0)
    return p2, Conditional(lo, hi, np.where(p2 > 0, table / safe, 0.0), cut)


def operand(given: Conditional, mean, var, other_mean, other_var) -> Conditional:
    """r_s for the operand s (forward mean, var) of ``a = s + o``, o independent
    ~ N(other_mean, other_var): ``r_s(x) = E_o[r_a(x + o)]``."""
    lo, hi = span_of(mean, var)
    table = given.expectation(grid_nodes(lo, hi) + other_mean, other_var)
    return Conditional(lo, hi, table)


def shifted(given: Conditional, c) -> Conditional:
    """r_x for ``y = x + c``: ``r_x(x) = r_y(x + c)`` (c a scalar)."""
    return Conditional(given.lo - c, given.hi - c, given.table, given.cut - c)


def mixed(parts: list[tuple[Conditional | None, np.ndarray]]) -> Conditional | None:
    """The conditional of a sum of uncorrelated gradients, ``(r_i, M_i)`` with M_i the
    second moment per tracked index: ``sum_i M_i r_i / sum_i M_i`` (r_i = 1 where None), on
    the first one's nodes."""
    givens = [g for g, _ in parts if g is not None]
    if not givens:
        return None
    ref = givens[0]
    same = all(g is not None and g.cut == ref.cut for g, _ in parts)
    x = ref.nodes()
    try:
        total, weighted = 0.0, 0.0
        for g, second in parts:
            r = 1.0 if g is None else (g.smooth(x) if same else g(x))
            total = total + second
            weighted = weighted + second * r
        table = weighted / np.where(total > 0, total, 1.0)
        np.broadcast_shapes(np.shape(table)[1:], ref.table.shape[1:])
    except ValueError:  # statistics that do not broadcast with the tables
        return None
    return Conditional(ref.lo, ref.hi, table, ref.cut if same else -np.inf)
