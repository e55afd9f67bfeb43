"""LSUV, layer-sequential unit-variance initialization (Mishkin & Matas 2016; docs/methods.md).

1. Pre-init (``lsuv_init='orthogonal'``, the paper's default): every Conv/ConvTranspose/Gemm/
   MatMul weight is replaced by an orthonormal matrix (per group; the ``orthogonal`` classic
   scheme, seeded the same way) and the layer biases are set to 0. ``'keep'`` starts from the
   weights in the file.
2. For each parametric node in topological order, on one batch B (real ``--data`` or synthetic,
   the same batch for every layer, as the paper's code does):

       v_0 = Var[y_l(B)]
       while |v_t - target| >= tolerance and t < max_iterations:
           W_l <- W_l * sqrt(target / v_t);   v_{t+1} = Var[y_l(B)]

   where ``y_l`` is the layer's output (after its bias: the Add that alone follows a MatMul
   counts as part of the layer) and Var is over every element of the batch. With ``target = 1``
   this is the paper's "divide the weight by the standard deviation". The layer's total scale
   is the product of its factors.

Forward passes only: the model runs in onnxruntime with training semantics (BatchNormalization
on batch statistics, lowered as in :mod:`onnxinit.measure`), the rescaled weights fed as inputs
of one session, so no session is rebuilt per try. A weight shared by several nodes is scaled at
its first use only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import helper

from ..errors import UnsupportedModelError
from ..graph import ModelGraph
from ..measure import measurable_model
from ..plan import Change, Plan
from ..progress import bar
from ..runtime import make_session
from ._data import DataOptions, batches
from .classic import ClassicOptions, planner
from .options import check_values, option

PRE_INITS = ("orthogonal", "keep")


@dataclass
class LSUVOptions(DataOptions):
    lsuv_tolerance: float = option(
        0.1, "lsuv: stop a layer's tries once |measured output variance - target| < this.", gt=0)
    lsuv_max_iterations: int = option(10, "lsuv: at most this many rescalings per layer.", ge=0)
    lsuv_init: str = option(
        "orthogonal",
        "lsuv: pre-init: 'orthogonal' (orthonormal weights, zero biases, as in the paper) or "
        "'keep' (start from the model's weights).",
        choices=PRE_INITS,
    )
    lsuv_target_var: float = option(1.0, "lsuv: output variance every parametric layer gets.", gt=0)
    seed: int = 0


def layer_output(graph: ModelGraph, node_id: str) -> str:
    """The tensor LSUV measures for a parametric node: its output after its bias (the Add that
    alone consumes its output, when the bias is written that way: an exported Linear)."""
    return graph.table.layer(node_id).output


def scale_factor(variance: float, target: float) -> float:
    """``sqrt(target / variance)``: the weight multiplier that brings a bias-free linear layer's
    output variance from ``variance`` to ``target``."""
    return float(np.sqrt(target / variance))


class _Forward:
    """One onnxruntime session of the model with ``weights`` as overridable inputs and the
    ``tensors`` exposed, with the analysis's training semantics (:func:`measurable_model`)."""

    def __init__(self, graph: ModelGraph, weights: list[str], tensors: list[str]):
        model = measurable_model(graph, tensors)
        declared = {i.name for i in model.graph.input}
        for name in weights:
            if name not in declared:
                init = graph.initializers[name]
                model.graph.input.append(
                    helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
        model.ir_version = max(model.ir_version, 4)
        self.session = make_session(model, device="cpu")

    def variance(self, tensor: str, feeds: dict[str, np.ndarray]) -> float:
        """Var over every element of ``tensor`` (float64 accumulation)."""
        (value,) = self.session.run([tensor], feeds)
        return float(np.asarray(value, dtype=np.float64).var())


def _pre_init(graph: ModelGraph, options: LSUVOptions) -> dict[str, Change]:
    if options.lsuv_init == "keep":
        return {}
    return dict(planner("orthogonal")(graph, ClassicOptions(seed=options.seed)).changes)


def _value(graph: ModelGraph, name: str, change: Change | None) -> np.ndarray:
    """The value a Change gives (float64 arithmetic, rounded once to the tensor's dtype)."""
    original = graph.value(name)
    if change is None:
        return original
    if change.array is not None:
        return np.asarray(change.array).astype(original.dtype)
    return (original.astype(np.float64) * change.scale).astype(original.dtype)


def plan(graph: ModelGraph, options: LSUVOptions | None = None) -> Plan:
    """Scale every parametric layer's weight until its measured output variance is the target
    (see the module docstring). ``graph`` is not modified."""
    options = options or LSUVOptions()
    check_values(options)
    if not graph.parametric_nodes:
        raise UnsupportedModelError(
            f"{graph.name}: no Conv/ConvTranspose/Gemm/MatMul node with a float constant weight; "
            "lsuv has nothing to rescale")
    source = batches(graph, options)
    batch = source.batch(0)
    changes = _pre_init(graph, options)
    weights = {layer.weight for layer in graph.layers}
    fed = sorted(weights | set(changes))
    outputs = {n: layer_output(graph, n) for n in graph.parametric_nodes}
    forward = _Forward(graph, fed, sorted(set(outputs.values())))
    feeds = dict(batch.feeds)
    feeds.update({name: _value(graph, name, changes.get(name)) for name in fed})

    with bar(len(graph.parametric_nodes), "lsuv") as progress:
        layers = _fit_layers(graph, options, forward, feeds, outputs, changes, progress)
    return Plan(
        method="lsuv",
        changes=changes,
        report={
            "pre_init": options.lsuv_init,
            "tolerance": options.lsuv_tolerance,
            "max_iterations": options.lsuv_max_iterations,
            "target_var": options.lsuv_target_var,
            "data": options.data or "synthetic",
            "batch_size": source.batch_size,
            "seed": options.seed,
            "layers": layers,
            "not_converged": [e["node"] for e in layers if e.get("converged") is False],
        },
    )


def _fit_layers(
    graph: ModelGraph, options: LSUVOptions, forward: _Forward, feeds: dict[str, np.ndarray],
    outputs: dict[str, str], changes: dict[str, Change], progress,
) -> list[dict]:
    """The per-layer loop (updates ``feeds`` and ``changes``); one report entry per layer."""
    layers, scaled = [], set()
    for node_id in graph.parametric_nodes:
        node = graph.node(node_id)
        weight = graph.table.layer(node_id).weight
        tensor = outputs[node_id]
        entry = {"node": node_id, "op": node.op_type, "weight": weight, "output": tensor}
        if weight in scaled:
            layers.append({**entry, "note": "tied weight, scaled at its first use",
                           "final_var": forward.variance(tensor, feeds)})
            progress.update()
            continue
        scaled.add(weight)
        history = [forward.variance(tensor, feeds)]
        total, note = 1.0, ""
        while abs(history[-1] - options.lsuv_target_var) >= options.lsuv_tolerance \
                and len(history) <= options.lsuv_max_iterations:
            if not np.isfinite(history[-1]) or history[-1] <= 0:
                note = "output variance is 0 or not finite; left at its last scale"
                break
            total *= scale_factor(history[-1], options.lsuv_target_var)
            step = Change(scale=total, rule="lsuv")
            feeds[weight] = _value(graph, weight, changes[weight].then(step)
                                   if weight in changes else step)
            history.append(forward.variance(tensor, feeds))
        if total != 1.0:
            step = Change(scale=total, rule=f"lsuv:{node.op_type}",
                          target=f"output var {options.lsuv_target_var:g}")
            changes[weight] = changes[weight].then(step) if weight in changes else step
        converged = abs(history[-1] - options.lsuv_target_var) < options.lsuv_tolerance
        entry.update(iterations=len(history) - 1, scale=total, initial_var=history[0],
                     final_var=history[-1], converged=converged, trajectory=history)
        if note:
            entry["note"] = note
        layers.append(entry)
        progress.update()
        progress.set_postfix(var=f"{history[-1]:.3g}")
    return layers
