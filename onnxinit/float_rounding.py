"""The reported moments of a tensor as the float type it is stored in holds them: each element is
the float nearest to its exact value.

A float32 tensor whose elements sit within a few ulps of a mean far from 0 (a Sigmoid or
HardSigmoid gate ``0.5 + x/4`` of a signal that has vanished to ``x ~ 1e-9``: an eval-mode
export whose BatchNorms were folded at their initial statistics, where nothing normalizes)
holds only a few distinct values, or one. For an element ``y ~ N(m, s^2)`` rounded to the
nearest point ``g_i`` of the float grid around ``f0 = fl(m)`` (the grid's steps are those of
the type: ``2^-25`` below 0.5 and ``2^-24`` above, for float32),

    p_i = Phi((b_i+ - m) / s) - Phi((b_i- - m) / s)      (b_i-, b_i+: the midpoints around g_i)
    E[fl(y)] = f0 + sum_i p_i (g_i - f0)
    Var[fl(y)] = sum_i p_i (g_i - f0)^2 - (E[fl(y)] - f0)^2

with the law truncated at :data:`TAIL` standard deviations and the rest renormalised: the
mass beyond (2e-9) is not resolved by a Gaussian description of an element's law, and a
measured batch of up to 1e6 elements holds 0.002 such elements on average, so a cell whose half-steps lie beyond ``TAIL s`` is the constant
``f0``, variance exactly 0, as onnxruntime's correctly rounded kernels compute it. From
``s = 1`` ulp to a few ulps the rounding makes the variance up to 1.8x the exact one and then
nearly ``s^2 + step^2 / 12``. Applied per cell of the tensor's moments where ``s`` is below
:data:`STEPS` grid steps of ``|m|`` and ``s > 0`` (elsewhere the effect is below 0.03% and
the moments are kept as they are, bit for bit), to float32, float16 and float64 tensors;
bfloat16 (no numpy type) is not modelled. Only the reported (mean, variance) change: the
propagated moments are the exact ones (a constant 0.5 gate in place of ``0.5 +- 1e-9``
changes the products after it by 1e-9 of their value). Not modelled: the rounding of the
intermediate values inside an op (onnxruntime's Sigmoid and HardSigmoid round once, measured).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from . import special
from .moments import Moments

TAIL = 5.0  # standard deviations beyond which an element's Gaussian law is taken as 0
STEPS = 16  # grid steps of |m| below which a cell's sd is rounded (beyond: moments kept)
_NUMPY_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16,
                TensorProto.DOUBLE: np.float64}


def rounded_cells(mean: np.ndarray, var: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(E, Var) of each cell ``N(mean, var)`` rounded to the nearest value of ``dtype``
    (1-d arrays of cells; module docstring)."""
    s = np.sqrt(var)
    f0 = mean.astype(dtype)
    up_step = np.nextafter(f0, dtype(np.inf)).astype(np.float64) - f0
    down_step = f0 - np.nextafter(f0, dtype(-np.inf)).astype(np.float64)
    steps = int(np.ceil(np.max(TAIL * s / np.minimum(up_step, down_step)))) + 2
    up, down = [f0], [f0]
    for _ in range(steps):
        up.append(np.nextafter(up[-1], dtype(np.inf)))
        down.append(np.nextafter(down[-1], dtype(-np.inf)))
    # the grid points around f0, ascending, as offsets from f0 (exact in float64)
    grid = np.concatenate([np.stack(down[:0:-1]), np.stack(up)]).astype(np.float64) - f0
    bounds = (grid[1:] + grid[:-1]) / 2  # rounding to nearest: the midpoints
    z = np.clip((bounds + (f0 - mean)) / s, -TAIL, TAIL)
    cdf = special.ndtr(np.concatenate([np.full((1, z.shape[1]), -TAIL), z,
                                       np.full((1, z.shape[1]), TAIL)]))
    p = np.diff(cdf, axis=0)
    p /= p.sum(axis=0)
    shift = np.sum(p * grid, axis=0)
    return f0 + shift, np.maximum(np.sum(p * grid * grid, axis=0) - shift * shift, 0.0)


def reported_total(m: Moments, elem_type: int | None) -> tuple[float, float]:
    """``m.total()`` of a tensor of ONNX type ``elem_type`` with its cells rounded to that
    type's grid where their spread is a few steps of it or less (module docstring); exactly
    ``m.total()`` where no cell is."""
    dtype = _NUMPY_TYPES.get(elem_type)
    total = m.total()
    if dtype is None:
        return total
    # a type's step at |m| is at most |m| eps: cells with var >= (STEPS eps m)^2 (all of
    # them, in a healthy network) are skipped in one pass before the exact test
    bound = (STEPS * float(np.finfo(dtype).eps)) ** 2
    mean, var = np.asarray(m.mean, np.float64), np.asarray(m.var, np.float64)
    with np.errstate(all="ignore"):
        square = mean * mean
        square *= bound
        near = np.less(var, square)
        near &= var > 0
        near &= square < bound * float(np.finfo(dtype).max) ** 2  # not the type's extreme
        if not near.any():
            return total
        mean, var = (np.array(a) for a in np.broadcast_arrays(mean, var))
        near = np.broadcast_to(near, mean.shape)
        m_near, v_near = mean[near], var[near]
        fine = np.isfinite(m_near) & (np.abs(m_near) < np.finfo(dtype).max)
        fine &= np.sqrt(v_near) < STEPS * np.spacing(
            np.abs(np.where(fine, m_near, 1.0)).astype(dtype)).astype(np.float64)
    if not fine.any():
        return total
    cells = np.zeros(mean.shape, dtype=bool)
    cells[near] = fine
    mean[cells], var[cells] = rounded_cells(m_near[fine], v_near[fine], dtype)
    return Moments(mean, var).total()


__all__ = ["STEPS", "TAIL", "reported_total", "rounded_cells"]
