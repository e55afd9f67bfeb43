"""How much each channel loads on the energy a sample's channels share (:mod:`.sample_energy`).

:mod:`.sample_energy` takes the per-sample energies ``e_nc`` of a tensor's channels to share a
common part ``eps_n`` (``Var eps = eta``, the mean over pairs of distinct channels of
``Cov(e_nc, e_nc')``). The channels do not load on it equally: here

    Cov(e_nc, e_nc') = eta l_c l_c' / kappa(l),   kappa(l) = mean_{c != c'} l_c l_c',

with the loading ``l`` [C] carried with mean 1 (so eta keeps its meaning, and a channel's own
share of it is ``eta l_c^2 / kappa``). One loading is carried for the whole energy: the common
part ``eps_0`` and every per-sample gate's factor (:mod:`.sample_masks`) load alike. Where the loadings differ a conv that weights its
inputs unequally passes on more (or less) of eta than their mean: measured on EfficientNetV2-S
at 224 (block 6.3, 64 samples), the projection conv after a squeeze-excite gate multiplies eta
by 1.38, and ``kappa(B l)`` with the measured loadings gives 1.381 (0.948 with them shuffled
over the channels). Per rule (``u = sqrt(eta) l``: the loadings in absolute units):

- Conv, ``B_jc = W_jc^2 nu_c / sum`` (:mod:`.conv_energy`): ``L = B l``, ``eta_y = eta_x
  kappa(L) / kappa(l) + seeded``, every factor's eta times ``kappa(L) / kappa(l)`` and its
  offsets over ``mean(L)`` (its eps moves by that much); the loading is each output channel's mean covariance with
  the others, ``r_j = eta_x L_j mean_{j' != j} L_j' / kappa(l) + sum_c lam_c B_jc (S_c -
  B_jc) / (J - 1)`` (the second term: the realized energies two outputs read in common),
  ``l_y = r / mean(r)``: the rank-one part of their covariance that the row means keep.
- Element-wise chain ``f(z)``, ``z_c = m_c + alpha_c eps + s_c sqrt(1 + l_c eps) t``: to first
  order in eps, ``E[(f - E f)^2 | eps] / Var f = 1 + (beta_c l_c + gamma_c) eps`` with
  ``beta_c = E[(t^2 - 1) g] / (2 Var f)`` (the scale's, Stein's identity) and ``gamma_c = E[t g]
  alpha_c / (s_c Var f)`` (the mean's: a channel whose mean rises with the energy moves up a
  convex activation), ``g = (f - E f)^2``, alpha the regression on the whole eps: eta_0 and
  each Gaussian factor's eta times ``kappa(beta l + gamma) / kappa(l)`` (``mean(beta)^2`` for
  equal loadings and no offsets, the rule before), a two-point factor exactly at its points
  as before, ``l_f = (beta l + gamma) / mean``. The mean
  offsets spread about zero over the channels (a conv's weights sum their inputs' offsets with
  random signs), so gamma spreads the loadings, and a channel that loads more has more
  variance too (its mixture is wider: :mod:`.energy_mixture`); that is why a conv's weights,
  which favour the channels with more variance, favour the ones that load more.
- Sum of two signals, channel c's variance share w_c (eta_a, eta_b their whole energies; eta
  itself as before): ``u = w sqrt(eta_a) l_a + (1 - w) sqrt(eta_b) l_b``; Concat: the ``u``
  concatenated; BatchNorm's division by the batch energy (:mod:`.batch_energy`): ``u_c s_c``;
  a gate every channel shares, whose new factor loads equally: ``u = eta_x l + eta_g``; then
  ``l = u / mean(u)``.
- Per-channel affine maps, per-channel gates, pools and layout ops keep ``l``.

A global pool and the element-wise rules (:mod:`.shared_pool`, :mod:`.energy_mixture`) read
channel c's scale at the lognormal nodes of ``1 + eps`` as ``(1 + eps)^(l_c)`` over its mean
(log-linear, so positive at every node; first order the same as ``1 + l_c eps``).

Measured (``python benchmarks/shared_energy_trace.py --models efficientnet_v2_s --size 128``,
8 batches of 8): the loadings after each SiLU spread 0.26-0.36 about 1 (0.09 the noise floor
at the convs' inputs), predicted 0.26-0.39, correlated 0.7-0.86 with the measured; the
projection convs after the gates (stages 4-6) multiply eta by 1.19-1.36 measured, 1.08-1.34
predicted (1.00 with equal loadings: features.5.3, 1.29 measured). ``tests/rules/test_energy_loading.py``: 2.47x measured, 2.32x predicted,
1.02x before.

Not modelled: each factor's own loadings (a mask's factor enters loading 1 on every channel
and is then carried as the common one), a squeeze-excite gate's own response to the energy
(measured to change the projection's factor by 1.00-1.02), the covariance's part beyond rank
one. The element-wise rule above is first order in eps; :mod:`.chain_response` takes each
channel's energy over three nodes of eps's law instead (at eta 0.2-1 the first-order rule grew
eta 5-7% per SiLU where 1-3% is measured on EfficientNetV2-S's stage 5; evaluating the energy
at the lognormal nodes, tried, lowered EfficientNetV2-S at 128 from 91.3% to 88.7% within 10%:
the lognormal is 2-2.5x more skewed than the measured eps).
"""

