"""The batch-centred share of a Conv's output (``Correlation.batch_centred``) on small maps.

A training-mode BatchNorm centres each channel's per-sample spatial mean over the batch. A
Conv passes that centring on only through the part of its output's spatial mean that is
proportional to its input's: per output channel c and input channel i, the output's spatial
mean is ``s_c = sum_u a_ciu x_iu`` with the coverage ``a_ciu = (1/K_out) sum_{p, t -> u} w_cit``
(every output position p and tap t that reads input position u; taps in the padding read
nothing). Writing ``A_ci = sum_u a_ciu`` and ``d_ciu = a_ciu - A_ci / K_in``,

    s_c = sum_i A_ci m_i + sum_i sum_u d_ciu x_iu          (m_i: the input's spatial mean)

and only the first part has the input's zero batch mean. With ``K_in Var(m_i) = nu_i F_i``
(``F_i`` the correlation's spatial-mean factor) and independent positions for the second part:

    centred_c = sum_i A_ci^2 nu_i F_i c_i / sum_i (A_ci^2 nu_i F_i + K_in nu_i sum_u d_ciu^2)

``sum_u a^2`` is the quadratic form ``w^T M w / K_out^2`` with ``M[t, t'] = prod_axes
(H H^T)[t, t']``, ``H[t, u]`` the number of outputs whose tap t reads u along an axis: a
``k x k`` matrix per Conv, not a pass over positions. On large maps (or a 1x1 stride-1 Conv)
the coverage is uniform and this is the summed kernel's ``(sum_t w_t)^2`` weighting; at a
stride-2 Conv of a padded 2x2 map it is not (the taps weight the positions unequally).
Not modelled: the input's spatial correlation in the second part.
"""

from __future__ import annotations

import numpy as np


def _hits(size_in: int, size_out: int, kernel: int, stride: int, dilation: int,
          begin: int) -> np.ndarray:
    """``H[t, u]``: how many outputs read input position u with tap t along one axis."""
    pos = np.arange(size_out)[:, None] * stride - begin + np.arange(kernel)[None, :] * dilation
    h = np.zeros((kernel, size_in))
    for t in range(kernel):
        inside = pos[:, t][(pos[:, t] >= 0) & (pos[:, t] < size_in)]
        np.add.at(h[t], inside, 1.0)
    return h


# past this many multiply-adds (c_out x cpg x taps^2) the summed kernel's weighting is kept
_BUDGET = 5e7


def conv_centred(centred_in: np.ndarray, nu: np.ndarray, factor: np.ndarray, w: np.ndarray,
                 groups: int, strides, dilations, begins, in_sizes,
                 out_sizes) -> np.ndarray | None:
    """``centred_c`` per output channel (module docstring); ``centred_in``, ``nu``, ``factor``
    per input channel (the batch-centred share, the variance and ``F``). None where the
    coverage is uniform (the summed kernel's weighting is exact) or past the budget."""
    c_out, cpg = w.shape[:2]
    kernel = w.shape[2:]
    if c_out * cpg * float(np.prod(kernel)) ** 2 > _BUDGET:
        return None
    hits = [_hits(int(si), int(so), int(k), int(s), int(d), int(b)) for si, so, k, s, d, b in
            zip(in_sizes, out_sizes, kernel, strides, dilations, begins)]
    k_in, k_out = float(np.prod(in_sizes)), float(np.prod(out_sizes))
    flat = w.reshape(c_out, cpg, -1).astype(np.float64)
    per_tap, gram = np.ones(1), np.ones((1, 1))  # sum_u H[t, u]; prod_axes (H H^T)[t, t']
    for h in hits:  # taps flattened in w's order: Kronecker products, first axis slowest
        per_tap, gram = np.kron(per_tap, h.sum(axis=1)), np.kron(gram, h @ h.T)
    total_a = flat @ per_tap / k_out  # A_ci
    square_a = ((flat @ gram) * flat).sum(axis=-1) / k_out**2  # sum_u a_ciu^2
    spread = np.maximum(square_a - total_a**2 / k_in, 0.0)  # sum_u d_ciu^2
    if np.all(k_in * spread <= 1e-9 * total_a**2):
        return None
    idx = np.arange(c_out)[:, None] // (c_out // groups) * cpg + np.arange(cpg)[None, :]
    nu_i, f_i, c_i = nu[idx], factor[idx], centred_in[idx]
    mean_part = total_a**2 * nu_i * f_i
    total = (mean_part + k_in * nu_i * spread).sum(axis=1)
    return (mean_part * c_i).sum(axis=1) / np.where(total > 0, total, 1.0)
