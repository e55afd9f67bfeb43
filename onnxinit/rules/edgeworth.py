"""The skewness and kurtosis of a Conv output that sums few terms, and what they do to the
element-wise function after it (first-order Edgeworth expansion).

The moment rules describe a Conv's output as Gaussian. A depthwise Conv sums 9 (3x3) or 25
(5x5) inputs per output, and those inputs are skewed (a HardSwish, ReLU or SiLU of a Gaussian),
so the output ``z`` of channel j has third and fourth cumulants

    k3_j(r) = sum_{c, t inside at r} W_jct^3 k3_c
    k4_j(r) = sum_{c, t inside at r} W_jct^4 k4_c

(inputs independent across taps; per position class r, zero padding exact;
:func:`.linear.conv_tap_sums`), where ``k3_c``, ``k4_c`` are the input's cumulants, from its
Gaussian and element-wise chain (quadrature, on its interior class), or, where the input is
no chain, a squeeze-excite gate's product of one or a 1x1 Conv composed with the Conv before
it (:mod:`.linear_cumulants`). With BatchNorm after
the Conv the channel is centred and the skewness's effect on a ReLU's variance has either
sign, cancelling over channels; without it (an eval-mode export: BatchNorm folded into the
Conv) the channel keeps its mean ``sum_t W_jt E[x]``, whose sign follows the kernel's as the
skewness's does, and a ReLU after it is systematically wider than the Gaussian's
(MobileNetV3-small, the first depthwise Conv's ReLU: measured 1.058x the Gaussian value,
1.000x with the measured k3, k4 in the expansion below).

For ``y = g(z)`` (``g`` the chain of element-wise functions from ``z``: the tensor's source),
``z = m + s t``, the Edgeworth density ``phi(t) (1 + gamma/6 He3(t) + kappa/24 He4(t)
+ gamma^2/72 He6(t))``, ``gamma = k3 / s^3``, ``kappa = k4 / s^4``, gives

    E[g^p] = E_phi[g(m + s t)^p (1 + gamma/6 He3 + kappa/24 He4 + gamma^2/72 He6)],  p = 1, 2

and the corrected cell moments ``E = E[g]``, ``Var = E[g^2] - E^2``; only the difference to the
Gaussian value (same quadrature) is added to the rule's own moments. Applied where the
element-wise chain starts at such a Conv's output (its source is that output's Gaussian, per
cell), the Conv summing at most :data:`FEW_TERMS` inputs per output (beyond, the skewness of
a random-sign sum shrinks as ``1/sqrt(n)``), or, for a depthwise Conv, at a training-mode
BatchNorm's output of it (:mod:`.norm_cumulants`: ``gamma = sign(scale) k3 / s^3``, ``kappa =
k4 / s^4`` with the Conv's own variance ``s^2``; a 1x1 Conv of up to 64 channels moved no
prediction of EfficientNet-B0 or MobileNetV3-small by 0.5%, so it is left out). Through the
BatchNorm the terms are per cell up to :data:`CLASS_CELLS` cells (channels x position
classes); beyond (a deep stack's small maps, where every position is a class of its own:
MobileNetV3-large's 7x7 maps of 672 channels) they are taken at the map's centre (the taps
inside there, ``k_p = sum W^p k_p,in``) and carried to every cell as the change of the mean and
the ratio of the variance, one quadrature per channel (every map per cell: EfficientNet-B0 at
224 analysed in 6.1 s of CPU against 4.3 s, 95.6% of its tensors within 10% against 97.0%).
Measured on MobileNetV3-small at 224 (8 batches of 8) the HardSwish after each depthwise
BatchNorm read 0.955-0.966x of onnxruntime's variance with the Gaussian, 0.99-1.02x with the
terms; on -large's block 11 each channel's variance 1.02x +- 0.26 (mean, sd over the
channels) before, 0.99x +- 0.05 now; ``tests/rules/test_batchnorm_edgeworth.py``: per
channel 0.67-1.56x before, 0.95-1.02x now. The global pool of such a chain then leaves out its
own terms of a position with itself (:mod:`.pool_skewness`). Not modelled: the joint cumulants of neighbouring
inputs (positions that share a Gaussian's correlation), the kurtosis the inputs carry beyond
their chain (:mod:`.kurtosis`), and the source seen by later sampling rules (still the
Gaussian).
"""

from __future__ import annotations

import weakref
from dataclasses import replace

import numpy as np

