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
from ..propagate import Propagation, propagate, propagate_node, start_propagation
from .options import option


@dataclass
class AutoInitOptions:
    target_var: float = option(1.0, "autoinit: output variance of every parametric node.", gt=0)
    keep_bias: bool = option(
        False, "autoinit: keep biases (counted in the moments) instead of zeroing them.", flag=True
    )
    seed: int = 0


def plan(graph: ModelGraph, options: AutoInitOptions | None = None) -> Plan:
    """Choose weight scales (and zero biases) so every parametric output has ``target_var``.
    ``graph`` is not changed: each layer is analysed on a view of it holding the values chosen
    upstream (:meth:`ModelGraph.with_values`)."""
    options = options or AutoInitOptions()
    if not graph.parametric_nodes:
        raise UnsupportedModelError(
            f"{graph.name}: no Conv/ConvTranspose/Gemm/MatMul node with a float constant weight; "
            "autoinit has nothing to rescale"
        )
    before = _output_variances(graph, options.seed)
    parametric = set(graph.parametric_nodes)
    changes: dict[str, Change] = {}
    layers = []
    result: Propagation = start_propagation(graph, seed=options.seed)
    chosen = graph  # the graph with the values chosen so far
    for node_id in graph.order:
        if graph.is_shape_node(node_id):
            continue
        if node_id not in parametric:
            propagate_node(chosen, node_id, result)
            continue
        node, layer = graph.node(node_id), graph.table.layer(node_id)
        weight, bias = layer.weight, layer.bias
        if bias is not None and not options.keep_bias and bias not in changes:
            zeros = np.zeros_like(graph.value(bias))
            chosen = chosen.with_values({bias: zeros})
            changes[bias] = Change(array=zeros, rule="autoinit", target="bias = 0")
        in_name = next(n for n in node.input if graph.is_signal(n))
        in_mean, in_var = result.moments[in_name].total()
        propagate_node(chosen, node_id, result)
        out_mean, out_var = result.moments[node.output[0]].total()
        entry = {"node": node_id, "op": node.op_type, "weight": weight,
                 "input_mean": in_mean, "input_var": in_var}
        if weight in changes:
            entry.update(scale=None, note="tied weight, scaled at its first use")
        elif not np.isfinite(out_var) or out_var <= 0:
            entry.update(scale=None, note="predicted output variance is 0; left unchanged")
        else:
            scale, note = float(np.sqrt(options.target_var / out_var)), None
            if options.keep_bias and bias is not None:  # (outside the node: T(0) = 0, B = 0)
                scale, note = _scale_with_bias(
                    options.target_var,
                    *(_variance_at(chosen, node_id, result, weight, s) for s in (-1.0, 0.0, 1.0)))
            chosen = chosen.with_values({weight: chosen.value(weight) * scale})
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
    after = {name: result.moments[name].total()[1] for name in before if name in result.moments}
    return Plan(
        method="autoinit",
        changes=changes,
        report={
            "target_var": options.target_var,
            "keep_bias": options.keep_bias,
            "layers": layers,
            "outputs_var_before": before,
            "outputs_var_after": after,
            "warnings": list(result.warnings),
        },
    )


def _variance_at(graph: ModelGraph, node_id: str, result: Propagation, weight: str,
                 s: float) -> float:
    """Total output variance of ``node_id`` with its weight multiplied by ``s`` (on a view of
    ``graph``; ``result`` holds that node's moments until it is propagated again)."""
    propagate_node(graph.with_values({weight: graph.value(weight) * s}), node_id, result)
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


def _output_variances(graph: ModelGraph, seed: int) -> dict[str, float]:
    result = propagate(graph, seed=seed)
    return {
        name: result.moments[name].total()[1]
        for name in graph.output_names
        if name in result.moments
    }
