"""An element-wise chain of a BatchNorm output integrated over the energy a sample shares.

A tensor ``z`` whose samples share an energy (:mod:`.sample_energy`: ``1 + eps_n`` with
``Var eps = eta``, the channel means moving by ``alpha_c eps``) is a scale-and-location mixture
of Gaussians, not one Gaussian of its total variance. Through ``f`` (the chain from z's
Gaussian source, ``N(m, s^2)`` per channel)

    E f = E_eps E_t f(m + a eps + s_w sqrt(1 + eps) t),
    Var f = E_eps E_t f(...)^2 - (E f)^2,     a = alpha_c s / sd(z),  s_w^2 = s^2 - a^2 eta

(``1 + eps`` lognormal on three nodes, as the pool rule; ``s_w`` keeps z's total variance; eta
times ``1 - 1/N``: the batch's BatchNorm centres the energies). Per channel, pooled over the
position classes, the mean moves by the mixture's minus the Gaussian's and the variance is
multiplied by their ratio, in every class alike (the chain's other refinements,
:mod:`.edgeworth`, kept; per class the integrals took v2_s at 224 from 67 s to 409 s).

Why: a Sigmoid is concave in the scale, so a mixture of scales has less variance than the
Gaussian of the same total variance, and SiLU is convex, more, the more when the mean rises
with the energy (a > 0: the samples with larger scale also sit higher on the curve). Measured
on EfficientNetV2-S at 224x224 (8 batches of 8), stage 6 (eta 0.77-0.82 there, 0.38-0.44
predicted): the Sigmoids of the expansions predicted 1.10-1.16x, the SiLU products 0.84-0.89x;
the mixture at eta 0.8 gives 0.88-0.90x for the Sigmoid and 0.83-1.35x for the SiLU as a runs
from -0.3 to 0.3. Applied only where the chain passes through a BatchNormalization of a
rank-4 map with more than one position (the channel axis is then the convolution's) and the
shared energy is not negligible (eta > 1e-3); the correlation field and the chain's source are
kept. A global pool's spatial part keeps the Gaussian's variance (:func:`mixture_shift`, read
by :func:`.pooling.gaussian_spatial_mean`): with the mixture's, the pool of
tests/rules/test_sample_energy.py's 2x2 maps went 1.015x -> 1.045x of onnxruntime's (its
positions are independent, measured F = 1.00: the shared term there is the pooled positions'
own realized energy, already in ``nu / K``), though EfficientNetV2-S at 64 went 90.9% -> 94.9%
within 10% (91.7% as it is). Not modelled: the per-position energy (the carried kurtosis) and a
mask's two-point law (its factor taken as Gaussian here).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from ..spatial import attach
from ..strict import fall_back
from .context import RuleContext
from .elementwise import refinement
from .energy_fields import chain_at_energy_nodes, chain_values
from .kurtosis import mixture_nodes
from .sample_energy import chain_energy, chain_norms

NEGLIGIBLE = 1e-3


@refinement
def mixed(y: Moments, ctx: RuleContext) -> Moments:
    """``y`` (an element-wise rule's output) with its chain integrated over the shared energy
    (module docstring); ``y`` itself where that does not apply."""
    known = ctx.known
    cells = y.spatial.cells if y.spatial is not None else y
    if known is None or cells.source is None or not cells.source.chain or not ctx.node.output:
        return y
    found = mixture_shift(ctx, ctx.node.output[0], cells)
    if found is None:
        return y
    cell = (1, -1) + (1,) * (np.ndim(cells.mean) - 2)
    mean = cells.mean + found[0].reshape(cell)
    var = cells.var * found[1].reshape(cell)
    if not (np.all(np.isfinite(var)) and np.all(var > 0)):
        return y
    out = Moments(mean, var, cells.source, None)
    return out if y.spatial is None else attach(out, y.spatial.maps, y.spatial.given)


def mixture_shift(ctx: RuleContext, name: str, m: Moments):
    """(d mean [C], variance ratio [C]) of the chain ending at ``name`` (moments ``m``, its
    Gaussian's) over the shared energy, or None where the refinement does not apply. A global
    pool divides its spatial part by the ratio: its terms (:mod:`.pooling`) were built around
    the Gaussian's variance, and its shared term adds the samples' spread itself."""
    shape = ctx.graph.shape(name)
    if ctx.known is None or shape is None or len(shape) != 4 or int(np.prod(shape[2:])) < 2:
        return None
    shape = tuple(int(d) for d in shape)
    try:
        with np.errstate(all="ignore"):
            # without a BatchNorm on the chain the record is not read: not computed
            found = chain_energy(ctx, name, shape) if chain_norms(ctx, name) else None
            if found is None or found[3] == 0 or not found[0] > NEGLIGIBLE:
                return None
            return _moments_shift(m, shape, found[0], found[1], ctx.known[found[2]], found[4])
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        fall_back(exc)
        return None


def _moments_shift(m: Moments, shape, eta: float, alpha: np.ndarray, base: Moments,
                   load: np.ndarray):
    """(d mean [C], variance ratio [C]): each channel's mixture's mean minus its Gaussian's,
    and the ratio of their variances (pooled over the position classes)."""
    c = shape[1]
    plain = chain_values(m, shape)
    if plain is None:
        return None
    y, w = plain
    mean0 = w @ y
    var0 = w @ (y - mean0) ** 2
    sig2, wts = mixture_nodes(np.full(c, eta))
    found = chain_at_energy_nodes(m, shape, eta, alpha, base, sig2, wts, load)
    if found is None:
        return None
    mean = np.zeros(c)
    square = np.zeros(c)
    for weight, first, second in zip(wts, *found):
        mean += weight * first
        square += weight * second
    var = square - mean**2
    ratio = np.where(var0 > 0, var / np.where(var0 > 0, var0, 1.0), 1.0)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(ratio))):
        return None
    return mean - mean0, ratio


__all__ = ["mixed", "mixture_shift"]
