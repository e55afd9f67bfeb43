"""The covariance between the units of an LSTM, GRU or RNN state at one step: the units of one
sample read the same input through their rows of W and R, so a linear head on them sums
``w^T S w``, not the diagonal ``sum_j w_j^2 Var h_j`` (4-15% apart on the classifiers of
docs/recurrent.md; up to 1.6x for an attention score ``Linear(H, 1)`` on every step).

Linearised about the scan's moments (recurrence.py), a step maps the state's and the input's
fluctuations ``delta s_t = J_t delta s_{t-1} + K_t delta x_t`` with each gate's mean slope
``E[f'(z)]`` (Stein) on its pre-activation ``delta z = W delta x + R delta h_{t-1}``:

    RNN   h = f(z):                    J = diag(f') R,  K = diag(f') W
    GRU   h = (1 - z) n + z h_{t-1}:   J = diag(h_{t-1} - n) z' R_z + diag(1 - z) N_R + diag(z),
          n' (W_n x + R_n (r h_{t-1})) (or n' (W_n x + r (R_n h_{t-1} + Rb))): N_R, N_W
    LSTM  s = (h, c): c = f c_{t-1} + i g, h = o tanh(c):
          delta c = f delta c_{t-1} + g i' delta z_i + c_{t-1} f' delta z_f + i g' delta z_g
          delta h = tanh(c) o' delta z_o + o tanh'(c) delta c   (peepholes: P delta c in z)

and ``S_t = J S_{t-1} J^T + K S_x K^T + J C K^T + K C^T J^T``, ``C = Cov(s_{t-1}, x_t)``
from the input's correlation across adjacent steps taken as Markov: ``Cov(s_{t-1}, x_t) =
rho_{t-1,t} Cov(s_{t-1}, x_{t-1})`` (a stacked layer's input is strongly correlated across
steps). ``S_x`` is the input's feature covariance (its field, else its variances) at each
step's variance. The diagonal of ``S_t`` is set to the scan's own variances each step (the
gates' higher Hermite orders add variance to each unit, hardly any covariance between units,
and that variance spreads through ``R`` into the next step's covariances).

Y's field is the mean over the steps of ``S_t``'s state block, Y_h's and Y_c's the last step's;
per direction (a bidirectional layer's directions are the head axis of the field: the
exporter's Reshape of ``[.., 2, H]`` into ``2H`` makes it block-diagonal, the directions taken as
independent). Not modelled: several sequence lengths (no field), the covariance between
directions, gates clipped (their slopes are the clipped functions' all the same).
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext
from .covariance_layout import Field
from .recurrent_scan import scanned

_MAX_WORK = 1e10  # multiply-adds of the recursion (about 8 S^3 per step), above: no field


def _states(op: str, units: int) -> int:
    return 2 * units if op == "LSTM" else units


def affordable(op: str, units: int, steps: int, directions: int) -> bool:
    return 8 * _states(op, units) ** 3 * steps * directions <= _MAX_WORK


def _rows(M: np.ndarray, v: np.ndarray) -> np.ndarray:
    return v[:, None] * M


def _lstm_step(sl: dict, t: int, W, R, peep):
    """(J [2H, 2H], K [2H, I]) of step t, the state ordered (h, c)."""
    h = R.shape[1]
    Wg, Rg = W.reshape(4, h, -1), R.reshape(4, h, h)  # ONNX gate order i, o, f, c
    a_i = sl["g"][t] * sl["di"][t]
    a_f = sl["c_prev"][t] * sl["df"][t]
    a_g = sl["i"][t] * sl["dg"][t]
    q_r = _rows(Rg[0], a_i) + _rows(Rg[2], a_f) + _rows(Rg[3], a_g)
    q_w = _rows(Wg[0], a_i) + _rows(Wg[2], a_f) + _rows(Wg[3], a_g)
    q_c = sl["f"][t].copy()
    b_o = sl["h"][t] * sl["do"][t]
    e = sl["o"][t] * sl["dh"][t]
    if peep is not None:  # z_i, z_f read c_{t-1}; z_o reads c_t
        q_c = q_c + a_i * peep[0] + a_f * peep[2]
        e = e + b_o * peep[1]
    dense = np.concatenate([_rows(Rg[1], b_o) + _rows(q_r, e), q_r])  # J's h columns
    K = np.concatenate([_rows(Wg[1], b_o) + _rows(q_w, e), q_w])
    return (dense, e * q_c, q_c), K  # J: its h columns dense, its c columns two diagonals


def _times(J, M: np.ndarray) -> np.ndarray:
    """``J M`` for J dense or the LSTM's (h columns dense; c columns ``[diag(a); diag(b)]``)."""
    if not isinstance(J, tuple):
        return J @ M
    dense, a, b = J
    h = dense.shape[1]
    return dense @ M[:h] + np.concatenate([a[:, None] * M[h:], b[:, None] * M[h:]])


