"""How much of a channel's local energy fluctuation survives a batch mean, and what a
BatchNorm's division by its batch energy does to the energy the channels share
(:mod:`.sample_energy` carries both).

Per channel c let ``u_nc = (1 + eps_n) v_nc`` be sample n's energy, ``eps_n`` the shared part
(:mod:`.sample_energy`'s ``eta``) and ``v_nc`` the local fluctuation (relative variance
``lam_c``). ``omega_c`` is the relative variance of the batch mean ``(1/N) sum_n v_nc``: lam/N
where the samples' fluctuations are independent, less where an earlier BatchNorm fixed part
of it (a BatchNorm output's batch energy is exactly 1 in every batch: omega = 0).

BatchNorm (batch statistics) divides each channel by its batch energy, which holds the
sample's own ``u_nc``: a sample with more energy raises its own denominator. For ``v`` Gamma
(mean 1) the shares ``v_n / sum_m v_m`` are Dirichlet, and the linear response of
``E[u_n / mean_m u_m | eps]`` to ``eps_n`` (eps centred over the batch, as after an earlier
BatchNorm) is ``N / (N + lam) = 1 / (1 + omega)``: per channel ``s_c = 1 / (1 + omega_c)``,

    eta' = eta * mean_{c != c'} s_c s_c',   alpha' = alpha / sqrt(eta' / eta)

(the offsets themselves are kept: their loading on the new, smaller eps grows). Measured on
EfficientNet-B0 at 64x64 (16 batches of 8): omega 0.02-0.13, eta lowered 3-20% per BatchNorm
(2x2 maps: 11-20%), the covariance of the standardised sample means with eps lowered by
about ``sqrt`` of that.

Carried: ``omega_y = (the inputs' omega, weighted as their lam is) + (lam_y - the inputs'
lam, so weighted) / N``: a fluctuation an op adds (a conv's products of distinct channels or
taps, a gate's per-sample value, a chain's Hermite terms above the second) is independent
across samples; what it passes on keeps its batch constraint. An element-wise chain through a
BatchNorm passes on its source's spatial mean and energy (Hermite terms 1 and 2 of
``(f - E f)^2``, fixed by the BatchNorm) with omega 0.

Not modelled: BatchNorm's effect on lam itself (measured 0.66-0.73x at 2x2 maps: the same
division), the non-linear response at large eta (a Gamma simulation: 0.9x of the linear one
at eta 0.3), a factor that no BatchNorm has centred yet (its batch mean, 1/N of it).
"""

from __future__ import annotations

import numpy as np


def fresh(lam: np.ndarray, batch: int) -> np.ndarray:
    """omega of a tensor whose samples fluctuate independently: ``lam / N``."""
    return np.asarray(lam, np.float64) / max(batch, 1)


def carried(omega_in: np.ndarray, lam_in: np.ndarray, lam_out: np.ndarray,
            batch: int) -> np.ndarray:
    """``omega_in + max(lam_out - lam_in, 0) / N``: the inputs' batch-level fluctuation
    (``omega_in``, ``lam_in`` weighted as the op weights its inputs' energies) and what the op
    adds, independent across samples."""
    added = np.maximum(np.asarray(lam_out, np.float64) - lam_in, 0.0)
    return np.maximum(omega_in, 0.0) + added / max(batch, 1)


def normalised_share(omega: np.ndarray) -> float:
    """``mean_{c != c'} s_c s_c'``, ``s_c = 1 / (1 + omega_c)``: the part of the shared energy
    a BatchNorm keeps (module docstring)."""
    s = 1.0 / (1.0 + np.maximum(np.asarray(omega, np.float64), 0.0))
    c = s.size
    if c < 2:
        return float(s.mean() ** 2) if c else 1.0
    total = float(s.sum())
    return (total * total - float(s @ s)) / (c * (c - 1))


__all__ = ["carried", "fresh", "normalised_share"]
