"""How the energy record of :mod:`.sample_energy` combines at a node: a sum or difference of
two maps, a map times a per-sample gate, a concatenation along the channels, and the record
after a BatchNorm's division by the batch energy (the formulas: :mod:`.sample_energy`'s
docstring)."""

from __future__ import annotations

import math

import numpy as np

from .batch_energy import carried, normalised_share
from .conv_energy import channel_shape as _shape
from .energy_fields import channel_var, gaussian_local
from .energy_loading import normalised
from .random_draws import is_keep_mask
from .sample_masks import concat_factors, gate_factor, gate_moments, sum_factors


def shared_gate(graph, name: str, shape) -> bool:
    """``name`` is a per-sample ``[N, 1, 1, ...]`` gate: one value for every channel."""
    return is_gate(graph, name, shape) and _shape(graph, name)[1] == 1 and shape[1] > 1


def is_gate(graph, name: str, shape) -> bool:
    """``name`` is a per-sample ``[N, C or 1, 1, ...]`` operand of an output of ``shape``."""
    s = _shape(graph, name)
    return (s is not None and len(s) == len(shape) and s[0] == shape[0] and len(shape) > 2
            and all(d == 1 for d in s[2:]) and any(d > 1 for d in shape[2:]))


def normalised_record(found):
    """The record after a BatchNorm's division by the batch energy (:mod:`.batch_energy`):
    every factor's eta times ``mean s_c s_c'``, its offsets over the square root, omega 0,
    the loadings times ``s_c`` (:mod:`.energy_loading`)."""
    eta, lam, alpha, factors, omega, load = found
    share = normalised_share(omega)
    if not 0 < share < 1:
        return eta, lam, alpha, factors, np.zeros_like(omega), load
    root = math.sqrt(share)
    return (eta * share, lam, alpha / root,
            {k: (e * share, a / root, p) for k, (e, a, p) in factors.items()},
            np.zeros_like(omega), normalised(load / (1.0 + np.maximum(omega, 0.0))))


def sum_law(known, graph, names, of, shape, gauss, minus=False):
    if any(_shape(graph, n) != shape for n in names):
        return None
    c = shape[1]
    nu = [channel_var(known[n], c) for n in names]
    total = nu[0] + nu[1]
    share = float(nu[0].sum() / max(float(total.sum()), 1e-300))
    wa = np.where(total > 0, nu[0] / np.where(total > 0, total, 1.0), 0.5)
    (ea, la, aa, fa, oa, da), (eb, lb, ab, fb, ob, db) = of(names[0]), of(names[1])
    eta = (share * math.sqrt(ea) + (1 - share) * math.sqrt(eb)) ** 2
    wb = 1 - wa
    whole_a, whole_b = (e + sum(f[0] for f in fs.values()) for e, fs in ((ea, fa), (eb, fb)))
    load = normalised(wa * math.sqrt(whole_a) * da + wb * math.sqrt(whole_b) * db)
    ga, gb = (gaussian_local(known[n], shape) for n in names)
    lam = gauss + wa**2 * (la - ga) + wb**2 * (lb - gb)
    return (eta, lam, aa - ab if minus else aa + ab, sum_factors(fa, fb, share, minus),
            carried(wa**2 * oa + wb**2 * ob, wa**2 * la + wb**2 * lb, lam, shape[0]), load)


def gated_law(ctx, names, of, shape):
    graph, known = ctx.graph, ctx.known
    gates = [n for n in names if is_gate(graph, n, shape)]
    maps = [n for n in names if n not in gates]
    if len(gates) != 1 or len(maps) != 1 or _shape(graph, maps[0]) != shape:
        return None
    eta, lam, alpha, factors, omega, load = of(maps[0])
    c = shape[1]
    mu, v = (np.broadcast_to(a, (c,)) for a in known[gates[0]].values_along(1, c))
    factors = {k: (e, a * mu, p) for k, (e, a, p) in factors.items()}
    if shared_gate(graph, gates[0], shape):  # one value per sample: a factor of its own
        mask = is_keep_mask(ctx, gates[0])
        moments = gate_moments(float(mu[0]), float(v[0]), mask)
        eta_x = eta + sum(f[0] for f in factors.values())
        mean_x = known[maps[0]].values_along(1, c)[0]
        eta_g, alpha_g, r = gate_factor(moments, eta_x, np.broadcast_to(mean_x, (c,)))
        if eta_g > 0:
            drop = 1.0 - moments[0] ** 2 / moments[1] if mask else None
            factors[gates[0]] = (eta_g, alpha_g, drop if drop and 0 < drop < 1 else None)
            load = normalised(load * eta_x + eta_g)  # the gate's own factor loads equally
        return eta, r * lam, alpha * mu, factors, r * omega, load
    m2 = v + mu**2
    m4 = mu**4 + 6 * mu**2 * v + 3 * v**2  # the gate as a Gaussian
    r = np.where(m2 > 0, m4 / np.where(m2 > 0, m2, 1.0) ** 2, 1.0)
    lam_y = r * (1 + lam + eta) - 1 - eta
    return eta, lam_y, alpha * mu, factors, carried(omega, lam, lam_y, shape[0]), load


def concat_law(graph, names, of):
    sizes = [_shape(graph, n)[1] for n in names]
    laws = [of(n, s) for n, s in zip(names, sizes)]
    total = sum(sizes)
    eta = sum(s / total * math.sqrt(law[0]) for s, law in zip(sizes, laws)) ** 2
    return (eta, np.concatenate([law[1] for law in laws]),
            np.concatenate([law[2] for law in laws]),
            concat_factors([(s, law[3]) for s, law in zip(sizes, laws)]),
            np.concatenate([law[4] for law in laws]),
            normalised(np.concatenate([math.sqrt(law[0] + sum(f[0] for f in law[3].values()))
                                       * law[5] for law in laws])))


__all__ = ["concat_law", "gated_law", "is_gate", "normalised_record", "shared_gate", "sum_law"]
