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
    target_var: float = option(1.0, "autoinit: output variance of every parametric node.")
    keep_bias: bool = option(
        False, "autoinit: keep biases (counted in the moments) instead of zeroing them.", flag=True
    )
    seed: int = 0


def _bias_of(graph: ModelGraph, node_id: str) -> str | None:
    """The bias parameter of a parametric node: Conv/Gemm's third input, or the constant operand
    of an Add that alone consumes a MatMul's output (how exporters write Linear layers)."""
    node = graph.node(node_id)
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        if len(node.input) > 2 and node.input[2]:
            return graph.parameter_of(node.input[2])
        return None
    consumers = graph.consumers.get(node.output[0], [])
    if len(consumers) != 1:
        return None
    add = graph.node(consumers[0][0])
    if add.op_type != "Add":
        return None
    other = add.input[1 - consumers[0][1]]
    return graph.parameter_of(other) if graph.is_constant(other) else None


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
        node = graph.node(node_id)
        weight = graph.parameter_of(node.input[graph.weight_input(node_id)])
        bias = _bias_of(graph, node_id)
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
            scale = float(np.sqrt(options.target_var / out_var))
            chosen = chosen.with_values({weight: chosen.value(weight) * scale})
            changes[weight] = Change(scale=scale, rule=f"autoinit:{node.op_type}",
                                     target=f"output var {options.target_var:g}")
            propagate_node(chosen, node_id, result)
            entry["scale"] = scale
            out_mean, out_var = result.moments[node.output[0]].total()
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


def _output_variances(graph: ModelGraph, seed: int) -> dict[str, float]:
    result = propagate(graph, seed=seed)
    return {
        name: result.moments[name].total()[1]
        for name in graph.output_names
        if name in result.moments
    }
