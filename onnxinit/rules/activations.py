"""Element-wise activations and element-wise maps by a constant, by quadrature over a Gaussian.

For ``y = f(x)`` applied element by element::

    E[y]   = int f(x) N(x; mu, nu) dx
    Var[y] = int f(x)^2 N(x; mu, nu) dx - E[y]^2

evaluated per tracked index (per channel). When the input carries a ``Source`` (a Gaussian
followed by a chain of element-wise functions ``g``), the integral runs over that Gaussian with
the composed function ``f(g(z))``, so e.g. ``Tanh(Relu(x))`` integrates the real rectified
Gaussian rather than a Gaussian with the rectified moments. The output carries the source with
``f`` appended, for the next element-wise or Monte Carlo rule.

Quadrature: Gauss-Hermite with 96 nodes when every function of the chain is smooth (Sigmoid,
Tanh, Exp, Erf, Gelu, polynomials ...), composite Gauss-Legendre over ``z in [-10, 10]``
(1024 panels of 3 nodes) when one has a kink or a jump (Relu, Clip, Sign, Floor ...), where
Gauss-Hermite converges slowly (0.4% off on ReLU's variance at 96 nodes). Closed forms for a
Gaussian input: Relu, LeakyRelu, PRelu, Abs; exact affine maps for Neg, Identity, and Mul / Add /
Sub / Div by a constant (these are exact for any input distribution).

Sub-graphs that form one element-wise function of a common ancestor (``x * Sigmoid(x)``,
``0.5 * x * (1 + Erf(x / sqrt(2)))``, ``x * x``, ``x * Tanh(Softplus(x))``) are fused by
:func:`fused_elementwise`, which the arithmetic rules call for two-signal Mul/Add/Sub/Div/Pow. It
reads the ancestor's moments from ``ctx.options["moments"]`` (the moments computed so far, set by
``propagate.start_propagation``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from .. import correlation
from ..correlation import Correlation
from ..moments import Elementwise, Moments, Source
from ..spatial import attach, with_corr
from . import RuleContext, RuleError, piecewise, rule, signal

# ---------------------------------------------------------------------------------------------
# quadrature

_GH_N = 96
_t, _w = np.polynomial.hermite.hermgauss(_GH_N)
_GH_Z = np.sqrt(2.0) * _t
_GH_W = _w / np.sqrt(np.pi)

_L, _PANELS = 10.0, 1024
_g, _gw = np.polynomial.legendre.leggauss(3)
_edges = np.linspace(-_L, _L, _PANELS + 1)
_h = _edges[1] - _edges[0]
_CZ = (_edges[:-1, None] + _h / 2 * (_g[None, :] + 1)).ravel()
_CW = np.tile(_gw * _h / 2, _PANELS) * np.exp(-0.5 * _CZ**2) / np.sqrt(2 * np.pi)
_CW /= _CW.sum()
del _t, _w, _g, _gw, _edges, _h

_CHUNK = 1 << 22  # elements evaluated at once (nodes x tracked indices)

# a coarser composite rule (256 panels) for the Hermite coefficients of kinked functions
_hg, _hgw = np.polynomial.legendre.leggauss(3)
_hedges = np.linspace(-_L, _L, 257)
_hh = _hedges[1] - _hedges[0]
_HZ = (_hedges[:-1, None] + _hh / 2 * (_hg[None, :] + 1)).ravel()
_HW = np.tile(_hgw * _hh / 2, 256) * np.exp(-0.5 * _HZ**2) / np.sqrt(2 * np.pi)
_HW /= _HW.sum()
del _hg, _hgw, _hedges, _hh


def quadrature(smooth: bool) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal nodes and weights: Gauss-Hermite (smooth) or composite (kinks, jumps)."""
    return (_GH_Z, _GH_W) if smooth else (_CZ, _CW)


