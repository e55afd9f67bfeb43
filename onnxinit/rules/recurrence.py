"""Moments of LSTM, GRU and RNN states across time steps, from the actual weights.

Each hidden unit j's gate pre-activation at step t is a sum over many inputs, taken as Gaussian
with moments from the weights (``W x_t + R h_{t-1} + b``, per unit, inputs independent across
features)::

    E[z_t]        = W E[x_t] + R E[h_{t-1}] + b
    Var[z_t]      = W^2 Var[x_t] + R^2 Var[h_{t-1}]
    Cov[z_t, z_s] = W^2 Cov[x_t, x_s] + R^2 Cov[h_{t-1}, h_{s-1}]

The time covariance matters: the cell of an LSTM (the state of a GRU) sums its drive over many
steps, and the drive of step t is correlated with earlier ones through the input's own
correlation over time (a stacked layer reads a leaky integral) and through the recurrence. A
gate's value at two steps is ``E[f(z_t) f(z_s)]`` by Mehler's formula (hermite.py). Products of
different gates (``i_t g_t``, ``o_t tanh(c_t)``, ``(1 - z_t) n_t``) are taken as products of
independent factors; a gate at step t as independent of the state it multiplies. The cell
recursion then needs, besides the means, only ``Q(a, t) = E[c_a d_t]``, the correlation of a
past state with today's drive::

    LSTM  c_t = f_t c_{t-1} + d_t,  d_t = i_t g_t
          Q(a, t) = E[f_{a-1}] Q(a-1, t) + E[d_{a-1} d_t],   Q(0, t) = E[c_0] E[d_t]
          E[c_t^2] = E[f_t^2] E[c_{t-1}^2] + 2 E[f_t] Q(t-1, t) + E[d_t^2]
          E[c_t c_a] = E[f_t] E[c_{t-1} c_a] + Q(a, t)
          h_t = o_t h(c_t): E[h_t h_s] = E[o_t o_s] E[h(c_t) h(c_s)], c Gaussian by its moments
    GRU   H_t = (1 - z_t) n_t + z_t H_{t-1}: the same with f -> z and d_t -> (1 - z_t) n_t
    RNN   h_t = f(z_t): Mehler directly

LSTM gates of one unit read the same inputs through different rows of W and R, so their
pre-activations co-vary, ``Cov(z_a, z_b) = sum_k W_ak W_bk Var[x_k] + sum_k R_ak R_bk
Var[h_k]``: the drive ``E[i g]`` is Mehler's ``sum_n c_n(i) c_n(g) rho^n`` (not E[i] E[g]), and
``E[h] = E[o] E[h(c)] + E[o'] E[h'(c)] Cov(z_o, c_t)`` with this step's part of the cell,
``Cov(z_o, i g) = Cov(z_o, z_i) E[i'] E[g] + Cov(z_o, z_g) E[i] E[g']`` (Stein, first order).
The cell sums Cov(i, g) over about ``1 / (1 - E[f])`` steps: each unit of a fresh LSTM gets a
mean of its own (a Keras LSTM's mean over time: a tenth of its variance).

Not modelled: the gates' correlation in the GRU and in second moments, between a gate and
the state it multiplies beyond this step, between different units, and the forget gates' own
fluctuation in the cross-time products (``E[f_t]`` for ``f_t``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .hermite import ORDER, coefficients, cross_moment


@dataclass
class Drive:
    """The input part of the pre-activations of one direction, in scan order: W x_t plus the
    biases. ``mean``/``var`` [T, G*H], ``cov`` [T, T, G*H] (Cov across steps, diagonal = var);
    ``cross`` [T, G, G, H]: Cov between the gates of one unit at one step (rows of W over the
    same inputs), when known."""

    mean: np.ndarray
    var: np.ndarray
    cov: np.ndarray
    cross: np.ndarray | None = None


@dataclass
class Gate:
    """A gate's function: ``fn(z)``; ``smooth`` picks the quadrature (hermite.py)."""

    fn: Callable[[np.ndarray], np.ndarray]
    smooth: bool = True