from ..moments import Moments
from ..spatial import attach
from ..strict import fall_back
from .context import RuleContext, RuleError
from .elementwise import refinement
from .gaussian import chain_at_nodes, compose, composite_rule
from .kurtosis import chain_start
from .linear import conv_tap_sums
from .linear_cumulants import chain_law, composed_kernel, input_law
from .max_cumulants import affine_steps, max_pool_shape
from .norm_cumulants import at_centre, batch_norm_of, centre_taps, tap_cumulants

FEW_TERMS = 64  # inputs per output (C_in / groups x kernel taps) up to which the Conv is read
# inputs per output of a 1x1 Conv composed with the Conv before it (rules/linear_cumulants.py):
# MobileNetV3-small's 72-channel projection before a 24 -> 88 expansion (seed 1: the ReLU's
# channels 0.79-1.33x of measured, 10%-90%, with the Gaussian; 0.82-1.20x with its cumulants)
COMPOSED_TERMS = 4 * FEW_TERMS

# composite Gauss-Legendre on [-8, 8] (kinks converge as the panels shrink); 24 panels: the
# corrections within 1% of 48 panels' on the tests' ReLU and SiLU
_T, _W = composite_rule(8.0, 24, 4)
# cells (channels x position classes) up to which the terms through a BatchNorm are taken per
# cell; beyond, at the map's centre and carried to every cell (module docstring)
CLASS_CELLS = 1 << 15
NEGLIGIBLE = 1e-3  # |gamma| and |kappa| below which a cell keeps the Gaussian's moments
# rows w He3, w He4, w He6 at the nodes: the expansion's three node sums as one matrix product
_WEIGHTED_HE = np.stack([_W * (_T**3 - 3 * _T), _W * (_T**4 - 6 * _T**2 + 3),
                         _W * (_T**6 - 15 * _T**4 + 45 * _T**2 - 15)])


