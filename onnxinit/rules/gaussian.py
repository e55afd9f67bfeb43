"""Expectations under a Gaussian: the quadrature and closed forms the moment rules integrate
with.

- :func:`gaussian_moments`: ``(E[f(z)], Var[f(z)])`` for ``z ~ N(mean, var)``, by Gauss-Hermite
  (96 nodes) when ``f`` is smooth, else by a composite Gauss-Legendre rule over
  ``z in [-10, 10]`` (1024 panels of 3 nodes; ``COMPOSITE_Z``/``COMPOSITE_W``), where
  Gauss-Hermite converges slowly on kinks and jumps (0.4% off on ReLU's variance at 96 nodes);
- :func:`probability`: ``P(pred(z))``;
- closed forms for rectified Gaussians: :func:`relu_parts`, :func:`leaky_closed`,
  :func:`abs_closed`, and for any piecewise polynomial of degree <= 2 (HardSigmoid, HardSwish,
  Clip, Shrink ...): :func:`piecewise_closed`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .. import special
from ..kept_cdf import keep_density, ndtr_kept
from ..mehler import bound_key
from ..moments import Elementwise
from ..views import broadcast_to
from .cell_blocks import blocked_sums, broadcasts_nothing
from .context import RuleError

# quadrature nodes --------------------------------------------------------------------------

_GH_N = 96
_t, _w = np.polynomial.hermite.hermgauss(_GH_N)
_GH_Z = np.sqrt(2.0) * _t
_GH_W = _w / np.sqrt(np.pi)



def composite_rule(half_width: float, panels: int, per_panel: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal nodes and weights of a composite Gauss-Legendre rule: ``panels`` equal
    panels on ``[-half_width, half_width]``, ``per_panel`` nodes each, weights times the
    normal density, normalised to sum 1 (kinks and jumps converge as the panels shrink)."""
    g, gw = np.polynomial.legendre.leggauss(per_panel)
    edges = np.linspace(-half_width, half_width, panels + 1)
    h = edges[1] - edges[0]
    z = (edges[:-1, None] + h / 2 * (g[None, :] + 1)).ravel()
    w = np.tile(gw * h / 2, panels) * np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    return z, w / w.sum()


_L = 10.0
COMPOSITE_Z, COMPOSITE_W = composite_rule(_L, 1024, 3)
del _t, _w

_CHUNK = 1 << 22  # elements evaluated at once (nodes x tracked indices)
_BLOCKED_CELLS = 1 << 11  # cells above which gaussian_moments evaluates blocks of them