@dataclass
class Scan:
    """Per step t: E[h_t] [T, H], E[h_t h_s] [T, T, H] (and the cell's for LSTM)."""

    h_mean: np.ndarray
    h_second: np.ndarray
    c_mean: np.ndarray | None = None
    c_second: np.ndarray | None = None
    # per step [T, H]: the gates' means ("i", "f", ...) and mean slopes E[f'(z)] ("di", ...),
    # the states' means before the step, for the linearised covariance between units
    # (recurrent_units.py)
    slopes: dict[str, np.ndarray] | None = None


class _Series:
    """A gate over the steps so far: its Hermite coefficients per step, for Mehler."""

    def __init__(self, steps: int, units: int):
        self.c = np.zeros((steps, ORDER + 1, units))
        self.rem = np.zeros((steps, units))
        self.var = np.zeros((steps, units))

    def add(self, t: int, gate: Gate, mean, var):
        self.c[t], self.rem[t] = coefficients(gate.fn, mean, var, smooth=gate.smooth)
        self.var[t] = var
        return self.c[t][0], (self.c[t] ** 2).sum(axis=0) + self.rem[t]  # E, E[f^2]

    def slope(self, t: int) -> np.ndarray:
        """E[f'(z_t)] = c_1 / sd (Stein)."""
        sd = np.sqrt(self.var[t])
        return np.where(sd > 0, self.c[t][1] / np.where(sd > 0, sd, 1.0), 0.0)

    def cross(self, t: int, cov: np.ndarray) -> np.ndarray:
        """E[f_t f_s] for s < t [t, H] given Cov(z_t, z_s) [t, H]."""
        if t == 0:
            return np.zeros((0, self.c.shape[2]))
        scale = np.sqrt(self.var[t] * self.var[:t])
        rho = np.where(scale > 0, cov / np.where(scale > 0, scale, 1.0), 0.0)
        c_t = self.c[t][:, None, :]
        c_s = np.moveaxis(self.c[:t], 1, 0)
        return cross_moment(c_t, c_s, rho, self.rem[t][None], self.rem[:t])


def _recurrent(R: np.ndarray, h_mean: np.ndarray, h_second: np.ndarray, t: int):
    """(mean, var, Cov with steps s < t) of ``R h_{t-1}`` given the state moments (state index
    0 = initial, t = after step t-1)."""
    r2 = R**2
    mean = R @ h_mean[t]
    var = r2 @ np.maximum(h_second[t, t] - h_mean[t] ** 2, 0.0)
    if t == 0:
        return mean, var, np.zeros((0, R.shape[0]))
    cov_h = h_second[t, :t] - h_mean[t] * h_mean[:t]  # Cov(h_{t-1}, h_{s-1}): step s, state s
    return mean, var, cov_h @ r2.T


def _cell(Ef, Ef2, Ed, Ed2, Edd, mean, second, q_prev_f, t):
    """One step of ``c_t = f c_{t-1} + d_t`` on (means [T+1, H], second moments [T+1, T+1, H]);
    ``Edd`` = E[d_{s} d_t] for s < t [t, H]; ``q_prev_f`` = E[f_s] for s < t [t, H]."""
    q = np.empty((t + 1, mean.shape[1]))
    q[0] = mean[0] * Ed
    for a in range(1, t + 1):
        q[a] = q_prev_f[a - 1] * q[a - 1] + Edd[a - 1]
    mean[t + 1] = Ef * mean[t] + Ed
    second[t + 1, t + 1] = Ef2 * second[t, t] + 2 * Ef * q[t] + Ed2
    cross = Ef * second[t, : t + 1] + q
    second[t + 1, : t + 1] = cross
    second[: t + 1, t + 1] = cross


def _squashed(fn: Gate, mean, second, t, series: _Series):
    """E[fn(c_t)], E[fn(c_t)^2] and E[fn(c_t) fn(c_s)] (s < t) with c Gaussian by its moments
    (state index t + 1 is step t)."""
    var = np.maximum(second[t + 1, t + 1] - mean[t + 1] ** 2, 0.0)
    e, e2 = series.add(t, fn, mean[t + 1], var)
    cov = second[t + 1, 1:t + 1] - mean[t + 1] * mean[1:t + 1]
    return e, e2, series.cross(t, cov)


