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
    target_var: float = option(1.0, "autoinit: output variance of every parametric node.")
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


def _pass(graph, options, parametric, result, changes, layers) -> bool:
    """The topological pass of :func:`plan`: fills ``result``, ``changes`` and ``layers``;
    True when a node was propagated before a value it reads changed."""
    chosen = graph  # a view with the values chosen so far
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
        weight, bias = layer.weight, layer.bias
        if bias is not None and not options.keep_bias and bias not in changes:
            zero = Change(array=np.zeros(tuple(graph.initializers[bias].dims)), rule="autoinit",
                          target="bias = 0")
            chosen = chosen.with_changes({bias: zero})
            changes[bias] = zero
            stale = stale or _read_by(graph, bias, done)
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
            changes[weight] = Change(scale=scale, rule=f"autoinit:{node.op_type}",
                                     target=f"output var {options.target_var:g}")
            chosen = chosen.with_changes({weight: changes[weight]})
            stale = stale or _read_by(graph, weight, done)
            if options.keep_bias and bias is not None:  # y = s W x + b: not linear in s
                propagate_node(chosen, node_id, result)
            else:
                _scale_outputs(graph, node_id, result, scale)
            entry["scale"] = scale
            out_mean, out_var = result.moments[node.output[0]].total()
        entry.update(output_mean=out_mean, output_var=out_var)
        layers.append(entry)
        done.add(node_id)
    return stale


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
