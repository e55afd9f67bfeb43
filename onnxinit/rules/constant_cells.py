"""A signal's law, not only its moments, through a constant that varies where the signal does not.

``y = a * x + b`` with constants ``a`` or ``b`` that vary along axes ``x``'s statistics do not
(Mamba's selective scan: ``A[d, s] * dt[b, d, t, 1]``, a negative per-state constant times a
positive per-token step) is, element by element, one affine image of ``x`` per value of the
constant: cell ``k`` of the broadcast grid holds ``a_k x + b_k``. The arithmetic rule's moments
per cell are exact for it (``E_k = a_k mu + b_k``, ``Var_k = a_k^2 nu``), but it describes each
cell as a Gaussian with those moments, and a later non-linear function integrates that Gaussian:
``exp(A dt)`` with ``dt = softplus(z) >= 0`` is at most 1, while the Gaussian of the same moments
reaches positive values, and ``E[exp(2 X)] = exp(2 mu + 2 nu)`` for ``X ~ N(-a m, a^2 v)`` grows
without bound with ``a`` (1e36 on Mamba once its ``dt`` bias is zero).

Here each cell keeps ``x``'s own law: the output's ``source`` is ``x``'s (its Gaussian and chain
of element-wise functions ``g``) broadcast to the grid, with ``z -> a_k z + b_k`` appended, so a
later ``f`` integrates ``E_k[f] = int f(a_k g(z) + b_k) N(z; m, v) dz`` per cell, and the
tensor's statistics are the mixture over the cells (``Moments.total``: mean of the means, mean
of the variances plus variance of the means). Where that grid would have more than
``grids.KEEP_CAP`` cells (Mamba-2.8B: 5120 channels times 16 states), ``x`` is first pooled
along the axes only it varies along (:func:`pooled_signal`), so that the constant's values stay
cells: the moments stay exact for the pooled cells, and the source's Gaussian is pooled too (one
Gaussian for the mixture of the channels' pre-activations, an approximation that keeps the
chain: a softplus stays positive). Folding the constant instead (what the arithmetic rule does
otherwise) makes each channel one Gaussian over the states, whose ``exp`` has no bound.

Layout ops move a source with the statistics where its chain holds no constant laid out at the
old shape (:func:`layout_free`): a reshape that maps the tracked axes onto whole axes, and a
transpose, move the Gaussian's arrays as they move the moments (Softplus, then Unsqueeze, then
the product above).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments, Source
from .context import RuleContext
from .elementwise import affine, apply_fn, base_source
from .grids import KEEP_CAP, fold
from .layout import full_grid, reshape_is_exact, reshape_moments
from .mixture import lift

# chain steps whose function holds no array laid out at a tensor's shape (scalar parameters
# only, in the key): such a chain applies to any layout of its Gaussian
_PARAMETER_FREE = frozenset({
    "Identity", "Neg", "Relu", "LeakyRelu", "Abs", "Elu", "Elu1", "Selu", "Celu1", "Sigmoid",
    "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign", "Gelu", "Swish", "Mish", "Exp",
    "Erf", "Sin", "Cos", "Atan", "Sinh", "Cosh", "Asinh", "Sign", "Floor", "Ceil", "Round",
    "scale", "Affine", "PowInt", "ExpBase", "Log", "Sqrt",
})  # fmt: skip
_AFFINE_OPS = ("Add", "Sub", "Mul", "Div")


def layout_free(chain) -> bool:
    """Every step is a known function whose parameters (in its key) are scalars."""
    return all(f.key and f.key[0] in _PARAMETER_FREE
               and all(isinstance(p, (str, int, float, bool)) or p is None for p in f.key[1:])
               for f in chain)


def per_cell_law(inputs, ctx: RuleContext, rank: int) -> Moments | None:
    """y = a x + b (Mul, Div by, Add, Sub a constant ``c``) with ``c`` varying along an axis
    that ``x``'s statistics do not, and ``x`` not Gaussian (a source with a chain): per cell k
    of the grid y_k = a_k g(z) + b_k, z ~ N(m, v) x's Gaussian and g its chain:
    E_k = a_k E[g] + b_k, Var_k = a_k^2 Var[g] (exact), and the source is x's, broadcast to the
    grid, with the affine step appended (a later f integrates f(a_k g(z) + b_k) per cell).
    A grid of more than KEEP_CAP cells: x pooled first (:func:`pooled_signal`). None when the
    node is not such a product, or the constant alone has more than KEEP_CAP cells."""
    op = ctx.node.op_type
    which = [i for i, m in enumerate(inputs) if m is not None]
    if op not in _AFFINE_OPS or len(inputs) != 2 or len(which) != 1:
        return None
    i = which[0]
    if op == "Div" and i != 0:
        return None
    x = inputs[i]
    if x.spatial is not None or x.source is None or not x.source.chain or x.rows is not None:
        return None
    c = ctx.const(1 - i)
    if c is None or not np.all(np.isfinite(c)):
        return None
    c = _varying_part(lift(np.asarray(c, dtype=np.float64), rank))
    if c.size > KEEP_CAP:
        return None
    if op == "Div" and np.any(c == 0):
        return None
    src = base_source(x, rank)
    if src is not x.source:  # laid out at a higher rank than the output
        return None
    m, v = lift(src.mean, rank), lift(src.var, rank)
    x_shape = np.broadcast_shapes(np.shape(lift(x.mean, rank)), np.shape(lift(x.var, rank)),
                                  np.shape(m), np.shape(v))
    grid = np.broadcast_shapes(x_shape, np.shape(c))
    if grid == x_shape:
        return None  # the constant varies only where x does: the element-wise rule's case
    if int(np.prod(grid)) > KEEP_CAP:
        x, src = pooled_signal(x, src, np.shape(c), rank)
        if x is None:
            return None
        m, v = src.mean, src.var
        grid = np.broadcast_shapes(np.shape(x.mean), np.shape(x.var), np.shape(m), np.shape(c))
    if op == "Mul":
        a, b = c, np.zeros(())
    elif op == "Div":
        a, b = 1.0 / c, np.zeros(())
    elif op == "Add":
        a, b = np.ones(()), c
    else:
        a, b = (np.ones(()), -c) if i == 0 else (-np.ones(()), c)
    step = affine(a, b, (op, "cells"))
    out = apply_fn(Moments(x.mean, x.var, x.source), step, rank)
    cells = Source(np.broadcast_to(m, grid).copy(), np.broadcast_to(v, grid).copy(),
                   src.chain + (step.elementwise,))
    mean, var = (np.broadcast_to(lift(s, rank), grid) for s in (out.mean, out.var))
    return Moments(np.array(mean), np.array(var), cells)


def _varying_part(c: np.ndarray) -> np.ndarray:
    """``c`` without the axes along which its values do not change (Mamba's ``A`` at
    initialisation: ``[d_inner, d_state]``, the same row for every channel)."""
    for axis in range(c.ndim):
        if c.shape[axis] > 1:
            first = np.take(c, [0], axis=axis)
            if np.array_equal(c, np.broadcast_to(first, c.shape)):
                c = first
    return c


def pooled_signal(x: Moments, src: Source, c_shape, rank: int):
    """(x, its source) pooled along the axes x varies along and the constant (of ``c_shape``)
    does not, the longest first, until the grid has at most KEEP_CAP cells, by the law of
    total variance: E = mean_f E_f, Var = mean_f Var_f + var_f E_f, for the moments and for
    the source's Gaussian alike (the chain unchanged); (None, None) when that is not enough."""
    arrays = [lift(a, rank) for a in (x.mean, x.var, src.mean, src.var)]
    shape = list(np.broadcast_shapes(*(np.shape(a) for a in arrays)))
    own = sorted((a for a in range(rank) if shape[a] > 1 and c_shape[a] == 1),
                 key=lambda a: -shape[a])
    keep = set(range(rank))
    while own and int(np.prod(np.broadcast_shapes(tuple(shape), c_shape))) > KEEP_CAP:
        axis = own.pop(0)
        keep.discard(axis)
        shape[axis] = 1
    if int(np.prod(np.broadcast_shapes(tuple(shape), c_shape))) > KEEP_CAP:
        return None, None
    moments, gaussian = fold(arrays[0], arrays[1], keep), fold(arrays[2], arrays[3], keep)
    pooled = Source(gaussian.mean, gaussian.var, src.chain)
    return Moments(moments.mean, moments.var, pooled), pooled