def _propagate(J, S: np.ndarray) -> np.ndarray:
    """``J S J^T`` (S symmetric)."""
    return _times(J, _times(J, S).T).T


def _gru_step(sl: dict, t: int, W, R, lbr: bool):
    h = R.shape[1]
    Wg, Rg = W.reshape(3, h, -1), R.reshape(3, h, h)  # z, r, h
    g_r, g_w = _rows(Rg[1], sl["dr"][t]), _rows(Wg[1], sl["dr"][t])
    prev, dn = sl["h_prev"][t], sl["dn"][t]
    if lbr:
        b = sl["b"][t]
        n_r = _rows(_rows(Rg[2], sl["r"][t]) + _rows(g_r, b), dn)
        n_w = _rows(Wg[2] + _rows(g_w, b), dn)
    else:
        n_r = _rows(Rg[2] * sl["r"][t][None, :] + (Rg[2] * prev[None, :]) @ g_r, dn)
        n_w = _rows(Wg[2] + (Rg[2] * prev[None, :]) @ g_w, dn)
    lead = (prev - sl["n"][t]) * sl["dz"][t]
    keep = 1.0 - sl["z"][t]
    J = _rows(Rg[0], lead) + _rows(n_r, keep) + np.diag(sl["z"][t])
    K = _rows(Wg[0], lead) + _rows(n_w, keep)
    return J, K


def _set_diagonal(S: np.ndarray, var: np.ndarray) -> None:
    S[np.diag_indices_from(S)] = np.maximum(var, 0.0)


def scan_covariance(op: str, record: dict, W, R, var_x, rho_next, corr_x, initial, *,
                    lbr=False, peep=None):
    """The state's covariance between units ``[S, S]`` (S = H; the LSTM's (h, c), 2H): its mean
    over the steps and at the last (scan order); and each step's gain ``d h_t / d x_t`` [T, H,
    I] (K's rows of h). ``record`` a direction's gate slopes and state
    variances per step (recurrent_scan.scanned), ``var_x`` [T, I] the input's variance per
    step and feature, ``rho_next`` [T] the input's correlation with the step before (0 at the
    first), ``corr_x`` [I, I] its features' correlation, ``initial`` the states' variances."""
    sl = record
    steps, units = sl["var_h"].shape
    exact = np.concatenate([sl["var_h"]] + ([sl["var_c"]] if op == "LSTM" else []), axis=1)
    size = exact.shape[1]
    # float32 products: the field is a correlation estimate (as channel_covariance's)
    W, R, corr_x, rho_next = (np.asarray(a, dtype=np.float32) for a in (W, R, corr_x, rho_next))
    peep = None if peep is None else np.asarray(peep, dtype=np.float32)
    sl = {k: np.asarray(v, dtype=np.float32) for k, v in sl.items() if k not in ("var_h", "var_c")}
    S = np.diag(np.maximum(initial, 0.0)).astype(np.float32)
    N = np.zeros((size, W.shape[1]), dtype=np.float32)  # Cov(s_{t-1}, x_{t-1})
    total = np.zeros((size, size))
    gains = np.empty((steps, units, W.shape[1]), dtype=np.float32)  # K's state rows
    sd_prev = None
    for t in range(steps):
        if op == "LSTM":
            J, K = _lstm_step(sl, t, W, R, peep)
        elif op == "GRU":
            J, K = _gru_step(sl, t, W, R, lbr)
        else:
            J, K = _rows(R, sl["d"][t]), _rows(W, sl["d"][t])
        sd = np.sqrt(np.maximum(var_x[t], 0.0)).astype(np.float32)
        s_x = corr_x * np.outer(sd, sd)
        if t and rho_next[t] != 0:
            C = rho_next[t] * N * np.where(sd_prev > 0, sd / np.where(sd_prev > 0, sd_prev, 1), 0)
            JC = _times(J, C)
            JC_K = JC @ K.T
            cross = JC_K + JC_K.T
        else:  # independent steps (a first layer on its inputs): no cross terms
            JC, cross = 0.0, 0.0
        K_sx = K @ s_x
        gains[t] = K[:units]
        S = _propagate(J, S) + K_sx @ K.T + cross
        N = JC + K_sx
        _set_diagonal(S, exact[t])
        total += S
        sd_prev = sd
    return total / steps, S.astype(np.float64), gains


