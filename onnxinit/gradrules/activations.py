"""Backward rules of element-wise functions ``y = f(x)``: ``dx = dy f'(x)``.

With dy independent of x (the usual assumption at initialization), per channel::

    E[dx]   = E[dy] E[f'(x)]
    Var[dx] = E[dy^2] E[f'(x)^2] - E[dx]^2

E[f'] and E[f'^2] are integrals over x's forward distribution (its Gaussian source and chain
of element-wise functions, :mod:`onnxinit.rules.elementwise`), f' by central differences of
the op's own numpy function. A sample's spatial mean (``sample_var``, S positions, f' taken as
independent between positions, ``p1 = E[f']``, ``p2 = E[f'^2]``)::

    u' = (u + m^2) (p1^2 + (p2 - p1^2) / S) - m^2 p1^2 + (Var[dy] - u) (p2 - p1^2) / S

Across the tokens of a sample (``Gradient.tokens``) ``Cov(dx_s, dx_t) = E[a_s a_t] (Sigma[s, t]
+ m^2) - m'^2`` with ``E[a_s a_t] = p1^2`` (:func:`.tokens.through_factor`).

The same rule serves every op whose forward rule is element-wise (the unary activations, and
Add/Sub/Mul/Div/Pow with a constant operand, whose constant gets its own gradient in
:mod:`.arithmetic`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from .. import special

from ..moments import Moments
from ..rules import activations as forward_activations  # noqa: F401 - fills UNARY
from ..rules import dropout as forward_dropout  # noqa: F401 - fills UNARY
from ..rules import inverse_trig as forward_inverse_trig  # noqa: F401 - fills UNARY
from ..rules import rounding as forward_rounding  # noqa: F401 - fills UNARY
from ..rules.context import RuleError
from ..rules.elementwise import UNARY, base_source, is_smooth, node_function, rank_of
from ..rules.gaussian import compose, expand, gaussian_moments, probability
from ..rules.mixture import components
from ..spatial import class_weights
from .batch_share import through_derivative
from .context import GradContext
from .conditional import pulled_back
from .gradient import Gradient, last_axis
from .registry import rule
from .tokens import same_place, through_factor

STEP = 1e-4
FLOOR = 1e-6  # the |x| below which the step is STEP FLOOR (float64 roundoff ~1e-6 at x = 0)


def derivative(fn: Callable) -> Callable:
    """f' by central differences with a step relative to |x| (``STEP |x|``, at least
    ``STEP FLOOR``). The step was ``STEP max(1, |x|)``: at a mean square of 1e-4 (a stream of
    standard deviation 0.01) under Sqrt, ``x - h`` left the domain (NaN: `check` stopped on a
    "non-finite gradient statistic"), and at 2e-4 sqrt' read 3% high. Where a step still
    leaves the domain (x within ``STEP FLOOR`` of a boundary), the step ``STEP |x|``."""

    def df(x):
        ax = np.abs(x)
        h = STEP * np.maximum(ax, FLOOR)
        d = (fn(x + h) - fn(x - h)) / (2.0 * h)
        if np.all(np.isfinite(d)):
            return d
        h = np.where(ax > 0, STEP * ax, h)
        return np.where(np.isfinite(d), d, (fn(x + h) - fn(x - h)) / (2.0 * h))

    return df


def mixture_of(x: Moments, rank: int | None):
    """x's Gaussian mixture components (w, m, v) with a leading component axis when the forward
    pass describes x as one (a ReLU output plus a Gaussian: a residual sum), else None."""
    if rank is None:
        return None
    if x.spatial is not None and x.spatial.cells.mixture is not None and rank > 2:
        return _cell_mixture(x.spatial, rank)
    if x.source is not None or x.mixture is None:
        return None
    return components(x, rank)


def _cell_mixture(sp, rank: int):
    """The components of the position classes merged per component index (weights summed,
    means and variances matched over the classes, each weighted by its share of the
    positions): per channel ``[K, 1, C, 1, ...]``."""
    w, m, v = components(sp.cells, rank)
    shape = np.broadcast_shapes(w.shape, m.shape, v.shape)
    w, m, v = (np.broadcast_to(a, shape) for a in (w, m, v))
    cells = class_weights(sp.maps)
    weight = w * cells.reshape((1, 1, 1) + cells.shape)
    axes = tuple(range(3, len(shape)))
    total = weight.sum(axis=axes, keepdims=True)
    safe = np.where(total > 0, total, 1.0)
    mean = (weight * m).sum(axis=axes, keepdims=True) / safe
    var = (weight * (v + m * m)).sum(axis=axes, keepdims=True) / safe - mean**2
    return total, mean, np.maximum(var, 0.0)


def derivative_moments(fn: Callable, x: Moments, rank: int | None,
                       relu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(E[f'(x)], E[f'(x)^2]) over x's forward distribution, per tracked index: its Gaussian
    source and chain, or its mixture components (``relu``: f' is the step, both are
    P(x > 0))."""
    df = derivative(fn)
    mixture = mixture_of(x, rank)
    if mixture is not None:
        w, m, v = mixture
        if relu:  # relu' is the step: E[relu'] = E[relu'^2] = sum_k w_k Phi(m_k / s_k)
            with np.errstate(divide="ignore", invalid="ignore"):
                p = special.ndtr(np.where(v > 0, m / np.sqrt(v), np.sign(m) * np.inf))
            p = np.where((v == 0) & (m == 0), 0.0, p)
            p = (w * p).sum(axis=0)
            return p, p
        mean, var = gaussian_moments(df, m, v)
        return (w * mean).sum(axis=0), (w * (var + mean**2)).sum(axis=0)
    src = base_source(x, rank)
    if relu:
        inner = compose(src.chain)
        p = probability(lambda z: inner(z) > 0, src.mean, src.var, rank=rank)
        return p, p
    inner = compose(src.chain)
    smooth = is_smooth(src.chain)
    mean, var = gaussian_moments(lambda z: df(inner(z)), src.mean, src.var, smooth=smooth,
                                 rank=rank)
    return mean, var + mean**2


