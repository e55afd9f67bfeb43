"""The share of a tensor's variance that a sample's mean over all its positions keeps, carried
through a stretch where layout ops move the positions (window and grid partitions of
MaxViT-style attention blocks) and put back onto the feature map as its correlation floor.

Per tensor, with each axis given a role (``b`` the batch, ``c`` channels, ``p`` positions,
``1`` a size-1 axis; ``x`` mixed), let K be the number of positions and

    phi = sum_c Var_n(mean_p x_ncp) / sum_c nu_c

(``1/K`` for independent positions, 1 for a component shared by every position). A global
pool of the feature map reads it, and the spatial correlation (:mod:`onnxinit.correlation`)
carries it as the floor, but that correlation is dropped by a layout op that moves positions:
in MaxViT a window attention averages its values over a 7x7 window, the grid attention after it
averages over a lattice that spans the map, and the stream's per-sample mean holds 0.27 of its
variance where independent positions give 1/196 (the squeeze-excite pools of the next MBConv
were predicted 9-12x low). Carried on demand from a layout op whose output is a feature map
again, per producer:

- a feature map with a spatial correlation (the entry): ``phi = sum_c nu_c (1/K^2) sum_{p,q}
  rho_c(p - q) / sum_c nu_c`` (``correlation.mean_variance_factor``), roles ``b, c, p, ...``;
- layout ops (Reshape, Flatten, Squeeze, Unsqueeze, Transpose), Identity, Dropout (the
  identity), Cast: a permutation of the elements, each keeping its sample, channel and position:
  phi kept, the roles follow the axes (a reshape group of axes of one role keeps that role);
  Slice and Split of channel or batch axes alone (q, k, v of one projection; two frames) keep it too;
- maps over the channels alone (MatMul or Gemm by a constant weight over a ``c`` axis,
  LayerNormalization over ``c`` axes, BatchNormalization, Add/Sub/Mul/Div by a constant that is
  one value over the positions): ``S_j = sum_c W_jc^2 S_c`` with ``S_c = phi nu_c``: phi kept;
- an element-wise chain f of a Gaussian z (its source): Mehler's formula on the equicorrelated
  positions, ``phi_f = 1/K + (1 - 1/K) sum_n a_n^2 r^n / n! / Var f``, ``r = (phi_z - 1/K) /
  (1 - 1/K)``, ``a_n = E[f He_n]`` per channel (weighted by Var f);
- a sum of two signals (a residual stream and its branch, independent): ``S = S_a + S_b``;
  an operand with size 1 on every position axis (a per-sample vector) is all shared (phi 1);
- a product with a per-sample gate g (size 1 on every position axis: a stochastic-depth mask,
  a squeeze-excite scale), ``S = E[g^2] S_x + Var(g) mu_x^2``;
- an attention average ``sum_j P_ij V_j`` (MatMul or Einsum of a Softmax output P with V over a
  position axis of V): the mean over every query of a sample is ``(1/K) sum_j colsum_j V_j``
  with column sums near 1 at initialization: ``S = S_V``;
- a product ``A @ B`` of two other signals whose B has its positions last (a correlation
  volume ``f1^T f2``; not a Gram matrix): A's rows become samples, and a row's mean over the
  columns keeps the variation of its ``a`` whole: ``phi = (mu_b^T S_a mu_b + phi_B (tr(S_a
  S_b) + mu_a^T S_b mu_a)) / Var y`` (:func:`_columns`; RAFT's pyramid pools 3-32x under
  without it, 1.4-1.5x with it, the rest the volume's own variance).

Anything else ends the field (None). On the way back onto a feature map (a layout op whose
output axes are ``b, c, p, ...`` while its input's positions were elsewhere, and which is not
read by layout ops alone; :mod:`.position_floor`) every pair of distinct positions gets the correlation
``r = (phi - 1/K) / (1 - 1/K)`` (rho and floor): the local correlation within a window is not
kept, only what a global mean reads.
"""

from __future__ import annotations

import math

import numpy as np

from .. import correlation as corr_model
from ..moments import Moments
from ..strict import fall_back
from .axis_roles import CONST_MAPS, channel_map_roles, channels_taken, layout_roles
from .context import RuleContext
from .einsum_labels import explicit, needs_ranks
from .correlations import chain_amplitudes
from .covariance_readers import product_terms
from .gram import gram_node
from .kurtosis import chain_start
from .logit_path import softmax_behind
from .on_demand import OnDemandField