from __future__ import annotations

import numpy as np


def pair_mean(u: np.ndarray) -> float:
    """``kappa(u) = mean_{c != c'} u_c u_c'`` (``mean(u)^2`` for a single channel)."""
    u = np.asarray(u, np.float64).ravel()
    c = u.size
    if c < 2:
        return float(u.mean() ** 2) if c else 1.0
    total = float(u.sum())
    return (total * total - float(u @ u)) / (c * (c - 1))


def uniform(c: int) -> np.ndarray:
    """Every channel loading equally."""
    return np.ones(c)


def normalised(u: np.ndarray) -> np.ndarray:
    """``u / mean(u)``; equal loadings where that is not finite and positive."""
    u = np.asarray(u, np.float64)
    mean = float(u.mean()) if u.size else 0.0
    if not (mean > 0 and np.all(np.isfinite(u))):
        return uniform(u.size)
    return u / mean


def conv_loading(b: np.ndarray, idx: np.ndarray, load_x: np.ndarray, eta_x: float,
                 lam_x: np.ndarray, column_sums: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(the factor eta_x is multiplied by, the output loading, ``mean(L)``: how far the
    outputs' mean energy moves per unit of the input's eps) of a conv with weights ``b``
    (``B_jc``, ``[J, I/g]``; ``idx`` the input channel of each entry, ``column_sums`` ``S_c``)
    reading loadings ``load_x`` and realized energies ``lam_x`` (module docstring)."""
    j = b.shape[0]
    loads = (b * load_x[idx]).sum(axis=1)  # L = B l
    before = pair_mean(load_x)
    if not before > 0:
        return 1.0, uniform(j), 1.0
    factor = pair_mean(loads) / before
    if j < 2:
        return factor, uniform(j), float(loads.mean())
    others = (loads.sum() - loads) / (j - 1)
    seeded = (lam_x[idx] * b * (column_sums[idx] - b)).sum(axis=1) / (j - 1)
    return factor, normalised(eta_x * loads * others / before + seeded), float(loads.mean())


def chain_loading(load_z: np.ndarray, beta: np.ndarray, gamma: np.ndarray
                  ) -> tuple[float, np.ndarray]:
    """(the factor eta_z is multiplied by, the loading of f) for ``l_f ~ beta l_z + gamma``
    (module docstring)."""
    raw = beta * load_z + gamma
    before = pair_mean(load_z)
    if not before > 0 or not np.all(np.isfinite(raw)):
        return float(np.mean(beta)) ** 2, uniform(load_z.size)
    return pair_mean(raw) / before, normalised(raw)


def node_scales(sig2: np.ndarray, weights: np.ndarray, load: np.ndarray) -> np.ndarray:
    """``[nodes, C]``: channel c's scale at the nodes ``sig2`` (``[nodes]`` or ``[nodes, C]``) of
    ``1 + eps``, ``(1 + eps)^(l_c)`` over its mean (module docstring)."""
    sig2 = np.asarray(sig2, np.float64)
    if sig2.ndim == 1:
        sig2 = sig2[:, None]
    scaled = np.exp(np.log(sig2) * load[None, :])
    return scaled / (weights @ scaled)[None, :]


__all__ = ["chain_loading", "conv_loading", "node_scales", "normalised",
           "pair_mean", "uniform"]