def _expand(a: np.ndarray, rank: int | None) -> np.ndarray:
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
    mean, var = _expand(mean, rank), _expand(var, rank)
    shape = np.broadcast_shapes(mean.shape, var.shape)
    mean, std = np.broadcast_to(mean, shape), np.sqrt(np.broadcast_to(var, shape))
    nodes, weights = quadrature(smooth)
    expand = (-1,) + (1,) * len(shape)
    step = max(1, _CHUNK // max(1, int(np.prod(shape))))
    with np.errstate(all="ignore"):
        shift = np.nan_to_num(np.asarray(fn(mean[None]), dtype=np.float64))[0:1]
        acc0 = acc1 = acc2 = 0.0
        for i in range(0, nodes.size, step):
            z = nodes[i : i + step].reshape(expand)
            w = weights[i : i + step].reshape(expand)
            y = np.asarray(fn(mean + std * z), dtype=np.float64) - shift
            # nodes far in the tail may leave the function's domain (Log, Sqrt): drop them if
            # their probability is negligible, refuse otherwise
            finite = np.isfinite(y)
            w = np.where(finite, w, 0.0)
            y = np.where(finite, y, 0.0)
            acc0 = acc0 + w.sum(axis=0)
            acc1 = acc1 + (w * y).sum(axis=0)
            acc2 = acc2 + (w * y * y).sum(axis=0)
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
    mean, var = _expand(mean, rank), _expand(var, rank)
    shape = np.broadcast_shapes(mean.shape, var.shape)
    z = _CZ.reshape((-1,) + (1,) * len(shape))
    w = _CW.reshape(z.shape)
    with np.errstate(all="ignore"):
        hit = np.asarray(pred(np.broadcast_to(mean, shape) + np.sqrt(var) * z), dtype=bool)
    return (w * hit).sum(axis=0)


# ---------------------------------------------------------------------------------------------
# closed forms


def _relu_parts(mu, s):
    """E[max(x, 0)] and E[max(x, 0)^2] for x ~ N(mu, s^2), s >= 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(s > 0, mu / np.where(s > 0, s, 1.0), np.copysign(np.inf, mu))
    cdf, pdf = (
        special.ndtr(a),
        np.exp(-0.5 * np.where(np.isfinite(a), a, 0.0) ** 2) / np.sqrt(2 * np.pi),
    )
    pdf = np.where(np.isfinite(a), pdf, 0.0)
    m1 = mu * cdf + s * pdf
    m2 = (mu**2 + s**2) * cdf + mu * s * pdf
    return m1, m2


def _leaky_closed(mu, var, alpha):
    """f = x+ - alpha (-x)+: E = E[x+] - alpha E[(-x)+], E[f^2] = E[x+^2] + alpha^2 E[(-x)+^2]."""
    s = np.sqrt(var)
    p1, p2 = _relu_parts(mu, s)
    if np.ndim(alpha) == 0 and alpha == 0:  # ReLU
        return p1, p2 - p1**2
    n1, n2 = _relu_parts(-mu, s)
    e = p1 - alpha * n1
    return e, p2 + alpha**2 * n2 - e**2


def _abs_closed(mu, var):
    s = np.sqrt(var)
    p1, _ = _relu_parts(mu, s)
    n1, _ = _relu_parts(-mu, s)
    e = p1 + n1
    return e, mu**2 + var - e**2


# ---------------------------------------------------------------------------------------------
# the element-wise functions of nodes


@dataclass(frozen=True)
class _Fn:
    """An element-wise function of one node, with what the rule can exploit."""

    key: tuple
    fn: Callable
    affine: tuple | None = None  # (a, b): f(x) = a x + b exactly
    closed: Callable | None = None  # (mu, var) -> (E, Var) for a Gaussian input
    domain: str | None = None  # "positive", "nonnegative", "nonzero": guard the input

    @property
    def elementwise(self) -> Elementwise:
        return Elementwise(self.key, self.fn)


# key[0] of functions with no kink or jump (Gauss-Hermite converges fast)
SMOOTH = {
    "Identity", "Neg", "Affine", "Sigmoid", "Tanh", "Softplus", "Erf", "Exp", "Gelu", "Mish",
    "Swish", "Sin", "Cos", "Atan", "Sinh", "Cosh", "Asinh", "Celu1", "Elu1", "PowInt", "ExpBase",
}  # fmt: skip


def _smooth_key(key: tuple) -> bool:
    if key and key[0] == "Fused":
        return key[1] in ("Add", "Sub", "Mul") and all(_smooth_key(k) for k in key[2] + key[3])
    return bool(key) and key[0] in SMOOTH


def is_smooth(chain: Sequence[Elementwise]) -> bool:
    return all(_smooth_key(f.key) for f in chain)


def _digest(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a, dtype=np.float64)
    if a.size == 1:
        return (float(a.reshape(())),)
    return (a.shape, hashlib.sha1(a.tobytes()).hexdigest()[:16])


def _rank_of(ctx: RuleContext) -> int | None:
    for name in list(ctx.node.output[:1]) + list(ctx.node.input[:1]):
        shape = ctx.graph.shape(name) if name else None
        if shape is not None:
            return len(shape)
    return None


def _constant(ctx: RuleContext, index: int, rank: int | None) -> np.ndarray:
    value = ctx.const(index)
    if value is None:
        raise RuleError(f"input {index} is not constant")
    value = np.asarray(value, dtype=np.float64)
    if value.size > 1 and rank is None:
        raise RuleError("a non-scalar constant on a tensor of unknown rank")
    if value.size == 1:
        return value.reshape(())
    if value.size > 1 << 16:
        raise RuleError("a constant too large to track per element")
    return _expand(value, rank)


def _gelu(x):
    return 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    return special.expit(x)


_SIMPLE: dict[str, tuple[Callable, str | None]] = {
    "Relu": (lambda x: np.maximum(x, 0.0), None),
    "Sigmoid": (_sigmoid, None),
    "Tanh": (np.tanh, None),
    "Softplus": (_softplus, None),
    "Softsign": (lambda x: x / (1.0 + np.abs(x)), None),
    "Mish": (lambda x: x * np.tanh(_softplus(x)), None),
    "Erf": (special.erf, None),
    "Exp": (np.exp, None),
    "Log": (np.log, "positive"),
    "Abs": (np.abs, None),
    "Sin": (np.sin, None),
    "Cos": (np.cos, None),
    "Atan": (np.arctan, None),
    "Sinh": (np.sinh, None),
    "Cosh": (np.cosh, None),
    "Asinh": (np.arcsinh, None),
    "Sqrt": (np.sqrt, "nonnegative"),
    "Reciprocal": (lambda x: 1.0 / x, "nonzero"),
    "Sign": (np.sign, None),
    "Floor": (np.floor, None),
    "Ceil": (np.ceil, None),
    "Round": (np.round, None),  # half to even, like ONNX
    "HardSwish": (lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0), None),
}

_IDENTITY_OPS = ("Identity",)
_FLOAT_CASTS = {1, 10, 11, 16}  # float, float16, double, bfloat16


def _unary_fn(ctx: RuleContext, rank: int | None) -> _Fn | None:
    op, attr = ctx.node.op_type, ctx.attr
    if op in _IDENTITY_OPS or (op == "Cast" and attr("to") in _FLOAT_CASTS):
        return _Fn(("Identity",), lambda x: x, affine=(1.0, 0.0))
    if op == "Dropout" and not ctx.options.get("dropout"):
        return _Fn(("Identity",), lambda x: x, affine=(1.0, 0.0))
    if op == "Neg":
        return _Fn(("Neg",), np.negative, affine=(-1.0, 0.0))
    if op == "Relu":
        return _Fn(("Relu",), _SIMPLE["Relu"][0], closed=lambda m, v: _leaky_closed(m, v, 0.0))
    if op == "Abs":
        return _Fn(("Abs",), np.abs, closed=_abs_closed)
    if op == "HardSwish":
        return _Fn(("HardSwish",), _SIMPLE["HardSwish"][0],
                   closed=lambda m, v: piecewise.moments(piecewise.hard_swish(), m, v))
    if op in _SIMPLE:
        fn, domain = _SIMPLE[op]
        return _Fn((op,), fn, domain=domain)
    if op == "LeakyRelu":
        alpha = float(attr("alpha", 0.01))
        return _Fn(
            ("LeakyRelu", alpha),
            lambda x: np.where(x >= 0, x, alpha * x),
            closed=lambda m, v: _leaky_closed(m, v, alpha),
        )
    if op == "PRelu":
        slope = _constant(ctx, 1, rank)
        return _Fn(
            ("PRelu", *_digest(slope)),
            lambda x: np.where(x >= 0, x, slope * x),
            closed=lambda m, v: _leaky_closed(m, v, slope),
        )
    if op == "Elu":
        alpha = float(attr("alpha", 1.0))
        return _Fn(
            ("Elu1" if alpha == 1.0 else "Elu", alpha),
            lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0))),
        )
    if op == "Selu":
        alpha = float(attr("alpha", 1.67326319217681884765625))
        gamma = float(attr("gamma", 1.05070102214813232421875))
        return _Fn(
            ("Selu", alpha, gamma),
            lambda x: gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0))),
        )
    if op == "Celu":
        alpha = float(attr("alpha", 1.0))
        return _Fn(
            ("Celu1", alpha),  # C1 for every alpha
            lambda x: (
                np.maximum(x, 0.0) + np.minimum(0.0, alpha * np.expm1(np.minimum(x, 0) / alpha))
            ),
        )
    if op == "Gelu":
        approximate = attr("approximate", "none")
        return _Fn(("Gelu", approximate), _gelu_tanh if approximate == "tanh" else _gelu)
    if op == "Swish":
        alpha = float(attr("alpha", 1.0))
        return _Fn(("Swish", alpha), lambda x: x * _sigmoid(alpha * x))
    if op == "HardSigmoid":
        alpha, beta = float(attr("alpha", 0.2)), float(attr("beta", 0.5))
        pieces = piecewise.hard_sigmoid(alpha, beta) if alpha > 0 else None
        return _Fn(("HardSigmoid", alpha, beta), lambda x: np.clip(alpha * x + beta, 0.0, 1.0),
                   closed=None if pieces is None else lambda m, v: piecewise.moments(pieces, m, v))
    if op == "ThresholdedRelu":
        alpha = float(attr("alpha", 1.0))
        return _Fn(("ThresholdedRelu", alpha), lambda x: np.where(x > alpha, x, 0.0))
    if op == "Shrink":
        bias, lambd = float(attr("bias", 0.0)), float(attr("lambd", 0.5))
        return _Fn(
            ("Shrink", bias, lambd),
            lambda x: np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0.0)),
        )
    if op == "Clip":
        if ctx.opset < 11:
            lo, hi = (
                float(attr("min", -3.4028234663852886e38)),
                float(attr("max", 3.4028234663852886e38)),
            )
            lo, hi = np.float64(lo), np.float64(hi)
        else:
            lo = _constant(ctx, 1, rank) if ctx.has_input(1) else np.float64(-np.inf)
            hi = _constant(ctx, 2, rank) if ctx.has_input(2) else np.float64(np.inf)
        scalar = np.size(lo) == 1 and np.size(hi) == 1 and float(lo) < float(hi)
        pieces = piecewise.clip(float(lo), float(hi)) if scalar else None
        return _Fn(
            ("Clip", *_digest(lo), *_digest(hi)), lambda x: np.minimum(np.maximum(x, lo), hi),
            closed=None if pieces is None else lambda m, v: piecewise.moments(pieces, m, v),
        )
    return None


def _binary_fn(ctx: RuleContext, rank: int | None, which: int) -> _Fn | None:
    """Mul/Add/Sub/Div/Pow where input ``which`` is the signal and the other a constant."""
    op = ctx.node.op_type
    c = _constant(ctx, 1 - which, rank)
    d = _digest(c)
    if op == "Mul":
        return _Fn(("Affine", "mul", *d), lambda x: x * c, affine=(c, 0.0))
    if op == "Add":
        return _Fn(("Affine", "add", *d), lambda x: x + c, affine=(1.0, c))
    if op == "Sub" and which == 0:
        return _Fn(("Affine", "sub", *d), lambda x: x - c, affine=(1.0, -c))
    if op == "Sub":
        return _Fn(("Affine", "rsub", *d), lambda x: c - x, affine=(-1.0, c))
    if op == "Div" and which == 0:
        return _Fn(("Affine", "div", *d), lambda x: x / c, affine=(1.0 / c, 0.0))
    if op == "Div":
        return _Fn(("RDiv", *d), lambda x: c / x, domain="nonzero")
    if op == "Pow" and which == 0:
        integer = bool(np.all(c == np.round(c)))
        if integer and np.all(c >= 0):
            return _Fn(("PowInt", *d), lambda x: np.power(x, c))
        return _Fn(
            ("Pow", *d), lambda x: np.power(x, c), domain="nonzero" if integer else "positive"
        )
    if op == "Pow":
        if np.any(c <= 0):
            raise RuleError("Pow with a non-positive constant base")
        return _Fn(("ExpBase", *d), lambda x: np.power(c, x))
    return None


_BINARY = ("Mul", "Add", "Sub", "Div", "Pow")


def _signal_index(node, graph) -> int | None:
    """Index of the single signal input of ``node`` when every other input is constant."""
    signals = [i for i, name in enumerate(node.input) if name and graph.is_signal(name)]
    if len(signals) != 1:
        return None
    others = [n for i, n in enumerate(node.input) if n and i != signals[0]]
    if not all(graph.is_constant(n) for n in others):
        return None
    return signals[0]


def _node_fn(ctx: RuleContext) -> tuple[_Fn, int] | None:
    node = ctx.node
    if node.domain not in ("", "ai.onnx"):
        return None
    which = _signal_index(node, ctx.graph)
    if which is None:
        return None
    rank = _rank_of(ctx)
    if node.op_type in _BINARY:
        return (_binary_fn(ctx, rank, which), which) if which in (0, 1) else None
    if which != 0:
        return None
    fn = _unary_fn(ctx, rank)
    return (fn, 0) if fn is not None else None


def _ctx_for(node, ctx: RuleContext) -> RuleContext:
    if node is ctx.node:
        return ctx
    node_id = ctx.graph.producer.get(next((o for o in node.output if o), ""), "")
    return RuleContext(node, node_id, ctx.graph, ctx.options)


def elementwise(node, ctx: RuleContext) -> Elementwise | None:
    """The numpy function of ``node`` when it acts element-wise on its single signal input
    (every other input constant), else None. ``ctx`` is any RuleContext of the same graph."""
    try:
        found = _node_fn(_ctx_for(node, ctx))
    except RuleError:
        return None
    return found[0].elementwise if found and found[0] is not None else None


# ---------------------------------------------------------------------------------------------
# applying a function to Moments


def _base(x: Moments, rank: int | None) -> Source:
    """The Gaussian and chain that ``x`` is a function of (itself, Gaussian, when no source)."""
    src = x.source
    if src is not None and (rank is None or max(np.ndim(src.mean), np.ndim(src.var)) <= rank):
        return src
    return Source(x.mean, x.var)


def _guard(domain: str, chain: Sequence[Elementwise], src: Source, rank) -> None:
    inner = compose(chain)
    if domain == "positive":
        bad = probability(lambda z: ~(inner(z) > 0), src.mean, src.var, rank=rank)
    elif domain == "nonnegative":
        bad = probability(lambda z: ~(inner(z) >= 0), src.mean, src.var, rank=rank)
    else:  # nonzero: the input must stay away from zero (a tenth of its median)
        with np.errstate(all="ignore"):
            median = np.abs(inner(_expand(src.mean, rank)))
        bad = probability(
            lambda z: ~(np.abs(inner(z)) >= 0.1 * median), src.mean, src.var, rank=rank
        )
    if np.any(bad > 1e-6):
        raise RuleError(f"the input is not {domain} with probability {float(np.max(bad)):.2g}")


def apply_fn(x: Moments, f: _Fn | Elementwise, rank: int | None = None) -> Moments:
    """Moments of ``f(x)`` element-wise; the output's source is x's with ``f`` appended. With
    position classes (``x.spatial``) ``f`` is applied to each cell and the per-channel totals
    follow from the cells."""
    if isinstance(f, Elementwise):
        f = _Fn(f.key, f.fn)
    if x.spatial is not None:
        cells = x.spatial.cells
        classes = x.spatial.classes
        try:
            out = apply_fn(cells, f, cells.mean.ndim)
            shape = np.broadcast_shapes(out.mean.shape, out.var.shape)
            if any(n not in (1, k) for n, k in zip(shape[2:], classes)):
                raise ValueError
        except ValueError:  # a constant laid out along the positions: per channel instead
            return apply_fn(Moments(x.mean, x.var, x.source), f, rank)
        result = attach(out, x.spatial.maps)
        if x.spatial.corr is None:
            return result
        return with_corr(result, elementwise_correlation(x.spatial.corr, result), x.spatial.maps)
    src = _base(x, rank)
    out_src = Source(src.mean, src.var, src.chain + (f.elementwise,))
    if f.affine is not None:
        a, b = f.affine
        mean = _expand(x.mean, rank) * a + b
        var = _expand(x.var, rank) * np.asarray(a, dtype=np.float64) ** 2
        if x.source is None:  # a Gaussian (or a Gaussian mixture) stays one
            mixture = None
            if x.mixture is not None and (rank is None or x.mixture[1].ndim == rank + 1):
                w, m, v = x.mixture
                mixture = (w, m * a + b, v * np.asarray(a, dtype=np.float64) ** 2)
            return Moments(mean, var, None, mixture)
        return Moments(mean, var, out_src)
    if f.domain is not None:
        _guard(f.domain, src.chain, src, rank)
    if f.closed is not None and x.source is None and x.mixture is not None:
        # a Gaussian mixture (ReLU output + Gaussian): the closed form per component,
        # E = sum_i w_i E_i, E[f^2] = sum_i w_i (Var_i + E_i^2)
        w, m, v = x.mixture
        if rank is None or m.ndim == rank + 1:
            e_i, v_i = f.closed(m, v)
            mean = (w * e_i).sum(axis=0)
            var = (w * (v_i + e_i**2)).sum(axis=0) - mean**2
            return Moments(mean, var, out_src)
    if f.closed is not None and not src.chain:
        mean, var = f.closed(_expand(src.mean, rank), _expand(src.var, rank))
        return Moments(mean, var, out_src)
    chain = out_src.chain
    if f.domain == "nonzero":
        # 1/x has infinite variance under any Gaussian; integrate it away from zero, over
        # |x| >= |median|/10, and refuse (above) when that band holds a probability over 1e-6
        chain = src.chain + (Elementwise(f.key, _away_from_zero(f.fn, src, rank)),)
    mean, var = gaussian_moments(chain, src.mean, src.var, smooth=is_smooth(chain), rank=rank)
    return Moments(mean, var, out_src)


def affine(a, b, key: tuple) -> _Fn:
    """The element-wise map ``a x + b`` (arrays laid out at the tensor's rank), exact on
    moments: E = a mu + b, Var = a^2 nu."""
    return _Fn(("Affine", *key, *_digest(a), *_digest(b)), lambda v: a * v + b, affine=(a, b))


def elementwise_correlation(corr: Correlation, y: Moments) -> Correlation:
    """The correlation of ``y = h(z)`` element-wise, h the chain of y's source on its Gaussian
    z (per channel): Mehler's formula on z's correlation (``correlation.mehler``); unchanged
    when y is an affine map of a Gaussian (no chain)."""
    src = y.source
    if src is None or not src.chain:
        return corr
    rho_z, floor_z = corr.gaussian()
    mean, var = np.broadcast_arrays(np.asarray(src.mean, np.float64),
                                    np.asarray(src.var, np.float64))
    keys = [f.key for f in src.chain]
    if keys == [("Relu",)] or (len(keys) == 1 and keys[0][0] == "LeakyRelu"):
        slope = 0.0 if keys[0] == ("Relu",) else float(keys[0][1])
        coeff = correlation.leaky_hermite_coefficients(slope, mean, np.sqrt(var))
    else:
        nodes, weights = (_GH_Z, _GH_W) if is_smooth(src.chain) else (_HZ, _HW)
        coeff = correlation.hermite_coefficients(compose(src.chain), mean, np.sqrt(var),
                                                 nodes, weights)
    c = coeff.reshape(coeff.shape[0], -1)  # [8, C]: the pooled source is per channel
    channels = max(c.shape[1], rho_z.shape[0])
    rho_z = np.broadcast_to(rho_z, (channels,) + rho_z.shape[1:])
    floor_z = np.broadcast_to(floor_z, (channels,))
    c = np.broadcast_to(c, (c.shape[0], channels))
    return Correlation(correlation.mehler(c, rho_z), correlation.mehler(c, floor_z),
                       (rho_z, floor_z), corr.centred)


def _away_from_zero(fn: Callable, src: Source, rank) -> Callable:
    with np.errstate(all="ignore"):
        median = np.abs(compose(src.chain)(_expand(src.mean, rank)))

    def masked(x):
        return np.where(np.abs(x) >= 0.1 * median, fn(x), np.nan)

    return masked


def apply_elementwise(inputs: list, ctx: RuleContext) -> list:
    """The rule of any node for which :func:`elementwise` holds (unary activations, and
    Mul/Add/Sub/Div/Pow with one constant operand: arithmetic.py may delegate to it)."""
    found = _node_fn(ctx)
    if found is None or found[0] is None:
        raise RuleError("not an element-wise function of one signal")
    f, which = found
    x = signal(inputs, which)
    outs = [apply_fn(x, f, _rank_of(ctx))]
    return outs + [None] * (len(ctx.node.output) - 1)


# ---------------------------------------------------------------------------------------------
# rules

_UNARY_OPS = (
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Swish", "Sigmoid",
    "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign", "Mish", "Erf", "Exp", "Log",
    "Abs", "Neg", "Clip", "Sin", "Cos", "Atan", "Sinh", "Cosh", "Asinh", "Sqrt", "Reciprocal",
    "ThresholdedRelu", "Shrink", "Sign", "Floor", "Ceil", "Round", "Identity",
)  # fmt: skip


@rule(*_UNARY_OPS)
def activation(inputs, ctx: RuleContext):
    """y = f(x) element-wise, f the op's numpy function (parameters and constant slope/bounds
    included): E = int f N(mu, nu), Var = int f^2 N(mu, nu) - E^2, per tracked index, over the
    input's source (Gaussian then element-wise chain) when it has one; closed forms for Relu,
    LeakyRelu, PRelu, Abs on a Gaussian (E[x+] = mu Phi(mu/s) + s phi(mu/s), E[x+^2] =
    (mu^2+s^2) Phi + mu s phi); exact E = a mu + b, Var = a^2 nu for Neg and Identity."""
    return apply_elementwise(inputs, ctx)


@rule("Dropout")
def dropout(inputs, ctx: RuleContext):
    """Identity unless ``options["dropout"]`` (training-mode dropout), then with drop ratio p
    (attribute ``ratio`` before opset 12, input 1 from opset 12, default 0.5):

        E = mu,  Var = (nu + mu^2) / (1 - p) - mu^2

    The mask output gets None."""
    x = signal(inputs, 0)
    rest = [None] * (len(ctx.node.output) - 1)
    if not ctx.options.get("dropout"):
        return [x] + rest
    if ctx.opset < 12:
        p = float(ctx.attr("ratio", 0.5))
    elif ctx.has_input(1):
        value = ctx.const(1)
        if value is None:
            raise RuleError("the dropout ratio is not constant")
        p = float(np.asarray(value).reshape(()))
    else:
        p = 0.5
    if p <= 0.0:
        return [x] + rest
    if p >= 1.0:
        return [Moments(np.zeros_like(x.mean), np.zeros_like(x.var))] + rest
    var = x.second_moment() / (1.0 - p) - x.mean**2
    return [Moments(x.mean, var)] + rest


# ---------------------------------------------------------------------------------------------
# fusion of element-wise sub-graphs

_MAX_DEPTH = 8


def _ancestry(tensor: str, ctx: RuleContext, budget: list[int]) -> list[tuple[str, tuple]]:
    """[(ancestor, chain from the ancestor to ``tensor``)], nearest first, (tensor, ()) first."""
    graph = ctx.graph
    out = [(tensor, ())]
    current, chain = tensor, ()
    while budget[0] > 0:
        node_id = graph.producer.get(current)
        if node_id is None:
            break
        budget[0] -= 1
        node = graph.node(node_id)
        nctx = RuleContext(node, node_id, graph, ctx.options)
        try:
            found = _node_fn(nctx)
        except RuleError:
            found = None
        if found is not None and found[0] is not None:
            current = node.input[found[1]]
            chain = (found[0].elementwise,) + chain
        else:
            fused = _fused_function(nctx, budget)
            if fused is None:
                break
            current, h = fused
            chain = (h,) + chain
        out.append((current, chain))
    return out


def _fused_function(ctx: RuleContext, budget: list[int]) -> tuple[str, Elementwise] | None:
    """(ancestor T, h) with the node's output = h(T) element-wise, for a binary node whose two
    signal operands are both element-wise functions of T."""
    node, graph = ctx.node, ctx.graph
    if node.domain not in ("", "ai.onnx") or node.op_type not in _BINARY:
        return None
    if len(node.input) != 2 or not all(graph.is_signal(n) for n in node.input):
        return None
    left = _ancestry(node.input[0], ctx, budget)
    right = dict(_ancestry(node.input[1], ctx, budget))
    common = next(((t, chain) for t, chain in left if t in right), None)
    if common is None:
        return None
    tensor, chain_a = common
    chain_b = right[tensor]
    fa, fb = compose(chain_a), compose(chain_b)
    op = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide,
          "Pow": np.power}[node.op_type]  # fmt: skip
    key = ("Fused", node.op_type, tuple(f.key for f in chain_a), tuple(f.key for f in chain_b))
    h = Elementwise(key, lambda z: op(fa(z), fb(z)))
    _FUSED_PARTS[key] = (chain_a, chain_b)
    return tensor, h


# the operand chains of fused functions, for the Div/Pow domain guard (keyed by h.key)
_FUSED_PARTS: dict[tuple, tuple] = {}


def fused_elementwise(inputs: list, ctx: RuleContext) -> list[Moments] | None:
    """Moments of a binary node (Mul, Add, Sub, Div, Pow) whose two signal operands are both
    element-wise functions of one common ancestor T (walking back through element-wise nodes,
    and through binary nodes that themselves fuse, up to 8 nodes): y = h(T) with
    h(z) = op(f_a(z), f_b(z)), so E = int h N, Var = int h^2 N - E^2 over T's source (or T's
    Gaussian). None when there is no common ancestor. Reads T's moments from
    ``ctx.options["moments"]`` (the moments computed so far)."""
    moments = ctx.options.get("moments")
    if not moments:
        return None
    try:
        fused = _fused_function(ctx, [_MAX_DEPTH])
    except RuleError:
        return None
    if fused is None:
        return None
    tensor, h = fused
    base = moments.get(tensor)
    if base is None:
        return None
    rank = _rank_of(ctx)
    shape = ctx.graph.shape(tensor)
    if rank is not None and shape is not None and len(shape) != rank:
        return None
    try:
        if ctx.node.op_type == "Div":  # the denominator must keep one sign
            src = _base(base, rank)
            _guard("nonzero", src.chain + _FUSED_PARTS[h.key][1], src, rank)
        out = apply_fn(base, _Fn(h.key, h.fn), rank)
    except RuleError:
        return None
    return [out]


__all__ = [
    "SMOOTH",
    "affine",
    "apply_elementwise",
    "apply_fn",
    "compose",
    "elementwise",
    "fused_elementwise",
    "gaussian_moments",
    "is_smooth",
    "probability",
]