_FIELD = OnDemandField()
LAYOUT_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Dropout",
           "Cast"}
_HANDLED = LAYOUT_OPS | CONST_MAPS | {"Slice", "Split", "BatchNormalization", "LayerNormalization",
                                    "MatMul", "Gemm", "Einsum"}


def _einsum_terms(ctx: RuleContext):
    eq = ctx.attr("equation")
    eq = (eq.decode() if isinstance(eq, bytes) else str(eq or "")).replace(" ", "")
    shapes = [ctx.graph.shape(name) for name in ctx.node.input]
    if needs_ranks(eq) and any(shape is None for shape in shapes):
        return None
    eq = explicit(eq, [len(shape or ()) for shape in shapes])
    if eq is None:
        return None
    lhs, out = eq.split("->")
    terms = lhs.split(",")
    return (terms, out) if len(terms) == 2 else None


def _from_softmax(graph, name: str) -> bool:
    """``name`` is a Softmax output, possibly through layout ops and Dropout."""
    return softmax_behind(graph, name) is not None


# ---------------------------------------------------------------------------------------------
# the field


def _shape(graph, name):
    shape = graph.shape(name)
    return None if shape is None else tuple(int(s) for s in shape)


def _signals(graph, known, node) -> list[str]:
    return [n for n in node.input if n and n in known and not graph.is_constant(n)]


def _nu(m: Moments) -> float:
    return float(np.mean(m.var))


def _positions(shape, roles) -> int:
    return int(np.prod([s for s, r in zip(shape, roles) if r == "p"], dtype=np.int64))


def map_entry(m: Moments, shape):
    """(roles, phi) of a feature map with a spatial correlation, else None."""
    sp = m.spatial
    corr = None if sp is None else sp.corr
    if corr is None or len(shape) < 3 or corr.rho.ndim != len(shape) - 1:
        return None
    c, sizes = shape[1], shape[2:]
    nu = np.broadcast_to(m.values_along(1, c)[1], (c,))
    phi = np.broadcast_to(corr_model.mean_variance_factor(corr, sizes), (c,)) / np.prod(sizes)
    total = float(nu.sum())
    if total <= 0:
        return None
    return ("b", "c") + ("p",) * len(sizes), float((nu * phi).sum() / total)


def _gate(shape, roles, g_shape) -> bool:
    """g (``g_shape``) is one value per sample over every position axis of x."""
    if g_shape is None or len(g_shape) > len(shape):
        return False
    g = (1,) * (len(shape) - len(g_shape)) + tuple(g_shape)
    return (any(r == "p" for r in roles)
            and all(gs == 1 for gs, r in zip(g, roles) if r == "p"))


def _is_chain(graph, ctx, known, tensor) -> str | None:
    m = known.get(tensor)
    if m is None or m.source is None or not m.source.chain:
        return None
    base = chain_start(graph, tensor, ctx)
    return base if base != tensor and base in known else None


def _deps(ctx: RuleContext, tensor: str) -> list[str]:
    graph, known = ctx.graph, ctx.known
    m = known.get(tensor)
    node_id = graph.producer.get(tensor)
    shape = _shape(graph, tensor)
    if m is None or node_id is None or shape is None or map_entry(m, shape) is not None:
        return []
    base = _is_chain(graph, ctx, known, tensor)
    if base is not None:
        return [base]
    node = graph.node(node_id)
    signals = _signals(graph, known, node)
    if node.op_type == "MatMul" and len(signals) == 2 and _product(graph, node, signals):
        return [signals[1]]
    if node.op_type in ("MatMul", "Einsum") and len(signals) == 2:
        return [n for n in signals if not _from_softmax(graph, n)][:1]
    return signals[:2] if node.op_type in _HANDLED else []


def share(ctx: RuleContext, tensor: str):
    """(roles, phi) of ``tensor`` (module docstring), or None."""
    if ctx.known is None or tensor not in ctx.known:
        return None

    def deps(name):
        try:
            return _deps(ctx, name)
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            fall_back(exc)
            return []

    def compute(name, of):
        try:
            with np.errstate(all="ignore"):
                out = _compute(ctx, name, of)
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            fall_back(exc)
            return None
        if out is None or not math.isfinite(out[1]):
            return None
        return out[0], min(max(out[1], 0.0), 1.0)

    return _FIELD.value(ctx, tensor, deps, compute)


