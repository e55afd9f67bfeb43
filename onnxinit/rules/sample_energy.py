"""The energy a sample's channels and positions share, carried on demand to a global pool.

Per tensor x ``[N, C, *spatial]`` (K positions) let ``e_nc = mean_p (x_ncp - mu_c)^2 / nu_c``
be sample n's energy in channel c relative to the channel's variance. Three quantities:

* ``eta``: the energy every channel and position of a sample shares, the mean over pairs of
  distinct channels of ``Cov_n(e_nc, e_nc')`` (a per-sample scale ``sigma_n^2 = 1 + eps_n``,
  ``Var eps = eta``);
* ``alpha_c``: the per-sample mean offset that moves with it, ``E[x_nc | eps] - mu_c =
  alpha_c eps`` (a sample with more energy has a larger mean after a convex activation);
* ``lam_c``: the rest of ``Var_n(e_nc)``, the realized energy of channel c's K positions
  (``2/K`` for independent Gaussian positions).

A global pool of ``f(z)`` keeps the shared part, a between-sample variance no model of
independent or locally correlated positions sees. Per channel, with z's source Gaussian
``N(m, s^2)`` pooled over position classes (law of total variance),

    dVar = Var_eps E_t[f(m + a alpha_z eps + s sqrt(1 + eps) t)],  1 + eps lognormal, mean 1,
                                                                   variance eta_z (1 - 1/N)

(three Gauss-Hermite nodes of log(1 + eps); a = s / sd(z) takes alpha to the source's units;
``1 - 1/N``: a BatchNorm in the chain centres the batch). To first order
``(E[t f] a alpha_z / s + E[(t^2 - 1) f] / 2)^2 eta_z``. Measured on MobileNetV3-small
(64x64, 16 batches of 8) eta grows from 0.002 (block 1) to 0.1 (blocks 8-11), alpha / sd is
0.2-0.4, and without them the squeeze-excite pools miss 0.1-0.3 of their variance.

``eps`` is a sum of independent factors (:mod:`.sample_masks`): ``eps_0`` (what the convs
seed), and one factor per per-sample gate every channel shares (a stochastic-depth keep mask),
with its own ``eta_k`` and offset ``alpha_k``; the rules below act on each factor (a residual
sum adds each factor's loadings, so a branch's mask adds in quadrature with its skip's
energy), and the pool integrates ``eps_0`` with the Gaussian factors as above, each two-point
factor (a mask) exactly at its two points. At most 16 factors are kept apart per tensor, the
smallest merged into ``eps_0``. The convs' seeds stay in ``eps_0``, one common scale: as
factors of their own (adding in quadrature at the sums) MobileNetV3-small at 64x64 went 91.1%
-> 93.6% within 10% but EfficientNet-B0 without stochastic depth at 112x112 94.5% -> 92.7%,
its pools lowered where the projection convs after the gates already seed too little.

Each record also carries the channels' loadings on the energy (:mod:`.energy_loading`: a
conv that favours the channels that load more grows eta, and the pools and the element-wise
rules read each channel's own share); the rules below are for equal loadings, where they are
unchanged.

Carried through the layers on demand (memoised per propagation), per node kind:

- Conv (weights W, groups): ``b_jct = W_jct^2 nu_c / sum W^2 nu``, ``B_jc = sum_t b_jct``.
  Two output channels share the realized energies of the inputs they both read (a squeeze-
  excite map's few heavy-tailed positions leak into every output of a 1x1 conv):
  ``eta_y = eta_x + sum_c lam_c (S_c^2 - Q_c) / (J (J - 1))``, ``S_c = sum_j B_jc``,
  ``Q_c = sum_j B_jc^2`` (the mean over pairs j != j'; 0 for a depthwise conv);
  ``lam_y = lam_G(y) + sum_c B_jc^2 (lam_c - lam_G(x_c))``, ``lam_G = 2 sum_{p,q} rho(p - q)^2
  / K^2`` the Gaussian field's value from the tensor's spatial correlation;
  ``alpha_y = (sum_{c,t} W_jct f_t alpha_c) eta_x / eta_y`` (per factor without the ratio),
  f_t the share of output positions where tap t reads inside the input (zero padding does not
  move), the ratio because the seeded energy is independent of the offsets.
- Per-channel affine maps (Add/Mul of constants): eta, lam kept, alpha scaled. BatchNorm
  divides by a batch energy that holds each sample's own: every factor's eta times
  ``mean_{c != c'} s_c s_c'``, ``s_c = 1 / (1 + omega_c)``, its offsets over the square root
  (:mod:`.batch_energy`, which also carries omega, the part of lam a batch mean keeps); an
  element-wise chain through a BatchNorm and the pool of one likewise.
- Element-wise chain f of a Gaussian z (the tensor's source): ``eta_f = mean(beta)^2 eta_z``,
  ``beta = E[(t^2 - 1) (f - E f)^2] / (2 Var f)`` (the slope of log Var f in log sigma^2,
  Stein's identity); ``alpha_f = E[t f] a alpha_z / s + E[(t^2 - 1) f] / 2``; ``lam_f =
  (1/K^2) sum_{p,q} Cov(g_p, g_q) / Var(f)^2 + beta^2 (lam_z - lam_G(z))``, ``g = (f - E f)^2``,
  by Mehler's expansion ``Cov = sum_{n<=4} a_n^2 rho_z^n / n!``, ``a_n = E[g He_n(t)]``.
  A two-point factor exactly at its points (:func:`.sample_masks.chain_factor`).
- Add of two signals, per factor (a residual branch carries its skip's scale): ``eta = (w
  sqrt(eta_a) + (1 - w) sqrt(eta_b))^2``, w a's share of the variance; lam by the shares
  squared; the offsets add (:func:`.sample_masks.sum_factors`).
- Mul by a per-sample gate g ``[N, C, 1, ...]`` (taken as Gaussian): eta kept,
  ``lam_y = r (1 + lam_x + eta_x) - 1 - eta_x``, ``r = E g^4 / (E g^2)^2``, ``alpha_y = E[g]
  alpha_x``. A gate ``[N, 1, 1, ...]`` one value for all channels: x's factors kept, a factor of
  its own ``(r - 1) (1 + eta_x)`` (:func:`.sample_masks.gate_factor`; a keep mask
  ``Cast(Less(U, c)) / keep`` two-point, other gates Gaussian), ``lam_y = r lam_x``.
- Concat over channels, per factor: ``eta = (sum_i (C_i / C) sqrt(eta_i))^2``; lam, alpha
  concatenated.
- Identity, Dropout, AveragePool, MaxPool, Pad: kept (Pad dilutes alpha by its added zeros).
- Anything else (graph inputs, LayerNorm, GroupNorm, InstanceNorm, layout ops): none, lam_G.

Not modelled: the energy a per-channel gate shares across channels (measured 0.0000 for
squeeze-excite gates), BatchNorm's batch centring of a factor before the pool, the
per-sample Gram of a conv's input channels beyond their energies and loadings, the joint cumulants of four distinct positions
(a depthwise conv's lam is 0.65-0.8 of the measured). The chains grow eta_0 over three nodes
of eps's law, not by the slope alone (:mod:`.chain_response`). Pools whose input is not stationary (:func:`.stationary.stationary`) are
left alone.
"""

