"""The third and fourth cumulants a few-term Conv's output inherits from inputs that are not an
element-wise chain of a Gaussian themselves (:mod:`.edgeworth` reads a Conv of such a chain):
a squeeze-excite gate's product and a Conv of another Conv.

With BatchNorm folded into the convolutions (an eval-mode export: torch's dynamo exporter folds
it), a MobileNetV3 block ends ``relu(dw(...)) * gate`` -> 1x1 projection, and the next block
starts with a 1x1 expansion and a ReLU. The expansion's input is the projection's output, a
Conv of a product: neither is a chain, so the ReLU after the expansion took its input as
Gaussian, while it sums 16 skewed terms (measured skewness 0.4 rms over the channels, excess
kurtosis 0.6); with each channel's measured mean and variance the Gaussian's ReLU mean is 2.2%
high over the channels, and since the channels' means carry a quarter to a half of each later
map's variance (no normalisation centres them), the error ran on through the network.

* A Conv of a Conv with nothing between, the outer one pointwise (1x1, stride 1, no padding,
  one group): the outer output is ``V W x + const``, the Conv of the inner one's geometry with
  the kernel ``U[j, c, t] = sum_m V[j, m] W[m, c, t]`` (``W`` expanded over its groups), so its
  cumulants are the tap sums of ``U`` over the inner input's, the inner input's channels
  independent as :mod:`.edgeworth` takes them. The outer Conv's channels are not: each is a sum
  of the same inputs, and the tap sums of ``V`` over them (as if independent) miss the joint
  cumulants (skewness correlation 0.97 with the measured one composed, unrelated summed).
* A product ``x * g`` of a chain ``x`` and a gate ``g`` constant over the map (``[N, C, 1..]``:
  squeeze-excite), ``g`` taken as independent of ``x``: the raw moments multiply, ``E[(x
  g)^p] = E[x^p] E[g^p]``, ``g``'s from its own chain or, without one, its Gaussian. Not
  modelled: the gate is a function of the map's own mean (the dependence is weak where the
  gate varies little across samples, as at initialisation).

Each law is read on the interior position class (:mod:`.edgeworth`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..moments import Moments
from ..spatial import class_weights
from .context import RuleContext
from .gaussian import compose, composite_rule
from .norm_cumulants import centre_class

_T, _W = composite_rule(8.0, 24, 4)


def _interior(x: Moments, mean: np.ndarray, var: np.ndarray, centre: bool = False):
    """(mean, var) ``[C, 1...]`` of per-cell arrays ``[C, K...]`` of ``x`` at its most frequent
    position class, or its centre class with ``centre`` (or as they are when one class); None
    when they vary otherwise."""
    if x.spatial is not None and mean.shape[1:] == x.spatial.classes:
        index = centre_class(x.spatial.maps) if centre else np.unravel_index(
            int(np.argmax(class_weights(x.spatial.maps))), x.spatial.classes)
        pick = (slice(None),) + tuple(slice(i, i + 1) for i in index)
        return mean[pick], var[pick]
    if any(n > 1 for n in mean.shape[1:]):
        return None
    return mean, var


def chain_law(x: Moments, centre: bool = False) -> tuple[np.ndarray, ...] | None:
    """(mean, k2, k3, k4) per channel ``[C, 1, ...]`` of a tensor described as an element-wise
    chain of a Gaussian (its cells' source), by quadrature over the Gaussian of its most
    frequent position class (its centre class with ``centre``); None without a chain."""
    cells = x.spatial.cells if x.spatial is not None else x
    src = cells.source
    if src is None or not src.chain:
        return None
    mean, var = np.broadcast_arrays(np.asarray(src.mean, dtype=np.float64),
                                    np.asarray(src.var, dtype=np.float64))
    if mean.ndim < 3:
        return None
    found = _interior(x, mean[0], var[0], centre)
    if found is None:
        return None
    mean, var = found
    t = _T.reshape((-1,) + (1,) * mean.ndim)
    with np.errstate(all="ignore"):
        y = np.asarray(compose(src.chain)(np.sqrt(np.maximum(var, 0.0))[None] * t + mean[None]),
                       dtype=np.float64)
    if not np.all(np.isfinite(y)):
        return None
    w = _W.reshape((-1,) + (1,) * (y.ndim - 1))
    m = (w * y).sum(axis=0)
    d = y - m
    d2 = d * d
    k2 = (w * d2).sum(axis=0)
    return m, k2, (w * d2 * d).sum(axis=0), (w * d2 * d2).sum(axis=0) - 3 * k2**2


def _gaussian_law(x: Moments) -> tuple[np.ndarray, ...] | None:
    """(mean, var, 0, 0) per channel ``[C, 1, ...]`` of a tensor without a chain."""
    cells = x.spatial.cells if x.spatial is not None else x
    mean, var = np.broadcast_arrays(cells.mean, cells.var)
    if mean.ndim < 3:
        return None
    found = _interior(x, mean[0], var[0])
    if found is None:
        return None
    return found[0], found[1], np.zeros_like(found[0]), np.zeros_like(found[0])


def product_law(a, b) -> tuple[np.ndarray, ...]:
    """(mean, k2, k3, k4) of ``x y`` for independent x, y of laws ``a``, ``b`` (each (mean,
    k2, k3, k4)), through the raw moments ``E[(x y)^p] = E[x^p] E[y^p]``."""
    def raw(m, k2, k3, k4):
        return (m, k2 + m**2, k3 + 3 * m * k2 + m**3,
                k4 + 4 * m * k3 + 3 * k2**2 + 6 * m**2 * k2 + m**4)

    r1, r2, r3, r4 = (p * q for p, q in zip(raw(*a), raw(*b)))
    k2 = r2 - r1**2
    k3 = r3 - 3 * r2 * r1 + 2 * r1**3
    k4 = r4 - 4 * r3 * r1 - 3 * r2**2 + 12 * r2 * r1**2 - 6 * r1**4
    return r1, k2, k3, k4


def gated_law(ctx: RuleContext, name: str) -> tuple[np.ndarray, ...] | None:
    """The law of ``name`` when a Mul made it of a chain and a gate constant over the map
    (module docstring); None otherwise."""
    graph, known = ctx.graph, ctx.known
    node_id = graph.producer.get(name)
    if node_id is None or known is None:
        return None
    node = graph.node(node_id)
    if node.op_type != "Mul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2 \
            or any(graph.is_constant(n) or n not in known for n in node.input):
        return None
    shapes = [graph.shape(n) for n in node.input]
    out = graph.shape(name)
    if out is None or any(s is None or len(s) != len(out) for s in shapes):
        return None
    for i in (0, 1):
        signal_shape, gate_shape = shapes[i], shapes[1 - i]
        if tuple(signal_shape) != tuple(out) or gate_shape[1] != out[1] \
                or any(d != 1 for d in gate_shape[2:]):
            continue
        x = chain_law(known[node.input[i]])
        gate = known[node.input[1 - i]]
        g = chain_law(gate) or _gaussian_law(gate)
        if x is None or g is None:
            return None
        try:
            return product_law(x, tuple(np.broadcast_to(a, x[0].shape) for a in g))
        except ValueError:
            return None
    return None


def _pointwise(ctx: RuleContext, w: np.ndarray) -> bool:
    """Whether the Conv ``ctx`` with weight ``w`` is a one-group 1x1 Conv, stride 1, unpadded."""
    n = w.ndim - 2
    return (ctx.attr("group", 1) == 1 and all(k == 1 for k in w.shape[2:])
            and list(ctx.attr("strides", [1] * n)) == [1] * n
            and not any(ctx.attr("pads", [0] * 2 * n))
            and ctx.attr("auto_pad", "NOTSET") in ("NOTSET", "", "VALID"))


def composed_kernel(conv: RuleContext, limit: int) -> tuple[RuleContext, np.ndarray] | None:
    """(the inner Conv's context, ``U`` ``[C_out, C_in, k...]``) where ``conv`` is pointwise
    and its input a Conv's output (module docstring) summing at most ``limit`` inputs per
    output once composed; None otherwise."""
    v = conv.const(1)
    inner_id = conv.graph.producer.get(conv.node.input[0])
    if v is None or np.ndim(v) < 3 or inner_id is None or not _pointwise(conv, np.asarray(v)):
        return None
    inner = replace(conv.for_node(inner_id), known=conv.known)
    if inner.node.op_type != "Conv" or inner.node.domain not in ("", "ai.onnx"):
        return None
    w = inner.const(1)
    if w is None or np.ndim(w) != np.ndim(v):
        return None
    w = np.asarray(w, dtype=np.float64)
    groups = inner.attr("group", 1)
    c_mid, per_group = w.shape[:2]
    if c_mid % groups or c_mid != np.shape(v)[1] \
            or per_group * groups * int(np.prod(w.shape[2:])) > limit:
        return None
    dense = np.zeros((c_mid, per_group * groups) + w.shape[2:])
    out_per_group = c_mid // groups
    for g in range(groups):
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        dense[rows, g * per_group:(g + 1) * per_group] = w[rows]
    u = np.tensordot(np.asarray(v, dtype=np.float64).reshape(v.shape[:2]), dense, axes=(1, 0))
    return inner, u


def input_law(conv: RuleContext, x_name: str) -> tuple[np.ndarray, ...] | None:
    """The per-channel law (mean, k2, k3, k4) of the input ``x_name`` of ``conv``: its chain's,
    else a gated product's; None otherwise."""
    x = conv.known.get(x_name) if conv.known is not None else None
    if x is None:
        return None
    return chain_law(x) or gated_law(conv, x_name)


__all__ = ["chain_law", "composed_kernel", "gated_law", "input_law", "product_law"]