def _carried(x: Moments, out: Moments, moved: Source | None) -> Moments:
    if moved is None or out.source is not None or out.rows is not None or out.spatial is not None:
        return out
    return Moments(out.mean, out.var, moved, out.mixture, out.tokens)


def reshaped(x: Moments, out: Moments, in_shape, out_shape) -> Moments:
    """``out`` (the reshape rule's statistics of ``x`` reshaped) with ``x``'s source moved
    the same way, where both reshapes are exact (no pooling) and the chain is layout-free."""
    src = x.source
    if src is None or not src.chain or x.is_scalar or not layout_free(src.chain):
        return out
    gaussian = Moments(src.mean, src.var)
    if len(in_shape) < gaussian.rank or not (reshape_is_exact(x, in_shape, out_shape)
                                             and reshape_is_exact(gaussian, in_shape, out_shape)):
        return out
    moved = reshape_moments(gaussian, in_shape, out_shape)
    return _carried(x, out, Source(moved.mean, moved.var, src.chain))


def transposed(x: Moments, out: Moments, perm, rank: int) -> Moments:
    """``out`` (the transpose rule's statistics) with ``x``'s source permuted alike, where its
    chain is layout-free."""
    src = x.source
    if src is None or not src.chain or not layout_free(src.chain):
        return out
    gaussian = Moments(src.mean, src.var)
    if gaussian.rank > rank:
        return out
    mean, var = full_grid(gaussian, rank)
    return _carried(x, out, Source(mean.transpose(perm), var.transpose(perm), src.chain))


__all__ = ["layout_free", "per_cell_law", "reshaped", "transposed"]
