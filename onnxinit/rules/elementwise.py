"""The element-wise function of a node, and its moments over a Gaussian source.

For ``y = f(x)`` applied element by element::

    E[y]   = int f(x) N(x; mu, nu) dx
    Var[y] = int f(x)^2 N(x; mu, nu) dx - E[y]^2

evaluated per tracked index (per channel) with the quadrature of :mod:`.gaussian`. When the
input carries a ``Source`` (a Gaussian followed by a chain of element-wise functions ``g``), the
integral runs over that Gaussian with the composed function ``f(g(z))``, so e.g.
``Tanh(Relu(x))`` integrates the real rectified Gaussian rather than a Gaussian with the
rectified moments. The output carries the source with ``f`` appended, for the next element-wise
or Monte Carlo rule. Affine maps (Neg, Identity, Mul / Add / Sub / Div by a constant) are exact
for any input distribution.

Which function a node computes: unary ops declare theirs with :func:`elementwise_rule` (the
function and the op's moment rule) or :func:`elementwise_function` (the function only, where the
op's rule lives elsewhere) in :mod:`.activations`; Mul/Add/Sub/Div/Pow with one constant operand
by :func:`.elementwise_fn.binary_function`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..moments import Elementwise, Moments, Source
from ..spatial import attach, with_corr
from .context import RuleContext, RuleError, signal
from .elementwise_fn import (ElementwiseFn, binary_function, constant_input, digest,  # noqa: F401
                             is_smooth, rank_of)
from .zero_branch import appended
from . import cross_fields
from .correlations import deferred_correlation
from .joint_samples import joint_moments
from .gaussian import compose, expand, gaussian_moments, probability
from .mixture import through
from .rectified import relu_mixture
from .registry import rule
from .smooth_quadrature import sharing, smooth_moments
from .support import identity_on_input

_BINARY = ("Mul", "Add", "Sub", "Div", "Pow")
_COMMUTATIVE = ("Max", "Min")  # variadic: the signal may be any input


def _signal_index(node, graph) -> int | None:
    """Index of the single signal input of ``node`` when every other input is constant."""
    signals = [i for i, name in enumerate(node.input) if name and graph.is_signal(name)]
    if len(signals) != 1:
        return None
    others = [n for i, n in enumerate(node.input) if n and i != signals[0]]
    if not all(graph.is_constant(n) for n in others):
        return None
    return signals[0]


def node_function(ctx: RuleContext) -> tuple[ElementwiseFn, int] | None:
    node = ctx.node
    if node.domain not in ("", "ai.onnx"):
        return None
    which = _signal_index(node, ctx.graph)
    if which is None:
        return None
    rank = rank_of(ctx)
    if node.op_type in _BINARY:
        return (binary_function(ctx, rank, which), which) if which in (0, 1) else None
    if which != 0 and node.op_type not in _COMMUTATIVE:
        return None
    factory = UNARY.get(node.op_type)
    fn = factory(ctx, rank) if factory is not None else None
    return (fn, which) if fn is not None else None


def base_source(x: Moments, rank: int | None) -> Source:
    """The Gaussian and chain that ``x`` is a function of (itself, Gaussian, when no source)."""
    src = x.source
    if src is not None and (rank is None or max(np.ndim(src.mean), np.ndim(src.var)) <= rank):
        return src
    return Source(x.mean, x.var)


def guard(domain: str, chain: Sequence[Elementwise], src: Source, rank) -> None:
    """Refuse a chain whose input leaves ``domain`` with probability above 1e-6 ("nonzero":
    within a tenth of its median of zero). A chain that starts with a step function (a table's
    rows, ``Elementwise.support``) takes finitely many values: those are checked exactly."""
    if chain and chain[0].support is not None:
        with np.errstate(all="ignore"):
            values = compose(chain[1:])(np.asarray(chain[0].support, dtype=np.float64))
        inside = {"positive": values > 0, "nonnegative": values >= 0}.get(
            domain, np.isfinite(values) & (values != 0))
        if not np.all(inside):
            raise RuleError(f"the input is not {domain} on one of its values")
        return
    inner = compose(chain)
    if domain == "positive":
        bad = probability(lambda z: ~(inner(z) > 0), src.mean, src.var, rank=rank)
    elif domain == "nonnegative":
        bad = probability(lambda z: ~(inner(z) >= 0), src.mean, src.var, rank=rank)
    else:  # nonzero: the input must stay away from zero (a tenth of its median)
        with np.errstate(all="ignore"):
            median = np.abs(inner(expand(src.mean, rank)))
        bad = probability(
            lambda z: ~(np.abs(inner(z)) >= 0.1 * median), src.mean, src.var, rank=rank
        )
    if np.any(bad > 1e-6):
        raise RuleError(f"the input is not {domain} with probability {float(np.max(bad)):.2g}")


def apply_fn(x: Moments, f: ElementwiseFn | Elementwise, rank: int | None = None) -> Moments:
    """Moments of ``f(x)`` element-wise; the output's source is x's with ``f`` appended. With
    position classes (``x.spatial``) ``f`` is applied to each cell, the per-channel totals
    follow from the cells, and the spatial correlation goes through Mehler's formula
    (:func:`.correlations.elementwise_correlation`)."""
    if isinstance(f, Elementwise):
        f = ElementwiseFn(f.key, f.fn)
    if x.spatial is not None:
        return _apply_to_cells(x, f, rank)
    src = base_source(x, rank)
    out_src = Source(src.mean, src.var, appended(src.chain, f.elementwise))
    if f.affine is not None:
        a, b = f.affine
        mean = expand(x.mean, rank) * a + b
        var = expand(x.var, rank) * np.asarray(a, dtype=np.float64) ** 2
        if x.source is None:  # a Gaussian (or a Gaussian mixture) stays one
            mixture = None
            if x.mixture is not None and (rank is None or x.mixture[1].ndim == rank + 1):
                w, m, v = x.mixture
                mixture = (w, m * a + b, v * np.asarray(a, dtype=np.float64) ** 2)
            return Moments(mean, var, None, mixture)
        return Moments(mean, var, out_src)
    if f.domain is not None:
        guard(f.domain, src.chain, src, rank)
    if x.source is None and x.mixture is not None and f.domain is None:
        # a Gaussian mixture (ReLU output + Gaussian): f per component (mixture.through)
        if rank is None or x.mixture[1].ndim == rank + 1:
            mean, var, mixture = through(x.mixture, f.closed, (f.elementwise,),
                                         is_smooth((f.elementwise,)), rank)
            if f.key == ("Relu",):  # its zero and positive parts per component
                mixture = relu_mixture(x.mixture)
            return Moments(mean, var, None, mixture)
    if f.closed is not None and not src.chain:
        mean, var = f.closed(expand(src.mean, rank), expand(src.var, rank))
        return Moments(mean, var, out_src)
    chain = out_src.chain
    if f.domain == "nonzero" and not (src.chain and src.chain[0].support is not None):
        # 1/x has infinite variance under any Gaussian; integrate it away from zero, over
        # |x| >= |median|/10, and refuse (above) when that band holds a probability over 1e-6;
        # a chain from a step function takes finitely many values, each checked by guard
        chain = src.chain + (Elementwise(f.key, _away_from_zero(f.fn, src, rank)),)
    smooth = is_smooth(chain)
    found = None
    if smooth and chain is out_src.chain:  # with the amplitudes its correlation will need
        found = smooth_moments(tuple(g.key for g in chain), compose(chain),
                               expand(src.mean, rank), expand(src.var, rank))
    if found is None:
        found = gaussian_moments(chain, src.mean, src.var, smooth=smooth, rank=rank)
    return Moments(found[0], found[1], out_src)


def _apply_to_cells(x: Moments, f: ElementwiseFn, rank) -> Moments:
    sp = x.spatial
    cells = sp.cells
    try:
        out = apply_fn(cells, f, cells.mean.ndim)
        shape = np.broadcast_shapes(out.mean.shape, out.var.shape)
        if any(n not in (1, k) for n, k in zip(shape[2:], sp.classes)):
            raise ValueError
    except ValueError:  # a constant laid out along the positions: per channel instead
        return apply_fn(Moments(x.mean, x.var, x.source), f, rank)
    # attached with the input's correlation (replaced below) so that a single class keeps
    # its layout: the correlation rules read the output's classes
    result = attach(out, sp.maps, sp.corr)
    if sp.corr is None:
        return result
    smooth = result.source is not None and is_smooth(result.source.chain)
    corr = deferred_correlation(sp.corr, result, smooth,
                                f.elementwise if f.affine is None else None, cells)
    if corr is sp.corr and f.affine is not None:  # the values' field, a_c x + b: signs of a
        corr = cross_fields.affine(corr, f.affine[0])
    return with_corr(result, corr, sp.maps)


def affine(a, b, key: tuple) -> ElementwiseFn:
    """The element-wise map ``a x + b`` (arrays laid out at the tensor's rank), exact on
    moments: E = a mu + b, Var = a^2 nu."""
    return ElementwiseFn(("Affine", *key, *digest(a), *digest(b)), lambda v: a * v + b,
                         affine=(a, b))


def _away_from_zero(fn: Callable, src: Source, rank) -> Callable:
    with np.errstate(all="ignore"):
        median = np.abs(compose(src.chain)(expand(src.mean, rank)))

    def masked(x):
        return np.where(np.abs(x) >= 0.1 * median, fn(x), np.nan)

    return masked


# laws of an element-wise rule's input that a field dropped on the way (a mean square's
# chi-square after a per-token field pooled its variance: :mod:`.chi_square`): each
# ``restore(x, ctx, name) -> Moments`` registers itself with :func:`input_law` when imported
INPUT_LAWS: list[Callable] = []


def input_law(restore: Callable) -> Callable:
    INPUT_LAWS.append(restore)
    return restore

# chains a later node integrates on this node's cells (smooth_quadrature.sharing): each
# ``finder(ctx, f, which) -> [Companion]`` appends itself when imported (:mod:`.fused_ahead`)
QUADRATURE_COMPANIONS: list[Callable] = []


# refinements of a non-affine element-wise rule's output that need modules which import this
# one (the Edgeworth terms of a few-term Conv's output, :mod:`.edgeworth`): each
# ``refine(y, ctx) -> Moments`` registers itself with :func:`refinement` when imported
REFINEMENTS: list[Callable] = []


def refinement(refine: Callable) -> Callable:
    REFINEMENTS.append(refine)
    return refine


def refined(y: Moments, ctx: RuleContext) -> Moments:
    """``y`` through every registered refinement."""
    for refine in REFINEMENTS:
        y = refine(y, ctx)
    return y


def apply_elementwise(inputs: list, ctx: RuleContext) -> list:
    """The rule of any node for which :func:`elementwise` holds (unary activations, and
    Mul/Add/Sub/Div/Pow with one constant operand: arithmetic.py may delegate to it). An
    operand computed from joint draws (joint_samples) is followed on the same draws."""
    if (joint := joint_moments(inputs, ctx)) is not None:
        return [joint] + [None] * (len(ctx.node.output) - 1)
    found = node_function(ctx)
    if found is None or found[0] is None:
        raise RuleError("not an element-wise function of one signal")
    f, which = found
    x = signal(inputs, which)
    for restore in INPUT_LAWS:
        x = restore(x, ctx, ctx.node.input[which])
    if identity_on_input(ctx.node, ctx.graph):  # f(x) = x on [0, inf), x >= 0
        return [x] + [None] * (len(ctx.node.output) - 1)
    with sharing(c for find in QUADRATURE_COMPANIONS for c in find(ctx, f, which)):
        y = apply_fn(x, f, rank_of(ctx))
    outs = [y if f.affine is not None else refined(y, ctx)]
    return outs + [None] * (len(ctx.node.output) - 1)


# the unary ops' functions ------------------------------------------------------------------

FunctionFactory = Callable[[RuleContext, "int | None"], "ElementwiseFn | None"]
UNARY: dict[str, FunctionFactory] = {}  # op type -> the node's function (None: not element-wise)


def elementwise_function(*op_types: str):
    """Declare the decorated ``factory(ctx, rank) -> ElementwiseFn | None`` as the element-wise
    function of ``op_types`` (for fusion and the element-wise rules); the ops' moment rules are
    registered elsewhere."""

    def declare(factory: FunctionFactory) -> FunctionFactory:
        for op_type in op_types:
            UNARY[op_type] = factory
        return factory

    return declare


def elementwise_rule(op_type: str):
    """Declare the decorated factory as ``op_type``'s element-wise function and register the
    op's moment rule (named after the factory, documented by its docstring): ``f(x)`` over the
    input's source, by :func:`apply_elementwise`."""

    def declare(factory: FunctionFactory) -> FunctionFactory:
        elementwise_function(op_type)(factory)

        def moment_rule(inputs, ctx: RuleContext):
            return apply_elementwise(inputs, ctx)

        moment_rule.__name__ = moment_rule.__qualname__ = factory.__name__
        moment_rule.__doc__ = factory.__doc__
        moment_rule.__module__ = factory.__module__
        rule(op_type)(moment_rule)
        return factory

    return declare


def _context_of(node, ctx: RuleContext) -> RuleContext:
    if node is ctx.node:
        return ctx
    node_id = ctx.graph.producer.get(next((o for o in node.output if o), ""), "")
    return RuleContext(node, node_id, ctx.graph, ctx.settings)


def elementwise(node, ctx: RuleContext) -> Elementwise | None:
    """The numpy function of ``node`` when it acts element-wise on its single signal input
    (every other input constant), else None. ``ctx`` is any RuleContext of the same graph."""
    try:
        found = node_function(_context_of(node, ctx))
    except RuleError:
        return None
    return found[0].elementwise if found and found[0] is not None else None