def lstm(drive: Drive, R, peep, c0, h0, gates: tuple[Gate, Gate, Gate], input_forget=False) -> Scan:
    """LSTM over the drive (gate order i, o, f, c as in ONNX); ``peep`` [3, H] or None;
    ``c0``/``h0``: (mean, var) [H] of the initial states; ``gates``: (f, g, h) functions."""
    steps, units = drive.mean.shape[0], R.shape[1]
    f_gate, g_gate, h_gate = gates
    hm, hs = _state(steps, units, h0)
    cm, cs = _state(steps, units, c0)
    series = {k: _Series(steps, units) for k in "iofch"}
    m_mean, m_ind = np.zeros((steps, units)), np.zeros((steps, units))
    d_second = np.zeros((steps, steps, units))
    f_mean = np.zeros((steps, units))
    d_mean, d_ind = np.zeros((steps, units)), np.zeros((steps, units))
    slopes = {k: np.zeros((steps, units)) for k in ("i", "f", "g", "o", "h", "di", "df", "dg",
                                                     "do", "dh", "c_prev")}
    for t in range(steps):
        rm, rv, rc = _recurrent(R, hm, hs, t)
        mz = drive.mean[t] + rm
        vz = drive.var[t] + rv
        cz = drive.cov[t, :t] + rc
        parts = {k: slice(i * units, (i + 1) * units) for i, k in enumerate("iofc")}
        c_var = np.maximum(cs[t, t] - cm[t] ** 2, 0.0)
        moments = {}
        for k, gate in (("i", f_gate), ("f", f_gate), ("c", g_gate)):
            m, v, cross = mz[parts[k]], vz[parts[k]], cz[:, parts[k]]
            if peep is not None and k in "if":
                p = peep["iof".index(k)]
                m, v = m + p * cm[t], v + p**2 * c_var
            e, e2 = series[k].add(t, gate, m, v)
            moments[k] = (e, e2, series[k].cross(t, cross))
        Ei, Ei2, Eii = moments["i"]
        Eg, Eg2, Egg = moments["c"]
        Ef, Ef2, _ = moments["f"]
        if input_forget:
            Ef, Ef2 = 1.0 - Ei, 1.0 - 2 * Ei + Ei2
        f_mean[t] = Ef
        joint = _gate_cross(drive, R, hm, hs, t, units)
        # E[i g] by Mehler over the correlation of the two pre-activations (rows of W and R
        # over the same inputs): the cell sums Cov(i, g) over ~1 / (1 - E[f]) steps, which is
        # what gives each unit of a fresh LSTM its own mean
        Ed = Ei * Eg if joint is None else _joint(series["i"], series["c"], t, joint[0, 3])
        d_mean[t] = Ed
        d_second[t, :t] = Eii * Egg + Ed * d_mean[:t] - Ei * Eg * d_ind[:t]
        d_ind[t] = Ei * Eg
        _cell(Ef, Ef2, Ed, np.maximum(Ei2 * Eg2, Ed**2), d_second[t, :t], cm, cs, f_mean[:t], t)
        m, v, cross = mz[parts["o"]], vz[parts["o"]], cz[:, parts["o"]]
        if peep is not None:
            new_var = np.maximum(cs[t + 1, t + 1] - cm[t + 1] ** 2, 0.0)
            m, v = m + peep[1] * cm[t + 1], v + peep[1] ** 2 * new_var
        Eo, Eo2 = series["o"].add(t, f_gate, m, v)
        Eoo = series["o"].cross(t, cross)
        Eh, Eh2, Ehh = _squashed(h_gate, cm, cs, t, series["h"])
        Em = Eo * Eh
        if joint is not None and peep is None:
            # Cov(o, h(c)) to first order: E[o'] E[h'(c)] Cov(z_o, c_t), the cell's part of
            # this step Cov(z_o, i g) = Cov(z_o, z_i) E[i'] E[g] + Cov(z_o, z_g) E[i] E[g']
            i1, g1, o1, h1 = (series[k].c[t][1] / np.sqrt(np.maximum(series[k].var[t], 1e-300))
                              for k in "icoh")
            cov_oc = joint[1, 0] * i1 * Eg + joint[1, 3] * Ei * g1
            Em = Em + o1 * h1 * cov_oc
        m_mean[t] = Em
        for key, value in (("i", Ei), ("f", Ef), ("g", Eg), ("o", Eo), ("h", Eh),
                           ("c_prev", cm[t])):
            slopes[key][t] = value
        for key, k in (("di", "i"), ("df", "f"), ("dg", "c"), ("do", "o"), ("dh", "h")):
            slopes[key][t] = series[k].slope(t)
        if input_forget:
            slopes["df"][t] = -slopes["di"][t]
        _store(hm, hs, t, Em, np.maximum(Eo2 * Eh2, Em**2),
               Eoo * Ehh + Em * m_mean[:t] - Eo * Eh * m_ind[:t])
        m_ind[t] = Eo * Eh
    return Scan(hm[1:], hs[1:, 1:], cm[1:], cs[1:, 1:], slopes)


