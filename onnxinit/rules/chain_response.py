"""An element-wise chain's response to the shared energy, taken across the energy's spread.

:mod:`.energy_loading` grows the shared energy through a chain ``f(z)`` by each channel's
response of its energy to eps, ``h_c(eps) = sum_k w_k E[(f - E_k f)^2 | eps] / sum_k w_k
Var_k f`` over the position classes k (:mod:`.source_classes`: the energy about each class's
own mean, the classes' pattern no sample's; one class, ``E[(f - E f)^2 | eps] / Var f``,
where the tensor has none): to first order
``h_c = 1 + (beta_c l_c + gamma_c) eps`` (Stein's slope at eps = 0). At the eta of late
stages (0.3-1) ``h_c`` is not linear over the range eps takes. Here ``h_c`` is integrated
exactly at three nodes of eps's law (``z = m + a_c eps + s_w sqrt(scale_c(eps)) t``, ``scale_c
= (1 + eps)^(l_c)`` over its mean, ``a_c`` the offset in the source's units, ``s_w^2 = s^2 -
a_c^2 eta``; the chain's mean and variance the law's own), and

    eta_f / eta = sum_r kappa(D_r) / eta,   D_r = sqrt(w_r) (h(eps_r) - E h),
    r_c = E[h_c(eps) eps] / eta,            the loading r / mean(r),

``kappa`` the mean over pairs of distinct channels (:func:`.energy_loading.pair_mean`), r the
regression of each channel's energy on eps (``beta l + gamma`` as eta -> 0). The law: the
sample's scale ``sigma = sqrt(1 + eps)``, not its energy, is Gaussian, ``N(mu, tau^2)`` with
``E sigma^2 = 1``, ``Var sigma^2 = eta`` (``tau^2 = 1 - sqrt(1 - eta / 2)``, skewness of eps
about ``1.5 sqrt(eta)``), on its three Gauss-Hermite nodes: the scale is a sum of many
independent parts (each conv's seed, each gate), and a per-sample gate ``1 + s u`` is exactly
this. Only the common part eps_0 and the Gaussian factors grow by this; a mask's two-point
factor stays exact at its points (:func:`.sample_masks.chain_factor`).

Measured (EfficientNet-B0, train-mode export, 8 batches of 8, onnxruntime): eps at the
BatchNorm outputs before the SiLUs of stages 6-8 has skewness 0.46-0.76 at eta 0.34-0.48
(224x224) and 0.88-0.98 at eta 0.39-0.46 (128x128); a lognormal of that variance has 2.0-2.4,
this law 0.87-1.03. With the measured offsets and loadings, and each point's energy integrated
as above, the SiLU's growth of eta is 1.05-1.16x on the measured eps themselves, 1.07-1.16x on
this law (within 0.04 of the measured eps at every SiLU), 1.11-1.22x on three lognormal nodes,
1.18-1.24x to first order; measured 0.95-1.11x (the rest: each sample's values are not
Gaussian about its own scale, skewed per channel after a depthwise conv).
"""

from __future__ import annotations

import math

import numpy as np

from ..moments import Moments
from ..strict import fall_back
from .batch_energy import carried
from .energy_fields import chain_at_energy_nodes, chain_law
from .energy_loading import chain_loading, normalised, pair_mean
from .sample_masks import chain_factor, regression

_GH = np.array([-math.sqrt(3.0), 0.0, math.sqrt(3.0)])  # Gauss-Hermite nodes and weights
_GHW = np.array([1.0, 4.0, 1.0]) / 6.0


def scale_nodes(eta: float) -> np.ndarray | None:
    """``1 + eps`` [3] at the nodes of a Gaussian scale ``sigma = sqrt(1 + eps) ~ N(mu,
    tau^2)`` with ``E sigma^2 = 1`` and ``Var sigma^2 = eta`` (``tau^2 = 1 - sqrt(1 - eta /
    2)``); None where eta is not in (0, 2)."""
    if not 0.0 < eta < 2.0:
        return None
    tau2 = 1.0 - math.sqrt(1.0 - eta / 2.0)
    sigma = math.sqrt(1.0 - tau2) + math.sqrt(tau2) * _GH
    points = sigma * sigma
    return points if np.all(points > 1e-6) else None


