"""How a covariance matrix across one axis of a tensor (its channels, or a token's features)
maps through one op: pure functions on the ``[n, n]`` matrices, for the walk in
:mod:`.channel_covariance`. ``nu`` is always the output's variance per index of that axis (the
diagonal the result is given: the moments rules' own, which count what these maps leave out).
"""

from __future__ import annotations

import functools

import numpy as np


def rescaled(s: np.ndarray, nu: np.ndarray, sign: np.ndarray | None = None) -> np.ndarray:
    """``s`` as a correlation, scaled to the variances ``nu``: ``D s D`` with ``D =
    diag(sign sqrt(nu / diag s))`` (a per-index affine map, or one that keeps correlations)."""
    d = np.sqrt(np.maximum(np.diag(s), 0.0))
    scale = np.where(d > 0, np.sqrt(np.maximum(nu, 0.0)) / np.where(d > 0, d, 1.0), 0.0)
    if sign is not None:
        scale = scale * sign
    out = s * scale[:, None]
    out *= scale[None, :]
    np.fill_diagonal(out, np.where(d > 0, nu, 0.0))
    return out


def tap_fractions(in_sizes, out_sizes, kernel, strides, dilations, begins) -> np.ndarray:
    """Per tap of a Conv's kernel (C order), the share of output positions where it reads
    inside the input (not the zero padding). The geometry alone: kept per geometry (a deep
    stack's blocks share a few), read-only."""
    return _tap_fractions(*(tuple(int(v) for v in a) for a in (
        in_sizes, out_sizes, kernel, strides, dilations, begins)))


@functools.lru_cache(maxsize=64)
def _tap_fractions(in_sizes, out_sizes, kernel, strides, dilations, begins) -> np.ndarray:
    share = np.ones(1)
    for n_in, n_out, k, s, d, b in zip(in_sizes, out_sizes, kernel, strides, dilations, begins):
        index = np.arange(n_out)[None, :] * s - b + np.arange(k)[:, None] * d
        share = np.outer(share, ((index >= 0) & (index < n_in)).mean(axis=1)).reshape(-1)
    share.flags.writeable = False
    return share


def conv_same_tap(s_x: np.ndarray, w: np.ndarray, groups: int,
                  share: np.ndarray | None = None) -> np.ndarray:
    """``sum_t f_t W_t S_x W_t^T`` for a Conv weight ``[C_out, C_in / groups, *kernel]``,
    ``W_t`` block-diagonal over the groups (the input positions taken as independent), ``f_t``
    the share of positions where tap t reads inside (:func:`tap_fractions`; default 1)."""
    c_out, c_in_group = w.shape[:2]
    taps = int(np.prod(w.shape[2:]))
    per = c_out // groups
    (s_x, e_s), (w, e_w) = _binary_scaled(s_x), _binary_scaled(w)  # exact; see below
    share = np.ones(taps) if share is None else share
    if c_in_group == 1:  # depthwise (a channel multiplier per): one input channel per output
        k = w.reshape(c_out, taps)
        if per == 1:
            return np.ldexp(s_x * ((k * share) @ k.T), e_s + 2 * e_w)
        source = np.arange(c_out) // per
        return np.ldexp(s_x[source[:, None], source[None, :]] * ((k * share) @ k.T),
                        e_s + 2 * e_w)
    w4 = w.reshape(groups, per, c_in_group, taps)  # the groups read correlated inputs too
    left = (w4 * share).transpose(0, 1, 3, 2).reshape(groups, per * taps, c_in_group)
    left = left.astype(np.float32)  # float32 products
    mixed = left @ s_x.astype(np.float32).reshape(groups, c_in_group, -1)  # [g, per taps, C]
    mixed = mixed.reshape(groups, per, taps, groups, c_in_group).transpose(3, 0, 1, 2, 4)
    right = w4.transpose(0, 3, 2, 1).reshape(groups, taps * c_in_group, per)
    out = mixed.reshape(groups, c_out, taps * c_in_group) @ right.astype(np.float32)
    out = out.transpose(1, 0, 2).reshape(c_out, c_out).astype(np.float64)  # [h, (g, p), q]
    return np.ldexp(out, e_s + 2 * e_w)


def pointwise_field(w: np.ndarray, s_x: np.ndarray) -> np.ndarray:
    """``W S_x W^T`` for a 1x1 Conv's weight ``[C_out, C_in]``, in float32 products (a field
    is a correlation estimate, C^3 work) of ``W`` and ``S_x`` at a unit binary scale."""
    (s_x, e_s), (w, e_w) = _binary_scaled(s_x), _binary_scaled(w)
    w = w.reshape(w.shape[0], -1).astype(np.float32)
    return np.ldexp((w @ s_x.astype(np.float32) @ w.T).astype(np.float64), e_s + 2 * e_w)