SELECTION_SAMPLES = 4096


def window_maxima(k: int, r: float, seed: int = 0) -> np.ndarray:
    """Samples of the maximum of k standard normals with pairwise correlation r (seeded)."""
    rng = np.random.default_rng([seed, k, int(r * 1e6)])
    common = rng.standard_normal((SELECTION_SAMPLES, 1))
    own = rng.standard_normal((SELECTION_SAMPLES, k))
    return (np.sqrt(r) * common + np.sqrt(1.0 - r) * own).max(axis=1)


def selected_derivative_moments(fn: Callable, x: Moments, rank: int | None, k: int, r: float):
    """(E[f'(M)], E[f'(M)^2]) with M the element of a window of k that is the window's maximum
    (x's source Gaussian, its chain taken as increasing: the argmax of x is that of z)."""
    src = base_source(x, rank)
    inner = compose(src.chain)
    df = derivative(fn)
    mean, std = expand(src.mean, rank), np.sqrt(expand(src.var, rank))
    z = window_maxima(k, r)
    with np.errstate(all="ignore"):
        d = df(inner(mean[..., None] + std[..., None] * z))
    d = np.nan_to_num(d)
    return d.mean(axis=-1), (d * d).mean(axis=-1)


def positions_of(ctx: GradContext) -> int:
    shape = ctx.out_shape()
    return int(np.prod(shape[2:])) if len(shape) > 2 else 1