def _compute(ctx: RuleContext, tensor: str, of):
    graph, known = ctx.graph, ctx.known
    m, shape = known[tensor], _shape(graph, tensor)
    node_id = graph.producer.get(tensor)
    if shape is None or node_id is None:
        return None
    entry = map_entry(m, shape)
    if entry is not None:
        return entry
    base = _is_chain(graph, ctx, known, tensor)
    if base is not None:
        return _chain(m, shape, of(base))
    node = graph.node(node_id)
    op, signals = node.op_type, _signals(graph, known, node)
    if not signals or op not in _HANDLED:  # what _deps declares is all that may be read
        return None
    node_ctx = ctx.for_node(node_id)
    if op == "MatMul" and len(signals) == 2 and _product(graph, node, signals):
        return _columns(node_ctx, signals, of(signals[1]), known, shape)
    if len(signals) == 2 and op in ("MatMul", "Einsum"):
        return _attention(node_ctx, op, signals, of, known, shape)
    first = of(signals[0])
    if op in LAYOUT_OPS and first is not None:
        return layout_roles(node_ctx, op, first, _shape(graph, signals[0]), shape)
    if op in ("Slice", "Split") and first is not None:
        return channels_taken(first, _shape(graph, signals[0]), shape)
    if len(signals) == 1 and first is not None:
        return channel_map_roles(node_ctx, op, first, _shape(graph, signals[0]), shape)
    if len(signals) != 2:
        return None
    a, b = (of(n) for n in signals)
    sa, sb = (_shape(graph, n) for n in signals)
    if op in ("Add", "Sub"):
        return _sum(known, signals, (a, b), (sa, sb), shape)
    if op == "Mul":
        return _gated(known, signals, (a, b), (sa, sb), shape)
    return None


def _chain(m: Moments, shape, field):
    """Mehler's formula on equicorrelated positions (module docstring)."""
    if field is None:
        return None
    roles, phi_z = field
    if len(roles) != len(shape):
        return None
    k = _positions(shape, roles)
    if k <= 1:
        return roles, phi_z
    src = m.source
    rank = len(shape)
    mean, var = Moments(src.mean, src.var).expand_rank(rank).mean, Moments(
        src.mean, src.var).expand_rank(rank).var
    mean, var = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(var, np.float64))
    amp = chain_amplitudes(src.chain, mean, var).reshape(8, -1)
    coef = np.stack([a * a / math.factorial(n + 1) for n, a in enumerate(amp)])
    total = coef.sum(axis=0)
    nu = np.broadcast_to(np.asarray(m.var, np.float64), mean.shape).reshape(-1)
    r = (phi_z - 1.0 / k) / (1.0 - 1.0 / k)
    far = (coef * r ** np.arange(1, 9)[:, None]).sum(axis=0)
    rho = np.where(total > 0, far / np.where(total > 0, total, 1.0), r)
    weight = nu if nu.sum() > 0 else np.ones_like(nu)
    return roles, 1.0 / k + (1.0 - 1.0 / k) * float((weight * rho).sum() / weight.sum())


def _sum(known, names, fields, shapes, shape):
    parts = []
    for name, field, s in zip(names, fields, shapes):
        nu = _nu(known[name])
        if s == shape and field is not None:
            parts.append((field[0], field[1], nu))
        elif s is not None and field is None:
            parts.append((None, None, nu))
        else:
            return None
    roles = next((r for r, _, _ in parts if r is not None), None)
    if roles is None:
        return None
    total, shared = 0.0, 0.0
    for (r, phi, nu), s in zip(parts, shapes):
        if r is None:  # a broadcast operand with one value over every position: all shared
            if not _gate(shape, roles, s):
                return None
            phi = 1.0
        elif r != roles:
            return None
        total, shared = total + nu, shared + phi * nu
    return (roles, shared / total) if total > 0 else None