def mehler(s_x: np.ndarray, a: np.ndarray, nu: np.ndarray) -> np.ndarray:
    """``Cov(f(x_i), f(x_j)) = a_1^i a_1^j rho_ij + a_2^i a_2^j rho_ij^2`` off the diagonal,
    for ``a`` ``[orders, n]`` the Hermite amplitudes of f at each index (the higher orders
    left out: correlations between channels or features are small)."""
    sd = np.sqrt(np.maximum(np.diag(s_x), 0.0))
    # rho = S_x / (sd sd^T); an index of no spread covaries with none: below 1e-150 (a
    # variance of 1e-300, which no float32 signal holds) 1 / sd^2 would overflow
    varying = sd > 1e-150
    inv = np.where(varying, 1.0 / np.where(varying, sd, 1.0), 0.0)
    first = np.where(varying, a[1] * inv, 0.0)
    second = np.where(varying, a[2] * inv**2, 0.0)
    s_y = np.empty(np.broadcast_shapes(s_x.shape, first.shape))
    step = max(1, _ROWS_BLOCK // max(1, s_y.shape[1]))  # rows whose temporaries stay in cache
    for start in range(0, s_y.shape[0], step):
        rows = slice(start, start + step)
        out = np.multiply(s_x[rows], first[rows, None], out=s_y[rows])
        out *= first[None, :]
        square = s_x[rows] * s_x[rows]
        square *= second[rows, None]
        square *= second[None, :]
        out += square
    np.fill_diagonal(s_y, nu)
    return s_y


_ROWS_BLOCK = 1 << 15  # elements per block of rows of :func:`mehler`


def gated(s_x: np.ndarray, gate_mean: np.ndarray, nu: np.ndarray) -> np.ndarray:
    """``x_i g_i`` with gates independent of x and of each other: ``E g_i E g_j S_x[i, j]``
    off the diagonal."""
    s_y = s_x * np.outer(gate_mean, gate_mean)
    np.fill_diagonal(s_y, nu)
    return s_y


def centred(s_x: np.ndarray, nu: np.ndarray, sign: np.ndarray | None = None) -> np.ndarray:
    """A normalization over the axis (LayerNorm): each row minus its mean, ``P S_x P`` with
    ``P = I - 1 1^T / n``, divided by the row's scale (a common factor), times the scale
    parameters (their signs ``sign``), as :func:`rescaled` to ``nu``."""
    s = s_x - s_x.mean(axis=0, keepdims=True)
    s -= s.mean(axis=1, keepdims=True)
    return rescaled(s, nu, sign)


def normalized_variances(s: np.ndarray, mu: np.ndarray, eps: float) -> np.ndarray:
    """``Var[u_f / sqrt(Y)]`` per feature for a Gaussian row ``x ~ N(mu, s)``, ``u = P x`` its
    centred values (``C = P s P``, ``m = P mu``) and ``Y = u^T u / n + eps`` its scale, by the
    ratio's second-order expansion around ``E Y``: ``E[u_f^2 / Y] ~ E X / E Y - Cov(X, Y) / (E
    Y)^2 + E X Var Y / (E Y)^3`` with ``X = u_f^2``, ``E X = C_ff + m_f^2``, ``Cov(X, Y) = (2
    (C^2)_ff + 4 m_f (C m)_f) / n``, ``Var Y = (2 tr C^2 + 4 m^T C m) / n^2``, minus the mean's
    square ``m_f^2 / E Y`` (the row's own scale divides each row: few inputs make it vary)."""
    n = s.shape[0]
    c = s - s.mean(axis=0, keepdims=True)
    c -= c.mean(axis=1, keepdims=True)
    m = mu - mu.mean()
    c2, cm = c @ c, c @ m
    ey = (np.trace(c) + m @ m) / n + eps
    ex = np.diag(c) + m * m
    cov_xy = (2.0 * np.diag(c2) + 4.0 * m * cm) / n
    var_y = (2.0 * np.trace(c2) + 4.0 * m @ cm) / n**2
    second = ex / ey - cov_xy / ey**2 + ex * var_y / ey**3
    return np.maximum(second - m * m / ey, 0.0)


def cross_term_factor(s: np.ndarray, w_out_in: np.ndarray) -> np.ndarray:
    """Per output j of a linear map ``y_j = sum_m W_jm x_m``: ``w_j^T S w_j / sum_m W_jm^2
    S_mm``, the variance with x's covariance over the one with independent inputs. The ratio
    does not change when S or W is scaled: both are first brought to a largest element in
    [0.5, 1) by a power of two (exact), so that the float32 products neither overflow nor
    underflow (SAM's and BLIP's vision towers at their default init, weights of std 1e-10 on
    variances of 1e-31: every product below float32's smallest, the factor 0, the prediction
    0 for a variance of 1e-49)."""
    s, w_out_in = _binary_unit(s), _binary_unit(w_out_in)
    diag = (w_out_in * w_out_in) @ np.diag(s)
    w32 = w_out_in.astype(np.float32)  # float32 products: C^3 work
    with np.errstate(over="ignore", invalid="ignore"):
        full = ((w32 @ s.astype(np.float32)) * w32).sum(axis=1, dtype=np.float64)
    if not np.all(np.isfinite(full)):  # past float32's range (weights of 1e12): in float64
        full = ((w_out_in @ s) * w_out_in).sum(axis=1)
    return np.where(diag > 0, np.maximum(full, 0.0) / np.maximum(diag, 1e-300), 1.0)


def _binary_unit(a: np.ndarray) -> np.ndarray:
    """``a 2^-e`` with ``e`` the binary exponent of its largest magnitude (``a`` when 0 or not
    finite)."""
    return _binary_scaled(a)[0]


def _binary_scaled(a: np.ndarray) -> tuple[np.ndarray, int]:
    """``(a 2^-e, e)``, ``e`` the binary exponent of ``a``'s largest magnitude (0 when that is
    0 or not finite): the float32 products of the covariance maps then neither underflow nor
    overflow (SAM's neck at its default init: a Conv field of variances 1e-36 through weights
    of 1e-10 was 0, and the LayerNorm after it predicted 6e-103 for 2e-42), and scaling by a
    power of two is exact, so the products are unchanged bit for bit at ordinary scales."""
    a = np.asarray(a, dtype=np.float64)
    top = float(np.max(np.abs(a))) if a.size else 0.0
    if top == 0.0 or not np.isfinite(top):
        return a, 0
    e = int(np.frexp(top)[1])
    return np.ldexp(a, -e), e


__all__ = ["centred", "conv_same_tap", "cross_term_factor", "gated", "mehler",
           "normalized_variances", "pointwise_field", "rescaled", "tap_fractions"]