def _cells(m: Moments, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(mean, var) of ``m``'s cells (or of ``m`` itself) broadcast to ``shape``."""
    cells = m.spatial.cells if m.spatial is not None else m
    mean, var = np.broadcast_arrays(cells.mean, cells.var)
    if mean.ndim < len(shape):
        mean = mean.reshape((1,) * (len(shape) - mean.ndim) + mean.shape)
        var = var.reshape(mean.shape)
    return np.broadcast_to(mean, shape), np.broadcast_to(var, shape)


def _nodes(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``mean + std t`` at every node t, ``[nodes, *shape]`` (one array, added in place)."""
    out = np.sqrt(np.maximum(var, 0.0))[None] * _T.reshape((-1,) + (1,) * mean.ndim)
    out += mean[None]
    return out


def input_cumulants(x: Moments, centre: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """(k3, k4) per channel ``[C, 1, ...]`` of a tensor described as an element-wise chain of a
    Gaussian (its cells' source), by quadrature over the Gaussian of its most frequent position
    class (the interior: a border cell's own cumulants differ less than its number of taps,
    which the tap sums keep), or of its centre class with ``centre``; None without a
    chain."""
    found = chain_law(x, centre)
    return None if found is None else (found[2], found[3])


_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def conv_cumulants(conv: RuleContext, x: Moments) -> tuple[np.ndarray, np.ndarray] | None:
    """(k3, k4) per output channel and position class ``[C_out, R_0, ...]`` of a Conv summing
    at most FEW_TERMS inputs per output, of input moments ``x``; None otherwise. Memoised per
    Conv while its input's moments are the same object (a SiLU's Sigmoid and Mul both ask)."""
    memo = _MEMO.setdefault(conv.graph, {})
    hit = memo.get(conv.node_id)
    if hit is not None and hit[0] is x:
        return hit[1]
    found = _conv_cumulants(conv, x)
    memo[conv.node_id] = (x, found)
    return found


def _conv_cumulants(conv: RuleContext, x: Moments) -> tuple[np.ndarray, np.ndarray] | None:
    """The tap sums of the input's cumulants: a chain's (module docstring), else those of a
    gated product or of a Conv composed with the Conv before it (:mod:`.linear_cumulants`)."""
    w = conv.const(1)
    if w is None or np.ndim(w) < 3 or int(np.prod(np.shape(w)[1:])) > FEW_TERMS:
        return None
    found = input_cumulants(x)
    if found is not None:
        return _tap_sums(conv, x, found)
    law = input_law(conv, conv.node.input[0])
    if law is not None:
        return _tap_sums(conv, x, law[2:])
    composed = composed_kernel(conv, COMPOSED_TERMS)
    if composed is None:
        return None
    inner, u = composed
    x_inner = inner.known.get(inner.node.input[0]) if inner.known is not None else None
    if x_inner is None:
        return None
    law = input_law(inner, inner.node.input[0])
    return None if law is None else _tap_sums(inner, x_inner, law[2:], u)


def _tap_sums(conv: RuleContext, x: Moments, cumulants, weight=None):
    """(k3, k4) ``[C_out, R...]``: ``conv_tap_sums`` of each input cumulant (powers 3, 4),
    scaled away from float32 underflow in the product; None where the sums are not had."""
    out = []
    for k, power in zip(cumulants, (3, 4)):
        scale = float(np.max(np.abs(k)))  # kept away from float32 underflow in the product
        if not np.isfinite(scale) or scale == 0.0:
            out.append(np.zeros(1))
            continue
        try:
            sums = conv_tap_sums(conv, x, k / scale, power, weight)
        except (RuleError, ValueError) as exc:
            fall_back(exc, (RuleError,))
            return None
        if sums is None:
            return None
        out.append(sums * scale)
    return out[0], out[1]


_ROW_BLOCK = 1 << 10  # cells per block of _node_sums: a [nodes, block] array in cache


def _node_sums(fn, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(W @ g, W @ g^2)`` ``[3, cells]`` with ``g = fn(mean + std t) - E g`` ``[nodes, cells]``
    (centred on the Gaussian's mean: the rows' He_k have mean 0, so the first sums are the
    same, and the variance's second sums carry no ``E[g]^2`` to cancel, a gate 0.5 + 1e-9 z
    keeping its variance) and W the weighted Hermite rows: a block of the first class axis at a time, so that g stays
    in cache (each product's column is its cell's own sum over the nodes, the same in a block
    as in the whole); the whole at once when fn does not broadcast on a block (a constant that
    varies along that axis, or a function that broadcasts its input further)."""
    std = np.sqrt(np.maximum(var, 0.0))
    if mean.ndim >= 3:
        s1, s2 = np.empty((3,) + mean.shape), np.empty((3,) + mean.shape)
        per_row = int(np.prod(mean.shape)) // max(1, mean.shape[2])
        rows = max(1, _ROW_BLOCK // max(1, per_row))
        try:
            for i in range(0, mean.shape[2], rows):
                part = (slice(None), slice(None), slice(i, i + rows))
                g = chain_at_nodes(fn, mean[part], std[part], _T)
                g -= _W @ g
                s1[(slice(None),) + part] = (_WEIGHTED_HE @ g).reshape((3,) + mean[part].shape)
                s2[(slice(None),) + part] = (_WEIGHTED_HE @ np.multiply(g, g, out=g)).reshape(
                    (3,) + mean[part].shape)
            return s1.reshape(3, -1), s2.reshape(3, -1)
        except ValueError:
            pass
    try:  # a block of nodes at a time, into one [nodes, cells] array
        g = chain_at_nodes(fn, mean, std, _T)
    except ValueError:  # a function that broadcasts its input further: all at once
        g = np.asarray(fn(_nodes(mean, var)), dtype=np.float64)
        g = g.reshape(g.shape[0], -1)
    g -= _W @ g
    return _WEIGHTED_HE @ g, _WEIGHTED_HE @ np.multiply(g, g, out=g)


def _lifted(sums: np.ndarray, gamma: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """``gamma/6 S3 + kappa/24 S4 + gamma^2/72 S6`` per cell from the rows ``sums`` [3, cells]."""
    gamma, kappa = gamma.reshape(-1), kappa.reshape(-1)
    return gamma / 6 * sums[0] + kappa / 24 * sums[1] + gamma**2 / 72 * sums[2]


def _pool_gaussian(ctx: RuleContext, pool_out: str, src, shape) -> tuple[str, np.ndarray] | None:
    """(tensor, sign ``[C]``): the tensor between a MaxPool's output and the element-wise node
    (through per-channel affine maps) whose cells are the chain's Gaussian, and the sign of
    the map from the pool's output to it; None where none is."""
    steps = affine_steps(ctx, ctx.node.input[0], pool_out, shape[1])
    if steps is None:
        return None
    s_mean, s_var = (np.broadcast_to(np.asarray(a, dtype=np.float64), shape)
                     for a in (src.mean, src.var))
    for name, sign in steps:
        if name not in ctx.known:
            continue
        mean, var = _cells(ctx.known[name], shape)
        scale = float(np.max(var)) if var.size else 0.0
        if scale > 0 and np.allclose(s_var, var, rtol=1e-6, atol=1e-12 * scale) and np.allclose(
                s_mean, mean, rtol=1e-6, atol=1e-6 * np.sqrt(scale)):
            return name, sign
    return None


def _starts_at(z: Moments, shape, s_mean: np.ndarray, s_var: np.ndarray) -> bool:
    """The chain's source (``s_mean``, ``s_var``) is ``z``'s Gaussian, cell for cell."""
    mean, var = _cells(z, shape)
    scale = float(np.max(var)) if var.size else 0.0
    return scale > 0 and bool(np.allclose(s_var, var, rtol=1e-6, atol=1e-12 * scale)
                              and np.allclose(s_mean, mean, rtol=1e-6, atol=1e-6 * np.sqrt(scale)))


@refinement
def corrected(y: Moments, ctx: RuleContext) -> Moments:
    """``y`` (an element-wise rule's output) with the Edgeworth terms of its chain's start when
    that is a few-term Conv's output (module docstring) or a MaxPool's, through per-channel
    affine maps (:mod:`.max_cumulants`); ``y`` itself otherwise."""
    known, graph = ctx.known, ctx.graph
    cells = y.spatial.cells if y.spatial is not None else y
    src = cells.source
    if known is None or src is None or not src.chain or not ctx.node.input:
        return y
    z_name = chain_start(graph, ctx.node.input[0], ctx)
    conv_id = graph.producer.get(z_name)
    op = None if conv_id is None else graph.node(conv_id).op_type
    if op not in ("Conv", "MaxPool") or z_name not in known:
        return y
    conv = replace(ctx.for_node(conv_id), known=known)
    x_name = conv.node.input[0]
    w = conv.const(1) if op == "Conv" else None
    if x_name not in known or (op == "Conv" and (
            w is None or np.ndim(w) < 3 or int(np.prod(np.shape(w)[1:])) > FEW_TERMS)):
        return y
    shape = np.broadcast_shapes(np.shape(cells.mean), np.shape(cells.var))
    if len(shape) < 3:  # not in convolution layout [1, C, cells...]
        return y
    sign = None
    if op == "MaxPool":  # the chain's Gaussian: an affine map's of the pool output (BatchNorm)
        found = _pool_gaussian(ctx, z_name, src, shape)
        if found is None:
            return y
        z_name, sign = found
    s_mean, s_var = (np.broadcast_to(np.asarray(a, dtype=np.float64), shape)
                     for a in (src.mean, src.var))
    # the chain must start from z's own Gaussian, cell for cell: the Conv's output, or a
    # BatchNorm's of it (training mode: the chain's source is the BatchNorm's output)
    conv_name, bn_sign = None, None
    if not _starts_at(known[z_name], shape, s_mean, s_var):
        depthwise = w is not None and np.shape(w)[1] == 1
        norm = batch_norm_of(ctx, z_name) if sign is None and depthwise else None
        if norm is None or not _starts_at(known[norm[0]], shape, s_mean, s_var):
            return y
        conv_name, (z_name, bn_sign) = z_name, norm
    z = known[z_name]
    if conv_name is not None and int(np.prod(shape[1:])) > CLASS_CELLS:
        return _through_batch_norm(y, ctx, conv, known[x_name], known[conv_name], z, bn_sign,
                                   src, shape)
    if sign is not None:  # a maximum's own skewness and kurtosis (rules/max_cumulants.py)
        found = max_pool_shape(conv, known[x_name])
        if found is None:
            return y
        found = (found[0] * sign.reshape(found[0].shape), found[1])
    else:
        found = conv_cumulants(conv, known[x_name])
    if found is None:
        return y
    k3 = np.asarray(found[0])
    try:
        shape = np.broadcast_shapes(shape, (1,) + k3.shape, (1,) + np.shape(found[1]))
    except ValueError:
        return y
    mean, var = _cells(z, shape)
    k3 = np.broadcast_to(k3[None], shape)
    k4 = np.broadcast_to(np.asarray(found[1])[None], shape)
    spread = var
    if conv_name is not None:  # the Conv's own cumulants and variance, k3 with the sign of
        # the BatchNorm's scale (:mod:`.norm_cumulants`)
        spread = _cells(known[conv_name], shape)[1]
        k3 = k3 * bn_sign.reshape((1, -1) + (1,) * (len(shape) - 2))
    s = np.sqrt(np.maximum(spread, 1e-300)) if sign is None else np.ones(shape)
    gamma = np.where(spread > 0, k3 / s**3, 0.0)
    kappa = np.where(spread > 0, k4 / s**4, 0.0)
    if max(float(np.max(np.abs(gamma))), float(np.max(np.abs(kappa)))) < NEGLIGIBLE:
        return y
    # sum_t w_t g^p(t) lift(t) = gamma/6 S3 + kappa/24 S4 + gamma^2/72 S6,
    # S_k = sum_t w_t He_k(t) g^p(t): two matrix products over the nodes
    with np.errstate(all="ignore"):
        s1, s2 = _node_sums(compose(src.chain), mean, var)
        first, second = _lifted(s1, gamma, kappa), _lifted(s2, gamma, kappa)
    d1, d2 = first.reshape(shape), second.reshape(shape)
    if not (np.all(np.isfinite(d1)) and np.all(np.isfinite(d2))):
        return y
    m0, v0 = np.broadcast_to(cells.mean, shape), np.broadcast_to(cells.var, shape)
    m1 = m0 + d1
    v1 = v0 + d2 - d1**2  # d2: the lifted sums of the centred chain's square
    # where the expansion leaves its range (a density that goes negative in the tail the
    # function keeps: strongly skewed, the mean far below a ReLU's kink) the Gaussian's values
    bad = ~(v1 > 0.05 * v0)
    m1, v1 = np.where(bad, m0, m1), np.where(bad, v0, v1)
    out = Moments(m1, v1, cells.source, None)
    if y.spatial is None:
        return out
    return attach(out, y.spatial.maps, y.spatial.given)


def _through_batch_norm(y: Moments, ctx: RuleContext, conv: RuleContext, x: Moments,
                        conv_out: Moments, z: Moments, sign: np.ndarray, src, shape) -> Moments:
    """``y = f(z)``, ``z`` a training-mode BatchNorm's output of a depthwise Conv, on more than
    CLASS_CELLS cells: the Edgeworth terms of the Conv's cumulants at the map's centre,
    ``gamma = sign k3 / s_y^3``, ``kappa = k4 / s_y^4`` (``s_y`` the Conv output's spread
    there; the BatchNorm's affine map keeps kappa, and gamma up to its scale's sign), evaluated
    at z's cell there and carried to every cell as the change of the mean and the ratio of the
    variance (one quadrature per channel)."""
    inputs = input_cumulants(x, centre=True)
    w, inside = conv.const(1), centre_taps(conv)
    found = None if inputs is None or w is None or inside is None else tap_cumulants(
        np.asarray(w, dtype=np.float64), int(conv.attr("group", 1)), inside, *inputs)
    if found is None:
        return y
    cells = y.spatial.cells if y.spatial is not None else y
    maps = y.spatial.maps if y.spatial is not None else None
    c = shape[1]
    k3, k4 = (np.asarray(a).reshape(-1) for a in found)
    if k3.size != c or sign.size not in (1, c):
        return y
    mean, var = (at_centre(a, maps) for a in _cells(z, shape))
    spread = at_centre(_cells(conv_out, shape)[1], maps)
    cols = (1, c) + (1,) * (len(shape) - 2)
    s = np.sqrt(np.maximum(spread, 1e-300))
    gamma = np.where(spread > 0, (sign * k3).reshape(cols) / s**3, 0.0)
    kappa = np.where(spread > 0, k4.reshape(cols) / s**4, 0.0)
    if max(float(np.max(np.abs(gamma))), float(np.max(np.abs(kappa)))) < NEGLIGIBLE:
        return y
    with np.errstate(all="ignore"):
        s1, s2 = _node_sums(compose(src.chain), np.ascontiguousarray(mean),
                            np.ascontiguousarray(var))
        d1 = _lifted(s1, gamma, kappa).reshape(cols)
        d2 = _lifted(s2, gamma, kappa).reshape(cols)
    m0, v0 = np.broadcast_to(cells.mean, shape), np.broadcast_to(cells.var, shape)
    m0i, v0i = (at_centre(np.ascontiguousarray(a), maps) for a in (m0, v0))
    m1i = m0i + d1
    v1i = v0i + d2 - d1**2
    if not (np.all(np.isfinite(v1i)) and np.all(np.isfinite(m1i))):
        return y
    ratio = np.where(v1i > 0.05 * v0i, v1i / np.where(v0i > 0, v0i, 1.0), 1.0)
    shift = np.where(v1i > 0.05 * v0i, m1i - m0i, 0.0)
    out = Moments(m0 + shift, v0 * ratio, cells.source, None)
    if y.spatial is None:
        return out
    return attach(out, y.spatial.maps, y.spatial.given)