def _gated(known, names, fields, shapes, shape):
    for x, g in ((0, 1), (1, 0)):
        field = fields[x]
        if field is None or shapes[x] != shape or not _gate(shape, field[0], shapes[g]):
            continue
        roles, phi = field
        mx, mg = known[names[x]], known[names[g]]
        nu, mu2 = _nu(mx), float(np.mean(np.asarray(mx.mean, np.float64) ** 2))
        gv = _nu(mg)
        g2 = gv + float(np.mean(np.asarray(mg.mean, np.float64) ** 2))
        total = g2 * nu + gv * mu2
        return (roles, (g2 * phi * nu + gv * mu2) / total) if total > 0 else None
    return None


def _attention(ctx, op, names, of, known, shape):
    """P V: the values' shared variance, ``S = S_V`` (module docstring)."""
    graph = ctx.graph
    soft = [_from_softmax(graph, n) for n in names]
    if sum(soft) != 1:
        return None
    p_index = soft.index(True)
    v_name = names[1 - p_index]
    field = of(v_name)
    if field is None:
        return None
    roles, phi = field
    if op == "MatMul":
        if p_index != 0 or len(roles) < 2 or roles[-2] != "p" or len(shape) != len(roles):
            return None
        out_roles = roles[:-2] + ("p", roles[-1])
    else:
        terms = _einsum_terms(ctx)
        if terms is None:
            return None
        (t0, t1), out = terms
        tp, tv = (t0, t1) if p_index == 0 else (t1, t0)
        if len(tv) != len(roles):
            return None
        role_of = dict(zip(tv, roles))
        summed = [ch for ch in tv if ch in tp and ch not in out]
        if len(summed) != 1 or role_of[summed[0]] != "p":
            return None
        out_roles = tuple(role_of.get(ch, "p") for ch in out)
    nu_out = _nu(known[ctx.node.output[0]]) if ctx.node.output[0] in known else None
    if not nu_out:
        return None
    return out_roles, phi * _nu(known[v_name]) / nu_out


def _product(graph, node, signals) -> bool:
    """A MatMul of two signals neither a softmax's (P V) nor one the other's transpose (a Gram
    matrix): a correlation volume ``f1^T f2``."""
    return (node.input[:2] == signals and not any(_from_softmax(graph, n) for n in signals)
            and not gram_node(graph, node))


def _columns(ctx, names, field, known, shape):
    """``Y = A @ B`` of independent operands whose B has positions on its last axis (columns)
    and its features on the contracted one: Y's rows are samples (``b``), its columns B's
    positions, and a sample's mean over the columns of a row is ``a . mean_j b_j``::

        phi_Y = (mu_b^T S_a mu_b + phi_B (tr(S_a S_b) + mu_a^T S_b mu_a)) / Var y

    ``Var y = tr(S_a S_b) + mu_b^T S_a mu_b + mu_a^T S_b mu_a`` (a cell's): the variation of
    the row's ``a`` is the same in every column of it, a pool over the columns keeps it whole
    (RAFT's correlation pyramid, average pools over the second frame's positions), B's share
    shrinks by B's own ``phi_B`` (:func:`.covariance_readers.product_terms`)."""
    if field is None:
        return None
    roles, phi = field
    if len(roles) != len(shape) or len(roles) < 3 or roles[-1] != "p" or roles[-2] != "c":
        return None
    terms = product_terms(ctx, known[names[0]], known[names[1]])
    if terms is None:
        return None
    trace, row, column = terms
    total = trace + row + column
    if not total > 0:
        return None
    return roles[:-2] + ("b", "p"), (row + phi * (trace + column)) / total


def correlation(ctx: RuleContext, tensor: str, axis: int) -> float:
    """The correlation of two distinct positions of ``tensor`` that its position share implies,
    ``r = (phi - 1/K) / (1 - 1/K)``, when ``axis`` is one of its position axes; else 0."""
    try:
        field = share(ctx, tensor)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        fall_back(exc)
        return 0.0
    shape = _shape(ctx.graph, tensor)
    if field is None or shape is None or len(field[0]) != len(shape) or field[0][axis] != "p":
        return 0.0
    k = _positions(shape, field[0])
    return max((field[1] - 1.0 / k) / (1.0 - 1.0 / k), 0.0) if k > 1 else 0.0


__all__ = ["LAYOUT_OPS", "correlation", "map_entry", "share"]