from __future__ import annotations

import math

import numpy as np

from ..moments import Moments
from ..strict import fall_back
from ..views import broadcast_to
from .context import RuleContext, RuleError
from .batch_energy import carried, fresh as fresh_omega
from .energy_fields import channel_var, gaussian_local, positions
from .conv_energy import channel_shape as _shape, conv_law
from .on_demand import OnDemandField
from .energy_loading import uniform
from .chain_response import chain_record_law
from .sample_masks import merge_smallest, regression
from .kurtosis import _step, chain_start
from .identity_steps import same_function
from .energy_merges import concat_law, gated_law, is_gate, normalised_record, sum_law

_FIELD = OnDemandField()
_KEEP = {"Identity", "Dropout", "AveragePool", "MaxPool", "Pad"}
# factors kept apart per tensor (the rest merged into eta_0): memory and time stay bounded on
# deep networks with a mask in every block
_MAX_FACTORS = 16


def _chain(graph, ctx, tensor: str) -> tuple[str, int]:
    """(the tensor tensor's element-wise chain starts from, BatchNorms on the way)."""
    base = chain_start(graph, tensor, ctx)
    count, name = 0, tensor
    for _ in range(16):
        if name == base:
            break
        node_id = graph.producer[name]
        count += graph.node(node_id).op_type == "BatchNormalization"
        name = _step(graph, node_id, ctx)
    return base, count


def _is_chain(graph, ctx, known, tensor: str) -> bool:
    m = known.get(tensor)
    node_id = graph.producer.get(tensor)
    return (m is not None and node_id is not None and m.source is not None
            and bool(m.source.chain) and _step(graph, node_id, ctx) is not None
            and graph.node(node_id).op_type != "BatchNormalization")


def _signals(graph, known, node) -> list[str]:
    return [n for n in node.input if n and n in known and not graph.is_constant(n)]


