"""Measured gradient statistics: the oracle of the backward analysis, with the project's own
autodiff (:mod:`onnxinit.autodiff`) run by onnxruntime over seeded batches.

The model run is the analysis view (``graph.model``): where loading rewrote the graph (an
inference BatchNormalization written as arithmetic given back its node, which the analysis runs
with batch statistics), the measured network and tensor names are those the prediction
describes, not the file's.

dL/dT of an activation T is read by adding a probe: a zero initializer P of T's full shape
(batch included) and ``T := T_pre + P``; the gradient with respect to P is dL/dT, and the
model computes the same function. Labels are drawn uniformly over the classes (cross-entropy),
targets from N(0, 1) (mse), and the unit head's directions r from N(0, 1) (``L = sum(z r)``).
Statistics are pooled over the elements and the batches: ``mean = E[g]``,
``var = E[g^2] - E[g]^2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .autodiff import GradientProgram
from .autodiff.loss import AttachedLoss
from .errors import InvalidOptionError
from .feeds import synthetic_feeds
from .graph import ModelGraph
from .parameters import float_parameters

PROBE = "/grad_probe"


@dataclass(frozen=True)
class UnitGradient:
    """A loss head whose gradient at the output is a fed standard normal ``r``: ``L = sum(z r)``."""

    output: str | None = None
    target_name: str = "directions"

    def attach(self, emitter, value, shape, elem_type, label_shape):
        r = emitter.reserve(self.target_name)
        loss = emitter.node("ReduceSum", [emitter.node("Mul", [value, r])], keepdims=0)
        return AttachedLoss(loss, helper.make_tensor_value_info(r, elem_type, list(shape)))


def probed_model(graph: ModelGraph, tensors: Sequence[str]) -> tuple[onnx.ModelProto, dict]:
    """A copy of the model with a zero probe added to each of ``tensors``; {tensor: probe}."""
    model = copy.deepcopy(graph.model)
    g = model.graph
    producers = {out: i for i, node in enumerate(g.node) for out in node.output if out}
    probes = {}
    after: dict[int, list[onnx.NodeProto]] = {}
    for name in tensors:
        shape = graph.shape(name)
        dtype = graph.dtypes.get(name, onnx.TensorProto.FLOAT)
        if shape is None or dtype != onnx.TensorProto.FLOAT:
            continue
        probe = name + PROBE
        g.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), probe))
        probes[name] = probe
        if name in producers:
            index = producers[name]
            node = g.node[index]
            pre = name + "/pre_probe"
            node.output[list(node.output).index(name)] = pre
            after.setdefault(index, []).append(
                helper.make_node("Add", [pre, probe], [name], name=probe + "/add"))
        else:  # a graph input: its consumers read the probed copy
            probed = name + "/probed"
            for node in g.node:
                for k, inp in enumerate(node.input):
                    if inp == name:
                        node.input[k] = probed
            for out in g.output:
                if out.name == name:
                    raise InvalidOptionError(f"graph input {name!r} is also an output")
            after.setdefault(-1, []).append(
                helper.make_node("Add", [name, probe], [probed], name=probe + "/add"))
    nodes = list(after.get(-1, []))
    for i, node in enumerate(g.node):
        nodes.append(node)
        nodes.extend(after.get(i, []))
    del g.node[:]
    g.node.extend(nodes)
    return model, probes


def _head(loss: str, output: str):
    if loss == "unit":
        return UnitGradient(output=output)
    if loss == "cross_entropy":
        return "cross_entropy"
    if loss in ("mse", "output"):
        return loss
    raise InvalidOptionError(f"loss must be one of cross_entropy, mse, unit, not {loss!r}")


def measure_gradients(
    graph: ModelGraph,
    tensors: Sequence[str],
    *,
    loss: str = "cross_entropy",
    output: str | None = None,
    batches: int = 4,
    seed: int = 0,
    stats: Mapping[str, tuple[float, float]] | None = None,
    device: str = "auto",
) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
    """({tensor: (mean, var)}, {parameter: (mean, var)}) of the gradients, measured."""
    output = output or graph.output_names[0]
    model, probes = probed_model(graph, tensors)
    parameters = [name for name in float_parameters(graph.model)]
    out_shape = graph.shape(output)
    if out_shape is not None and len(out_shape) == 0:
        loss = "output"  # a scalar output is the loss itself, as the prediction takes it
    head = _head(loss, output)
    label_shape = tuple(out_shape[:-1]) if loss == "cross_entropy" else tuple(out_shape)
    program = GradientProgram(model, graph.input_shapes, loss=head, output=output,
                              wrt=[*probes.values(), *parameters], label_shape=label_shape,
                              device=device, seed=seed)
    sums: dict[str, list[float]] = {}
    rng = np.random.default_rng([seed, 15])
    for b in range(batches):
        feeds = synthetic_feeds(graph, seed=seed + b, stats=stats)
        if loss == "output":
            labels = None
        elif loss == "cross_entropy":
            labels = rng.integers(0, out_shape[-1], size=label_shape)
        else:
            labels = rng.standard_normal(label_shape)
        _, grads = program.gradients(feeds, labels)
        for name, value in grads.items():
            value = np.asarray(value, dtype=np.float64)
            acc = sums.setdefault(name, [0.0, 0.0, 0.0])
            acc[0] += float(value.sum())
            acc[1] += float(np.square(value).sum())
            acc[2] += value.size

    def stat(name):
        total, squares, count = sums[name]
        mean = total / count
        return mean, max(squares / count - mean * mean, 0.0)

    return ({t: stat(p) for t, p in probes.items() if p in sums},
            {p: stat(p) for p in parameters if p in sums})
