"""AutoInit (Bingham & Miikkulainen), weight-aware: one pass in topological order, no data.

For each parametric node (Conv, ConvTranspose, Gemm, MatMul with a constant weight), the moments
of its input are those produced by the weights already chosen upstream. Its bias is set to zero
(unless ``keep_bias``), then its weight W is scaled by

    s = sqrt(target_var / Var[y])

where ``Var[y]`` is the total output variance (over channels and positions) predicted by the
weight-aware rule with the current W. Since ``y`` is linear in W once the bias is zero (or kept
fixed and counted), the scaled node outputs exactly ``target_var`` under the rule. A weight shared
by several nodes (tied embeddings) is scaled once, at its first use. Grouped and depthwise
convolutions need no special case: the rule sums over each output's true receptive field.
Normalization scales and shifts are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedModelError
from ..graph import ModelGraph
from ..plan import Change, Plan
from ..propagate import Propagation, propagate_node, single_threaded_blas, start_propagation
from .options import option


@dataclass
class AutoInitOptions:
    target_var: float = option(1.0, "autoinit: output variance of every parametric node.", gt=0)
    keep_bias: bool = option(
        False, "autoinit: keep biases (counted in the moments) instead of zeroing them.", flag=True
    )
    seed: int = 0


def plan(graph: ModelGraph, options: AutoInitOptions | None = None) -> Plan:
    """Choose weight scales (and zero biases) so every parametric output has ``target_var``,
    in one topological pass: each node's rule runs once, on a view of ``graph`` holding the
    values chosen upstream (:meth:`ModelGraph.with_changes`); a weighted node's outputs under
    its scaled weight are its outputs under the current weight scaled (its rule is linear in the
    weight once the bias is zero: :meth:`Moments.scaled`), so no node is propagated twice.

    The pass's moments are then those of the rescaled model, and the Plan carries them as its
    ``prediction``, unless a tensor was changed after a node that reads it had been propagated
    (a weight tied to an earlier Gather or MatMul, a bias shared with an earlier layer): then
    ``prediction`` is None and :func:`~onnxinit.rescale.rescale` propagates the result again."""
    options = options or AutoInitOptions()
    if not graph.parametric_nodes:
        raise UnsupportedModelError(
            f"{graph.name}: no Conv/ConvTranspose/Gemm/MatMul node with a float constant weight; "
            "autoinit has nothing to rescale"
        )
    parametric = set(graph.parametric_nodes)
    changes: dict[str, Change] = {}
    layers = []
    result: Propagation = start_propagation(graph, seed=options.seed)
    with single_threaded_blas():
        stale = _pass(graph, options, parametric, result, changes, layers)
        kept = compounding_weights(layers, options.target_var)
        if kept:  # once more, those weights as they are
            changes, layers = {}, []
            result = start_propagation(graph, seed=options.seed)
            stale = _pass(graph, options, parametric, result, changes, layers, frozenset(kept))
    return Plan(
        method="autoinit",
        changes=changes,
        report={
            "target_var": options.target_var,
            "keep_bias": options.keep_bias,
            "layers": layers,
            "warnings": list(result.warnings),
        },
        prediction=None if stale else result,
    )


_TIED = "tied weight, scaled at its first use"


def _pass(graph, options, parametric, result, changes, layers, kept=frozenset()) -> bool:
    """The topological pass of :func:`plan`: fills ``result``, ``changes`` and ``layers``;
    True when a node was propagated before a value it reads changed. Weights in ``kept`` are
    left as they are."""
    chosen = graph.with_changes({})  # a view with the values chosen so far, changed in place
    done: set[str] = set()  # nodes propagated
    stale = False  # a node was propagated before a value it reads changed
    for node_id in graph.order:
        if graph.is_shape_node(node_id):
            continue
        if node_id not in parametric:
            propagate_node(chosen, node_id, result)
            done.add(node_id)
            continue
        node, layer = graph.node(node_id), graph.table.layer(node_id)
        in_name = next((n for n in node.input if graph.is_signal(n)), None)
        if in_name is None:  # no float signal reaches it (an integer input): nothing to scale
            propagate_node(chosen, node_id, result)
            done.add(node_id)
            continue
        weight, bias = layer.weight, layer.bias
        if bias is not None and not options.keep_bias and bias not in changes:
            zero = Change(array=np.zeros(tuple(graph.initializers[bias].dims)), rule="autoinit",
                          target="bias = 0")
            chosen.take_changes({bias: zero})
            changes[bias] = zero
            stale = stale or _read_by(graph, bias, done)
        in_mean, in_var = result.moments[in_name].total()
        propagate_node(chosen, node_id, result)
        out_mean, out_var = result.moments[node.output[0]].total()
        entry = {"node": node_id, "op": node.op_type, "weight": weight,
                 "input_mean": in_mean, "input_var": in_var}
        if weight in changes:
            entry.update(scale=None, note=_TIED)
        elif weight in kept:
            entry.update(scale=None, note=_COMPOUNDING)
        elif not np.isfinite(out_var) or out_var <= 0:
            entry.update(scale=None, note="predicted output variance is 0; left unchanged")
        else:
            scale, note = float(np.sqrt(options.target_var / out_var)), None
            # the node's output is linear in its weight unless it adds a bias that is kept
            # (y = s W x + b); a bias added by a later node leaves it linear: the plain scale
            linear = bias is None or not options.keep_bias or layer.bias_node is not None
            if not linear:
                # T(1) is the variance just propagated: the weight as it is, scale 1
                t_minus, t_zero = (_variance_at(chosen, node_id, result, weight, s)
                                   for s in (-1.0, 0.0))
                scale, note = _scale_with_bias(options.target_var, t_minus, t_zero, out_var)
            chosen.take_changes({weight: Change(scale=scale)})
            stale = stale or _read_by(graph, weight, done)
            if linear:
                _scale_outputs(graph, node_id, result, scale)
            else:
                propagate_node(chosen, node_id, result)
            entry["scale"] = scale
            out_mean, out_var = result.moments[node.output[0]].total()
            target = f"output var {options.target_var:g}"
            if note:
                entry["note"] = note
                target = f"output var {out_var:.3g}: {note}"
            changes[weight] = Change(scale=scale, rule=f"autoinit:{node.op_type}", target=target)
        entry.update(output_mean=out_mean, output_var=out_var)
        layers.append(entry)
        done.add(node_id)
    return stale


_COMPOUNDING = ("weight read again downstream of its own output, where one scale compounds "
                "(an unrolled recurrence): left as initialised, as the RNN, GRU and LSTM ops' are")
_DRIFT = 2.0  # a tied use's output variance this far from the target: the scale compounds


def compounding_weights(layers: list[dict], target: float) -> set[str]:
    """Tied weights (read by several parametric nodes) whose later uses' predicted output
    variances, with the scale set at the first use, stray from ``target`` by more than a factor
    ``_DRIFT``: the scale multiplies the signal that reaches those uses (a recurrence unrolled
    over time steps, where a scale set at the first step, on the initial state, compounds to
    1e15 over 20 steps). Weights shared across depth behind a normalization (ALBERT's layers)
    stay near the target at every use and are scaled as before."""
    scaled = {e["weight"] for e in layers if e.get("scale") is not None}
    return {e["weight"] for e in layers
            if e["weight"] in scaled and e.get("scale") is None and e.get("note") == _TIED
            and not target / _DRIFT <= e["output_var"] <= target * _DRIFT}


def _scale_outputs(graph: ModelGraph, node_id: str, result: Propagation, scale: float) -> None:
    """The node's output moments as they are with its weight times ``scale`` (bias zero)."""
    for name in graph.node(node_id).output:
        if name in result.moments and result.producers.get(name) == node_id:
            result.moments[name] = result.moments[name].scaled(scale)


def _read_by(graph: ModelGraph, tensor: str, nodes: set[str]) -> bool:
    """Whether any of ``nodes`` reads ``tensor`` or a constant computed from it."""
    return any(consumer in nodes
               for name in graph.downstream_constants([tensor])
               for consumer, _ in graph.consumers.get(name, []))


def _variance_at(graph: ModelGraph, node_id: str, result: Propagation, weight: str,
                 s: float) -> float:
    """Total output variance of ``node_id`` with its weight multiplied by ``s`` (``graph``, the
    pass's view, reads so during the call only: :meth:`ModelGraph.trying`; ``result`` holds
    that node's moments until it is propagated again)."""
    with graph.trying({weight: Change(scale=s)}):
        propagate_node(graph, node_id, result)
    return result.moments[graph.node(node_id).output[0]].total()[1]


def _scale_with_bias(target: float, t_minus: float, t_zero: float,
                     t_one: float) -> tuple[float, str | None]:
    """The weight scale s > 0 that gives ``y = s W x + b`` total variance ``target``.

    Per channel c, E[y_c] = s a_c + b_c and Var[y_c] = s^2 u_c, so the variance over the tensor,
    mean_c Var[y_c] + var_c E[y_c], is T(s) = A s^2 + B s + C with C = var_c b_c = T(0),
    B = 2 cov_c(a_c, b_c) = (T(1) - T(-1)) / 2, A = (T(1) + T(-1)) / 2 - C; solve
    T(s) = target for its largest positive root. When T(s) > target for every s > 0 (the bias
    alone varies more than the target), keep the bias-free scale sqrt(target / A) and say why
    the target is not met."""
    c = t_zero
    b = (t_one - t_minus) / 2
    a = (t_one + t_minus) / 2 - c
    discriminant = b * b - 4 * a * (c - target)
    if a > 0 and discriminant >= 0:
        root = (-b + np.sqrt(discriminant)) / (2 * a)
        if root > 0:
            return float(root), None
    why = (f"target {target:g} unreachable with the bias kept: the bias alone gives variance "
           f"{c:.3g} across channels")
    return (float(np.sqrt(target / a)) if a > 0 else 1.0), why