def _deps(ctx, known, tensor: str) -> list[str]:
    graph = ctx.graph
    node_id = graph.producer.get(tensor)
    if node_id is None:
        return []
    if _is_chain(graph, ctx, known, tensor):
        base = _chain(graph, ctx, tensor)[0]
        return [base] if base != tensor else []
    node = graph.node(node_id)
    op, signals = node.op_type, _signals(graph, known, node)
    if op in ("Conv", "BatchNormalization") or op in _KEEP:
        return signals[:1]
    if op == "Mul" and len(signals) == 2:
        shape = _shape(graph, tensor)
        return [n for n in signals if not is_gate(graph, n, shape)][:1]
    if op in ("Add", "Sub", "Mul", "Div", "Concat"):
        return signals
    return []


def law(ctx: RuleContext, tensor: str):
    """(eta, lam [C], alpha [C]) of ``tensor`` (module docstring), the per-sample gates' own
    factors left out; None outside propagation or without a channel axis."""
    found = _record(ctx, tensor)
    if found is None:
        return None
    linear = {k: f for k, f in found[3].items() if not f[2]}
    eta, alpha = regression(found[0], found[2], linear)
    return eta, found[1], alpha


def loading(ctx: RuleContext, tensor: str):
    """Each channel's loading [C] (mean 1) on the per-sample energy of ``tensor``
    (:mod:`.energy_loading`); None as :func:`law`."""
    found = _record(ctx, tensor)
    return None if found is None else found[5]


def shared_energy(ctx: RuleContext, tensor: str):
    """(eta, alpha [C]) of the whole per-sample energy of ``tensor``, the per-sample gates'
    factors (:mod:`.sample_masks`) included; None as :func:`law`."""
    found = _record(ctx, tensor)
    return None if found is None else regression(found[0], found[2], found[3])


def _record(ctx: RuleContext, tensor: str):
    """(eta_0, lam, alpha_0, factors, omega) of ``tensor`` (omega: :mod:`.batch_energy`)."""
    known, graph = ctx.known, ctx.graph
    if known is None or tensor not in known or _shape(graph, tensor) is None:
        return None

    def deps(name):
        try:
            return _deps(ctx, known, name)
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            fall_back(exc)
            return []

    return _FIELD.value(ctx, tensor, deps, lambda name, law_of: _compute(ctx, name, law_of))


