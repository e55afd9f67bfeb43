"""Measuring a model in onnxruntime: every float intermediate exposed as an output, with
training semantics (BatchNormalization on batch statistics, Dropout off)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from .graph import ModelGraph
from .runtime import make_session


def _const_int64(name: str, values) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name],
        value=helper.make_tensor(name, TensorProto.INT64, [len(values)], list(values)),
    )


def _reduce_mean(x: str, out: str, axes: list[int], opset: int, prefix: str) -> list:
    if opset >= 18:
        return [
            _const_int64(f"{prefix}_axes", axes),
            helper.make_node("ReduceMean", [x, f"{prefix}_axes"], [out], keepdims=1),
        ]
    return [helper.make_node("ReduceMean", [x], [out], axes=axes, keepdims=1)]


def batchnorm_to_batch_statistics(graph: ModelGraph, model: onnx.ModelProto) -> None:
    """Rewrite every BatchNormalization of ``model`` (in place) into primitive ops using the
    batch's statistics: ``y = scale * (x - mean_b) / sqrt(var_b + eps) + B``, with ``mean_b``
    and the biased ``var_b`` over every axis but the channel axis 1.

    This is training semantics whatever the node's ``training_mode``, and it does not depend on
    onnxruntime keeping ``training_mode=1`` (its default optimizations drop it when the running
    statistics are unused, DESIGN.md §7).
    """
    opset = graph.opset
    new_nodes = []
    for k, node in enumerate(model.graph.node):
        if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        x, scale, bias = node.input[0], node.input[1], node.input[2]
        rank = len(graph.shapes.get(x) or (0, 0, 0, 0))
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        p = f"_onnxinit_bn{k}"
        axes = [0, *range(2, rank)]
        bshape = [1, -1] + [1] * (rank - 2)
        new_nodes += _reduce_mean(x, f"{p}_mean", axes, opset, f"{p}_m")
        new_nodes += [
            helper.make_node("Sub", [x, f"{p}_mean"], [f"{p}_centered"]),
            helper.make_node("Mul", [f"{p}_centered", f"{p}_centered"], [f"{p}_sq"]),
        ]
        new_nodes += _reduce_mean(f"{p}_sq", f"{p}_var", axes, opset, f"{p}_v")
        new_nodes += [
            helper.make_node(
                "Constant", [], [f"{p}_eps"],
                value=helper.make_tensor(f"{p}_eps", TensorProto.FLOAT, [], [eps]),
            ),
            helper.make_node("CastLike", [f"{p}_eps", x], [f"{p}_eps_t"]) if opset >= 15
            else helper.make_node("Identity", [f"{p}_eps"], [f"{p}_eps_t"]),
            helper.make_node("Add", [f"{p}_var", f"{p}_eps_t"], [f"{p}_var_eps"]),
            helper.make_node("Sqrt", [f"{p}_var_eps"], [f"{p}_std"]),
            helper.make_node("Div", [f"{p}_centered", f"{p}_std"], [f"{p}_norm"]),
            _const_int64(f"{p}_bshape", bshape),
            helper.make_node("Reshape", [scale, f"{p}_bshape"], [f"{p}_scale"]),
            helper.make_node("Reshape", [bias, f"{p}_bshape"], [f"{p}_bias"]),
            helper.make_node("Mul", [f"{p}_norm", f"{p}_scale"], [f"{p}_scaled"]),
            helper.make_node("Add", [f"{p}_scaled", f"{p}_bias"], [node.output[0]]),
        ]
        # running-statistic outputs of training exports: the batch statistics, flattened to [C]
        if any(node.output[1:3]):
            new_nodes.append(_const_int64(f"{p}_flat", [-1]))
        for out, source in zip(node.output[1:3], (f"{p}_mean", f"{p}_var")):
            if out:
                new_nodes.append(helper.make_node("Reshape", [source, f"{p}_flat"], [out]))
    del model.graph.node[:]
    model.graph.node.extend(_topological(new_nodes, model))


def dropout_to_identity(model: onnx.ModelProto) -> None:
    """Rewrite every Dropout of ``model`` (in place) into an Identity of its input: a
    training-mode export keeps ``training_mode=True`` and onnxruntime would drop (and rescale)
    at random, where the analysis takes Dropout as identity unless asked otherwise. A Dropout
    whose mask output is used stays."""
    used = {n for node in model.graph.node for n in node.input} | {
        o.name for o in model.graph.output}
    for i, node in enumerate(model.graph.node):
        if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.output) > 1 and node.output[1] and node.output[1] in used:
            continue
        model.graph.node[i].CopyFrom(
            helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)
        )


def _topological(nodes: list[onnx.NodeProto], model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Order nodes so each comes after its producers (inserted Constants may come late)."""
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    pending, ordered = list(nodes), []
    while pending:
        rest = []
        for node in pending:
            if all(not n or n in available for n in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # outer-scope names or a cycle: keep the given order
            ordered.extend(rest)
            break
        pending = rest
    return ordered


def _with_outputs(graph: ModelGraph, tensors: Iterable[str]) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    existing = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in existing:
            model.graph.output.append(
                helper.make_tensor_value_info(name, graph.dtypes.get(name, 0), None)
            )
    model.ir_version = min(model.ir_version, 10)
    return model


def _static_inputs(graph: ModelGraph, model: onnx.ModelProto) -> None:
    for inp in model.graph.input:
        if inp.name in graph.input_shapes:
            shape = inp.type.tensor_type.shape
            shape.ClearField("dim")
            for d in graph.input_shapes[inp.name]:
                shape.dim.add().dim_value = d


def run_for_shapes(graph: ModelGraph, tensors: list[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of ``tensors`` measured by one run on synthetic inputs (when inference failed)."""
    from .data import synthetic_feeds

    model = _with_outputs(graph, tensors)
    _static_inputs(graph, model)
    try:
        session = make_session(model, device="cpu")
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, synthetic_feeds(graph))
    except Exception as exc:  # noqa: BLE001 - the model cannot run here: rules fall back
        graph.warnings.append(f"could not run the model to measure shapes: {exc}")
        return {}
    wanted = set(tensors)
    return {n: tuple(v.shape) for n, v in zip(names, values) if n in wanted}


def measurable_model(graph: ModelGraph, tensors: Iterable[str]) -> onnx.ModelProto:
    """A copy of the model that exposes ``tensors`` as outputs and runs with the analysis's
    training semantics: static input shapes, BatchNormalization on batch statistics, Dropout as
    identity (even with ``training_mode=True``)."""
    model = _with_outputs(graph, tensors)
    _static_inputs(graph, model)
    batchnorm_to_batch_statistics(graph, model)
    dropout_to_identity(model)
    return model


def measure(
    graph: ModelGraph,
    feeds: Mapping[str, np.ndarray],
    tensors: Iterable[str] | None = None,
    *,
    device: str = "auto",
) -> dict[str, tuple[float, float]]:
    """Measured (mean, var) over every element of each tensor, on ``feeds``, with training
    semantics: BatchNormalization on batch statistics; Dropout is identity (even with
    ``training_mode=True``), as in the analysis by default."""
    tensors = list(tensors if tensors is not None else graph.float_activations())
    model = measurable_model(graph, [t for t in tensors if t not in graph.input_names])
    session = make_session(model, device=device)
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, dict(feeds))))
    values.update({k: v for k, v in feeds.items() if k in graph.input_names})
    out = {}
    for name in tensors:
        if name in values:
            v = np.asarray(values[name], dtype=np.float64)
            out[name] = (float(v.mean()), float(v.var()))
    return out