def times_independent(g: Gradient, p1, p2, positions: int, factor=None) -> Gradient:
    """``dy * a`` for a factor ``a`` independent of dy with E[a] = p1, E[a^2] = p2 per tracked
    index (see the module docstring); ``factor``, a's forward moments, gives the covariance of
    a across tokens where its token field lies where dy's does (a branch output times a
    per-sample mask: the mask's gradient sums ``a dy`` over the tokens)."""
    rank = max(g.rank, np.ndim(p1), np.ndim(p2))
    g = g.expand_rank(rank)
    p1, p2 = expand(p1, rank), expand(p2, rank)
    m, v = g.mean, g.var
    mean = m * p1
    var = (v + m * m) * p2 - mean**2
    cov = _feature_cov(g, p1, p2, mean, var)
    sample_var = None
    if g.sample_var is not None:
        u = np.minimum(g.sample_var, v)
        spread = np.maximum(p2 - p1 * p1, 0.0) / positions
        sample_var = (u + m * m) * (p1 * p1 + spread) - m * m * p1 * p1 + (v - u) * spread
        sample_var = _per_channel_like(sample_var, g.sample_var)
    tokens, pair = None, None
    if g.tokens is not None or g.pair is not None:
        f1, f2 = float(np.mean(p1)), float(np.mean(p2))
        gm, gv = g.total()
        tokens = through_factor(g.tokens, gm, gv, f1, f2, _token_cov(factor, g.tokens))
        if g.pair is not None and _constant_over_matrices(p1, p2):
            pair = tuple((r * f2, c) for r, c in g.pair)
    return Gradient(mean, var, sample_var, g.profile, cov, g.selected, tokens=tokens, pair=pair)


def _token_cov(factor, tokens) -> np.ndarray | None:
    """``Cov(a_s, a_t)`` over tokens from a's forward field, where it matches ``tokens``."""
    t = getattr(factor, "tokens", None)
    if t is None or tokens is None or not same_place(t, tokens):
        return None
    return float(np.mean(factor.var)) * t.cov / max(float(np.mean(np.diag(t.cov))), 1e-300)


def _constant_over_matrices(p1, p2) -> bool:
    """The factor is a constant over the last two axes (a scale per head, ``[1, H, 1, 1]``: the
    pair, averaged over the leading axes, takes its mean square)."""
    p1, p2 = np.asarray(p1, dtype=np.float64), np.asarray(p2, dtype=np.float64)
    for a in (p1, p2):
        if a.ndim >= 2 and a.shape[-2:] != (1, 1):
            spread = np.ptp(a, axis=(-2, -1))
            if np.any(spread > 1e-9 * np.max(np.abs(a), axis=(-2, -1))):
                return False
    return bool(np.all(np.abs(p1 * p1 - p2) <= 1e-6 * np.maximum(p2, 1e-300)))


def _feature_cov(g: Gradient, p1, p2, mean, var) -> np.ndarray | None:
    """``E[dx_j dx_k] = E[dy_j dy_k] E[a_j] E[a_k]`` off the diagonal (factors independent
    across features), the variance on it."""
    if g.cov is None:
        return None
    n = g.cov.shape[0]
    f1, m = last_axis(p1, n), last_axis(g.mean, n)
    m_out, v_out = last_axis(mean, n), last_axis(var, n)
    if f1 is None or m is None or m_out is None or v_out is None:
        return None
    cov = (g.cov + np.outer(m, m)) * np.outer(f1, f1) - np.outer(m_out, m_out)
    cov[np.diag_indices(n)] = v_out
    return cov