def _gate_cross(drive: Drive, R, hm, hs, t: int, units: int) -> np.ndarray | None:
    """Cov between the gates' pre-activations of one unit at step t [G, G, H]: the drive's
    (``drive.cross``) plus ``sum_k R_ak R_bk Var[h_{t-1, k}]``."""
    if drive.cross is None:
        return None
    gates = R.shape[0] // units
    rg = R.reshape(gates, units, -1)
    var_h = np.maximum(hs[t, t] - hm[t] ** 2, 0.0)
    return drive.cross[t] + np.einsum("ajk,bjk,k->abj", rg, rg, var_h)


def _joint(a: _Series, b: _Series, t: int, cov: np.ndarray) -> np.ndarray:
    """E[f_a(z_a) f_b(z_b)] at step t of two gates whose pre-activations have Cov ``cov``."""
    scale = np.sqrt(a.var[t] * b.var[t])
    rho = np.where(scale > 0, cov / np.where(scale > 0, scale, 1.0), 0.0)
    return cross_moment(a.c[t], b.c[t], rho, a.rem[t], b.rem[t])


def gru(drive: Drive, R, recurrent_bias, h0, gates: tuple[Gate, Gate], linear_before_reset: bool
        ) -> Scan:
    """GRU over the drive (gate order z, r, h as in ONNX; the drive of h excludes the recurrent
    bias when ``linear_before_reset``, which then multiplies the reset gate with it)."""
    steps, units = drive.mean.shape[0], R.shape[1]
    f_gate, g_gate = gates
    hm, hs = _state(steps, units, h0)
    series = {k: _Series(steps, units) for k in "zrn"}
    n_second = np.zeros((steps, steps, units))
    z_mean = np.zeros((steps, units))
    w_mean = np.zeros((steps, units))
    parts = {k: slice(i * units, (i + 1) * units) for i, k in enumerate("zrh")}
    history = (np.zeros((steps, units)), np.zeros((steps, units)))
    slopes = {k: np.zeros((steps, units)) for k in ("z", "r", "n", "dz", "dr", "dn", "h_prev")}
    for t in range(steps):
        rm, rv, rc = _recurrent(R[: 2 * units], hm, hs, t)
        mz = drive.mean[t, : 2 * units] + rm
        vz = drive.var[t, : 2 * units] + rv
        cz = drive.cov[t, :t, : 2 * units] + rc
        Ez, Ez2 = series["z"].add(t, f_gate, mz[parts["z"]], vz[parts["z"]])
        Er, Er2 = series["r"].add(t, f_gate, mz[parts["r"]], vz[parts["r"]])
        Err = series["r"].cross(t, cz[:, parts["r"]])
        um, uv, uc = _candidate(drive, R[2 * units:], recurrent_bias, hm, hs, t, (Er, Er2, Err),
                                history, linear_before_reset)
        En, En2 = series["n"].add(t, g_gate, um, uv)
        n_second[t, :t] = series["n"].cross(t, uc)
        Ew, Ew2, Ewz = 1.0 - Ez, 1.0 - 2 * Ez + Ez2, Ez - Ez2
        z_mean[t], w_mean[t] = Ez, Ew
        for key, value in (("z", Ez), ("r", Er), ("n", En), ("h_prev", hm[t])):
            slopes[key][t] = value
        for key in "zrn":
            slopes["d" + key][t] = series[key].slope(t)
        q = np.empty((t + 1, units))
        q[0] = hm[0] * En
        for a in range(1, t + 1):
            q[a] = w_mean[a - 1] * n_second[t, a - 1] + z_mean[a - 1] * q[a - 1]
        hm[t + 1] = Ew * En + Ez * hm[t]
        hs[t + 1, t + 1] = Ew2 * En2 + 2 * Ewz * q[t] + Ez2 * hs[t, t]
        cross = Ew * q + Ez * hs[t, : t + 1]
        hs[t + 1, : t + 1] = cross
        hs[: t + 1, t + 1] = cross
    slopes["b"] = history[1]  # Rh E[h_{t-1}] + Rb_h (linear_before_reset)
    return Scan(hm[1:], hs[1:, 1:], slopes=slopes)