def _psd(S: np.ndarray) -> np.ndarray:
    """``S`` with its negative eigenvalues set to 0 (its diagonal, the scan's variances, set
    after the linear map can leave it indefinite: a deep stack's tiny signal read
    ``w^T S_x w < 0``)."""
    S = (S + S.T) / 2
    values, vectors = np.linalg.eigh(S)
    if values.min() >= 0:
        return S
    return (vectors * np.maximum(values, 0.0)) @ vectors.T


def output_field(ctx: RuleContext, inputs, index: int, x_field: Field | None) -> Field | None:
    """The field of output ``index`` (Y, Y_h, Y_c) of the recurrent node of ``ctx`` (module
    docstring); ``x_field`` X's own (its features' correlation), if any."""
    op = ctx.node.op_type
    shape = ctx.in_shape(0)
    r = ctx.const(2)
    if len(shape) != 3 or r is None or np.ndim(r) != 3:
        return None
    layout = int(ctx.attr("layout", 0))
    steps = shape[0 if layout == 0 else 1]
    units, directions = np.shape(r)[2], np.shape(r)[0]
    if not affordable(op, units, steps, directions):
        return None
    keep = scanned(inputs, ctx, x_field)
    if len(keep["lengths"]) != 1 or keep["lengths"][0][0] != steps:
        return None
    corr_x = keep["corr_x"]
    W, R, corr = keep["W"], keep["R"], keep["corr"]
    covs, gains = [], []
    for d, (reverse, scan) in enumerate(keep["scans"]):
        order = np.arange(steps)[::-1] if reverse else np.arange(steps)
        rho = np.concatenate([[0.0], corr[order[:-1], order[1:]]])
        initial = [keep["h0"][d][1]] + ([keep["c0"][d][1]] if op == "LSTM" else [])
        peep = (np.asarray(ctx.const(7), dtype=np.float64)[d].reshape(3, units)
                if op == "LSTM" and ctx.has_input(7) else None)
        pooled, final, gain = scan_covariance(
            op, scan, W[d], R[d], keep["var"][order], rho, corr_x, np.concatenate(initial),
            lbr=bool(ctx.attr("linear_before_reset", 0)), peep=peep)
        block = slice(units, 2 * units) if index == 2 else slice(0, units)
        covs.append(_psd(pooled[block, block] if index == 0 else final[block, block]))
        gains.append(gain[::-1] if reverse else gain)  # time order
    layout = keep["layout"]
    axis = 3 if index == 0 else 2
    if directions == 1:
        return Field(axis, covs[0])
    head = (1 if layout == 0 else 2) if index == 0 else (0 if layout == 0 else 1)
    joint = None
    if index == 0:  # step t of both directions reads x_t: Cov = K_f,t S_x,t K_r,t^T
        sd = np.sqrt(np.maximum(keep["var"], 0.0)).astype(np.float32)[:, None, :]
        cross = np.einsum("thi,ij,tkj->hk", gains[0] * sd, corr_x.astype(np.float32),
                          gains[1] * sd, optimize=True) / steps
        joint = _psd(np.block([[covs[0], cross], [cross.T, covs[1]]]))
    return Field(axis, np.stack(covs), head, joint)


__all__ = ["affordable", "output_field", "scan_covariance"]
