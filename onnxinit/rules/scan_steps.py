"""The scan output of a Loop or Scan that the empirical fallback measured (:mod:`.empirical`):
its iterations stacked along axis 0, a recurrent layer's sequence, which the next layer reads,
kept with its moments per step and its covariance across the steps as a token field."""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .measured_units import scan_output
from .token_field import attach

_MAX_STEPS = 512  # iterations of a scan output given a measured field across them, at most


def with_steps_field(ctx: RuleContext, name: str, m: Moments, value: np.ndarray,
                      shift: int) -> Moments:
    """A scan output of a Loop or Scan (the iterations stacked along axis 0: a recurrent
    layer's sequence, which the next layer reads) with its measured covariance across the
    iterations as a token field, ``Sigma[s, t] = mean(c_s c_t)`` over the other axes (and the
    runs), ``c`` each iteration's values less their mean."""
    if not scan_output(ctx, name):
        return m
    v = np.moveaxis(value.astype(np.float64), shift, 0)
    steps, shape = v.shape[0], ctx.graph.shape(name)
    if v.ndim < 2 or not 2 <= steps <= _MAX_STEPS or shape is None or shape[0] != steps:
        return m
    per_step = _per_step(m, v, shift, len(shape))
    if per_step is None:
        c = v.reshape(steps, -1) - v.reshape(steps, -1).mean(axis=1, keepdims=True)
        return attach(m, shape, [0], c @ c.T / c.shape[1])
    m, centred = per_step
    c = centred.reshape(steps, -1)
    return attach(m, shape, [0], c @ c.T / c.shape[1])


def _per_step(m: Moments, v: np.ndarray, shift: int, rank: int):
    """(the scan output's moments per step and tracked feature, the values less those means)
    for the iterations ``v`` (steps first, then the runs when ``shift``): a recurrent layer's
    state starts at its initial value, so its first steps' means and variances differ from the
    later ones' (a Slice of the first step read the pooled means' spread: 1.18x). None when
    values are -inf (a mask) or the moments track more than one axis. Where they track the
    steps (the Loop reads a sequence: a stacked layer), the last axis, the units or a map's
    channels, is kept beside them, as the fallback keeps it where no input tracks an axis: a
    mean over the positions of a step does not average the channels' means spread away."""
    tracked = m.tracked_axes()
    if np.isneginf(v).any():
        return None
    if tracked and tracked[0] == 0:
        if rank < 3 or not set(tracked) <= {0, rank - 1}:
            return None
        keep = {0, rank - 1 + shift}
    elif len(tracked) > 1:
        return None
    else:
        keep = {0} | ({tracked[0] + shift} if tracked else set())
    other = tuple(a for a in range(v.ndim) if a not in keep)
    mean = v.mean(axis=other, keepdims=True)
    centred = v - mean
    var = (centred * centred).mean(axis=other, keepdims=True)
    if shift:
        mean, var = mean[:, 0], var[:, 0]
    mean, var = mean.reshape(mean.shape[:rank]), var.reshape(var.shape[:rank])
    return Moments(mean, var), centred


__all__ = ["with_steps_field"]