def _candidate(drive, Rh, recurrent_bias, hm, hs, t, r, history, linear_before_reset):
    """(mean, var, Cov with earlier steps) of the candidate's pre-activation at step t;
    ``r`` = (E[r_t], E[r_t^2], E[r_t r_s] for s < t), ``history`` = (E[r_s], E[b_s]) [T, H]
    of earlier steps, updated here (b = Rh h + Rb_h, the linear_before_reset product)."""
    Er, Er2, Err = r
    r_means, b_means = history
    units = Rh.shape[0]
    dm, dv, dc = drive.mean[t, 2 * units:], drive.var[t, 2 * units:], drive.cov[t, :t, 2 * units:]
    r2 = Rh**2
    r_means[t] = Er
    if not linear_before_reset:  # Rh (r * h_{t-1}): r and h independent per unit
        a_mean, a_second = Er * hm[t], Er2 * hs[t, t]
        mean = dm + Rh @ a_mean + recurrent_bias
        var = dv + r2 @ np.maximum(a_second - a_mean**2, 0.0)
        cov_a = Err * hs[t, :t] - a_mean * r_means[:t] * hm[:t]
        return mean, var, dc + cov_a @ r2.T
    b_mean = Rh @ hm[t] + recurrent_bias  # r * (Rh h_{t-1} + Rb_h)
    b_var = r2 @ np.maximum(hs[t, t] - hm[t] ** 2, 0.0)
    b_means[t] = b_mean
    mean = dm + Er * b_mean
    var = dv + Er2 * (b_var + b_mean**2) - Er**2 * b_mean**2
    e_bb = (hs[t, :t] - hm[t] * hm[:t]) @ r2.T + b_mean * b_means[:t]
    return mean, var, dc + Err * e_bb - Er * r_means[:t] * b_mean * b_means[:t]


def rnn(drive: Drive, R, h0, gate: Gate) -> Scan:
    """Elman RNN ``h_t = f(W x_t + R h_{t-1} + b)``: Mehler across steps."""
    steps, units = drive.mean.shape[0], R.shape[1]
    hm, hs = _state(steps, units, h0)
    series = _Series(steps, units)
    slope = np.zeros((steps, units))
    for t in range(steps):
        rm, rv, rc = _recurrent(R, hm, hs, t)
        e, e2 = series.add(t, gate, drive.mean[t] + rm, drive.var[t] + rv)
        slope[t] = series.slope(t)
        _store(hm, hs, t, e, e2, series.cross(t, drive.cov[t, :t] + rc))
    return Scan(hm[1:], hs[1:, 1:], slopes={"d": slope})


def _state(steps: int, units: int, initial) -> tuple[np.ndarray, np.ndarray]:
    """State means [T+1, H] and second moments [T+1, T+1, H], index 0 the initial state."""
    mean = np.zeros((steps + 1, units))
    second = np.zeros((steps + 1, steps + 1, units))
    mean[0], var = initial
    second[0, 0] = var + mean[0] ** 2
    return mean, second


def _store(mean, second, t, e, e2, cross):
    """State after step t: mean, E[h_t^2], E[h_t h_s] (s < t; E[h_t h_0] = means' product)."""
    mean[t + 1] = e
    second[t + 1, t + 1] = e2
    second[t + 1, 1:t + 1] = cross
    second[1:t + 1, t + 1] = cross
    second[t + 1, 0] = second[0, t + 1] = e * mean[0]


__all__ = ["Drive", "Gate", "Scan", "gru", "lstm", "rnn"]