def quadrature(smooth: bool) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal nodes and weights: Gauss-Hermite (smooth) or composite (kinks, jumps)."""
    return (_GH_Z, _GH_W) if smooth else (COMPOSITE_Z, COMPOSITE_W)


def expand(a: np.ndarray, rank: int | None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if rank is None or a.ndim >= rank:
        return a
    return a.reshape((1,) * (rank - a.ndim) + a.shape)


def compose(chain: Sequence[Elementwise | Callable]) -> Callable[[np.ndarray], np.ndarray]:
    """``chain[-1](...chain[0](x))``."""
    fns = [f.fn if isinstance(f, Elementwise) else f for f in chain]

    def composed(x):
        for fn in fns:
            x = fn(x)
        return x

    return composed


_NODE_BLOCK = 1 << 15  # function values per block of chain_at_nodes (in cache)


def chain_at_nodes(fn: Callable, mean: np.ndarray, std: np.ndarray, nodes: np.ndarray,
                   out: np.ndarray | None = None) -> np.ndarray:
    """``fn(mean + std t)`` at every node t, ``[nodes, mean.size]`` (into ``out`` when given;
    ``mean``, ``std`` of one shape, ``fn`` applied to ``[block, *shape]`` arrays): a block of
    nodes at a time, so that the function's temporaries stay in cache and only the result is
    a large array; the values are those of one evaluation on all nodes. ValueError where fn's
    values do not broadcast to its argument's shape."""
    out = np.empty((nodes.size, mean.size)) if out is None else out
    step = max(1, _NODE_BLOCK // max(1, mean.size))
    pad = (1,) * mean.ndim
    for i in range(0, nodes.size, step):
        t = nodes[i:i + step]
        x = std[None] * t.reshape((-1,) + pad)
        x += mean[None]
        y = np.asarray(fn(x), dtype=np.float64)
        out[i:i + t.size] = broadcast_to(y, x.shape).reshape(t.size, -1)
    return out


def gaussian_moments(
    fn: Callable | Elementwise | Sequence,
    mean,
    var,
    *,
    smooth: bool = False,
    rank: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(E[f(z)], Var[f(z)]) for ``z ~ N(mean, var)``, vectorised over the (broadcast) arrays.

    ``fn`` is a numpy function, an Elementwise or a chain of them; ``smooth`` picks Gauss-Hermite
    (96 nodes) over the composite rule; ``rank`` left-pads the arrays first so that constants
    laid out at the tensor's rank (per-channel slopes) broadcast against them. Raises RuleError
    when the function is not finite on the distribution (Log of a Gaussian ...)."""
    if not callable(fn):
        fn = compose(fn)
    elif isinstance(fn, Elementwise):
        fn = fn.fn
    mean, var = expand(mean, rank), expand(var, rank)
    shape = np.broadcast_shapes(mean.shape, var.shape)
    mean, std = np.broadcast_to(mean, shape), np.sqrt(np.broadcast_to(var, shape))
    nodes, weights = quadrature(smooth)
    node_axis = (-1,) + (1,) * len(shape)
    step = max(1, _CHUNK // max(1, int(np.prod(shape))))
    with np.errstate(all="ignore"):
        shift = np.nan_to_num(np.asarray(fn(mean[None]), dtype=np.float64))[0:1]
        acc0 = acc1 = acc2 = 0.0
        out_shape = None
        blocked = shift.shape[1:] == shape and int(np.prod(shape)) > _BLOCKED_CELLS \
            and broadcasts_nothing(fn, len(shape))
        if blocked:  # a block of cells at a time, in cache: the same bits
            (acc0, acc1, acc2), out_shape = blocked_sums(fn, mean, std, shift, nodes, weights,
                                                         step), shape
        for i in range(0, 0 if blocked else nodes.size, step):
            z = nodes[i : i + step].reshape(node_axis)
            w = weights[i : i + step]
            y = np.asarray(fn(mean + std * z), dtype=np.float64) - shift
            out_shape = y.shape[1:] if out_shape is None else out_shape
            y = np.broadcast_to(y, (z.shape[0],) + out_shape).reshape(z.shape[0], -1)
            # nodes far in the tail may leave the function's domain (Log, Sqrt): drop them if
            # their probability is negligible, refuse otherwise
            finite = np.isfinite(y)
            if finite.all():  # the weighted sums over nodes as matrix-vector products
                acc0 = acc0 + w.sum()
                acc1 = acc1 + w @ y
                acc2 = acc2 + w @ (y * y)
            else:
                wf = np.where(finite, w[:, None], 0.0)
                y = np.where(finite, y, 0.0)
                acc0 = acc0 + wf.sum(axis=0)
                acc1 = acc1 + (wf * y).sum(axis=0)
                acc2 = acc2 + (wf * y * y).sum(axis=0)
        acc0 = np.reshape(acc0, out_shape) if np.ndim(acc0) else acc0
        acc1, acc2 = np.reshape(acc1, out_shape), np.reshape(acc2, out_shape)
        if np.any(acc0 < 1.0 - 1e-6):
            raise RuleError("the function is not finite on the input distribution")
        acc1, acc2 = acc1 / acc0, acc2 / acc0
        e = shift[0] + acc1
        v = acc2 - acc1**2
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(v))):
        raise RuleError("the function is not finite on the input distribution")
    return e, np.maximum(v, 0.0)


def probability(pred: Callable, mean, var, *, rank: int | None = None) -> np.ndarray:
    """P(pred(z)) for z ~ N(mean, var) (composite rule), per tracked index."""
    mean, var = expand(mean, rank), expand(var, rank)
    shape = np.broadcast_shapes(mean.shape, var.shape)
    z = COMPOSITE_Z.reshape((-1,) + (1,) * len(shape))
    w = COMPOSITE_W.reshape(z.shape)
    with np.errstate(all="ignore"):
        hit = np.asarray(pred(np.broadcast_to(mean, shape) + np.sqrt(var) * z), dtype=bool)
    return (w * hit).sum(axis=0)


# closed forms on a Gaussian ---------------------------------------------------------------


def relu_parts(mu, s):
    """E[max(x, 0)] and E[max(x, 0)^2] for x ~ N(mu, s^2), s >= 0: with a = mu / s,
    ``E = mu Phi(a) + s phi(a)``, ``E2 = (mu^2 + s^2) Phi(a) + mu s phi(a)`` (s = 0: a = +-inf,
    phi = 0; a point at mu = 0 gives 0 either way). Every step is per element: the steps after
    Phi run on blocks of ``_PARTS_BLOCK`` elements, whose temporaries stay in cache, when there
    are more than ``_PARTS_WHOLE``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.asarray(np.divide(mu, s), dtype=np.float64)
    np.copyto(a, np.inf, where=np.isnan(a))
    cdf = ndtr_kept(a)  # the amplitudes of the same cells ask for it next
    if a.size <= _PARTS_WHOLE:
        m1, m2 = _relu_parts_at(mu, s, a, cdf)
        keep_density(cdf, a)  # a holds phi(mu / s) now: the amplitudes read it too
        return m1, m2
    flat = [np.ascontiguousarray(np.broadcast_to(x, a.shape)).reshape(-1) for x in (mu, s)]
    flat += [a.reshape(-1), np.ascontiguousarray(cdf).reshape(-1)]  # a: written
    m1, m2 = np.empty(a.size), np.empty(a.size)
    for start in range(0, a.size, _PARTS_BLOCK):
        part = slice(start, start + _PARTS_BLOCK)
        m1[part], m2[part] = _relu_parts_at(*(x[part] for x in flat))
    return m1.reshape(a.shape), m2.reshape(a.shape)


_PARTS_BLOCK = 1 << 14
_PARTS_WHOLE = 1 << 20  # below, the whole arrays' passes cost less than the blocks'


def _relu_parts_at(mu, s, a, cdf):
    """:func:`relu_parts` from ``a = mu / s`` (overwritten) and ``cdf = Phi(a)``."""
    pdf = np.square(a, out=a)
    pdf *= -0.5
    np.exp(pdf, out=pdf)  # exp(-inf) = 0: phi(+-inf) = 0
    pdf /= np.sqrt(2 * np.pi)
    m1 = mu * cdf + s * pdf
    m2 = (mu**2 + s**2) * cdf + mu * s * pdf
    return m1, m2


def leaky_closed(mu, var, alpha):
    """f = x+ - alpha (-x)+: E = E[x+] - alpha E[(-x)+], E[f^2] = E[x+^2] + alpha^2 E[(-x)+^2]."""
    s = np.sqrt(var)
    p1, p2 = relu_parts(mu, s)
    if np.ndim(alpha) == 0 and alpha == 0:  # ReLU
        return p1, p2 - p1**2
    n1, n2 = relu_parts(-mu, s)
    e = p1 - alpha * n1
    return e, p2 + alpha**2 * n2 - e**2


def abs_closed(mu, var):
    s = np.sqrt(var)
    p1, _ = relu_parts(mu, s)
    n1, _ = relu_parts(-mu, s)
    e = p1 + n1
    return e, mu**2 + var - e**2


def _partial_moments(lo, hi, top: int, kept: dict | None = None,
                     keys: tuple = (None, None)) -> list[np.ndarray]:
    """``M_k = int_lo^hi z^k phi(z) dz`` for k = 0..top (standard normal, infinite bounds
    allowed): M_0 = Phi(hi) - Phi(lo), M_1 = phi(lo) - phi(hi),
    M_k = (k - 1) M_{k-2} + lo^(k-1) phi(lo) - hi^(k-1) phi(hi). ``kept`` (a dict for one
    :func:`piecewise_closed`): each bound's values under its key in ``keys`` (a piece's upper
    bound is the next piece's lower one: the same array, computed once)."""
    at_lo, (cdf_lo, cdf_lo_neg) = _bound(lo, kept, keys[0])
    at_hi, (cdf_hi, cdf_hi_neg) = _bound(hi, kept, keys[1])
    # Phi(hi) - Phi(lo) from the nearer tail: no cancellation when both bounds are far out
    upper = lo > 0
    m0 = np.where(upper, cdf_lo_neg - cdf_hi_neg, cdf_hi - cdf_lo)
    out = [m0, at_lo(0) - at_hi(0)]
    for k in range(2, top + 1):
        out.append((k - 1) * out[k - 2] + at_lo(k - 1) - at_hi(k - 1))
    return out


def _bound(t, kept: dict | None, key):
    """(k -> t^k phi(t), 0 at +-inf, each k computed once; (Phi(t), Phi(-t))) of one bound of
    :func:`_partial_moments`, kept in ``kept`` under ``key`` (None: not kept)."""
    if kept is not None and key is not None:
        found = kept.get(key)
        if found is not None:
            return found
    finite = np.isfinite(t)
    powers: dict[int, np.ndarray] = {}
    if finite.any():
        z = np.where(finite, t, 0.0)
        density = np.exp(-0.5 * z * z)  # exp once per bound

        def tail(k: int) -> np.ndarray:
            if k not in powers:
                powers[k] = np.where(finite, z**k * density / np.sqrt(2 * np.pi), 0.0)
            return powers[k]
    else:  # every value at +-inf (or NaN): the tails are 0, as np.where gives them

        def tail(k: int) -> np.ndarray:
            if k not in powers:
                powers[k] = np.zeros(np.shape(t))
            return powers[k]
    out = (tail, (special.ndtr(t), special.ndtr(-t)))
    if kept is not None and key is not None:
        kept[key] = out
    return out


def piecewise_closed(pieces, mu, var) -> tuple[np.ndarray, np.ndarray]:
    """(E[f(x)], Var[f(x)]) for x ~ N(mu, var) and f = c0 + c1 x + c2 x^2 on each piece
    ``(lo, hi, (c0, c1, c2))`` (bounds and coefficients broadcast against mu; the pieces cover
    the real line). With x = mu + s z each piece is a polynomial d(z) in z, shifted by
    f(mu) against cancellation; then E[f - f(mu)] = sum_k d_k M_k and
    E[(f - f(mu))^2] = sum_{k,l} d_k d_l M_{k+l} over the piece's partial moments M
    (:func:`_partial_moments`). A point mass (var = 0) gives (f(mu), 0)."""
    mu = np.asarray(mu, dtype=np.float64)
    s = np.sqrt(np.maximum(np.asarray(var, dtype=np.float64), 0.0))
    point = s == 0
    s1 = np.where(point, 1.0, s)
    shift = sum(np.where((mu >= lo) & (mu < hi), c0 + c1 * mu + c2 * mu * mu, 0.0)
                for lo, hi, (c0, c1, c2) in pieces)
    e = v = 0.0
    kept: dict = {}  # the bounds' values, shared by the pieces that meet there
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for lo, hi, (c0, c1, c2) in pieces:
            d = (c0 + c1 * mu + c2 * mu * mu - shift, (c1 + 2 * c2 * mu) * s1, c2 * s1 * s1)
            m = _partial_moments((lo - mu) / s1, (hi - mu) / s1, 4, kept,
                                 (bound_key(lo), bound_key(hi)))
            e = e + d[0] * m[0] + d[1] * m[1] + d[2] * m[2]
            v = v + sum(d[i] * d[j] * m[i + j] for i in range(3) for j in range(3))
    mean = shift + np.where(point, 0.0, e)
    return mean, np.where(point, 0.0, np.maximum(v - e * e, 0.0))