def energy_response(m: Moments, shape, eta: float, alpha: np.ndarray, base: Moments,
                    load: np.ndarray) -> tuple[float, np.ndarray] | None:
    """(eta of the chain's energy over eta, the regression ``r`` [C] of each channel's energy
    on eps) of the chain ending in moments ``m`` (its source the chain's Gaussian) for the
    whole shared energy ``eta`` with offsets ``alpha`` [C] in the units of ``base`` (the
    chain's start) and loadings ``load`` [C] (module docstring); None where it does not apply
    (no chain, eta not in (0, 2), non-finite values)."""
    points = scale_nodes(eta)
    if points is None:
        return None
    found = chain_at_energy_nodes(m, shape, eta, alpha, base, points, _GHW, load, classes=True)
    if found is None:
        return None
    first, second, class_w = found  # [3, K, C] each, [K, C]
    mean = np.tensordot(_GHW, first, axes=1)  # each class's mean over the energy, [K, C]
    var = (class_w * (np.tensordot(_GHW, second, axes=1) - mean**2)).sum(axis=0)
    if not np.all(var > 0):
        return None
    # each node's energy about the classes' means (their pattern no sample's), [3, C]
    h = (class_w[None] * (second - 2 * mean * first + mean**2)).sum(axis=1) / var
    rows = np.sqrt(_GHW)[:, None] * (h - _GHW @ h)
    eps = points - 1.0
    grown = sum(pair_mean(row) for row in rows) / eta
    r = (_GHW * eps) @ h / eta
    if not (math.isfinite(grown) and np.all(np.isfinite(r))):
        return None
    return grown, r


def chain_growth(m: Moments, shape, whole: tuple, base: Moments, load_z: np.ndarray,
                 beta: np.ndarray, gamma: np.ndarray) -> tuple[float, np.ndarray]:
    """(the factor eta is multiplied by, the chain's loading): from :func:`energy_response`
    over the whole energy ``whole = (eta, alpha)`` where it applies, else the first-order
    ``beta l + gamma`` (:func:`.energy_loading.chain_loading`)."""
    try:
        with np.errstate(all="ignore"):
            found = energy_response(m, shape, whole[0], whole[1], base, load_z)
    except (ValueError, IndexError, TypeError) as exc:
        fall_back(exc)
        found = None
    if found is None:
        return chain_loading(load_z, beta, gamma)
    return found[0], normalised(found[1])


def chain_record_law(m: Moments, shape, law_z, z: Moments, z_shape):
    """The record (:mod:`.sample_energy`) of the chain f(z) ending in moments ``m`` from its
    start's ``law_z``: :func:`.energy_fields.chain_law` for lam and the offsets, eta_0 and
    each Gaussian gate's factor grown by :func:`chain_growth`, each two-point factor exact
    at its points (:func:`.sample_masks.chain_factor`), the loading as
    :func:`chain_growth`'s."""
    eta_z, lam_z, alpha_z, factors, omega_z, load_z = law_z
    found = chain_law(m, shape, (eta_z, lam_z, alpha_z), z, z_shape)
    if found is None:
        return None
    _, lam, alpha, (beta2, slope, offset, tied, beta, drift) = found
    whole = regression(eta_z, alpha_z, factors)
    grown, load = chain_growth(m, shape, whole, z, load_z, beta, drift * whole[1])
    out = {}
    for key, (e, a, p) in factors.items():
        exact = chain_factor(m, shape, z, e, a, p) if p else None
        out[key] = (*exact, p) if exact is not None else (grown * e, slope * a + offset, p)
    return (eta_z * grown, lam, alpha, out, carried(beta2 * omega_z, tied, lam, shape[0]),
            load)


__all__ = ["chain_growth", "chain_record_law", "energy_response", "scale_nodes"]