def _compute(ctx: RuleContext, tensor: str, law_of):
    graph, known = ctx.graph, ctx.known
    shape = _shape(graph, tensor)
    m: Moments = known[tensor]
    c, batch = shape[1], shape[0]
    local = gaussian_local(m, shape)
    fresh = (0.0, local, np.zeros(c), {}, fresh_omega(local, batch), uniform(c))
    node_id = graph.producer.get(tensor)
    if node_id is None:
        return fresh
    node = graph.node(node_id)
    op, signals = node.op_type, _signals(graph, known, node)

    def of(name, size=c):
        got = law_of(name) if name in known and _shape(graph, name) is not None else None
        if got is None or got[1].shape != (size,):
            name_shape = _shape(graph, name) or (1, size)
            local = gaussian_local(known[name], name_shape)
            return (0.0, local, np.zeros(size), {}, fresh_omega(local, name_shape[0]),
                    uniform(size))
        return got

    try:
        with np.errstate(all="ignore"):
            if _is_chain(graph, ctx, known, tensor):
                base, norms = _chain(graph, ctx, tensor)
                if base != tensor and not norms and same_function(known[base], m):
                    return of(base)  # identities after a Pad of f(z): f already in its record
                source = of(base, _shape(graph, base)[1]) if base != tensor else None
                out = fresh if source is None else chain_record_law(
                    m, shape, normalised_record(source) if norms else source, known[base],
                    _shape(graph, base))
            elif op == "Conv" and signals:
                out = conv_law(ctx.for_node(node_id), known, of, shape)
            elif op in _KEEP and signals:
                eta, lam, alpha, factors, omega, load = of(signals[0])
                gauss_in = gaussian_local(known[signals[0]], _shape(graph, signals[0]))
                if op == "Pad":  # zeros added: the positions' mean shift is diluted
                    dilution = positions(_shape(graph, signals[0])) / positions(shape)
                    alpha = alpha * dilution
                    factors = {k: (e, a * dilution, p) for k, (e, a, p) in factors.items()}
                lam_y = np.maximum(fresh[1] + lam - gauss_in, 0.0)
                out = eta, lam_y, alpha, factors, carried(omega, lam, lam_y, batch), load
            elif op in ("Add", "Sub") and len(signals) == 2:
                out = sum_law(known, graph, signals, of, shape, fresh[1], op == "Sub")
            elif (op in ("Add", "Sub", "Mul", "Div", "BatchNormalization")
                  and len(signals) == 1 and _shape(graph, signals[0]) == shape):
                # a per-channel affine map: the loading scales with the standard deviation
                found = of(signals[0])
                eta, lam, alpha, factors, omega, load = (
                    normalised_record(found) if op == "BatchNormalization" else found)
                ratio = np.sqrt(channel_var(known[signals[0]], c) / channel_var(m, c))
                ratio = np.where(ratio > 0, ratio, 1.0)
                out = eta, lam, alpha / ratio, {k: (e, a / ratio, p)
                                                for k, (e, a, p) in factors.items()}, omega, load
            elif op == "Mul" and len(signals) == 2:
                out = gated_law(ctx, signals, of, shape)
            elif (op == "Concat" and len(signals) == len([i for i in node.input if i])
                  and ctx.for_node(node_id).attr("axis") in (1, 1 - len(shape))):
                # (a constant among them, a class token: no record of its channels)
                out = concat_law(graph, signals, of)
            else:
                out = None
    except (ValueError, IndexError, KeyError, TypeError, RuleError) as exc:
        fall_back(exc, (RuleError,))
        return fresh
    if out is None or not all(np.isfinite(a).all() for a in (*out[:3], *out[4:])):
        return fresh
    eta, lam, alpha, factors, omega, load = out
    if not all(math.isfinite(e) and np.all(np.isfinite(a)) for e, a, _ in factors.values()):
        return fresh
    factors = {k: (max(float(e), 0.0), np.broadcast_to(np.asarray(a, np.float64), (c,)).copy(), p)
               for k, (e, a, p) in factors.items()}
    eta, alpha, factors = merge_smallest(float(eta), broadcast_to(alpha, (c,)), factors,
                                         _MAX_FACTORS)
    omega = broadcast_to(np.maximum(np.asarray(omega, np.float64), 0.0), (c,)).copy()
    load = np.asarray(load, np.float64)
    load = load if load.shape == (c,) else uniform(c)
    return (max(eta, 0.0), np.maximum(np.asarray(lam, np.float64), 0.0), alpha, factors, omega,
            load)


def chain_record(ctx: RuleContext, tensor: str, x_shape):
    """(base, BatchNorms on the way, the base's record through them, the batch's centring
    ``1 - 1/N`` after one, else 1) for the element-wise chain ending at ``tensor``; None where
    the chain has no base record."""
    base, norms = _chain(ctx.graph, ctx, tensor)
    if base == tensor or base not in ctx.known:
        return None
    found = _record(ctx, base)
    if found is None:
        return None
    if norms:  # the chain's BatchNorm divides by the batch energy (.batch_energy)
        found = normalised_record(found)
    # BatchNorm's batch statistics centre the sample energies over the batch
    kept = (1.0 - 1.0 / max(x_shape[0], 1)) if norms else 1.0
    return base, norms, found, kept


def chain_energy(ctx: RuleContext, tensor: str, x_shape):
    """(eta, alpha [C] in the base's units, the base, BatchNorms on the way, the channels'
    loadings [C] on it) of the whole per-sample energy (every factor, a regression on the whole
    eps) that the element-wise chain ending at ``tensor`` reads from the tensor it starts from:
    the base's record through the chain's BatchNorms (:mod:`.batch_energy`), eta times ``1 -
    1/N`` after one (the batch's centring: what a batch's statistics see); None where the chain
    has no base record."""
    if ctx.known is None or len(x_shape) < 3:
        return None
    record = chain_record(ctx, tensor, x_shape)
    if record is None:
        return None
    base, norms, found, kept = record
    eta, alpha = regression(found[0], found[2], found[3])
    return eta * kept, alpha, base, norms, found[5]


def chain_norms(ctx: RuleContext, tensor: str) -> int:
    """The BatchNorms on the element-wise chain ending at ``tensor`` (0 where none, or where
    ``tensor`` starts its chain): what :func:`chain_energy` reports as its fourth item, read
    without the record, for a caller that needs a normalised chain."""
    return _chain(ctx.graph, ctx, tensor)[1]


def is_chain(ctx: RuleContext, tensor: str) -> bool:
    """Whether ``tensor`` ends an element-wise chain whose start the record knows."""
    return _is_chain(ctx.graph, ctx, ctx.known, tensor)


__all__ = ["chain_energy", "chain_norms", "chain_record", "is_chain", "law", "loading", "shared_energy"]