def _per_channel_like(a: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``a`` reduced to the shape of ``like`` (a factor may track axes sample_var does not)."""
    if a.shape == like.shape or like.ndim != a.ndim:
        return a
    axes = tuple(i for i, (n, k) in enumerate(zip(a.shape, like.shape)) if k == 1 and n > 1)
    return a.mean(axis=axes, keepdims=True) if axes else a


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Midpoints of n equal cells over [-7, 7] with standard-normal weights (summing to 1):
    a rule that converges for step functions (a ReLU's derivative) where Gauss-Hermite does
    not."""
    edges = np.linspace(-7.0, 7.0, n + 1)
    nodes = (edges[:-1] + edges[1:]) / 2
    weights = np.exp(-nodes**2 / 2)
    return nodes, weights / weights.sum()


_Z_NODES, _Z_WEIGHTS = _grid(192)


def law_of(x: Moments, rank: int):
    """x's forward law as Gaussian mixture components (w, m, v) with a leading component
    axis: its mixture, or a Gaussian source's chain as point masses at the images of a
    192-cell grid of the source (a chain that is not a ReLU of an affine map)."""
    found = mixture_of(x, rank)
    if found is None:
        found = components(x, rank)
    if found is not None:
        return found
    src = base_source(x, rank)
    axis = (-1,) + (1,) * rank
    z = expand(src.mean, rank) + np.sqrt(expand(src.var, rank)) * _Z_NODES.reshape(axis)
    with np.errstate(all="ignore"):
        values = np.nan_to_num(compose(src.chain)(z))
    return _Z_WEIGHTS.reshape(axis), values, np.zeros_like(values)


_PASSING = {"Add", "Identity", "Cast", "CastLike", "Dropout"}


def reads_given(ctx: GradContext, which: int) -> bool:
    """Whether the backward rule of input ``which``'s producer reads a conditional (an
    element-wise op, or one that passes it on); any other drops it, so it is not computed."""
    producer = ctx.graph.producer.get(ctx.node.input[which])
    if producer is None:
        return False
    op = ctx.graph.node(producer).op_type
    return op in _PASSING or op in UNARY


def conditional_factor(g: Gradient, fn: Callable, x: Moments, rank: int | None, relu: bool):
    """(p2, r_x): ``E[f'(x)^2 r_y(f(x))]`` and the conditional of dx (:mod:`.conditional`);
    (None, None) when x's rank is unknown or dy lives at window maxima."""
    if rank is None or g.selected is not None:
        return None, None
    mean, var = expand(x.mean, rank), expand(x.var, rank)
    with np.errstate(all="ignore"):
        return pulled_back(g.given, fn, derivative(fn), law_of(x, rank), mean, var, relu)


def through_function(g: Gradient, fn: Callable, x: Moments, ctx: GradContext,
                     key: tuple = (), which: int = 0) -> Gradient:
    """``dx = dy f'(x)``: E[f'] and E[f'^2] over x's law, the latter weighted by dy's
    conditional on y when it has one (:func:`conditional_factor`)."""
    rank = rank_of(ctx)
    relu = tuple(key) == ("Relu",)
    if g.selected is not None:
        p1, p2 = selected_derivative_moments(fn, x, rank, *g.selected)
    else:
        p1, p2 = derivative_moments(fn, x, rank, relu=relu)
    weighted, given = None, None
    passed = reads_given(ctx, which)
    if g.given is not None or passed:
        weighted, given = conditional_factor(g, fn, x, rank, relu)
    if g.given is not None and weighted is not None:
        p2 = weighted
    given = given if passed else None
    out = times_independent(g, p1, p2, positions_of(ctx))
    centred = None
    if g.centred is not None:
        shape = ctx.out_shape()
        s = positions_of(ctx)
        c = shape[1] if len(shape) > 2 else 1
        u = g.channel_sample_var(len(shape), c, s) if len(shape) > 2 else g.var
        share = float(np.mean(u) / max(float(np.mean(g.var)), 1e-300))
        centred = through_derivative(g.centred, derivative(fn), x, shape, share)
    return replace(out, given=given, centred=centred)


def elementwise_backward(grads, ctx: GradContext):
    """dx = dy f'(x) for the node's element-wise function (see the module docstring)."""
    found = node_function(ctx)
    if found is None or found[0] is None:
        raise RuleError(f"{ctx.node.op_type} is not element-wise here")
    f, which = found
    out = [None] * len(ctx.node.input)
    out[which] = through_function(grads[0], f.fn, ctx.x(which), ctx, f.key, which)
    return out


for _op in sorted(set(UNARY) - {"Identity", "Dropout", "Cast", "CastLike"}):
    rule(_op)(elementwise_backward)


@rule("Identity", "Cast", "CastLike")
def identity(grads, ctx: GradContext):
    """dx = dy."""
    return [grads[0]] + [None] * (len(ctx.node.input) - 1)


@rule("Dropout")
def dropout(grads, ctx: GradContext):
    """Dropout at analysis time is the identity (or a fixed mask scaled by 1/(1-ratio):
    ``E[dx^2] = E[dy^2] / (1 - ratio)``)."""
    if not ctx.settings.dropout:
        return [grads[0]] + [None] * (len(ctx.node.input) - 1)
    ratio = ctx.const(1)
    ratio = float(ctx.attr("ratio", 0.5) if ratio is None else ratio)
    keep = 1.0 - ratio
    return [times_independent(grads[0], 1.0, 1.0 / keep, positions_of(ctx))] + [None] * (
        len(ctx.node.input) - 1)
